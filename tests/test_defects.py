"""The defects a read of the whole package found (issue 11), each with the test that failed
before its fix."""

from __future__ import annotations

import time

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_tree.core import sampling
from edge_tree.core.costs import CostModel
from edge_tree.core.engine import Engine
from edge_tree.core.model_drafter import DraftModelDrafter
from edge_tree.core.options import GenOptions, LoadOptions
from edge_tree.core.policy import AdaptivePolicy
from edge_tree.core.sampling import SamplingParams, distribution
from edge_tree.errors import UsageError
from edge_tree.llamacpp import draft_vocab, llama
from edge_tree.llamacpp.logs import logs_shown
from edge_tree.llamacpp.share import Share

REPEATING = "one two three four five six seven eight nine ten one two three four five six seven eight"


# -- --max-depth and --max-total-nodes are hard caps, prompt-lookup guesses included --------------

@pytest.mark.parametrize("policy", ["fixed", "adaptive"])
def test_guesses_never_exceed_the_depth_and_node_caps(tiny_target, tiny_draft_same, policy):
    with Engine(str(tiny_target), str(tiny_draft_same), threads=1, ctx_size=512, policy=policy) as engine:
        if policy == "adaptive":  # costs under which plain decoding with guesses pays, whatever
            # this machine measures for the tiny models: a dear draft, nearly free verify slots
            engine.models.lanes[0].policy = AdaptivePolicy(CostModel({1: 0.010, 64: 0.011}, {1: 0.05, 16: 0.06}))
        # the fixed plan drafts at most 2 nodes a level: 4 in 2 levels, leaving room for guesses
        for depth, nodes in ((2, 20), (3, 7)):
            result = engine.generate(REPEATING, max_tokens=40, mode="tree", max_depth=depth,
                                     max_total_nodes=nodes, record_steps=True)
            guessed = [s for s in result.steps if "ngram" in s.nodes.source]
            assert guessed, "the repeating prompt should make prompt lookup guess"
            for step in result.steps:
                assert step.n - 2 <= nodes  # root and bonus aside
                assert max(step.nodes.depth[:-1]) <= depth  # the bonus sits below the last accepted node


# -- timers: verify time is the target's pass; the draft reads the prompt in the prompt phase -----

def test_learning_is_not_counted_as_verify_time(tiny_target, tiny_draft_other, monkeypatch):
    with Engine(str(tiny_target), str(tiny_draft_other), threads=1, ctx_size=512, policy="fixed") as engine:
        drafter = engine.models.model_drafter
        observe = drafter.observe

        def slow_observe(tree, verdict):
            time.sleep(0.02)
            observe(tree, verdict)

        monkeypatch.setattr(drafter, "observe", slow_observe)
        result = engine.generate("hello world", max_tokens=12, mode="chain", max_depth=3)
    stats = result.stats
    assert stats["rounds"] >= 3
    assert stats["verify_s"] < 0.02 * stats["rounds"] / 2  # the sleeps are not in it


def test_the_draft_reads_the_prompt_before_the_first_round(tiny_target, tiny_draft_other):
    prompt = "a long prompt " * 30
    with Engine(str(tiny_target), str(tiny_draft_other), threads=1, ctx_size=512, policy="fixed") as engine:
        sizes = []
        engine.models.model_drafter.proposing = _recording(engine.models.model_drafter.proposing, sizes)
        engine.generate(prompt, max_tokens=4, mode="chain", max_depth=2)
    assert sizes and sizes[0][0] == 1  # the first round's first draft call feeds the root alone


def _recording(proposing, sizes):
    def wrapped(request):
        proposal = yield from proposing(request)
        sizes.append(proposal.draft_sizes)
        return proposal
    return wrapped


# -- one default for the draft's children, checked everywhere ------------------------------------

def test_the_drafter_has_no_default_of_its_own_and_engines_check_children(tiny_target, tiny_draft_other):
    with llama.Model(tiny_draft_other) as model, llama.Context(model, 64, 4, threads=1) as ctx:
        with pytest.raises(TypeError):
            DraftModelDrafter(Share(ctx))  # the one default lives in LoadOptions
    with pytest.raises(UsageError, match="--draft-children"):
        Engine(str(tiny_target), str(tiny_draft_other), draft_children="best")
    from edge_tree.cli import generate

    flag = next(p for p in generate.params if p.name == "draft_children")
    assert flag.default == LoadOptions().draft_children == "sampled"


# -- a reduced draft that fails to write leaves nothing behind -----------------------------------

def test_writing_a_reduced_draft_that_fails_leaves_no_file(tiny_draft_other, tmp_path, monkeypatch):
    import gguf

    def broken(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", broken)
    with pytest.raises(Exception, match="No space left"):
        draft_vocab.write_reduced(tiny_draft_other, tmp_path / "reduced.gguf", np.arange(64), 0.9)
    assert list(tmp_path.iterdir()) == []


# -- top-k 0 never sorts the whole vocabulary -------------------------------------------------------

def reference_distribution(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The filters as llama.cpp states them: sort everything, cut, temper."""
    keep = np.argsort(-logits.astype(np.float64), kind="stable")
    if 0 < params.top_k < logits.size:
        keep = keep[:params.top_k]
    kept = logits[keep].astype(np.float64)
    probs = np.exp(kept - kept[0])
    probs /= probs.sum()
    n = probs.size
    if params.top_p < 1.0:
        n = min(n, int(np.searchsorted(np.cumsum(probs), params.top_p)) + 1)
    if params.min_p > 0.0:
        n = min(n, max(1, int(np.count_nonzero(probs[:n] >= params.min_p * probs[0]))))
    scaled = np.exp((kept[:n] - kept[0]) / (params.temperature or 1.0))
    dense = np.zeros(logits.size)
    dense[keep[:n]] = scaled / scaled.sum()
    return dense


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 5, 40]), st.sampled_from([1.0, 0.95, 0.5, 0.01]),
       st.sampled_from([0.0, 0.05, 0.5]), st.sampled_from([0.3, 1.0, 2.0]))
def test_distribution_equals_the_sort_everything_definition(seed, top_k, top_p, min_p, temperature):
    logits = (np.random.default_rng(seed).normal(0, 3, 1000)).astype(np.float32)
    params = SamplingParams(temperature, top_k, top_p, min_p)
    np.testing.assert_allclose(distribution(logits, params), reference_distribution(logits, params),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("top_p,min_p", [(1.0, 0.0), (0.9, 0.0), (1.0, 0.05), (0.95, 0.05)])
def test_top_k_0_never_sorts_the_vocabulary(monkeypatch, top_p, min_p):
    sorted_sizes = []
    for name in ("argsort", "lexsort", "sort"):
        real = getattr(np, name)

        def spy(a, *args, _real=real, **kwargs):
            sorted_sizes.append(np.asarray(a).shape[-1])
            return _real(a, *args, **kwargs)

        monkeypatch.setattr(sampling.np, name, spy)
    vocab = 262_144
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, vocab).astype(np.float32)  # a language model's: a few likely tokens
    logits[rng.choice(vocab, 30, replace=False)] += 14 + rng.normal(0, 2, 30).astype(np.float32)
    q = distribution(logits, SamplingParams(0.8, 0, top_p, min_p))
    assert q.sum() == pytest.approx(1.0)
    assert max(sorted_sizes, default=0) < vocab // 100


# -- one engine's --verbose is not another's -----------------------------------------------------

def test_a_second_engine_does_not_turn_the_first_ones_logs_off(tiny_target):
    with Engine(str(tiny_target), threads=1, ctx_size=64, verbose=True):
        assert logs_shown()
        with Engine(str(tiny_target), threads=1, ctx_size=64, verbose=False):
            assert logs_shown()  # the first engine still wants them
        assert logs_shown()
    assert not logs_shown()


def test_a_failed_load_says_why_even_while_another_engine_runs(tiny_target, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(tiny_target.read_bytes()[:200] + b"\0" * 64)
    with Engine(str(tiny_target), threads=1, ctx_size=64):
        with pytest.raises(Exception) as info:
            llama.Model(bad)
    assert "could not load" in str(info.value)


# -- options: one definition, the same message from every face ------------------------------------

@pytest.mark.parametrize("flags,kwargs", [
    (["-n", "0"], {"max_tokens": 0}),
    (["--top-p", "0"], {"top_p": 0.0}),
    (["--mode", "sideways"], {"mode": "sideways"}),
    (["--max-total-nodes", "1000"], {"max_total_nodes": 1000}),
])
def test_a_bad_value_gets_the_same_message_from_the_cli_and_the_api(tiny_target, flags, kwargs):
    result = CliRunner().invoke(__import__("edge_tree.cli", fromlist=["main"]).main,
                                ["generate", "-m", str(tiny_target), *flags, "hi"])
    assert result.exit_code == 2
    with pytest.raises(UsageError) as info:
        GenOptions(**kwargs)
    assert f"edge-tree: error: {info.value}" in result.output
    with Engine(str(tiny_target), threads=1, ctx_size=64) as engine, pytest.raises(UsageError) as again:
        engine.generate("hi", **kwargs)
    assert str(again.value) == str(info.value)


def test_options_say_which_field_is_wrong():
    with pytest.raises(UsageError) as info:
        GenOptions.from_mapping({"max_tokens": "many"})
    assert info.value.field == "max_tokens" and "integer" in str(info.value)
    with pytest.raises(UsageError) as info:
        GenOptions.from_mapping({"temprature": 0.5})
    assert info.value.field == "temprature" and "unknown" in str(info.value)
