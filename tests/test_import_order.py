"""llama.cpp's library loads before numpy, whoever starts the process; and where a user's program
imported numpy first on a CUDA build (a crash inside llama.cpp on an H200, docs/design.md, "llama.cpp mechanics"),
loading a model says so in one line instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Prints, in order, the loading of llama.cpp's library and the import of numpy.
WATCH = """
import sys
def hook(event, args):
    if event == "ctypes.dlopen" and "libllama" in str(args[0]):
        print("libllama", flush=True)
    elif event == "import" and args[0] == "numpy":
        print("numpy", flush=True)
sys.addaudithook(hook)
"""


def first_loaded(code: str, *args: str, env: dict | None = None) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", WATCH + code, *args], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line in ("libllama", "numpy")]


def test_importing_edge_tree_loads_llama_cpp_before_numpy():
    order = first_loaded("import edge_tree")
    assert order[:2] == ["libllama", "numpy"]


def test_the_cli_loads_llama_cpp_before_numpy():
    order = first_loaded("from edge_tree.cli import main; sys.argv = ['edge-tree', '--version']\n"
                         "try:\n    main()\nexcept SystemExit:\n    pass")
    assert order[:2] == ["libllama", "numpy"]


@pytest.fixture
def fake_cuda_build(tmp_path):
    """llama-cpp-python's own libraries, with a libggml-cuda beside them as a CUDA build has."""
    import llama_cpp

    lib = Path(llama_cpp.__file__).parent / "lib"
    for so in lib.iterdir():
        (tmp_path / so.name).symlink_to(so)
    (tmp_path / "libggml-cuda.so").write_bytes(b"")
    return {**os.environ, "LLAMA_CPP_LIB_PATH": str(tmp_path)}


def test_numpy_first_on_a_cuda_build_is_one_line_not_a_crash(fake_cuda_build, tiny_target):
    code = "import numpy\nfrom edge_tree.cli import main\nmain()"
    proc = subprocess.run([sys.executable, "-c", code, "generate", "-m", str(tiny_target), "-n", "2", "hi"],
                          capture_output=True, text=True, timeout=120, env=fake_cuda_build)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "import edge_tree (or llama_cpp) before numpy" in lines[0]


def test_edge_tree_first_on_a_cuda_build_loads(fake_cuda_build, tiny_target):
    code = "import edge_tree, numpy\nfrom edge_tree.cli import main\nmain()"
    proc = subprocess.run([sys.executable, "-c", code, "generate", "-m", str(tiny_target), "-n", "2", "hi"],
                          capture_output=True, text=True, timeout=120, env=fake_cuda_build)
    assert proc.returncode == 0, proc.stderr
