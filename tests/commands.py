"""The `edge-tree` command for tests: in process (click's CliRunner) or as the installed console
script in a real process, and the check that a failure is one line on stderr, never a traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from click.testing import CliRunner

from edge_tree.cli import main
from serving import edge_tree_exe

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"  # the measuring scripts, run as users run them


def invoke(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def run(*args, input: bytes | None = None, env: dict | None = None, timeout: float = 300):
    return subprocess.run([edge_tree_exe(), *map(str, args)], input=input, capture_output=True,
                          env=env if env is not None else os.environ.copy(), timeout=timeout)


def assert_one_line_error(proc, code: int, *needles: str) -> str:
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    assert proc.returncode == code, (proc.returncode, err)
    lines = err.rstrip("\n").split("\n")
    if lines[0].startswith("Usage:"):  # click's own usage error: Usage / Try / (blank) / Error
        assert code == 2 and lines[-1].startswith("Error:"), err
        message = lines[-1]
    else:
        assert len(lines) == 1, f"stderr is not one line: {err!r}"
        assert lines[0].startswith("edge-tree: error: "), err
        message = lines[0]
    for needle in needles:
        assert needle in message, (needle, message)
    return out
