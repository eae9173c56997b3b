"""Target logits over a draft tree -> the accepted path and one token from the target.

Pure functions (tree + logits in, verdict out): no llama.cpp here. Three exact rules, one per
way the tree was made (docs/design.md, "Exact verification"):
- greedy: descend while a child carries the target's argmax;
- deterministic tree under sampling: draw x ~ p at each node, descend if a child carries x;
- sampled tree (children drawn from q without replacement): multi-candidate rejection sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .sampling import SamplingParams, distribution, log_normalizer, sample
from .tree import TokenTree

LogitsOf = Callable[[int], np.ndarray]
_ROOT_ONLY_PROBS = np.full(1, np.nan)  # a plain round's verdict: the root has no p (read only)
_ROOT_ONLY_PROBS.flags.writeable = False


@dataclass
class Verdict:
    accepted: list[int]  # node indices from depth 1 down; empty if the first level was rejected
    bonus_token: int  # the target's own token after the last accepted node
    target_prob: np.ndarray  # p(token | parent path) per node; nan where not computed

    @property
    def last_node(self) -> int:
        return self.accepted[-1] if self.accepted else 0


def verify(tree: TokenTree, logits_of: LogitsOf, params: SamplingParams,
           rng: np.random.Generator | None = None,
           draft_probs: dict[int, np.ndarray] | None = None, *, target_probs: bool = True) -> Verdict:
    """Pick the exact rule for how the tree was made. target_probs=False spares greedy
    verification the softmax over the vocabulary that only records show (nan then)."""
    if params.greedy:
        return verify_greedy(tree, logits_of, target_probs)
    if tree.sampled:
        return verify_sampled_tree(tree, logits_of, params, rng, draft_probs)
    return verify_deterministic_tree(tree, logits_of, params, rng)


def _note_children(target_prob: np.ndarray, kids: list[int], tree: TokenTree, probs: np.ndarray):
    for c in kids:
        target_prob[c] = probs[tree.token[c]]


def _note_children_softmax(target_prob: np.ndarray, kids: list[int], tree: TokenTree,
                           logits: np.ndarray) -> None:
    """Softmax probabilities of the children's tokens only: one pass over the vocabulary."""
    log_norm = log_normalizer(logits, float(logits.max()))
    for c in kids:
        target_prob[c] = np.exp(float(logits[tree.token[c]]) - log_norm)


def _child_with_token(tree: TokenTree, kids: list[int], token: int) -> int | None:
    for c in kids:
        if tree.token[c] == token:
            return c
    return None


def _walk(tree: TokenTree, step) -> Verdict:
    """Descend from the root while the target takes a child. step(node, kids, target_prob) notes
    the target's probabilities of the children and returns (child taken or None, token)."""
    kids = tree.children()
    target_prob = np.empty(tree.n)
    target_prob.fill(np.nan)  # not np.full, pure Python in numpy: this runs once a token
    accepted: list[int] = []
    node = 0
    while True:
        child, token = step(node, kids[node], target_prob)
        if child is None:
            return Verdict(accepted, token, target_prob)
        accepted.append(child)
        node = child


def verify_greedy(tree: TokenTree, logits_of: LogitsOf, target_probs: bool = True) -> Verdict:
    if tree.n == 1:  # plain decoding: the root's argmax, once a token (the walk below costs more)
        return Verdict([], int(np.argmax(logits_of(0))), _ROOT_ONLY_PROBS)

    def step(node, kids, target_prob):
        logits = logits_of(node)
        best = int(np.argmax(logits))
        if kids and target_probs:
            _note_children_softmax(target_prob, kids, tree, logits)
        return _child_with_token(tree, kids, best), best

    return _walk(tree, step)


def verify_deterministic_tree(tree: TokenTree, logits_of: LogitsOf, params: SamplingParams,
                              rng: np.random.Generator) -> Verdict:
    """Children chosen without randomness: sampling x ~ p and descending on a match is exact."""
    def step(node, kids, target_prob):
        p = distribution(logits_of(node), params)
        _note_children(target_prob, kids, tree, p)
        x = sample(p, rng)
        return _child_with_token(tree, kids, x), x

    return _walk(tree, step)


def verify_sampled_tree(tree: TokenTree, logits_of: LogitsOf, params: SamplingParams,
                        rng: np.random.Generator, draft_probs: dict[int, np.ndarray]) -> Verdict:
    """Children drawn from q without replacement, tried in draw order: accept child c with
    probability min(1, p(c)/q(c)); on rejection p <- norm(max(0, p - q)) and q loses c."""
    def step(node, kids, target_prob):
        p = distribution(logits_of(node), params)
        _note_children(target_prob, kids, tree, p)
        q = draft_probs[node].copy() if kids else None
        for c in kids:
            x = int(tree.token[c])
            if q[x] > 0 and rng.random() * q[x] < p[x]:
                return c, x
            p = _residual(p, q)
            q[x] = 0.0
            total = q.sum()
            if total <= 0:
                break
            q /= total
        return None, sample(p, rng)

    return _walk(tree, step)


def _residual(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    r = np.maximum(p - q, 0.0)
    total = r.sum()
    # p == q up to rounding leaves nothing: then every candidate would have been accepted
    return r / total if total > 1e-12 else p
