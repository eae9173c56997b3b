"""The files edge-tree derives into its cache (edge_tree/derived.py): recorded, listed, pruned,
made again under a new version, and nothing written outside the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_tree import derived
from edge_tree.cli import main
from edge_tree.core.engine import Engine
from edge_tree.errors import EdgeTreeError
from edge_tree.files import cache_dir
from edge_tree.llamacpp import demo

K = 96  # of the tiny models' 512 tokens


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return cache_dir()


def write(path, size: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    return path


def test_models_list_shows_each_derived_file_with_its_size_and_origin(cache):
    made = write(cache / "demo" / "made.gguf", 3 * 2**20)
    derived.record(made, "/models/source.gguf")
    write(cache / "draft-vocab" / "old.gguf", 2**20)  # left by a version that kept no record
    out = CliRunner().invoke(main, ["models", "list"]).output
    assert f"derived files in {cache} (4.0 MiB" in out
    assert "3.0 MiB" in out and "from /models/source.gguf" in out
    assert "origin not recorded" in out and "made by an older version" in out


def test_prune_removes_what_was_not_used_lately_then_everything(cache):
    fresh = write(cache / "demo" / "fresh.gguf", 2**20)
    stale = write(cache / "draft-vocab" / "stale.gguf", 2 * 2**20)
    derived.record(fresh, "a")
    derived.record(stale, "b")
    records = json.loads((cache / derived.MANIFEST).read_text())
    records["draft-vocab/stale.gguf"]["used"] = time.time() - 10 * derived.DAY
    (cache / derived.MANIFEST).write_text(json.dumps(records))
    result = CliRunner().invoke(main, ["models", "prune", "--unused-days", "5"])
    assert result.exit_code == 0 and result.output == "removed 1 files, freed 2.0 MiB\n"
    assert fresh.exists() and not stale.exists()
    derived.mark_used(fresh)
    result = CliRunner().invoke(main, ["models", "prune"])
    assert result.output == "removed 1 files, freed 1.0 MiB\n" and not fresh.exists()
    assert json.loads((cache / derived.MANIFEST).read_text()) == {}
    result = CliRunner().invoke(main, ["models", "prune", "--unused-days", "-1"])
    assert result.exit_code == 2 and "--unused-days" in result.output


def test_a_reduced_draft_another_version_made_is_made_again(cache, monkeypatch, tiny_target,
                                                             tiny_draft_other):
    with Engine(str(tiny_target), str(tiny_draft_other), threads=1, ctx_size=64, draft_vocab=K) as e:
        first = e.draft_model.path
    assert derived.is_current(first)
    monkeypatch.setattr(derived, "FORMAT", derived.FORMAT + 1)
    assert not derived.is_current(first)
    with Engine(str(tiny_target), str(tiny_draft_other), threads=1, ctx_size=64, draft_vocab=K) as e:
        second = e.draft_model.path
    assert second != first and derived.is_current(second)
    rows = {row["path"]: row for row in derived.listing()}
    assert not rows[str(first)]["current"] and rows[str(second)]["from"] == str(tiny_draft_other.resolve())


def test_a_demo_file_another_version_made_is_rebuilt_not_reused(stub_demo_pair, monkeypatch):
    assert demo.ensure_demo(progress=False) == stub_demo_pair  # recorded by this version: reused
    monkeypatch.setattr(derived, "FORMAT", derived.FORMAT + 1)
    with pytest.raises(EdgeTreeError, match="demo model is not installed"):  # it tries to rebuild
        demo.ensure_demo(progress=False)


def test_a_demo_generation_writes_nothing_outside_the_cache(demo_pair, tmp_path):
    """Calibration and the derived draft included: the demo files are linked into a fresh cache,
    HOME and the working folder are empty folders, and after a generation only the cache holds
    anything new."""
    cache, home, work = tmp_path / "cache", tmp_path / "home", tmp_path / "work"
    for folder in (home, work):
        folder.mkdir()
    (cache / "edge-tree" / "demo").mkdir(parents=True)
    env = dict(os.environ, XDG_CACHE_HOME=str(cache), HOME=str(home))
    for path in demo_pair.files():
        os.link(path, cache / "edge-tree" / "demo" / path.name)
    script = ("import sys; from edge_tree import derived; from pathlib import Path; "
              "[derived.record(Path(p), 'the suite') for p in sys.argv[1:]]")
    subprocess.run([sys.executable, "-c", script,
                    *(str(cache / "edge-tree" / "demo" / p.name) for p in demo_pair.files())],
                   env=env, check=True, cwd=work)
    edge_tree = str(Path(sys.executable).parent / "edge-tree")  # the venv's console script
    proc = subprocess.run([edge_tree, "generate", "-n", "8", "-t", "1", "Hello"], env=env, cwd=work,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert list(home.iterdir()) == [] and list(work.iterdir()) == []
    made = {p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()}
    assert "edge-tree/calibration.json" in made
    assert any(name.startswith("edge-tree/draft-vocab/") for name in made)
