"""The adaptive policy on simulated cost curves: wide trees where verifying is cheap, narrow where
it is not, never worse (in its own model) than the best fixed chain, always inside the caps."""

import numpy as np
import pytest

from edge_tree.core.policy import (AdaptivePolicy, Caps, CostModel, RankAcceptance, best_shape,
                              chain_shape, shape_rate)
from edge_tree.core.plan import RoundOutcome, TreeShape
from edge_tree.core.tree import TokenTree
from edge_tree.core.verify import Verdict

# Measured on a 2-core CPU (FIELD.md section 5): F32 target verify, Q4_K_M draft, seconds.
CPU = CostModel({1: .0416, 2: .0516, 4: .0582, 8: .0778, 16: .1036, 64: .293},
                {1: .0198, 2: .0331, 4: .0432, 8: .0649, 16: .1033}, host_per_node=0.0004)
# A GPU with a big target: one pass costs about the same for 1 or 64 tokens.
GPU = CostModel({1: .020, 8: .0204, 64: .0225, 256: .030}, {1: .004, 16: .0044, 64: .005})
# Where the target's token sits in the draft's ranking (FIELD.md section 5).
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
    """A root with three children (ranks 0..2); the target picks the given rank, or none."""
    tree = TokenTree(capacity=3, root_token=0)
    kids = [tree.add(10 + r, 0, np.log(0.3), r) for r in range(3)]
    accepted = [] if rank_of_match is None else [kids[rank_of_match]]
    return tree, Verdict(accepted, 99, np.full(tree.n, np.nan))


def outcome(tree: TokenTree, verdict: Verdict) -> RoundOutcome:
    """A round of the draft model (one call) that took 10 ms."""
    return RoundOutcome(tree, verdict, TreeShape(), draft_calls=1, draft_s=0.004, verify_s=0.006,
                        round_s=0.01, decode=(0.005, 0.004))


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


def test_adaptive_policy_replans_as_acceptance_changes():
    policy = AdaptivePolicy(GPU)
    first = policy.plan("tree", Caps())
    for _ in range(3 * AdaptivePolicy.REPLAN_EVERY):
        policy.observe(outcome(*chain_round(None)))  # the draft is never right
    later = policy.plan("tree", Caps())
    # a draft that is never right is not worth growing: the bar for a draft call rises sharply,
    # and children drafted at q = 0.3 (bin 3: [0.3, 0.4)) are now expected to be rejected
    assert later.min_expand_prob > 3 * first.min_expand_prob
    assert later.accept_table[3] < 0.05 < first.accept_table[3]
    assert policy.plan("chain", Caps(max_depth=5)).max_depth == 5
