"""The draft's KV cache types (--cache-type-k-draft / --cache-type-v-draft, llama-server's
options): q8_0 by default where the draft runs on the CPU and its heads hold whole q8_0 blocks,
f16 elsewhere; the text is the target's whatever the draft's cache holds."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from edge_tree import Engine
from edge_tree.core.models import draft_kv_types
from edge_tree.core.options import LoadOptions
from edge_tree.llamacpp import llama
from edge_tree.llamacpp.facts import kv_type_fits

from commands import assert_one_line_error, run
from tinymodels import write_tiny_model

THREADS = 1  # a shared 2-core machine: more llama.cpp threads only contend


@pytest.fixture(scope="module")
def wide_heads(tiny_models_dir):
    """A draft of the target's vocabulary whose attention heads are 32 wide (the target's are 16):
    whole q8_0 blocks."""
    return write_tiny_model(tiny_models_dir / "tiny-draft-wide-heads.gguf", seed=7, n_head=2, n_head_kv=1)


def test_auto_is_q8_0_for_a_draft_on_the_cpu_whose_heads_hold_whole_blocks(tiny_target, wide_heads,
                                                                           tiny_draft_other):
    with llama.Model(wide_heads) as wide, llama.Model(tiny_draft_other) as narrow:
        assert wide.head_widths == (32, 32) and narrow.head_widths == (16, 16)
        assert kv_type_fits("q8_0", wide.head_widths) and not kv_type_fits("q8_0", narrow.head_widths)
        assert kv_type_fits("f16", narrow.head_widths)
    for draft, expected in ((wide_heads, ["q8_0", "q8_0"]), (tiny_draft_other, ["f16", "f16"])):
        with Engine(str(tiny_target), str(draft), threads=THREADS, ctx_size=256) as engine:
            assert engine.models.model_state["draft_kv_types"] == expected


def test_a_draft_on_a_gpu_keeps_f16_unless_told_and_a_choice_is_kept():
    """Offloaded, the draft's backend may lack the flash attention a quantized V needs."""
    offloaded = SimpleNamespace(offloaded_layers=19, head_widths=(256, 256))
    on_cpu = SimpleNamespace(offloaded_layers=0, head_widths=(256, 256))
    assert draft_kv_types(LoadOptions(), offloaded) == ("f16", "f16")
    assert draft_kv_types(LoadOptions(), on_cpu) == ("q8_0", "q8_0")
    chosen = LoadOptions(cache_type_k_draft="q4_0", cache_type_v_draft="f32")
    assert draft_kv_types(chosen, offloaded) == draft_kv_types(chosen, on_cpu) == ("q4_0", "f32")
    assert draft_kv_types(LoadOptions(cache_type_v_draft="bf16"), on_cpu) == ("q8_0", "bf16")


@pytest.mark.parametrize("kv", ["f16", "q8_0", "q4_0"])
def test_the_text_is_the_targets_whatever_the_drafts_cache_holds(tiny_target, wide_heads, kv):
    with Engine(str(tiny_target), str(wide_heads), threads=THREADS, ctx_size=256, policy="fixed",
                cache_type_k_draft=kv, cache_type_v_draft=kv) as engine:
        assert engine.models.model_state["draft_kv_types"] == [kv, kv]
        for prompt in ("hello", "The cat sat on the"):
            tree = engine.generate(prompt, max_tokens=24, mode="tree")
            assert tree.stats["drafted"] > 0
            assert tree.tokens == engine.generate(prompt, max_tokens=24, mode="ar").tokens


def test_a_type_the_drafts_heads_cannot_hold_is_a_one_line_error(tiny_target, tiny_draft_other):
    proc = run("generate", "-m", tiny_target, "-md", tiny_draft_other, "-t", str(THREADS), "-n", "4",
               "-ctkd", "q8_0", "hi")
    assert assert_one_line_error(proc, 1, "tiny-draft-other.gguf", "does not divide") == ""
