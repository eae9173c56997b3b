"""With temperature > 0, tree speculative decoding must sample exactly the target's distribution.

The joint distribution of the first two generated tokens under `tree` is compared with plain
sampling (`ar`) by a chi-square test on thousands of samples, with fixed seeds so the outcome is
deterministic. The same test pointed at a deliberately wrong verifier (the p/q test applied to
top-k children, which were never drawn from q) must fail: that shows the test can see the bias.
"""

import pytest

import edge_tree.core.engine as engine_module
from edge_tree.core.engine import Engine
from edge_tree.core.verify import verify_sampled_tree

from chisquare import N_SAMPLES, SIGNIFICANCE, first_two_tokens, p_value


@pytest.fixture(scope="module")
def ar_counts(tiny_target):
    with Engine(str(tiny_target), threads=1, ctx_size=64) as e:
        return first_two_tokens(e, "ar", seed0=10_000)


@pytest.mark.parametrize("draft_fixture", ["tiny_draft_same", "tiny_draft_other"])
@pytest.mark.parametrize("children", ["sampled", "topk"])
def test_tree_sampling_matches_the_target_distribution(request, tiny_target, ar_counts,
                                                       draft_fixture, children):
    draft = request.getfixturevalue(draft_fixture)
    with Engine(str(tiny_target), str(draft), threads=1, ctx_size=64, draft_children=children,
                policy="fixed") as e:  # the tree every round: the verifier is under test
        tree_counts = first_two_tokens(e, "tree", seed0=50_000, max_depth=3, max_nodes_per_level=4)
    assert len(ar_counts) > 5  # the test has a real distribution to compare
    assert p_value(ar_counts, tree_counts) > SIGNIFICANCE


def test_the_same_test_catches_a_wrong_verifier(monkeypatch, tiny_target, tiny_draft_other, ar_counts):
    def wrong_verify(tree, logits_of, params, rng, draft_probs, target_probs=True):
        return verify_sampled_tree(tree, logits_of, params, rng, draft_probs)  # p/q on top-k children

    monkeypatch.setattr(engine_module, "verify", wrong_verify)
    with Engine(str(tiny_target), str(tiny_draft_other), threads=1, ctx_size=64, draft_children="topk",
                policy="fixed") as e:
        tree_counts = first_two_tokens(e, "tree", seed0=50_000, max_depth=3, max_nodes_per_level=4)
    assert p_value(ar_counts, tree_counts) < SIGNIFICANCE


# Text that repeats: prompt lookup finds the continuation of its last tokens earlier in it.
LOOKUP_PROMPT = "one two three one two three one two three one two"


def test_lookup_sampling_matches_the_target_distribution(tiny_target):
    """--mode lookup: no draft model; the guesses form a deterministic tree (the rule that draws
    x ~ p and descends on a match)."""
    with Engine(str(tiny_target), threads=1, ctx_size=64) as e:
        ar = first_two_tokens(e, "ar", seed0=10_000, prompt=LOOKUP_PROMPT)
        drafted: list[int] = []
        lookup = first_two_tokens(e, "lookup", seed0=50_000, prompt=LOOKUP_PROMPT, drafted=drafted)
    assert len(ar) > 5 and sum(drafted) > N_SAMPLES  # guesses were made and verified
    assert p_value(ar, lookup) > SIGNIFICANCE
