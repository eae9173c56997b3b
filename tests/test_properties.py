"""Property tests (hypothesis): the tree, its KV layout and the verifiers on random trees and random
logits (no llama.cpp); the draft model's tree budgets and the engine's KV bookkeeping on tiny
models (few examples: llama.cpp calls cost time on a shared machine)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_tree import Engine
from edge_tree.llamacpp import llama
from edge_tree.llamacpp.share import Share
from edge_tree.core.drafting import DraftRequest
from edge_tree.core.model_drafter import DraftModelDrafter
from edge_tree.core.plan import TreeShape
from edge_tree.core.sampling import SamplingParams, distribution, log_normalizer
from edge_tree.core.tree import DRAFT, NGRAM, TokenTree, branch_seq_ids
from edge_tree.core.verify import verify, verify_deterministic_tree, verify_greedy, verify_sampled_tree
from drafts import propose

PURE = settings(max_examples=300, deadline=None)
LLAMA = settings(max_examples=25, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# -- random trees and logits ---------------------------------------------------------------------

@st.composite
def trees(draw, max_nodes: int = 24, spare: int = 0):
    """A TokenTree with random parents (< index) and tokens from a small vocabulary, unique among
    siblings; capacity leaves `spare` free slots."""
    vocab = draw(st.integers(8, 32))
    n = draw(st.integers(0, max_nodes))
    extra = draw(st.integers(0, spare))
    tree = TokenTree(n + extra, draw(st.integers(0, vocab - 1)))
    used: list[set[int]] = [set()]
    for i in range(1, n + 1):
        parent = draw(st.integers(0, i - 1).filter(lambda p: len(used[p]) < vocab))
        token = draw(st.integers(0, vocab - 1).filter(lambda t: t not in used[parent]))
        used[parent].add(token)
        used.append(set())
        tree.add(token, parent, -float(draw(st.integers(0, 5))), len(used[parent]) - 1)
    return tree, vocab


def random_logits(tree: TokenTree, vocab: int, seed: int, follow: float = 0.7) -> np.ndarray:
    """Logits per node; at a node with children, the argmax is one of them with prob `follow`,
    so walks go deep as well as stop early."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (tree.n, vocab)).astype(np.float32)
    kids = tree.children()
    for node in range(tree.n):
        if kids[node] and rng.random() < follow:
            child = kids[node][rng.integers(len(kids[node]))]
            logits[node, tree.token[child]] = logits[node].max() + rng.uniform(0.1, 3.0)
    return logits


def assert_root_path(tree: TokenTree, accepted: list[int]) -> None:
    previous = 0
    for node in accepted:
        assert 0 < node < tree.n
        assert tree.parent[node] == previous, (accepted, tree.parent[: tree.n])
        previous = node


def children_of(tree: TokenTree, node: int) -> list[int]:
    return [i for i in range(1, tree.n) if tree.parent[i] == node]


# -- log-probs -----------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([2, 1000, 262_144]), st.floats(0.1, 30.0),
       st.floats(-80.0, 80.0))
def test_the_log_normalizer_is_a_float64_log_sum_exp_within_1e5_nats(seed, vocab, spread, offset):
    """Summed in float32 over a vocabulary as wide as Gemma's, flat or peaked, any offset: a
    log-prob from it (logits[t] - normalizer) is off by under 1e-5 nats."""
    logits = (np.random.default_rng(seed).normal(offset, spread, vocab)).astype(np.float32)
    wide = logits.astype(np.float64)
    exact = wide.max() + np.log(np.exp(wide - wide.max()).sum())
    assert abs(log_normalizer(logits, float(logits.max())) - exact) < 1e-5


# -- the tree ------------------------------------------------------------------------------------

@PURE
@given(trees())
def test_tree_structure_invariants(tt):
    tree, vocab = tt
    for i in range(1, tree.n):
        assert 0 <= tree.parent[i] < i
        assert tree.depth[i] == tree.depth[tree.parent[i]] + 1
    kids = tree.children()
    assert sorted(i for row in kids for i in row) == list(range(1, tree.n))
    leaves = tree.leaves()
    assert leaves == [i for i in range(tree.n) if not kids[i]]
    for leaf in leaves:
        path = tree.path(leaf)
        assert len(path) == tree.depth[leaf]
        assert_root_path(tree, path)
    assert tree.best_leaf() in leaves


@PURE
@given(trees())
def test_branch_seq_ids_every_leaf_owns_its_whole_path_and_siblings_are_disjoint(tt):
    tree, _ = tt
    seqs = branch_seq_ids(tree)
    leaves = tree.leaves()
    assert sorted(seqs[0]) == list(range(len(leaves)))  # the root is on every branch
    for branch, leaf in enumerate(leaves):
        for node in [0] + tree.path(leaf):
            assert branch in seqs[node]
        for node in range(tree.n):  # ...and on no other node
            if node not in [0] + tree.path(leaf):
                assert branch not in seqs[node]
    for node in range(tree.n):
        assert seqs[node] and len(set(seqs[node])) == len(seqs[node])
        kids = children_of(tree, node)
        for a in kids:
            for b in kids:
                if a < b:
                    assert not set(seqs[a]) & set(seqs[b])
        if kids:  # a parent carries exactly its children's branches
            assert sorted(seqs[node]) == sorted(s for c in kids for s in seqs[c])


@PURE
@given(trees(spare=10), st.data())
def test_graft_adds_a_root_path_without_duplicate_siblings(tt, data):
    tree, vocab = tt
    tokens = data.draw(st.lists(st.integers(0, vocab - 1), max_size=10))
    before = {k: getattr(tree, k)[: tree.n].copy() for k in ("token", "parent", "depth", "source")}
    n_before = tree.n
    # nodes the graft needs: the tokens past the longest prefix already in the tree
    node, matched = 0, 0
    for token in tokens:
        match = [c for c in children_of(tree, node) if tree.token[c] == token]
        if not match:
            break
        node, matched = match[0], matched + 1
    needed = len(tokens) - matched

    added = tree.graft(tokens, NGRAM)

    assert added == tree.n - n_before == min(needed, tree.capacity + 1 - n_before)
    for key, old in before.items():  # existing nodes are untouched
        assert np.array_equal(getattr(tree, key)[:n_before], old)
    for node in range(tree.n):
        sibling_tokens = [int(tree.token[c]) for c in children_of(tree, node)]
        assert len(sibling_tokens) == len(set(sibling_tokens))
    for i in range(n_before, tree.n):
        assert tree.source[i] == NGRAM and 0 <= tree.parent[i] < i
        assert tree.depth[i] == tree.depth[tree.parent[i]] + 1
    # walking the tokens from the root follows a root path, as far as the capacity allowed
    node, walked = 0, []
    for token in tokens:
        match = [c for c in children_of(tree, node) if tree.token[c] == token]
        if not match:
            break
        node = match[0]
        walked.append(node)
    assert_root_path(tree, walked)
    assert len(walked) == matched + min(needed, tree.capacity + 1 - n_before)


# -- the verifiers -------------------------------------------------------------------------------

def greedy_reference(tree: TokenTree, logits: np.ndarray) -> tuple[list[int], int]:
    """Step by step: the target's argmax at the node; descend into the child carrying it."""
    node, accepted = 0, []
    while True:
        best = int(np.argmax(logits[node]))
        nxt = [c for c in range(1, tree.n) if tree.parent[c] == node and tree.token[c] == best]
        if not nxt:
            return accepted, best
        node = nxt[0]
        accepted.append(node)


@PURE
@given(trees(), st.integers(0, 2**32 - 1))
def test_greedy_verification_is_the_step_by_step_walk(tt, seed):
    tree, vocab = tt
    logits = random_logits(tree, vocab, seed)
    calls = []

    def logits_of(node):
        calls.append(node)
        return logits[node]

    verdict = verify_greedy(tree, logits_of)
    assert_root_path(tree, verdict.accepted)
    last = verdict.last_node
    assert verdict.bonus_token == int(np.argmax(logits[last]))
    assert all(tree.token[c] != verdict.bonus_token for c in children_of(tree, last))
    assert (verdict.accepted, verdict.bonus_token) == greedy_reference(tree, logits)
    assert calls == [0] + verdict.accepted  # logits read on the walk only
    # verify() picks the greedy rule for temperature 0
    again = verify(tree, lambda i: logits[i], SamplingParams(), np.random.default_rng(0))
    assert (again.accepted, again.bonus_token) == (verdict.accepted, verdict.bonus_token)
    # the target's probabilities of the children seen on the walk
    for node in [0] + verdict.accepted:
        z = logits[node].astype(np.float64)
        p = np.exp(z - z.max())
        p /= p.sum()
        for c in children_of(tree, node):
            assert verdict.target_prob[c] == pytest.approx(p[tree.token[c]], rel=1e-5, abs=1e-9)


sampling_params = st.builds(
    SamplingParams,
    temperature=st.sampled_from([1.0, 0.5, 1.5]),
    top_k=st.sampled_from([0, 0, 1, 2, 5]),
    top_p=st.sampled_from([1.0, 1.0, 0.9, 0.5]),
    min_p=st.sampled_from([0.0, 0.0, 0.05]),
)


def draft_distributions(tree: TokenTree, vocab: int, params: SamplingParams, seed: int):
    """q at every node with children, with mass on each child (children are draws from q)."""
    rng = np.random.default_rng(seed ^ 0x5EED)
    probs = {}
    for node in range(tree.n):
        kids = children_of(tree, node)
        if kids:
            q = distribution(rng.normal(0, 2, vocab).astype(np.float32), params)
            for c in kids:
                q[tree.token[c]] = max(q[tree.token[c]], rng.uniform(0.01, 0.5))
            probs[node] = q / q.sum()
    return probs


@PURE
@given(trees(), st.integers(0, 2**32 - 1), sampling_params, st.booleans())
def test_sampled_verification_returns_a_root_path_and_a_possible_bonus(tt, seed, params, drawn):
    tree, vocab = tt
    logits = random_logits(tree, vocab, seed)
    rng = np.random.default_rng(seed)
    if drawn:
        tree.sampled = True
        q = draft_distributions(tree, vocab, params, seed)
        verdict = verify_sampled_tree(tree, lambda i: logits[i], params, rng, q)
    else:
        verdict = verify_deterministic_tree(tree, lambda i: logits[i], params, rng)
    assert_root_path(tree, verdict.accepted)
    last = verdict.last_node
    assert 0 <= verdict.bonus_token < vocab
    p_last = distribution(logits[last], params)
    assert p_last[verdict.bonus_token] > 0
    assert all(tree.token[c] != verdict.bonus_token for c in children_of(tree, last))
    for node in verdict.accepted:  # nothing the target cannot produce is accepted
        parent = int(tree.parent[node])
        assert distribution(logits[parent], params)[tree.token[node]] > 0
        assert verdict.target_prob[node] > 0


@PURE
@given(trees(), st.integers(0, 2**32 - 1))
def test_top_k_1_sampling_verifies_like_greedy(tt, seed):
    """top_k=1 leaves the argmax alone: every exact rule must then agree with greedy."""
    tree, vocab = tt
    logits = random_logits(tree, vocab, seed)
    params = SamplingParams(temperature=1.0, top_k=1)
    expected = greedy_reference(tree, logits)
    got = verify_deterministic_tree(tree, lambda i: logits[i], params, np.random.default_rng(seed))
    assert (got.accepted, got.bonus_token) == expected
    tree.sampled = True
    q = draft_distributions(tree, vocab, SamplingParams(temperature=1.0), seed)
    got = verify_sampled_tree(tree, lambda i: logits[i], params, np.random.default_rng(seed), q)
    assert (got.accepted, got.bonus_token) == expected


# -- the draft model's budgets (tiny models) -----------------------------------------------------

@pytest.fixture(scope="module")
def draft_ctx(tiny_draft_other):
    with llama.Model(tiny_draft_other) as model, \
            llama.Context(model, 512, llama.max_parallel_sequences(), threads=1) as ctx:
        yield ctx


shapes = st.builds(TreeShape, max_depth=st.integers(1, 6), max_nodes_per_level=st.integers(1, 8),
                   max_total_nodes=st.integers(1, 30), branch=st.integers(1, 4),
                   expand=st.integers(1, 4), guess_nodes=st.just(0))


@LLAMA
@given(shapes, st.sampled_from(["topk", "sampled"]), st.sampled_from([0.0, 1.0]),
       st.lists(st.integers(3, 511), min_size=1, max_size=40), st.integers(0, 2**32 - 1))
def test_draft_trees_respect_every_budget(draft_ctx, shape, children, temperature, tokens, seed):
    drafter = DraftModelDrafter(Share(draft_ctx), children)
    try:
        drafter.start(tokens)
        params = SamplingParams(temperature=temperature)
        proposal = propose(drafter, DraftRequest(tokens, shape, params, np.random.default_rng(seed)))
    finally:
        drafter.close()
    tree = proposal.tree
    assert tree.token[0] == tokens[-1]
    assert 0 <= tree.n_drafted <= shape.max_total_nodes
    assert tree.n_drafted >= 1  # the root's logits always give a first level
    depth = tree.depth[: tree.n]
    assert depth.max() <= shape.max_depth
    assert np.all(np.diff(depth) >= 0)  # level by level
    assert np.bincount(depth)[1:].max() <= shape.max_nodes_per_level
    for node in range(tree.n):
        kids = children_of(tree, node)
        assert len(kids) <= shape.branch
        assert len({int(tree.token[c]) for c in kids}) == len(kids)
        assert all(tree.source[c] == DRAFT for c in kids)
    expanded = {int(tree.parent[i]) for i in range(1, tree.n)} - {0}  # decoded by the draft
    per_level = np.bincount([tree.depth[i] for i in expanded], minlength=1)
    assert per_level.max(initial=0) <= shape.expand
    assert 1 + len({int(tree.depth[i]) for i in expanded}) <= proposal.draft_calls <= shape.max_depth
    assert tree.sampled == (children == "sampled" and temperature > 0)
    if not params.greedy:  # q is known at every node that has children
        assert {int(tree.parent[i]) for i in range(1, tree.n)} <= set(proposal.draft_probs)


# -- the engine's KV bookkeeping (tiny models) ---------------------------------------------------

@pytest.fixture(scope="module")
def engines(tiny_target, tiny_draft_other, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("prop-cache")))
        with Engine(str(tiny_target), str(tiny_draft_other), threads=1, ctx_size=512,
                    draft_children="topk") as topk, \
                Engine(str(tiny_target), str(tiny_draft_other), threads=1, ctx_size=512,
                       draft_children="sampled", policy="fixed") as sampled:
            yield {"topk": topk, "sampled": sampled}


def assert_only_seq_0(ctx: llama.Context, n_cached: int) -> None:
    assert ctx.seq_pos_min(0) == (0 if n_cached else -1)
    assert ctx.seq_pos_max(0) == n_cached - 1
    for seq in range(1, ctx.n_seq_max):  # no branch left behind
        assert ctx.seq_pos_max(seq) == -1, seq


@LLAMA
@given(st.sampled_from(["topk", "sampled"]), st.sampled_from(["chain", "tree"]),
       st.sampled_from([0.0, 1.0]), st.integers(1, 40),
       st.none() | st.integers(1, 6), st.none() | st.integers(1, 8), st.none() | st.integers(1, 30),
       st.sampled_from(["hello world", "once upon a time", "the the the the the"]),
       st.integers(0, 2**16))
def test_kv_cache_holds_exactly_the_committed_tokens(engines, which, mode, temperature, max_tokens,
                                                     max_depth, per_level, total, prompt, seed):
    engine = engines[which]
    result = engine.generate(prompt, mode=mode, temperature=temperature, seed=seed,
                             max_tokens=max_tokens, max_depth=max_depth,
                             max_nodes_per_level=per_level, max_total_nodes=total, record_steps=True)
    n_prompt = result.stats["prompt_tokens"]
    produced = sum(len(step.accepted) + 1 for step in result.steps)  # accepted + bonus per round
    # every produced token but the last (the next round's root) is in the target's cache
    assert engine.models.target.n_cached == n_prompt + produced - 1
    assert_only_seq_0(engine.models.target_ctx, engine.models.target.n_cached)
    # generated tokens stop at --max-tokens or EOS, possibly inside a round's tokens
    assert len(result.tokens) <= produced
    if result.stop_reason == "max_tokens":
        assert len(result.tokens) == max_tokens and produced - max_tokens <= (max_depth or 99)
    else:
        assert result.stop_reason == "eos" and len(result.tokens) < produced
    if result.stop_reason != "eos":
        assert engine.models.target.n_cached >= n_prompt + len(result.tokens) - 1
    for step in result.steps:
        drafted = step.n - 2  # root and bonus excluded
        depths = step.nodes.depth[1:-1]
        # the caps are hard, prompt-lookup guesses included
        assert drafted <= (total or 10**9) and max(depths, default=0) <= (max_depth or 10**9)
        if mode == "chain":
            assert len(set(depths)) == len(depths)
    # the draft's cache: committed tokens only, in seq 0
    drafter = engine.models.model_drafter
    assert_only_seq_0(engine.models.draft_ctx, drafter.n_cached)
    assert drafter.n_cached <= n_prompt + produced
    if temperature == 0.0:  # lossless: greedy text is the target's own
        reference = engine.generate(prompt, mode="ar", max_tokens=max_tokens)
        assert result.tokens == reference.tokens[: len(result.tokens)]
