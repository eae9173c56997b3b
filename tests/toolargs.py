"""llama.cpp's tools as the bench calls them, for tests: settings with defaults, and the value a
command line gives a flag."""

from __future__ import annotations

from edge_tree.bench.tools import ToolSettings


def settings(tmp_path, **changes) -> ToolSettings:
    values = dict(bin_dir=tmp_path, target="T.gguf", draft="D.gguf", max_tokens=64, threads=2,
                  ctx_size=4096)
    return ToolSettings(**{**values, **changes})


def flag_value(cmd: list[str], flag: str) -> str:
    assert cmd.count(flag) == 1, cmd
    return cmd[cmd.index(flag) + 1]
