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
from .llama import Context
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


def prob_bin(logprob: float, n_bins: int) -> int:
    """Which of n_bins equal slices of [0, 1] a token's draft probability falls in."""
    return min(int(np.exp(logprob) * n_bins), n_bins - 1)


class DraftModelDrafter:
    """A small model proposes the tree, one batched llama_decode per level.

    KV layout in the draft's unified cache: seq 0 holds committed tokens only; every node the
    draft decodes gets a seq id of its own that holds the prefix and its path (seq_cp from its
    parent up to the node's position, metadata only), so siblings never see each other.

    A guess (prompt lookup) rides along with the round's first call, in seq 1: one batched
    decode gives the draft's logits all along it, so wherever the draft's own choices follow the
    guess, those levels cost no further draft call.

    A reduced-vocab draft (draft_vocab.py) scores only the target ids in `ids`: its logits are
    indexed by position in ids, and q is widened back to the full vocabulary for the verifier.
    """

    GUESS_SEQ = 1

    def __init__(self, ctx: Context, children: str = "topk", ids: np.ndarray | None = None,
                 n_vocab: int | None = None):
        self.ctx = ctx
        self.children = children  # "topk": the draft's best tokens; "sampled": drawn from q
        self.ids = ids
        self.n_vocab = n_vocab or ctx.model.n_vocab
        self.max_expanded = ctx.n_seq_max - 2  # seq 0 is committed, seq 1 the guess
        self.batch = ctx.new_batch(ctx.n_batch, 2)  # a committed token may also carry the guess seq
        self.n_cached = 0  # committed tokens present in seq 0
        self._node_seq: dict[int, int] = {}
        self._root_pos = 0

    def reset(self) -> None:
        self.ctx.clear()
        self.n_cached = 0

    def close(self) -> None:
        self.batch.close()

    def propose(self, tokens: list[int], shape: TreeShape, params: SamplingParams,
                rng: np.random.Generator, guess: list[int] | None = None) -> Proposal:
        start = time.perf_counter()
        sampled = self.children == "sampled" and not params.greedy
        tree = TokenTree(shape.max_total_nodes + shape.ngram_len, tokens[-1], sampled=sampled)
        self._root_pos = len(tokens) - 1
        self._node_seq = {0: 0}
        self._next_seq = self.GUESS_SEQ + 1
        self._reach = {0: 0.0}
        guess = list(guess or [])
        rows = self._sync(tokens, guess)  # logits at the root, then after each guessed token
        on_guess = {0: 0}  # node -> how many guessed tokens its path follows
        frontier = {0: rows[0]}
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
            self._follow_guess(tree, level, guess, on_guess, len(rows))
            grow = self._nodes_to_expand(tree, level, shape)
            if not grow:
                break
            frontier = {n: rows[on_guess[n]] for n in grow if n in on_guess}
            unknown = [n for n in grow if n not in on_guess]
            if unknown:
                frontier |= self._expand(tree, unknown)
                calls += 1
        return Proposal(tree, draft_probs, time.perf_counter() - start, calls)

    def _sync(self, tokens: list[int], guess: list[int]) -> list[np.ndarray]:
        """Feed the committed tokens the draft has not seen, and the guess after them in seq 1.
        Returns the logits at the root and after each guessed token."""
        new = tokens[self.n_cached:]
        if not guess or len(new) + len(guess) > min(self.batch.capacity, self.ctx.n_batch):
            last = self.ctx.feed(self.batch, new, self.n_cached)
            self.n_cached = len(tokens)
            return [self.ctx.logits(last)]
        self.ctx.seq_cp(0, self.GUESS_SEQ)  # the guess sees the whole prefix
        self.batch.clear()
        for k, token in enumerate(new):
            self.batch.add(token, self.n_cached + k, (0, self.GUESS_SEQ), k == len(new) - 1)
        for k, token in enumerate(guess):
            self.batch.add(token, len(tokens) + k, (self.GUESS_SEQ,), True)
        self.ctx.decode(self.batch)
        self.n_cached = len(tokens)
        # copies: later draft calls overwrite the logits buffer, and these may serve any level
        return [np.array(self.ctx.logits(len(new) - 1 + k)) for k in range(len(guess) + 1)]

    def _follow_guess(self, tree, level, guess, on_guess, n_rows) -> None:
        """Mark the level's nodes that continue the guess: the draft has already decoded them."""
        for node in level:
            followed = on_guess.get(int(tree.parent[node]))
            if followed is not None and followed + 1 < n_rows and tree.token[node] == guess[followed]:
                on_guess[node] = followed + 1
                self._node_seq[node] = self.GUESS_SEQ

    def _best_level(self, tree, frontier, shape, room, params, draft_probs) -> list[int]:
        """Top-`branch` children of every frontier node worth a verify slot, the `room` most
        likely to be reached (ties: the draft's cumulative log-prob)."""
        pool = []
        floor = np.log(shape.min_node_prob) if shape.min_node_prob > 0 else -np.inf
        for node, logits in frontier.items():
            if not params.greedy:  # rank by q, the draft's distribution under the same settings
                q = distribution(logits, params)
                draft_probs[node] = self._widen(q)
                logits = np.log(np.maximum(q, 1e-300)).astype(np.float32)
            tokens, logprobs = top_candidates(logits, shape.branch)
            for rank, (token, lp) in enumerate(zip(self._target_ids(tokens), logprobs)):
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
        return float(np.log(max(table[prob_bin(logprob, len(table))], 1e-9)))

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
            draft_probs[node] = self._widen(q)
            drawn = sample_without_replacement(q, counts[node], rng)
            for rank, (index, token) in enumerate(zip(drawn, self._target_ids(drawn))):
                lp = float(np.log(q[index]))
                level.append(self._add(tree, self._reach[node] + self._log_accept(lp, shape),
                                       int(token), node, lp, rank))
        return level

    def _target_ids(self, indices: np.ndarray) -> np.ndarray:
        return indices if self.ids is None else self.ids[indices]

    def _widen(self, q: np.ndarray) -> np.ndarray:
        """q over the full vocabulary (zero outside a reduced draft's tokens)."""
        if self.ids is None:
            return q
        full = np.zeros(self.n_vocab, q.dtype)
        full[self.ids] = q
        return full

    def _nodes_to_expand(self, tree, level, shape) -> list[int]:
        budget = min(shape.expand, self.max_expanded - (self._next_seq - self.GUESS_SEQ - 1))
        best = sorted(level, key=lambda i: -self._reach[i])[:max(budget, 0)]
        floor = np.log(shape.min_expand_prob) if shape.min_expand_prob > 0 else -np.inf
        return [i for i in best if self._reach[i] >= floor]

    def _expand(self, tree, nodes) -> dict[int, np.ndarray]:
        """Decode one level in one batch; each node gets its own branch seq."""
        self.batch.clear()
        for node in nodes:
            seq, self._next_seq = self._next_seq, self._next_seq + 1
            pos = self._root_pos + int(tree.depth[node])
            # the parent's seq may run on past the parent (the guess): copy only the path to it
            self.ctx.seq_cp(self._node_seq[int(tree.parent[node])], seq, -1, pos)
            self._node_seq[node] = seq
            self.batch.add(int(tree.token[node]), pos, (seq,), True)
        self.ctx.decode(self.batch)
        return {node: self.ctx.logits(i) for i, node in enumerate(nodes)}

    def observe(self, tree: TokenTree, verdict: Verdict) -> None:
        """Keep the deepest accepted node the draft decoded (and its path) in seq 0; drop the rest."""
        keep = 0
        for node in verdict.accepted:
            if node in self._node_seq:
                keep = node
        seq = self._node_seq[keep]
        end = self._root_pos + int(tree.depth[keep]) + 1
        self.ctx.seq_rm(seq, end, -1)  # the guess's seq may run on past the kept node
        if seq != 0:
            self.ctx.seq_keep(seq)
            self.ctx.seq_cp(seq, 0)
        self.ctx.seq_keep(0)
        self.n_cached = end


class HybridDrafter:
    """The draft model's tree plus prompt-lookup guesses (text found earlier in the context).

    Where the context match is long: the draft checks the guess in its first call (levels where
    it agrees cost no further call), the context's continuation of the draft's favourite branch
    is grafted below its end, and the guess itself beside the draft's first level.
    While guesses keep landing (a streak), a round uses the guess alone and the draft model sits
    out; its cache catches up in one batched call when it is next needed. Under sampling with
    drawn children the tree must hold draws only: no guesses there.
    """

    STREAK = 2  # accepted guessed tokens that make the next round a guess-only round
    STRONG_MATCH = 3  # context-match length a guess-only round, or a checked guess, needs
    CHECKED_GUESS = 6  # guessed tokens the draft checks in its first call

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
        # the draft checks a guess in its first call only where the context match is long:
        # each guessed token costs part of a draft call, paid back only if the draft agrees
        checked = guess[:self.CHECKED_GUESS] if match >= self.STRONG_MATCH else []
        proposal = self.model.propose(tokens, shape, params, rng, checked)
        tree = proposal.tree
        end = tree.best_leaf()
        path = [int(tree.token[i]) for i in tree.path(end)]
        # guesses cost verify slots: only long context matches are worth them
        tail, tail_match = ngram.lookup(tokens + path, shape.ngram_len)
        if tail_match >= self.STRONG_MATCH:
            tree.graft(tail, NGRAM, at=end)
        if match >= self.STRONG_MATCH:
            tree.graft(guess, NGRAM)
        return proposal

    def observe(self, tree: TokenTree, verdict: Verdict) -> None:
        guessed = sum(1 for i in verdict.accepted if tree.source[i] == NGRAM)
        self._streak = guessed >= self.STREAK
        if self._model_round:
            self.model.observe(tree, verdict)
