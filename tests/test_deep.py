"""The deep copy (llamacpp/deep.py): `factor` times the blocks, the added ones contributing
nothing, so the same logits and greedy text as the source at several times the cost per call."""

import shutil
from collections import namedtuple

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from edge_tree import Engine
from edge_tree.cli import main
from edge_tree.errors import EdgeTreeError, UsageError
from edge_tree.llamacpp import deep, demo, llama
from edge_tree.llamacpp.modelfile import describe_gguf
from commands import assert_one_line_error, run
from tinymodels import write_tiny_gguf
from drafts import full_logits

PROMPTS = ("hello world", "the quick brown fox")


def block_count(path) -> int:
    return int(describe_gguf(path, keys=("llama.block_count",))["meta"]["llama.block_count"])


def greedy(path, prompt: str) -> list[int]:
    with Engine(str(path), threads=1, ctx_size=256) as engine:
        return engine.generate(prompt, max_tokens=16, mode="ar").tokens


@pytest.fixture(scope="module")
def tiny_deep(tiny_target, tmp_path_factory):
    return deep.make_deep(tiny_target, tmp_path_factory.mktemp("deep") / "tiny-deep4.gguf")


def test_the_deep_copy_has_four_times_the_blocks_the_added_ones_zero(tiny_target, tiny_deep):
    n_layer = block_count(tiny_target)
    assert block_count(tiny_deep) == 4 * n_layer
    source = {t.name: t for t in gguf.GGUFReader(tiny_target).tensors}
    copied = {t.name: t for t in gguf.GGUFReader(tiny_deep).tensors}
    assert set(source) < set(copied)
    for name, t in source.items():  # the real blocks (and the rest) are untouched
        np.testing.assert_array_equal(copied[name].data, t.data)
    for n in range(n_layer, 4 * n_layer):
        for name, t in source.items():
            if not name.startswith(f"blk.{n % n_layer}."):
                continue
            added = copied[name.replace(f"blk.{n % n_layer}.", f"blk.{n}.", 1)].data
            if name.endswith(deep.ZEROED):
                assert not added.any() and np.abs(t.data).max() > 0
            else:
                np.testing.assert_array_equal(added, t.data)


def test_the_deep_copy_gives_the_same_logits_and_greedy_tokens(tiny_target, tiny_deep):
    with llama.Model(tiny_target) as model:
        tokens = model.tokenize(PROMPTS[1])
    expected = full_logits(tiny_target, tokens)
    assert np.abs(expected).max() > 1  # logits that could differ
    np.testing.assert_allclose(full_logits(tiny_deep, tokens), expected, rtol=0, atol=1e-4)
    for prompt in PROMPTS:
        assert greedy(tiny_deep, prompt) == greedy(tiny_target, prompt)


def test_a_quantized_source_zeroes_as_well(tiny_target, tmp_path):
    # all-zero bytes are a zero tensor in quantized types too (their scales are zero)
    q4 = tmp_path / "tiny-q4_0.gguf"
    llama.quantize(tiny_target, q4, "Q4_0")
    deep2 = deep.make_deep(q4, tmp_path / "tiny-q4_0-deep2.gguf", factor=2)
    assert block_count(deep2) == 2 * block_count(q4)
    with llama.Model(q4) as model:
        tokens = model.tokenize(PROMPTS[0])
    np.testing.assert_allclose(full_logits(deep2, tokens), full_logits(q4, tokens), rtol=0, atol=1e-4)


def write_gguf_without_block_count(path):
    w = gguf.GGUFWriter(path, "llama")
    w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def bad_sources(bad_model_files, tmp_path) -> dict:
    """Source paths make_deep refuses, each with a fragment of its one-line error."""
    no_count, no_zeroed = tmp_path / "no-count.gguf", tmp_path / "no-ffn-down.gguf"
    write_gguf_without_block_count(no_count)
    write_tiny_gguf(no_zeroed)  # one block, holding only ffn_up.weight
    return {"not_gguf": bad_model_files["not_gguf"], "missing": bad_model_files["missing"],
            "cut": bad_model_files["cut"], "no_count": (no_count, "no llama.block_count"),
            "no_zeroed": (no_zeroed, "no blk.0.attn_output.weight")}


@pytest.mark.parametrize("which", ["not_gguf", "missing", "cut", "no_count", "no_zeroed"])
def test_a_file_it_cannot_deepen_is_a_one_line_error_and_no_file(which, bad_model_files, tmp_path):
    path, needle = bad_sources(bad_model_files, tmp_path)[which]
    out = tmp_path / "out" / "deep.gguf"
    out.parent.mkdir()
    with pytest.raises(EdgeTreeError) as err:
        deep.make_deep(path, out)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert list(out.parent.iterdir()) == []


def test_a_factor_below_two_is_a_usage_error(tiny_target, tmp_path):
    with pytest.raises(UsageError, match="--factor"):
        deep.make_deep(tiny_target, tmp_path / "deep.gguf", factor=1)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_halfway_leaves_no_file(tiny_target, tmp_path, monkeypatch):
    written = []
    write = gguf.GGUFWriter.write_tensor_data

    def write_then_fail(self, tensor, **kw):
        if len(written) == 10:
            raise OSError(28, "No space left on device")
        written.append(tensor.nbytes)
        write(self, tensor, **kw)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", write_then_fail)
    with pytest.raises(EdgeTreeError, match="cannot write the deep model .*: No space left on device"):
        deep.make_deep(tiny_target, tmp_path / "deep.gguf")
    assert len(written) == 10  # it failed halfway, after some data was written
    assert list(tmp_path.iterdir()) == []


def test_too_little_disk_space_is_said_before_writing(tiny_target, tmp_path, monkeypatch):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: Usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(EdgeTreeError, match=r"not enough disk space for deep.gguf: it needs [\d.]+ GB, "):
        deep.make_deep(tiny_target, tmp_path / "deep.gguf")
    assert list(tmp_path.iterdir()) == []


def test_cli_make_deep_writes_the_copy(tiny_target, tmp_path):
    out = tmp_path / "deep3.gguf"
    proc = run("models", "make-deep", tiny_target, "-o", out, "--factor", "3")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == str(out)
    assert block_count(out) == 3 * block_count(tiny_target)


def test_cli_make_deep_errors_are_one_line(bad_model_files, tiny_target, tmp_path):
    path, needle = bad_model_files["not_gguf"]
    assert_one_line_error(run("models", "make-deep", path, "-o", tmp_path / "a.gguf"), 1, needle)
    assert_one_line_error(run("models", "make-deep", tiny_target, "-o", tmp_path / "b.gguf",
                              "--factor", "1"), 2, "--factor")
    assert list(tmp_path.iterdir()) == []


# -- the demo target's deep copy -----------------------------------------------------------------

def test_the_demo_deep_target_lives_in_the_demo_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert demo.deep_target_path() == tmp_path / "edge-tree" / "demo" / "gemma-3-270m-f32-deep4.gguf"
    assert demo.deep_target_path(2).name == "gemma-3-270m-f32-deep2.gguf"


def test_ensure_deep_target_builds_only_what_is_missing(stub_demo_pair, monkeypatch):
    pair = stub_demo_pair
    built = []
    monkeypatch.setattr(demo, "make_deep", lambda src, dst, factor, progress: built.append((src, dst)))
    assert demo.ensure_deep_target(progress=False) == demo.deep_target_path()
    assert built == [(pair.target, demo.deep_target_path())]
    demo.deep_target_path().write_bytes(b"GGUF")
    demo.ensure_deep_target(progress=False)
    assert len(built) == 1  # present: not built again


@pytest.mark.demo
def test_the_demo_deep_target_writes_the_f32_targets_text(demo_pair):
    deep_target = demo.ensure_deep_target(progress=True)
    info = describe_gguf(deep_target, keys=("gemma3.block_count",))
    assert info["meta"]["gemma3.block_count"] == 4 * 18
    for prompt in ("The capital of France is", "def fibonacci(n):"):
        tokens = {}
        for path in (demo_pair.target, deep_target):
            with Engine(str(path), threads=2, ctx_size=256) as engine:
                tokens[path] = engine.generate(prompt, max_tokens=16, mode="ar").tokens
        assert len(tokens[deep_target]) == 16
        assert tokens[deep_target] == tokens[demo_pair.target], prompt


@pytest.mark.demo
def test_cli_prepare_deep_names_the_deep_target_and_list_shows_it(demo_pair):
    deep_target = demo.ensure_deep_target(progress=True)  # built once: prepare only checks it
    prepared = CliRunner().invoke(main, ["models", "prepare", "--deep"], catch_exceptions=False)
    assert prepared.exit_code == 0, prepared.stderr
    assert f"deep target   {deep_target}" in prepared.stdout.splitlines()
    listed = CliRunner().invoke(main, ["models", "list"], catch_exceptions=False)
    assert any(line.endswith(str(deep_target)) and " F32 " in line for line in listed.stdout.splitlines())
