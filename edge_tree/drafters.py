"""Drafters grow a TokenTree for the current context; the draft model is the first of them.

The interface is two methods, as in Hugging Face's CandidateGenerator:
    propose(tokens, shape, params, rng) -> Proposal   grow a tree rooted at tokens[-1]
    observe(tree, verdict)                            learn the outcome, trim caches
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from . import ngram
from .llama import Batch, Context
from .sampling import SamplingParams, distribution, sample_without_replacement
from .tree import NGRAM, TokenTree
from .verify import Verdict


@dataclass(frozen=True)
class TreeShape:
    """How big a tree to grow this round. Budgets are hard caps; the policy chooses within them."""

    max_depth: int = 6
    max_nodes_per_level: int = 8
    max_total_nodes: int = 48
    branch: int = 2  # children proposed per expanded node (the draft's top choices / draws)
    expand: int = 2  # nodes per level decoded in the draft, to grow the next level
    ngram_len: int = 0  # room for a prompt-lookup branch beside the draft's nodes (0: none)
    # Worth-it thresholds on a node's estimated reach, the chance the target's walk gets to it:
    # drafted nodes below min_node_prob are not worth a verify slot, and nodes below
    # min_expand_prob are not worth a draft call to grow. Reach multiplies, along the path,
    # accept_table[bin of the draft probability] (P(target takes a child | its draft prob),
    # learned online; empty: the draft probability itself).
    min_node_prob: float = 0.0
    min_expand_prob: float = 0.0
    accept_table: tuple = ()


@dataclass
class Proposal:
    tree: TokenTree
    draft_probs: dict[int, np.ndarray] | None  # q at each expanded node when sampling
    draft_s: float  # seconds spent drafting
    draft_calls: int


class Drafter(Protocol):
    def propose(self, tokens: list[int], shape: TreeShape, params: SamplingParams,
                rng: np.random.Generator) -> Proposal: ...

    def observe(self, tree: TokenTree, verdict: Verdict) -> None: ...

    def reset(self) -> None: ...


def top_candidates(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k likeliest tokens, best first, with their log-probs. For the few siblings a tree
    uses, k argmax passes beat np.argpartition over a 262k vocabulary by 10x."""
    work = logits.copy() if k > 1 else logits
    top = np.empty(k, np.int64)
    for i in range(k):
        top[i] = np.argmax(work)
        if k > 1:
            work[top[i]] = -np.inf
    peak = float(logits[top[0]])
    shifted = np.subtract(logits, peak, dtype=np.float32)
    log_norm = peak + float(np.log(np.exp(shifted, out=shifted).sum(dtype=np.float64)))
    return top, logits[top].astype(np.float64) - log_norm


class DraftModelDrafter:
    """A small model proposes the tree, one batched llama_decode per level.

    KV layout in the draft's unified cache: seq 0 holds committed tokens only; every node the
    draft decodes gets a seq id of its own that holds the prefix and its path (seq_cp from its
    parent, metadata only), so siblings never see each other.
    """

    def __init__(self, ctx: Context, children: str = "topk"):
        self.ctx = ctx
        self.children = children  # "topk": the draft's best tokens; "sampled": drawn from q
        self.max_expanded = ctx.n_seq_max - 1  # seq ids 1.. for expanded nodes, 0 is committed
        self.batch = Batch(ctx.n_batch, 1)
        self.n_cached = 0  # committed tokens present in seq 0
        self._node_seq: dict[int, int] = {}
        self._root_pos = 0

    def reset(self) -> None:
        self.ctx.clear()
        self.n_cached = 0

    def close(self) -> None:
        self.batch.close()

    def propose(self, tokens: list[int], shape: TreeShape, params: SamplingParams,
                rng: np.random.Generator) -> Proposal:
        start = time.perf_counter()
        sampled = self.children == "sampled" and not params.greedy
        tree = TokenTree(shape.max_total_nodes + shape.ngram_len, tokens[-1], sampled=sampled)
        self._root_pos = len(tokens) - 1
        self._node_seq = {0: 0}
        self._reach = {0: 0.0}
        frontier = {0: self._sync(tokens)}
        calls = 1
        draft_probs: dict[int, np.ndarray] = {}
        for depth in range(1, shape.max_depth + 1):
            room = min(shape.max_nodes_per_level, shape.max_total_nodes - tree.n_drafted)
            if room <= 0 or not frontier:
                break
            if sampled:
                level = self._draw_level(tree, frontier, shape, room, params, rng, draft_probs)
            else:
                level = self._best_level(tree, frontier, shape, room, params, draft_probs)
            if depth == shape.max_depth:
                break
            grow = self._nodes_to_expand(tree, level, shape)
            if not grow:
                break
            frontier = self._expand(tree, grow)
            calls += 1
        return Proposal(tree, draft_probs, time.perf_counter() - start, calls)

    def _sync(self, tokens: list[int]) -> np.ndarray:
        """Feed the committed tokens the draft has not seen; returns the root's logits."""
        last = self.ctx.feed(self.batch, tokens[self.n_cached:], self.n_cached)
        self.n_cached = len(tokens)
        return self.ctx.logits(last)

    def _best_level(self, tree, frontier, shape, room, params, draft_probs) -> list[int]:
        """Top-`branch` children of every frontier node, the best `room` of them by cum log-prob."""
        pool = []
        for node, logits in frontier.items():
            if not params.greedy:  # rank by q, the draft's distribution under the same settings
                draft_probs[node] = distribution(logits, params)
                logits = np.log(np.maximum(draft_probs[node], 1e-300)).astype(np.float32)
            tokens, logprobs = top_candidates(logits, shape.branch)
            floor = np.log(shape.min_node_prob) if shape.min_node_prob > 0 else -np.inf
            for rank, (token, lp) in enumerate(zip(tokens, logprobs)):
                reach = self._reach[node] + self._log_accept(float(lp), shape)
                if lp > -1e30 and reach >= floor:
                    pool.append((reach, tree.cum_logprob[node] + lp, node, int(token), float(lp), rank))
        pool.sort(key=lambda c: (-c[0], -c[1]))
        return [self._add(tree, reach, t, parent, lp, rank)
                for reach, _, parent, t, lp, rank in pool[:room]]

    def _add(self, tree, reach: float, token: int, parent: int, logprob: float, rank: int) -> int:
        node = tree.add(token, parent, logprob, rank)
        self._reach[node] = reach
        return node

    @staticmethod
    def _log_accept(logprob: float, shape: TreeShape) -> float:
        """log P(the target takes this child | the walk reached its parent), estimated."""
        if not shape.accept_table:
            return logprob
        table = shape.accept_table
        index = min(int(np.exp(logprob) * len(table)), len(table) - 1)
        return float(np.log(max(table[index], 1e-9)))

    def _draw_level(self, tree, frontier, shape, room, params, rng, draft_probs) -> list[int]:
        """Children drawn from q without replacement. How many each node gets is fixed from the
        parents' scores before drawing: a count that depended on the draws would bias them."""
        order = sorted(frontier, key=lambda node: -tree.cum_logprob[node])
        counts = {node: 0 for node in order}
        for _ in range(shape.branch):
            for node in order:
                if room > 0:
                    counts[node] += 1
                    room -= 1
        level = []
        for node in order:
            if counts[node] == 0:
                continue
            q = distribution(frontier[node], params)
            draft_probs[node] = q
            for rank, token in enumerate(sample_without_replacement(q, counts[node], rng)):
                lp = float(np.log(q[token]))
                level.append(self._add(tree, self._reach[node] + self._log_accept(lp, shape),
                                       int(token), node, lp, rank))
        return level

    def _nodes_to_expand(self, tree, level, shape) -> list[int]:
        budget = min(shape.expand, self.max_expanded - (len(self._node_seq) - 1))
        best = sorted(level, key=lambda i: -self._reach[i])[:max(budget, 0)]
        floor = np.log(shape.min_expand_prob) if shape.min_expand_prob > 0 else -np.inf
        return [i for i in best if self._reach[i] >= floor]

    def _expand(self, tree, nodes) -> dict[int, np.ndarray]:
        """Decode one level in one batch; each node gets its own branch seq."""
        self.batch.clear()
        for node in nodes:
            seq = len(self._node_seq)
            self.ctx.seq_cp(self._node_seq[int(tree.parent[node])], seq)
            self._node_seq[node] = seq
            self.batch.add(int(tree.token[node]), self._root_pos + int(tree.depth[node]), (seq,), True)
        self.ctx.decode(self.batch)
        return {node: self.ctx.logits(i) for i, node in enumerate(nodes)}

    def observe(self, tree: TokenTree, verdict: Verdict) -> None:
        """Keep the deepest accepted node the draft decoded (and its path) in seq 0; drop the rest."""
        keep = 0
        for node in verdict.accepted:
            if node in self._node_seq:
                keep = node
        seq = self._node_seq[keep]
        if seq != 0:
            self.ctx.seq_keep(seq)
            self.ctx.seq_cp(seq, 0)
        self.ctx.seq_keep(0)
        self.n_cached = self._root_pos + int(tree.depth[keep]) + 1


class HybridDrafter:
    """The draft model's tree plus prompt-lookup guesses (free: no model call): the context's
    continuation of the draft's favourite branch is grafted below its end, and the continuation
    of the committed text beside the draft's first level.

    While guesses keep landing (a streak) and the context match is long, a round uses the guess
    alone and the draft model sits out; its cache catches up in one batched call when it is next
    needed. Under sampling with drawn children the tree must hold draws only: no guesses there.
    """

    STREAK = 2  # accepted guessed tokens that make the next round a guess-only round
    STRONG_MATCH = 3  # context-match length a guess-only round needs

    def __init__(self, model: DraftModelDrafter):
        self.model = model
        self._model_round = False
        self._streak = False

    def reset(self) -> None:
        self.model.reset()
        self._streak = False

    def propose(self, tokens: list[int], shape: TreeShape, params: SamplingParams,
                rng: np.random.Generator) -> Proposal:
        if self.model.children == "sampled" and not params.greedy:
            self._model_round = True
            return self.model.propose(tokens, shape, params, rng)
        guess, match = ngram.lookup(tokens, shape.ngram_len)
        self._model_round = not (self._streak and match >= self.STRONG_MATCH)
        if not self._model_round:
            tree = TokenTree(len(guess), tokens[-1])
            tree.graft(guess, NGRAM)
            return Proposal(tree, None, 0.0, 0)
        proposal = self.model.propose(tokens, shape, params, rng)
        tree = proposal.tree
        end = tree.best_leaf()
        path = [int(tree.token[i]) for i in tree.path(end)]
        tail, _ = ngram.lookup(tokens + path, shape.ngram_len)
        tree.graft(tail, NGRAM, at=end)
        tree.graft(guess, NGRAM)
        return proposal

    def observe(self, tree: TokenTree, verdict: Verdict) -> None:
        guessed = sum(1 for i in verdict.accepted if tree.source[i] == NGRAM)
        self._streak = guessed >= self.STREAK
        if self._model_round:
            self.model.observe(tree, verdict)
