"""The draft decodes ahead while the target verifies elsewhere (model_drafter.ahead): the rows a
round takes from that are the draft's own logits for the context, and output stays the target's.

On one machine the engine never overlaps (the two would share the cores), so these tests turn
it on by hand and let the draft run its whole AHEAD_MAX steps: `always_busy` runs the draft's
work before the target's pass instead of beside it, which changes the timing and nothing else.
Over RPC hosts it is on by itself (tests/test_rpc.py).
"""

from collections import Counter

import numpy as np
import pytest

import edge_tree.core.target as target_module
from edge_tree.core.drafting import DraftRequest
from edge_tree.core.engine import Engine
from edge_tree.core.model_drafter import DraftModelDrafter
from edge_tree.core.plan import TreeShape
from edge_tree.core.sampling import SamplingParams
from edge_tree.core.verify import Verdict
from chisquare import SETTINGS, SIGNIFICANCE, p_value
from drafts import K, decoded, full_logits, propose
from neartie import PROMPTS, assert_same_or_near_tie

CHAIN = TreeShape(max_depth=3, max_nodes_per_level=2, max_total_nodes=6, branch=2, expand=1)


@pytest.fixture
def always_busy(monkeypatch):
    def draft_first(ctx, batch, meanwhile):
        meanwhile(lambda: True)
        ctx.decode(batch)
    monkeypatch.setattr(target_module, "decode_while_ahead", draft_first)


@pytest.fixture(scope="module")
def engine(tiny_target, tiny_draft_same, tmp_path_factory):
    """The target's own weights cut to K tokens as the draft: it agrees with the target where the
    target's choice is among them (often, not always), and its q differs from p when sampling."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("ahead-cache")))
    with Engine(str(tiny_target), str(tiny_draft_same), threads=1, ctx_size=256, draft_vocab=K,
                policy="fixed") as e:
        yield e
    mp.undo()


def drafted_ahead(engine: Engine, prompt: str):
    """A first round's tree proposed and, as if during its target pass, decoded ahead of."""
    drafter: DraftModelDrafter = engine.models.model_drafter
    tokens = engine.target_model.tokenize(prompt)
    drafter.start(tokens)
    request = DraftRequest(tokens, CHAIN, SamplingParams(), np.random.default_rng(0))
    tree = propose(drafter, request).tree
    drafter.ahead(tree, lambda: True)
    return drafter, request, tree


def test_a_round_that_takes_the_rows_decoded_ahead_sees_the_drafts_own_logits(engine, tiny_draft_same):
    drafter, request, tree = drafted_ahead(engine, "Once upon a time, there")
    tokens = request.tokens
    branches = drafter._ahead
    assert len(branches) == drafter.AHEAD_BRANCHES
    assert all(len(b.rows) == drafter.AHEAD_MAX for b in branches)
    # the target takes the whole walk, then the draft's second-likeliest bonus token
    walk = tree.first_choice_path()
    taken = branches[1]
    drafter.observe(tree, Verdict(walk, taken.choices[0], np.full(tree.n, np.nan)))
    context = tokens + [int(tree.token[n]) for n in walk] + [taken.choices[0]]
    proposal = propose(drafter, request.but(tokens=context))
    assert proposal.ready_rows == drafter.AHEAD_MAX and proposal.draft_sizes[:1] != (len(context),)
    for k in (0, 5, drafter.AHEAD_MAX - 1):  # the logits after the root and k further choices
        expected = full_logits(tiny_draft_same, context + taken.choices[1:k + 1])[drafter._index_ids]
        np.testing.assert_allclose(taken.rows[k], expected, atol=1e-3)
    # the target rejects that round's tree: the committed prefix alone must hold the context
    drafter.observe(proposal.tree, Verdict([], int(drafter.ids[5]), np.full(proposal.tree.n, np.nan)))
    context.append(int(drafter.ids[5]))
    drafter._note_context(context)
    (row,) = decoded(drafter, drafter._sync(context, []))
    # looser: the cache's cells now lie in another order, and llama.cpp's attention sums them in
    # that order over an F16 cache (measured 2.5e-3 here; a missing cell fails the decode itself)
    np.testing.assert_allclose(row, full_logits(tiny_draft_same, context)[drafter._index_ids], atol=1e-2)
    drafter.start([])


def test_rows_decoded_ahead_are_dropped_when_the_target_goes_elsewhere(engine):
    drafter, request, tree = drafted_ahead(engine, "hello world")
    tokens = request.tokens
    bonuses = {b.choices[0] for b in drafter._ahead}
    other = next(t for t in range(engine.target_model.n_vocab) if t not in bonuses)
    walk = tree.first_choice_path()
    drafter.observe(tree, Verdict(walk, other, np.full(tree.n, np.nan)))
    proposal = propose(drafter, request.but(tokens=tokens + [int(tree.token[n]) for n in walk] + [other]))
    assert proposal.ready_rows == 0 and proposal.draft_calls >= 1
    drafter.start([])


@pytest.mark.parametrize("mode", ["chain", "tree"])
def test_greedy_output_with_the_draft_working_ahead_is_the_targets(engine, always_busy, mode):
    engine.models.works_ahead = True
    try:
        ready = 0
        for prompt in PROMPTS:
            reference = engine.generate(prompt, max_tokens=32, mode="ar").tokens
            result = engine.generate(prompt, max_tokens=32, mode=mode, max_depth=2)
            assert_same_or_near_tie(engine, prompt, reference, result.tokens)
            assert result.stats["ahead_s"] > 0
            ready += result.stats["ready_rounds"]
        assert ready > 0
    finally:
        engine.models.works_ahead = False


def test_an_identical_draft_starts_every_round_after_the_first_from_its_rows(tiny_target, tiny_draft_same,
                                                                            always_busy):
    with Engine(str(tiny_target), str(tiny_draft_same), threads=1, ctx_size=256, policy="fixed") as e:
        e.models.works_ahead = True
        result = e.generate("The quick brown fox", max_tokens=40, mode="chain", max_depth=4)
        assert result.tokens == e.generate("The quick brown fox", max_tokens=40, mode="ar").tokens
    assert result.stats["ready_rounds"] == result.stats["rounds"] - 1
    assert result.stats["draft_calls"] < result.stats["rounds"]


def third_and_fourth_tokens(engine: Engine, mode: str, seed0: int, ready: list) -> Counter:
    """Depth-1 rounds: the tokens after the first round come from rounds that may start from
    rows decoded ahead (`ready` collects how many did)."""
    counts = Counter()
    for i in range(3000):
        result = engine.generate("The quick brown", max_tokens=4, mode=mode, seed=seed0 + i,
                                 max_depth=1, **SETTINGS)
        counts[tuple(result.tokens[2:4])] += 1
        ready.append(result.stats["ready_rounds"])
    return counts


def test_sampling_with_the_draft_working_ahead_keeps_the_target_distribution(engine, always_busy):
    ar_counts = third_and_fourth_tokens(engine, "ar", seed0=20_000, ready=[])
    engine.models.works_ahead, ready = True, []
    try:
        tree_counts = third_and_fourth_tokens(engine, "tree", seed0=60_000, ready=ready)
    finally:
        engine.models.works_ahead = False
    assert sum(ready) > 300 and len(ar_counts) > 5
    assert p_value(ar_counts, tree_counts) > SIGNIFICANCE


def test_the_draft_working_ahead_stays_within_the_context(engine, always_busy):
    """Up to the context's end: the draft's cache holds the tree's cells, the guess's and those
    decoded ahead; where they would not fit, it decodes fewer ahead, never a failing call."""
    prompt = "Once upon a time, there"
    reference = engine.generate(prompt, max_tokens=400, mode="ar", context_full="stop")
    engine.models.works_ahead = True
    try:
        result = engine.generate(prompt, max_tokens=400, mode="tree", context_full="stop")
    finally:
        engine.models.works_ahead = False
    assert reference.stop_reason == result.stop_reason == "context"
    assert_same_or_near_tie(engine, prompt, reference.tokens, result.tokens)
    assert result.stats["ready_rounds"] > 0
