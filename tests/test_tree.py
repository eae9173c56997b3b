"""The tree as data and the pure verification rules: no llama.cpp needed."""

import numpy as np
import pytest

from edge_tree.core.sampling import SamplingParams
from edge_tree.core.tree import TokenTree, branch_seq_ids
from edge_tree.core.verify import verify, verify_greedy

V = 16


def sample_tree() -> TokenTree:
    """root(9) -> a(1) -> c(3) -> e(5)
                      -> d(4)
               -> b(2)"""
    t = TokenTree(capacity=8, root_token=9)
    a = t.add(1, 0, np.log(0.6), 0)
    t.add(2, 0, np.log(0.3), 1)
    c = t.add(3, a, np.log(0.5), 0)
    t.add(4, a, np.log(0.4), 1)
    t.add(5, c, np.log(0.9), 0)
    return t


def one_hot_logits(best_by_node: dict[int, int]):
    def logits_of(node):
        row = np.zeros(V, np.float32)
        row[best_by_node[node]] = 5.0
        return row
    return logits_of


def test_tree_arrays_paths_and_leaves():
    t = sample_tree()
    assert t.n == 6 and t.n_drafted == 5 and t.max_depth == 3
    assert t.children() == [[1, 2], [3, 4], [], [5], [], []]
    assert t.path(5) == [1, 3, 5]
    assert t.leaves() == [2, 4, 5]
    assert np.isclose(t.cum_logprob[5], np.log(0.6 * 0.5 * 0.9))
    assert t.best_leaf() == 2  # 0.3 beats 0.6*0.4=0.24 and 0.27


def test_branch_seq_ids_give_every_branch_its_whole_path():
    t = sample_tree()
    seqs = branch_seq_ids(t)
    assert sorted(seqs[0]) == [0, 1, 2]  # the root is on every branch
    for branch, leaf in enumerate(t.leaves()):
        for node in [0] + t.path(leaf):
            assert branch in seqs[node]
    for node in range(1, t.n):  # the first id is a branch that passes through the node
        first_leaf = t.leaves()[seqs[node][0]]
        assert node in t.path(first_leaf)
    # siblings never share a branch: they must not see each other
    assert not set(seqs[1]) & set(seqs[2])


def test_greedy_walk_descends_while_the_target_agrees():
    t = sample_tree()
    verdict = verify_greedy(t, one_hot_logits({0: 1, 1: 3, 3: 7}))
    assert verdict.accepted == [1, 3] and verdict.bonus_token == 7
    verdict = verify_greedy(t, one_hot_logits({0: 2, 2: 11}))
    assert verdict.accepted == [2] and verdict.bonus_token == 11
    verdict = verify_greedy(t, one_hot_logits({0: 8}))
    assert verdict.accepted == [] and verdict.bonus_token == 8
    verdict = verify_greedy(t, one_hot_logits({0: 1, 1: 3, 3: 5, 5: 0}))
    assert verdict.accepted == [1, 3, 5] and verdict.bonus_token == 0


def test_greedy_target_probs_are_reported_for_children_of_visited_nodes():
    t = sample_tree()
    verdict = verify_greedy(t, one_hot_logits({0: 1, 1: 4, 4: 0}))
    assert verdict.accepted == [1, 4]
    assert verdict.target_prob[1] > 0.9 and verdict.target_prob[2] < 0.1
    assert np.isnan(verdict.target_prob[5])  # under node 3, which the walk never visited


def test_sampled_verification_needs_an_rng_and_is_reproducible():
    t = sample_tree()
    rng_logits = np.random.default_rng(0).normal(size=(t.n, V)).astype(np.float32)
    params = SamplingParams(temperature=1.0)
    a = verify(t, lambda i: rng_logits[i], params, np.random.default_rng(5))
    b = verify(t, lambda i: rng_logits[i], params, np.random.default_rng(5))
    assert (a.accepted, a.bonus_token) == (b.accepted, b.bonus_token)


def test_full_tree_rejects_adding_past_capacity():
    t = TokenTree(capacity=1, root_token=0)
    t.add(1, 0, 0.0, 0)
    with pytest.raises(ValueError):
        t.add(2, 0, 0.0, 1)


def test_prompt_lookup_takes_the_latest_longest_match():
    from edge_tree.core.lookup import lookup

    #            0  1  2  3  4  5  6  7  8  9 10 11
    context = [5, 6, 7, 1, 9, 6, 7, 2, 3, 4, 6, 7]
    guess, match = lookup(context, 3)
    assert (guess, match) == ([2, 3, 4], 2)  # "6 7" last seen at 5-6, followed by 2 3 4
    guess, match = lookup(context + [2, 3], 2)  # "6 7 2 3" (at 5-8) beats any shorter match
    assert (guess, match) == ([4, 6], 4)
    assert lookup([1, 2, 3, 4], 5) == ([], 0)  # the suffix never occurred before
    assert lookup(context, 0) == ([], 0)
