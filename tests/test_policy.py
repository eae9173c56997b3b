"""The adaptive policy on simulated cost curves: wide trees where verifying is cheap, narrow where
it is not, never worse (in its own model) than the best fixed chain, always inside the caps."""

import itertools
from dataclasses import replace

import numpy as np
import pytest

from edge_tree.core.costs import LEARNING_RATE, CostModel
from edge_tree.core.policy import (AdaptivePolicy, Caps, ProbCalibration, RankAcceptance, Taught, best_shape,
                                   chain_shape, grow_levels, round_rate, shape_rate, shape_share)
from edge_tree.core.plan import Backlog, Beside, RoundOutcome, TreeShape
from edge_tree.core.tree import TokenTree
from edge_tree.core.verify import Verdict

from costs import CPU

# A GPU with a big target: one pass costs about the same for 1 or 64 tokens.
GPU = CostModel({1: .020, 8: .0204, 64: .0225, 256: .030}, {1: .004, 16: .0044, 64: .005})
# Where the target's token sits in the draft's ranking (docs/design.md, "Measured costs").
DRAFT_A = np.array([0.977, 0.018, 0.006, 0, 0, 0, 0, 0]) + 1e-4
DRAFT_B = np.array([0.85, 0.074, 0.027, 0.01, 0.012, 0.005, 0.003, 0.002])


@pytest.mark.parametrize("pi", [DRAFT_A, DRAFT_B], ids=["draft A", "draft B"])
def test_gpu_like_costs_grow_wide_trees_cpu_like_costs_narrow_ones(pi):
    gpu, cpu = best_shape(Caps(), pi, GPU), best_shape(Caps(), pi, CPU)
    assert cpu.expand == 1 and cpu.max_nodes_per_level <= 2
    assert gpu.max_total_nodes >= 3 * cpu.max_total_nodes
    assert gpu.max_nodes_per_level > cpu.max_nodes_per_level
    if pi is DRAFT_B:  # uncertain drafts: siblings and several expanded branches pay on a GPU
        assert gpu.branch >= 2 and gpu.expand >= 2


@pytest.mark.parametrize("cost", [CPU, GPU], ids=["cpu", "gpu"])
@pytest.mark.parametrize("pi", [DRAFT_A, DRAFT_B], ids=["draft A", "draft B"])
def test_chosen_shape_is_never_worse_than_any_fixed_chain(cost, pi):
    chosen = shape_rate(best_shape(Caps(), pi, cost), pi, cost)
    for depth in range(1, 17):
        assert chosen >= shape_rate(chain_shape(Caps(max_depth=depth)), pi, cost) - 1e-9


def test_user_caps_bound_the_search():
    caps = Caps(max_depth=3, max_nodes_per_level=2, max_total_nodes=5)
    shape = best_shape(caps, DRAFT_B, GPU)
    assert shape.max_depth <= 3 and shape.max_nodes_per_level <= 2 and shape.max_total_nodes <= 5


def test_cost_model_interpolates_and_extends_the_last_slope():
    cost = CostModel({1: 1.0, 3: 2.0}, {1: 1.0})
    assert cost.verify_s(2) == pytest.approx(1.5)
    assert cost.verify_s(5) == pytest.approx(3.0)


def chain_round(rank_of_match: int | None) -> tuple[TokenTree, Verdict]:
    """A root with four children (ranks 0..3); the target picks the given rank, or none."""
    tree = TokenTree(capacity=4, root_token=0)
    kids = [tree.add(10 + r, 0, np.log(0.3), r) for r in range(4)]
    accepted = [] if rank_of_match is None else [kids[rank_of_match]]
    return tree, Verdict(accepted, 99, np.full(tree.n, np.nan))


def outcome(tree: TokenTree, verdict: Verdict, cost: CostModel = CPU, draft_factor: float = 1.0,
            host_s: float = 0.0) -> RoundOutcome:
    """A round of the draft model (one call over one token) that cost what `cost` predicts, the
    draft's decode draft_factor times that, plus host_s of host work."""
    target_s = cost.verify_s(tree.n)
    draft_s = draft_factor * cost.draft_s(1)
    return RoundOutcome(tree, verdict, TreeShape(), draft_sizes=(1,), draft_s=draft_s, verify_s=target_s,
                        round_s=target_s + draft_s + host_s + cost.host_per_node * (1 + tree.n_drafted),
                        decode=(target_s, draft_s))


def plain_round(cost: CostModel = CPU, target_s: float | None = None, host_s: float = 0.0) -> RoundOutcome:
    """A round of plain decoding (the root alone) whose target pass took target_s (what `cost`
    predicts unless given), plus host_s of host work."""
    target_s = cost.verify_s(1) if target_s is None else target_s
    return RoundOutcome(TokenTree(0, 1), Verdict([], 2, np.full(1, np.nan)), TreeShape(), (), 0.0,
                        target_s, target_s + host_s, (target_s, 0.0))


def test_rank_acceptance_learns_which_sibling_the_target_takes():
    learned = RankAcceptance()
    for _ in range(200):
        learned.observe(*chain_round(1))
    pi = learned.pi()
    assert pi[1] > 0.9 and pi[0] < 0.05
    misses = RankAcceptance()
    for _ in range(200):
        misses.observe(*chain_round(None))
    assert misses.pi()[:3].sum() < 0.05


def confident_chain(depth: int, taken: int) -> tuple[TokenTree, Verdict]:
    """A chain of `depth` tokens the draft gives 0.95 each; the target takes the first `taken`."""
    tree = TokenTree(capacity=depth, root_token=0)
    for d in range(depth):
        tree.add(10 + d, d, np.log(0.95), 0)
    return tree, Verdict(list(range(1, taken + 1)), 99, np.full(tree.n, np.nan))


def test_the_confidence_table_comes_down_within_rounds_when_the_text_changes():
    """Hundreds of rounds where the draft's confident tokens were all taken, then text where the
    target leaves them every few tokens: within ten rounds the table's top bin says so (the reach
    the drafter grows branches by multiplies it level after level)."""
    table = ProbCalibration()
    for _ in range(300):
        table.observe(*confident_chain(10, 10))
    assert table.table()[-1] > 0.99
    for _ in range(10):
        table.observe(*confident_chain(10, 3))  # 3 taken, the 4th left: 3 in 4
    assert table.table()[-1] < 0.9
    assert table.table()[-1] ** 10 < 0.4  # a chain of ten such tokens no longer looks likely


def test_adaptive_policy_replans_as_acceptance_changes():
    policy = AdaptivePolicy(replace(GPU))
    first = policy.plan("tree", Caps())
    for _ in range(3 * AdaptivePolicy.REPLAN_EVERY):
        policy.observe(outcome(*chain_round(2), GPU))  # the target takes the draft's third choice
    later = policy.plan("tree", Caps())
    # children drafted at q = 0.3 (bin 3: [0.3, 0.4)) are now expected to be taken one time in
    # three, and the third sibling is worth its slot
    assert later.use_model and later.branch >= 3
    assert later.accept_table[3] < first.accept_table[3]
    assert policy.plan("chain", Caps(max_depth=5)).max_depth == 5


def test_a_draft_that_is_never_right_gives_way_to_plain_decoding():
    policy = AdaptivePolicy(replace(GPU))
    assert policy.plan("tree", Caps()).use_model
    for _ in range(100):
        policy.observe(outcome(*chain_round(None), GPU))
    later = policy.plan("tree", Caps())
    assert not later.use_model and later.max_total_nodes == 0


# An H200 as measured (docs/design.md, "Measured costs"): a small model's decode is paid per layer, not per
# byte, so the demo draft (the target's 18 layers) costs what the target costs; our plain decoding
# ran at 1.71 ms a token (0.5 ms of it host work), our chain of 8 at 333 tok/s with 97% accepted:
# ~24.6 ms for a round of ~8.2 tokens, of which 8 draft calls + one verify explain ~12.3 ms, so
# each draft call costs ~1.5 ms of host work (a full-vocabulary logits copy and scan).
GPU_H200 = {1: .00120, 2: .00139, 4: .00196, 8: .00216, 16: .00233, 32: .00248, 64: .00308}


def test_a_draft_as_costly_as_the_target_means_plain_decoding_with_guesses():
    cost = CostModel(GPU_H200, GPU_H200, host_per_round=0.0005, host_per_call=0.0015)
    for pi in (DRAFT_A, DRAFT_B):
        policy = AdaptivePolicy(replace(cost))
        policy.acceptance.pi = lambda: pi  # as if learned: the demo drafts' measured ranks
        plan = policy.plan("tree", Caps())
        assert not plan.use_model and plan.max_total_nodes == 0  # no draft call
        assert plan.guess_nodes > 0  # guesses from the context cost no draft call: lookup-only


def test_cpu_curves_and_a_cheap_draft_still_grow_trees():
    policy = AdaptivePolicy(replace(CPU))
    policy.acceptance.pi = lambda: DRAFT_B
    plan = policy.plan("tree", Caps())
    assert plan.use_model and plan.max_total_nodes >= 4 and plan.expand == 1


def test_measured_rounds_correct_a_wrong_calibration():
    """The calibration says the draft is cheap; every round shows it costs six times that (a
    busy core, a wrong measurement): the policy stops drafting."""
    policy = AdaptivePolicy(replace(CPU))
    assert policy.plan("tree", Caps()).use_model
    for _ in range(60):
        policy.observe(outcome(*chain_round(0), CPU, draft_factor=6.0))
    assert policy.cost.draft_scale > 4
    assert not policy.plan("tree", Caps()).use_model


def test_host_time_per_round_and_per_draft_call_is_learned_and_counted():
    policy = AdaptivePolicy(replace(CPU))
    plain = plain_round(host_s=0.002)
    for _ in range(40):  # plain rounds with 2 ms of host work, draft rounds with 5 ms
        policy.observe(plain)
        policy.observe(outcome(*chain_round(0), CPU, host_s=0.005))
    assert policy.cost.host_per_round == pytest.approx(0.002, rel=0.05)
    assert policy.cost.host_per_call == pytest.approx(0.003, rel=0.05)
    assert policy.cost.plain_s() == pytest.approx(CPU.verify_s(1) + 0.002, rel=0.05)


def test_costs_stay_frozen_when_text_must_not_depend_on_timing():
    policy = AdaptivePolicy(replace(CPU))
    policy.reset(learn_costs=False)  # sampling: the tree's shape decides the random draws
    for _ in range(60):
        policy.observe(outcome(*chain_round(0), CPU, draft_factor=6.0, host_s=0.005))
    assert policy.cost.draft_scale == 1.0 and policy.cost.host_per_round == 0.0


def test_sampling_plans_with_the_calibrated_costs_whatever_greedy_runs_learned():
    """A sampled generation's text must depend on its seed alone, so it cannot plan with costs
    that earlier greedy generations moved; the next greedy one goes on from what they learned."""
    policy = AdaptivePolicy(replace(CPU))
    for _ in range(60):  # greedy rounds: the draft costs six times its calibration
        policy.observe(outcome(*chain_round(0), CPU, draft_factor=6.0))
    policy.reset(learn_costs=False)
    assert policy.cost.draft_scale == 1.0 and policy.plan("tree", Caps()).use_model
    policy.reset()
    assert policy.cost.draft_scale > 4 and not policy.plan("tree", Caps()).use_model


def test_a_sampled_plan_is_the_one_it_would_make_alone():
    """A sampled generation's tree decides which random draws it makes: its plan cannot follow
    the others in its round, nor what the draft holds (its text follows from its seed alone);
    a greedy one plans for the whole round."""
    fifteen_plain = Beside(tokens=15.0, nodes=15, runs=15)
    backlog = Backlog(unread=2000, left=4)
    policy = AdaptivePolicy(replace(CPU))
    policy.reset(learn_costs=False)
    alone = policy.plan("tree", Caps())
    assert alone.use_model and policy.plan("tree", Caps(), fifteen_plain, backlog) == alone
    policy.reset()
    assert not policy.plan("tree", Caps(), fifteen_plain).use_model


def test_plain_decoding_that_wins_narrowly_still_tries_the_draft_now_and_then():
    # a draft as costly as the target, with less host work per call than measured: a tree is
    # predicted just short of plain decoding
    cost = CostModel(GPU_H200, GPU_H200, host_per_round=0.0005, host_per_call=0.0004)
    policy = AdaptivePolicy(cost)
    policy.acceptance.pi = lambda: DRAFT_A
    plans = [policy.plan("tree", Caps()) for _ in range(1)]
    for _ in range(2 * AdaptivePolicy.EXPLORE_EVERY):
        plan = policy.plan("tree", Caps())
        plans.append(plan)
        policy.observe(plain_round(cost, host_s=0.0005))
    tried = sum(p.use_model for p in plans)
    assert 1 <= tried <= 3 and not plans[-1].use_model


def test_a_tree_whose_draft_must_first_read_a_backlog_waits_for_tokens_enough_to_pay_it_back():
    """A tree whose draft must first read 400 committed tokens (a prompt read beside others,
    rounds decoded plainly) pays that back only over enough tokens: with a few left, plain
    decoding, and it tells the others so; with many, the tree. A sampled generation plans from
    its seed alone, whatever its lane's draft happens to hold."""
    policy = AdaptivePolicy(replace(CPU))
    policy.acceptance.pi = lambda: DRAFT_B
    assert policy.plan("tree", Caps(), backlog=Backlog(0, 4)).use_model  # nothing to read
    tree_share = policy.share
    short = policy.plan("tree", Caps(), backlog=Backlog(400, 4))
    assert not short.use_model and short.max_total_nodes == 0 and policy.share.tokens == 1
    assert policy.plan("tree", Caps(), backlog=Backlog(400, 10_000)).use_model and policy.share == tree_share
    policy.reset(learn_costs=False)
    assert policy.plan("tree", Caps(), backlog=Backlog(400, 4)).use_model


def test_a_try_of_the_draft_waits_longer_while_its_backlog_takes_longer_to_read():
    """Trying the draft while plain decoding wins costs the read of what it has not seen as well:
    a backlog as long to read as three plain rounds spaces the tries four times as far apart."""
    cost = CostModel(GPU_H200, GPU_H200, host_per_round=0.0005, host_per_call=0.0004)
    backlog = next(n for n in range(1, 10_000) if cost.read_s(n) >= 3 * cost.plain_s())

    def tries(unread: int) -> int:
        policy = AdaptivePolicy(replace(cost))
        policy.acceptance.pi = lambda: DRAFT_A  # plain decoding wins, narrowly
        tried = 0
        for _ in range(16 * AdaptivePolicy.EXPLORE_EVERY):
            plan = policy.plan("tree", Caps(), backlog=Backlog(unread, 10_000))
            tried += plan.use_model
            policy.observe(plain_round(cost, host_s=0.0005))
        return tried

    assert tries(0) >= 12 and 2 <= tries(backlog) <= tries(0) / 3


def test_a_busier_machine_slows_the_draft_too_until_the_draft_is_measured():
    cost = replace(CPU)
    plain = plain_round(target_s=2 * CPU.verify_s(1))
    for _ in range(60):  # plain rounds only: the target runs at half the calibrated speed
        cost.learn(plain)
    assert cost.verify_scale == pytest.approx(2, rel=0.02)
    assert cost.draft_s(1) == pytest.approx(2 * CPU.draft_s(1), rel=0.02)  # never measured, yet slower


def test_the_engine_tells_the_policy_what_a_round_cost(tiny_target, tiny_draft_other):
    """Rounds reach the policy with their measured time, so host work can be learned at all."""
    from edge_tree.core.engine import Engine

    with Engine(str(tiny_target), str(tiny_draft_other), threads=1, ctx_size=256) as engine:
        seen: list[RoundOutcome] = []
        observe = engine.models.policy.observe
        engine.models.policy.observe = lambda outcome: (seen.append(outcome), observe(outcome))
        engine.generate("hello world", max_tokens=8, mode="tree")
    assert seen and all(o.round_s >= sum(o.decode) > 0 for o in seen)


def test_greedy_generations_build_on_what_earlier_ones_learned_sampled_ones_start_afresh():
    policy = AdaptivePolicy(replace(CPU))
    policy.reset(learn_costs=True)
    for _ in range(50):
        policy.observe(outcome(*chain_round(1)))
    policy.reset(learn_costs=True)  # the next greedy generation
    assert policy.acceptance.pi()[1] > 0.8
    policy.reset(learn_costs=False)  # a sampled one: its text depends on its seed alone
    assert policy.acceptance.pi()[1] < 0.5 and policy.acceptance.trials.sum() == 0
    policy.reset(learn_costs=True)  # and greedy ones find what they had learned
    assert policy.acceptance.pi()[1] > 0.8


def test_the_shape_search_with_running_sums_finds_the_best_rate_the_plain_sums_give():
    """best_shape adds each level's draft call to running sums (it runs every few rounds); the
    shape it picks has the best rate that round_s, summing every call again, gives any candidate."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        target = dict(zip((1, 2, 4, 8, 16, 32, 64), np.cumsum(rng.uniform(0.001, 0.02, 7))))
        draft = dict(zip((1, 2, 4, 8, 16), np.cumsum(rng.uniform(0.0005, 0.01, 5))))
        cost = CostModel(target, draft, host_per_node=float(rng.uniform(0, 3e-3)),
                         host_per_round=float(rng.uniform(0, 1e-3)), host_per_call=float(rng.uniform(0, 1e-4)))
        pi = RankAcceptance(prior=(rng.uniform(0.3, 0.98), rng.uniform(0.05, 0.4))).pi()
        caps = Caps(max_total_nodes=int(rng.integers(4, 64)))
        best = max(round_rate(accepted, nodes, calls, cost)
                   for branch, expand in itertools.product((1, 2, 3, 4), (1, 2, 3, 4, 6, 8, 12, 16))
                   if expand <= min(64, branch * expand) and branch <= min(64, branch * expand)
                   for _, accepted, nodes, calls, _ in grow_levels(branch, expand, min(64, branch * expand),
                                                                   caps.max_total_nodes, 24, pi))
        assert shape_rate(best_shape(caps, pi, cost), pi, cost) == pytest.approx(best, rel=1e-9)


# -- a shared round (serve --parallel): the plan maximises all generations' tokens per second ----

def crowd(pi: np.ndarray, cost: CostModel, runs: int) -> "Beside":
    """`runs` other generations, each planning the tree it would plan alone (and drafting it)."""
    one = shape_share(best_shape(Caps(), pi, cost), pi, cost)
    return Beside(one.tokens * runs, one.seconds * runs, one.nodes * runs, runs, one.drafting * runs)


@pytest.mark.parametrize("pi", [DRAFT_A, DRAFT_B], ids=["draft A", "draft B"])
def test_beside_plain_generations_a_cpu_plans_smaller_trees_down_to_plain(pi):
    """On a CPU a pass of many tokens costs several passes of one: beside generations that
    decode plainly (no draft calls to share) the verify slots are dearer than the tokens they
    bring, and plain decoding gives the round more."""
    def plain_crowd(runs: int) -> Beside:
        return Beside(tokens=float(runs), nodes=runs, runs=runs)

    alone = best_shape(Caps(), pi, CPU)
    crowded = {runs: best_shape(Caps(), pi, CPU, plain_crowd(runs)) for runs in (1, 3, 7, 15)}
    nodes = [alone.max_total_nodes] + [shape.max_total_nodes for shape in crowded.values()]
    assert nodes == sorted(nodes, reverse=True) and nodes[-1] < nodes[0]
    assert shape_rate(alone, pi, CPU) > 1 / CPU.plain_s()  # alone, a tree pays
    for runs in (3, 7, 15):
        beside = plain_crowd(runs)
        assert shape_rate(crowded[runs], pi, CPU, beside) < (1 + beside.tokens) / CPU.plain_s(beside)


def test_beside_others_that_draft_a_draft_call_costs_its_share_of_one_decode():
    """Each level's calls of every generation that drafts go into one draft decode (core/slots.py):
    beside 7 such generations a call of one token costs an eighth of a call of eight, and on a CPU
    the plan then grows more than beside the same crowd paying for its calls one by one."""
    assert CPU.draft_points_s(1, Beside(runs=7, drafting=7)) == pytest.approx(CPU.draft_points_s(8) / 8)
    for runs in (3, 7, 15):
        drafting = crowd(DRAFT_B, CPU, runs)
        assert drafting.drafting == runs
        one_by_one = replace(drafting, drafting=0)
        shared = best_shape(Caps(), DRAFT_B, CPU, drafting)
        assert shared.max_total_nodes > best_shape(Caps(), DRAFT_B, CPU, one_by_one).max_total_nodes
        assert shape_rate(shared, DRAFT_B, CPU, drafting) > (1 + drafting.tokens) / CPU.plain_s(drafting)


def test_beside_other_generations_a_gpu_keeps_growing_trees():
    beside = crowd(DRAFT_B, GPU, 7)
    shape = best_shape(Caps(), DRAFT_B, GPU, beside)
    assert shape.max_total_nodes >= 8
    assert shape_rate(shape, DRAFT_B, GPU, beside) > (1 + beside.tokens) / GPU.plain_s(beside)


def test_the_shared_rate_counts_every_generations_tokens_and_time():
    beside = Beside(tokens=6.0, seconds=0.05, nodes=12, runs=3)
    calls, nodes = [1, 1, 1], 3
    expected = (2.5 + 1 + 6.0) / (CPU.round_s(calls, nodes) - CPU.verify_s(1 + nodes)
                                  + CPU.verify_s(1 + nodes + 12) + 0.05)
    assert round_rate(2.5, nodes, calls, CPU, beside) == pytest.approx(expected)
    assert round_rate(2.5, nodes, calls, CPU) == pytest.approx(3.5 / CPU.round_s(calls, nodes))


def test_a_policy_replans_when_generations_join_and_reports_its_share():
    policy = AdaptivePolicy(replace(CPU))
    policy.reset()
    alone = policy.plan("tree", Caps())
    share = policy.share
    assert share.runs == 1 and share.tokens > 1 and 1 < share.nodes <= 1 + alone.max_total_nodes
    crowded = policy.plan("tree", Caps(), crowd(DRAFT_B, CPU, 15))
    assert crowded.max_total_nodes <= alone.max_total_nodes
    assert policy.share.nodes <= share.nodes


def test_a_pessimistic_start_is_tried_until_the_rounds_say_otherwise():
    """The prior acceptance makes plain decoding win narrowly (a draft 1.5x its CPU cost): the
    draft is still tried now and then, while what it may do (an upper bound that its tries
    tighten) beats plain decoding. A draft the target always follows is then drafted with for
    good; one it never follows stops being tried."""
    cost = CostModel(CPU.verify_points, {n: 1.5 * s for n, s in CPU.draft_points.items()}, host_per_node=0.0004)
    plain = plain_round(cost)
    prior = np.round(RankAcceptance().pi(), 2)
    assert shape_rate(best_shape(Caps(), prior, cost), prior, cost) < 1 / cost.plain_s()  # plain wins
    for matched, drafts_at_the_end in ((0, True), (None, False)):
        policy = AdaptivePolicy(replace(cost))
        policy.reset(learn_costs=False)  # the costs as given: only acceptance moves
        tried = []
        for r in range(16 * AdaptivePolicy.EXPLORE_EVERY):
            plan = policy.plan("tree", Caps())
            if plan.use_model:
                tried.append(r)
                policy.observe(outcome(*chain_round(matched), cost))
            else:
                policy.observe(plain)
        assert tried and tried[0] == 0  # tried from the start
        last = 4 * AdaptivePolicy.EXPLORE_EVERY
        late = [r for r in tried if r >= 16 * AdaptivePolicy.EXPLORE_EVERY - last]
        if drafts_at_the_end:
            assert len(late) == last  # every late round drafts
        else:
            assert not late  # no late round tries any more


@pytest.mark.parametrize("matched, drafts_at_the_end", [(0, True), (None, False)], ids=["right", "never right"])
def test_slots_never_alone_learn_the_draft_together(matched, drafts_at_the_end):
    """Two slots side by side that are never alone (serve --parallel under load) share what they
    learn (one Taught per engine) and take turns trying the draft beside each other: one try in
    EXPLORE_EVERY passes, whichever slot's. A draft the target always follows is then drafted
    with by both; one it never follows stops being tried. (Each slot used to try only while alone,
    and learned nothing under load: it planned with the prior for good.)"""
    cost = CostModel(CPU.verify_points, CPU.draft_points, host_per_node=0.0004)
    beside = Beside(1.0, 0.0, 1, 1)  # the other slot, as a plain round
    prior = np.round(RankAcceptance().pi(), 2)
    best = best_shape(Caps(), prior, cost, beside)
    assert shape_rate(best, prior, cost, beside) < 2 / cost.plain_s(beside)  # beside it, plain wins
    plain = plain_round(cost)
    taught = Taught(replace(cost))
    slots = [AdaptivePolicy(cost, taught) for _ in range(2)]
    for policy in slots:
        policy.reset()
    assert slots[0].acceptance is slots[1].acceptance
    passes = 16 * AdaptivePolicy.EXPLORE_EVERY
    tried: list[tuple[int, int]] = []
    for p in range(passes):
        for k, policy in enumerate(slots):
            if policy.plan("tree", Caps(), beside).use_model:
                tried.append((p, k))
                policy.observe(outcome(*chain_round(matched), cost))
            else:
                policy.observe(plain)
    early = [p for p, _ in tried if p < 4 * AdaptivePolicy.EXPLORE_EVERY]
    assert early[0] == 0 and len(early) >= 2  # tried beside the other from the start
    if drafts_at_the_end:
        assert {k for _, k in tried} == {0, 1}
        late = [entry for entry in tried if entry[0] >= passes - 8]
        assert len(late) == 2 * 8  # both slots draft in every late pass
    else:
        assert all(b - a >= AdaptivePolicy.EXPLORE_EVERY for a, b in zip(early, early[1:]))  # spaced
        assert not [p for p, _ in tried if p >= passes // 2]  # and then no more


def test_a_shared_pass_teaches_the_targets_curve_at_its_size():
    """A tree verified in a pass with other slots' work measures its share of the pass by tokens:
    the pass as a whole corrects the target's curve at the pass's size. The draft's decodes and
    the host's time of such a round were shared too: they teach nothing."""
    cost = replace(CPU)
    tree, verdict = chain_round(0)
    pass_tokens, slower = 32, 2.0  # the pass took twice what the calibration says
    share_s = slower * CPU.verify_s(pass_tokens) * tree.n / pass_tokens
    cost.learn(RoundOutcome(tree, verdict, TreeShape(), (1,), 0.5, share_s, 1.0, (share_s, 0.5),
                            pass_tokens=pass_tokens))
    assert cost.verify_scale == pytest.approx(1 + LEARNING_RATE * (slower - 1))
    assert (cost.draft_relative, cost.host_per_round, cost.host_per_call) == (1.0, 0.0, 0.0)
