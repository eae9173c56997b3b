"""Tree speculative decoding on tiny models: greedy output is the target's own, and the caches
hold exactly the accepted tokens after every round."""

import numpy as np
import pytest

from edge_tree.llamacpp import llama
from edge_tree.core.engine import Engine

from neartie import PROMPTS, assert_same_or_near_tie

SHAPES = [
    dict(mode="chain", max_depth=1),
    dict(mode="chain", max_depth=5),
    dict(mode="tree"),
    dict(mode="tree", max_depth=4, max_nodes_per_level=6, max_total_nodes=20),
    dict(mode="tree", max_depth=6, max_nodes_per_level=24, max_total_nodes=96),
]
@pytest.fixture(scope="module")
def same_engine(tiny_target, tiny_draft_same):
    """The draft is the target: everything should be accepted."""
    with Engine(str(tiny_target), str(tiny_draft_same), threads=1, ctx_size=512, policy="fixed") as e:
        yield e


@pytest.fixture(scope="module")
def other_engine(tiny_target, tiny_draft_other):
    """An unrelated draft: nearly everything is rejected."""
    with Engine(str(tiny_target), str(tiny_draft_other), threads=1, ctx_size=512, policy="fixed") as e:
        yield e


@pytest.fixture(params=["same_engine", "other_engine"])
def engine(request):
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_greedy_tree_equals_plain_decoding(engine, shape):
    for prompt in PROMPTS:
        reference = engine.generate(prompt, max_tokens=24, mode="ar").tokens
        got = engine.generate(prompt, max_tokens=24, **shape)
        assert len(got.tokens) == len(reference)
        assert_same_or_near_tie(engine, prompt, reference, got.tokens)
        assert got.stats["target_passes"] == got.stats["rounds"]
        assert got.stats["drafted"] > 0  # trees were drafted and verified: the test is not vacuous


def test_draft_equal_to_target_is_accepted_almost_always(same_engine):
    result = same_engine.generate("The quick brown fox", max_tokens=48, mode="chain", max_depth=6)
    assert result.stats["acceptance_rate"] > 0.9
    assert result.stats["target_passes_per_token"] < 0.25


def test_unrelated_draft_mostly_rejected_yet_output_unchanged(other_engine):
    result = other_engine.generate("The quick brown fox", max_tokens=48, mode="tree")
    assert result.stats["acceptance_rate"] < 0.5
    reference = other_engine.generate("The quick brown fox", max_tokens=48, mode="ar").tokens
    assert_same_or_near_tie(other_engine, "The quick brown fox", reference, result.tokens)


def test_caches_hold_exactly_the_accepted_tokens_after_every_round(engine):
    prompt = "Once upon a time, there"
    committed = engine.target_model.tokenize(prompt)
    checks = []

    def after_round(record):
        committed.extend(record.nodes.token[i] for i in record.accepted)
        committed.append(record.nodes.token[record.bonus])
        ctx = engine.target_ctx
        n_cached = len(committed) - 1  # the bonus token is the next root, not yet in the cache
        checks.append((ctx.seq_pos_max(0), n_cached - 1))
        checks.append((max(ctx.seq_pos_max(s) for s in range(1, 8)), -1))
        drafter = engine.models.model_drafter
        checks.append((drafter.ctx.seq_pos_max(0), drafter.n_cached - 1))
        checks.append((max(drafter.ctx.seq_pos_max(s) for s in range(1, 8)), -1))
        # the cache must act as a fresh context fed the same tokens: compare next-token logits
        with llama.Batch(4, 1) as batch:
            batch.add(committed[-1], n_cached, (0,), True)
            ctx.decode(batch)
            cached = np.array(ctx.logits(0))
        ctx.seq_rm(0, n_cached, -1)
        checks.append(("logits", cached, list(committed)))

    engine.generate(prompt, max_tokens=20, mode="tree", max_depth=4, max_nodes_per_level=6,
                    on_step=after_round)
    assert len(checks) >= 5 * 3
    with llama.Context(engine.target_model, 512, 1, threads=1) as fresh, llama.Batch(512, 1) as batch:
        for check in checks:
            if check[0] == "logits":
                _, cached, tokens = check
                fresh.clear()
                expected = np.array(fresh.logits(fresh.feed(batch, tokens, 0)))
                # The KV cache is F16 and its cells came from other batches: last-bit noise up to
                # ~5e-3 (measured). A leaked or missing cell moves logits far more: the control.
                np.testing.assert_allclose(cached, expected, atol=2e-2)
                fresh.clear()
                one_cell_missing = np.array(fresh.logits(fresh.feed(batch, tokens[:-2] + tokens[-1:], 0)))
                assert np.abs(cached - one_cell_missing).max() > 0.1
            else:
                assert check[0] == check[1]


def test_lookup_mode_needs_no_draft_and_is_plain_decoding(tiny_target):
    prompt = "one two three four one two three four one two three"
    with Engine(str(tiny_target), threads=1, ctx_size=512) as engine:  # no draft model
        reference = engine.generate(prompt, max_tokens=32, mode="ar").tokens
        got = engine.generate(prompt, max_tokens=32, mode="lookup")
    assert_same_or_near_tie(engine, prompt, reference, got.tokens)
    assert got.stats["drafted"] > 0 and got.stats["draft_calls"] == 0  # guesses, no draft model
