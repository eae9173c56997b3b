"""The draft's KV cache types (--cache-type-k-draft / --cache-type-v-draft, llama-server's
options; f16 by default, as there): the text is the target's whatever the draft's cache holds."""

from __future__ import annotations

import pytest

from edge_tree import Engine
from edge_tree.core.options import DRAFT_CACHE_TYPES
from edge_tree.llamacpp.facts import KV_TYPES

from commands import assert_one_line_error, invoke, run
from tinymodels import write_tiny_model

THREADS = 1  # a shared 2-core machine: more llama.cpp threads only contend


@pytest.fixture(scope="module")
def wide_heads(tiny_models_dir):
    """A draft of the target's vocabulary whose attention heads are 32 wide (the target's are 16):
    whole blocks of llama.cpp's quantized cache types."""
    return write_tiny_model(tiny_models_dir / "tiny-draft-wide-heads.gguf", seed=7, n_head=2, n_head_kv=1)


def test_the_options_offer_the_types_the_wrapper_knows():
    assert set(DRAFT_CACHE_TYPES) == set(KV_TYPES)


@pytest.mark.parametrize("k, v", [("f16", "f16"), ("f16", "q8_0"), ("q8_0", "q8_0"), ("q4_0", "bf16")])
def test_the_text_is_the_targets_whatever_the_drafts_cache_holds(tiny_target, wide_heads, k, v):
    options = {"cache_type_k_draft": k, "cache_type_v_draft": v} if (k, v) != ("f16", "f16") else {}
    with Engine(str(tiny_target), str(wide_heads), threads=THREADS, ctx_size=256, policy="fixed",
                **options) as engine:
        assert engine.models.model_state["draft_kv_types"] == [k, v]
        for prompt in ("hello", "The cat sat on the"):
            tree = engine.generate(prompt, max_tokens=24, mode="tree")
            assert tree.stats["drafted"] > 0
            assert tree.tokens == engine.generate(prompt, max_tokens=24, mode="ar").tokens


def test_a_type_the_drafts_heads_cannot_hold_is_a_one_line_error(tiny_target, tiny_draft_other):
    proc = run("generate", "-m", tiny_target, "-md", tiny_draft_other, "-t", str(THREADS), "-n", "4",
               "-ctkd", "q8_0", "hi")
    assert assert_one_line_error(proc, 1, "tiny-draft-other.gguf", "does not divide") == ""


@pytest.mark.parametrize("command", ["generate", "bench"])
def test_an_unknown_type_is_a_usage_error_in_every_command(tiny_target, tiny_draft_other, command):
    r = invoke(command, "-m", str(tiny_target), "-md", str(tiny_draft_other), "-ctvd", "q4", "-n", "4",
               *(["hi"] if command == "generate" else []))
    assert r.exit_code == 2 and r.stderr.startswith("edge-tree: error: --cache-type-v-draft: must be one of")
