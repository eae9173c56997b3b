"""The draft model proposes the tree, one batched llama_decode per level: proposing() yields each
call (a DraftCall), for the caller to decode alone (decode_alone) or with other lanes' calls in one
batch (core/slots.py, decode_calls), and reads its logits rows where the caller says they are.

KV layout in the draft's unified cache, in the generation's share of it (llamacpp/share.py, whose first
sequence is `seq0`): seq0 holds committed tokens only; every node the draft decodes gets a seq id
of its own that holds the prefix and its path (seq_cp from its parent up to the node's position,
metadata only), so siblings never see each other.

A request's lookahead (guessed tokens) rides along with the round's first call, in seq0 + 1: one
batched decode gives the draft's logits all along it, so wherever the draft's own choices follow
the guess, those levels cost no further draft call.

A reduced-vocab draft (llamacpp.draft_vocab) scores only the target ids in `ids`, and the dropped
tokens the context holds (their rows of the full output matrix times the copy's hidden state):
its logits are indexed by position in ids and then in those, and q is widened back to the full
vocabulary for the verifier.

While the target verifies a tree on other machines (ahead()), the draft decodes, in sequences of
their own (the last AHEAD_BRANCHES), the walk of the tree's first choices, then from each of its
likeliest tokens after it its own choices on. Where the target takes that walk and its bonus
token is one of those, observe() makes that branch's cells the committed prefix and the guess,
and the next round starts from their logits: no first call, and no call for the levels where
its choices follow them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator, Sequence

import numpy as np

from ..llamacpp.draft_vocab import OutputRows
from ..llamacpp.share import Share
from .drafting import DraftCall, DraftRequest, Proposal, Proposing
from .plan import TreeShape, prob_bin
from .sampling import distribution, log_normalizer, sample_without_replacement
from .tree import TokenTree, common_prefix
from .verify import Verdict


def top_candidates(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k likeliest tokens, best first, with their log-probs. For the few siblings a tree
    uses, k argmax passes beat np.argpartition over a 262k vocabulary by 10x."""
    work = logits.copy() if k > 1 else logits
    top = np.empty(k, np.int64)
    for i in range(k):
        top[i] = np.argmax(work)
        if k > 1:
            work[top[i]] = -np.inf
    return top, logits[top].astype(np.float64) - log_normalizer(logits, float(logits[top[0]]))


def call_batch(ctx):
    """A batch every draft call fits in: up to n_batch tokens, each in at most two sequences (a
    committed token may also carry the guess's)."""
    return ctx.new_batch(ctx.n_batch, 2)


def decode_calls(ctx, batch, calls: Sequence[DraftCall]) -> tuple[list[int], float]:
    """Several drafters' calls in one llama_decode of the draft: each call's first batch index,
    and the seconds it took."""
    batch.clear()
    firsts = []
    for call in calls:
        firsts.append(batch.n_tokens)
        for token, pos, seqs, output in call.entries:
            batch.add(token, pos, seqs, output)
    before = ctx.decode_s
    ctx.decode(batch)
    return firsts, ctx.decode_s - before


@dataclass
class Ahead:
    """One branch the draft decoded during a target pass: after the tree's first-choice walk
    (`path`, its nodes), a bonus token it expects (`choices[0]`) and its own choices on, with the
    logits after each (`rows[k]`: after choices[k])."""

    path: list[int]
    seq: int  # the draft's cache sequence that holds them
    choices: list[int]
    rows: list[np.ndarray]
    index_size: int  # the drafter's index space the rows cover (context tokens may grow it)


class DraftModelDrafter:
    extra_nodes = 0

    MAX_CONTEXT_TOKENS = 1024  # dropped tokens a generation may bring back: a bound on host work
    QUIET_RUN = 16  # committed tokens fed in a call of their own, without outputs, from this many
    AHEAD_MAX = 16  # own choices decoded past a walk's end: about the deepest a round's chain goes
    # bonus tokens decoded ahead from: a walk's end is where the draft grew unsure, and the
    # target took its first choice there in 6 of 11 fully accepted rounds (pair B over RPC)
    AHEAD_BRANCHES = 3

    def __init__(self, share: Share, children: str, ids: np.ndarray | None = None,
                 n_vocab: int | None = None, output: OutputRows | None = None):
        ctx = self.ctx = share.ctx
        self.share = share
        self.children = children  # "topk": the draft's best tokens; "sampled": drawn from q
        self.ids = ids
        self.n_vocab = n_vocab or ctx.model.n_vocab
        self.output = output if ids is not None else None
        if self.output:
            self._kept = np.zeros(self.n_vocab, bool)
            self._kept[ids] = True
        self._forget_context_tokens()
        # seq0 is committed, the next one the guess, the last ones decode ahead
        self.seq0 = share.first
        self.guess_seq = share.first + 1
        self.ahead_seq = share.first + share.count - 1  # and the AHEAD_BRANCHES - 1 below it
        self.max_expanded = share.count - 2 - self.AHEAD_BRANCHES
        self._went_ahead = False  # the last ones may hold cells
        self.batch = call_batch(ctx)
        self.n_cached = 0  # committed tokens present in seq0
        self._node_seq: dict[int, int] = {}
        self._root_pos = 0
        self._guess_len = 0
        self._ahead: list[Ahead] = []  # decoded during the target's pass, one per bonus token
        self._ready: Ahead | None = None  # ... and taken by the target: the next round's start

    def start(self, prompt: list[int], held: Sequence[int] = (), read: bool = True) -> None:
        """Forget the last generation, keeping the cells of the part of it (held: its tokens,
        the first n_cached of them in seq0) that the prompt begins with, and read the rest of
        the prompt; with read=False only when the draft is first asked for a tree (_sync): a
        generation that decodes plainly (beside many others, where trees do not pay) never pays
        the draft's prefill."""
        kept = common_prefix(held[:self.n_cached], prompt[:-1])
        if kept and not self.share.holds(self.seq0, self.n_cached):
            kept = 0
        if kept:
            self.share.keep_only(self.seq0)  # the guess and work ahead leave
            self.ctx.seq_rm(self.seq0, kept, -1)
        else:
            self.share.clear()
        self.n_cached = kept
        self._ahead, self._ready, self._went_ahead = [], None, False
        self._forget_context_tokens()
        if read and len(prompt) - 1 > kept:
            self._feed_without_outputs(prompt[kept:-1])
        self.ctx.output_hidden(self.output is not None)

    def adopt(self, source: "DraftModelDrafter", n: int) -> None:
        """TargetRunner.adopt for the draft's cache: the first n committed cells of another
        drafter's seq0 (as many as it holds, and none if they are not there); start() then
        keeps what the prompt shares with them."""
        self.n_cached = self.share.adopt(source.share, min(n, source.n_cached))

    def forget(self) -> None:
        """A generation goes on without the draft: none of its cells will match what follows."""
        self.n_cached = 0

    def drop(self) -> None:
        """Hold nothing (the target's cache took a start the draft never read, or failed)."""
        self.share.clear()
        self.forget()

    def _feed_without_outputs(self, run: list[int]) -> None:
        """Committed tokens into seq0, no logits or hidden states (while those are on, llama.cpp
        makes every token an output)."""
        self.ctx.output_hidden(False)
        self.ctx.feed(self.batch, run, self.n_cached, self.seq0)
        self.ctx.output_hidden(self.output is not None)
        self.n_cached += len(run)

    def _forget_context_tokens(self) -> None:
        self._index_ids = self.ids  # position in the draft's logits -> target id
        self._context_ids: dict[int, None] = {}  # dropped tokens seen in the context, in order
        self._context_rows = None
        self._noted = 0  # context tokens looked at

    def _note_context(self, tokens: list[int]) -> None:
        """Dropped tokens that appeared in the context become proposable: text repeats its rare
        words, and a reduced vocabulary drops exactly those."""
        if self.output is None:
            return
        room = self.MAX_CONTEXT_TOKENS - len(self._context_ids)
        new = [t for t in dict.fromkeys(tokens[self._noted:])
               if not self._kept[t] and t not in self._context_ids][:max(room, 0)]
        self._noted = len(tokens)
        if not new:
            return
        rows = self.output.rows(np.array(new))
        self._context_rows = rows if self._context_rows is None else np.concatenate([self._context_rows, rows])
        self._context_ids.update(dict.fromkeys(new))
        self._index_ids = np.concatenate([self.ids, np.fromiter(self._context_ids, np.int64)])

    def _logits(self, i: int) -> np.ndarray:
        """The draft's logits at the batch's i-th token, over its vocabulary and the context's
        dropped tokens."""
        row = self.ctx.logits(i)
        if self._context_rows is None:
            return row
        return np.concatenate([row, self.output.logits(self._context_rows, self.ctx.hidden(i))])

    def close(self) -> None:
        self.batch.close()

    def proposing(self, request: DraftRequest) -> Proposing:
        shape, params, tokens = request.shape, request.params, request.tokens
        sampled = self.children == "sampled" and not params.greedy
        tree = TokenTree(shape.capacity, tokens[-1], sampled=sampled)
        self._root_pos = len(tokens) - 1
        self._note_context(tokens)
        self._node_seq = {0: self.seq0}
        self._next_seq = self.guess_seq + 1
        self._reach = {0: 0.0}
        ready = self._take_ready(tokens)
        if ready:  # decoded during the last target pass: the draft's choices are the guess
            guess, rows, sizes = ready.choices[1:], ready.rows, []
        else:
            guess = list(request.lookahead)
            sizes = [len(tokens) - self.n_cached + len(guess)]  # the first call: new tokens, the guess
            rows = yield from self._sync(tokens, guess)  # logits at the root, then after each guessed token
        self._guess_len = len(guess)
        on_guess = {0: 0}  # node -> how many guessed tokens its path follows
        frontier = {0: rows[0]}
        draft_probs: dict[int, np.ndarray] = {}
        max_depth = shape.max_depth
        for depth in range(1, max_depth + 1):
            room = min(shape.max_nodes_per_level, shape.max_total_nodes - tree.n_drafted)
            if room <= 0 or not frontier:
                break
            if sampled:
                level = self._draw_level(tree, frontier, shape, room, params, request.rng, draft_probs)
            else:
                level = self._best_level(tree, frontier, shape, room, params, draft_probs)
            if depth == max_depth:
                break
            self._follow_guess(tree, level, guess, on_guess, len(rows))
            grow = self._nodes_to_expand(level, shape)
            if not grow:
                break
            frontier = {n: rows[on_guess[n]] for n in grow if n in on_guess}
            unknown = [n for n in grow if n not in on_guess]
            if unknown:
                frontier |= yield from self._expand(tree, unknown)
                sizes.append(len(unknown))
        return Proposal(tree, draft_probs, tuple(sizes), ready_rows=len(rows) if ready else 0)

    def decode_alone(self, call: DraftCall) -> tuple[int, float]:
        """A call in a llama_decode of its own: (its first token's batch index, seconds)."""
        _, seconds = decode_calls(self.ctx, self.batch, [call])
        return 0, seconds

    def unread(self, tokens: Sequence[int]) -> int:
        """The committed tokens before the root that seq0 lacks (none where the last pass's
        work ahead holds the root too)."""
        return max(0, len(tokens) - 1 - self.n_cached)

    def _take_ready(self, tokens: list[int]) -> Ahead | None:
        """The rows decoded ahead, if they are still this context's (the committed prefix and the
        root are in seq0, the draft's further choices in the guess seq); else drop their cells
        (rounds without the model came between, or the context brought the index new tokens)."""
        ready, self._ready = self._ready, None
        if ready is None:
            return None
        if self.n_cached == len(tokens) and ready.index_size == self._index_size():
            return ready
        self.ctx.seq_rm(self.guess_seq)
        if self.n_cached == len(tokens):  # the root is in seq0: decode it again for its logits
            self.n_cached -= 1
            self.ctx.seq_rm(self.seq0, self.n_cached, -1)
        return None

    def _sync(self, tokens: list[int], guess: list[int]) -> Generator[DraftCall, int, list[np.ndarray]]:
        """Feed the committed tokens the draft has not seen, and the guess after them in the
        guess seq, in one call. Returns the logits at the root and after each guessed token."""
        if len(tokens) - self.n_cached > self.QUIET_RUN:  # a long run (the prompt, rounds without
            self._feed_without_outputs(tokens[self.n_cached:-1])  # the model): no outputs but the root
        new = tokens[self.n_cached:]  # at most QUIET_RUN tokens, within any batch (n_batch >= 16)
        if len(new) + len(guess) > min(self.batch.capacity, self.ctx.n_batch):
            guess = []
        seqs = (self.seq0, self.guess_seq) if guess else (self.seq0,)
        if guess:
            self.ctx.seq_cp(self.seq0, self.guess_seq)  # the guess sees the whole prefix
        entries = [(token, self.n_cached + k, seqs, k == len(new) - 1) for k, token in enumerate(new)]
        entries += [(token, len(tokens) + k, (self.guess_seq,), True) for k, token in enumerate(guess)]
        first = yield DraftCall(tuple(entries))
        self.n_cached = len(tokens)
        rows = [self._logits(first + len(new) - 1 + k) for k in range(len(guess) + 1)]
        # copies: later draft calls overwrite the logits buffer, and these may serve any level
        return [np.array(row) for row in rows] if guess else rows

    def _follow_guess(self, tree, level, guess, on_guess, n_rows) -> None:
        """Mark the level's nodes that continue the guess: the draft has already decoded them."""
        for node in level:
            followed = on_guess.get(int(tree.parent[node]))
            if followed is not None and followed + 1 < n_rows and tree.token[node] == guess[followed]:
                on_guess[node] = followed + 1
                self._node_seq[node] = self.guess_seq

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
        return indices if self.ids is None else self._index_ids[indices]

    def _widen(self, q: np.ndarray) -> np.ndarray:
        """q over the full vocabulary (zero outside the tokens a reduced draft scores)."""
        if self.ids is None:
            return q
        full = np.zeros(self.n_vocab, q.dtype)
        full[self._index_ids] = q
        return full

    def _nodes_to_expand(self, level, shape) -> list[int]:
        budget = min(shape.expand, self.max_expanded - (self._next_seq - self.guess_seq - 1))
        best = sorted(level, key=lambda i: -self._reach[i])[:max(budget, 0)]
        floor = np.log(shape.min_expand_prob) if shape.min_expand_prob > 0 else -np.inf
        return [i for i in best if self._reach[i] >= floor]

    def _expand(self, tree, nodes) -> Generator[DraftCall, int, dict[int, np.ndarray]]:
        """Decode one level in one call; each node gets its own branch seq."""
        entries = []
        for node in nodes:
            seq, self._next_seq = self._next_seq, self._next_seq + 1
            pos = self._root_pos + int(tree.depth[node])
            # the parent's seq may run on past the parent (the guess): copy only the path to it
            self.ctx.seq_cp(self._node_seq[int(tree.parent[node])], seq, -1, pos)
            self._node_seq[node] = seq
            entries.append((int(tree.token[node]), pos, (seq,), True))
        first = yield DraftCall(tuple(entries))
        return {node: self._logits(first + i) for i, node in enumerate(nodes)}

    def ahead(self, tree: TokenTree, busy: Callable[[], bool]) -> None:
        """While the target verifies `tree` elsewhere: decode the tree's first-choice walk, then,
        from each of the draft's AHEAD_BRANCHES likeliest bonus tokens after it, its own top
        choices, one batched call a token while busy() holds."""
        self._ahead = []
        path = tree.first_choice_path()
        if not path:
            return
        self._went_ahead = True
        # one core stays with the target's side of the pass: its input embeddings, the copies
        # between devices, the RPC client's reads and writes (measured: with every thread
        # here, a pass over two hosts on this machine's cores slowed as much as the draft gained)
        self.ctx.use_threads(max(1, self.ctx.threads - 1))
        try:
            self._decode_ahead(tree, path, busy)
        finally:
            self.ctx.use_threads(self.ctx.threads)

    def _decode_ahead(self, tree: TokenTree, path: list[int], busy: Callable[[], bool]) -> None:
        # nodes the draft decoded form a prefix of the walk; the walk's end is decoded again for
        # its logits, which propose() never keeps
        done = min(sum(1 for node in path if node in self._node_seq), len(path) - 1)
        anchor = path[done - 1] if done else 0
        start = self._root_pos + done + 1  # the position of path[done]
        seqs = [self.ahead_seq - k for k in range(self.AHEAD_BRANCHES)]
        root = self._root_pos + len(path) + 1  # where the bonus token will sit
        # cells: the committed ones, the tree's, the guess's, the walk's and these, all in n_ctx
        room = (self.share.cells - root - tree.n - self._guess_len - len(path) - 2) // len(seqs)
        if room < 1:
            return
        self.ctx.seq_cp(self._node_seq[anchor], seqs[0], -1, start)
        last = self.ctx.feed(self.batch, [int(tree.token[n]) for n in path[done:]], start, seqs[0])
        bonuses, _ = top_candidates(self._logits(last), len(seqs))
        for seq in seqs[1:]:
            self.ctx.seq_cp(seqs[0], seq)
        choices = [[int(t)] for t in self._target_ids(bonuses)]
        rows: list[list[np.ndarray]] = [[] for _ in seqs]
        step = 0
        while busy() and step < min(self.AHEAD_MAX, room):
            self.batch.clear()
            for seq, chosen in zip(seqs, choices):
                self.batch.add(chosen[-1], root + step, (seq,), True)
            self.ctx.decode(self.batch)
            for k, (row, chosen) in enumerate(zip(rows, choices)):
                row.append(np.array(self._logits(k)))
                chosen.append(self._top_choice(row[-1]))
            step += 1
        if step:
            self._ahead = [Ahead(path, seq, chosen[:step], row, self._index_size())
                           for seq, chosen, row in zip(seqs, choices, rows)]

    def _top_choice(self, logits: np.ndarray) -> int:
        return int(self._target_ids(np.array([np.argmax(logits)]))[0])

    def _index_size(self) -> int:
        """How many tokens the draft's logits cover (0: its whole vocabulary)."""
        return 0 if self._index_ids is None else len(self._index_ids)

    def observe(self, tree: TokenTree, verdict: Verdict) -> None:
        """Keep the deepest accepted node the draft decoded (and its path) in seq0; drop the rest.
        Where the target took the walk decoded ahead and added a bonus token a branch decoded
        ahead starts with, keep that branch instead: committed up to the new root, the draft's
        further choices as the next round's guess."""
        aheads, self._ahead = self._ahead, []
        went_ahead, self._went_ahead = self._went_ahead, False
        taken = next((a for a in aheads if list(verdict.accepted) == a.path
                      and verdict.bonus_token == a.choices[0]), None)
        if taken:
            root = self._root_pos + len(taken.path) + 1
            self.share.keep_only(taken.seq)
            self.ctx.seq_cp(taken.seq, self.seq0, -1, root + 1)
            self.ctx.seq_cp(taken.seq, self.guess_seq)
            self.ctx.seq_rm(taken.seq)
            self.n_cached = root + 1
            self._ready = taken
            return
        keep = 0
        for node in verdict.accepted:
            if node in self._node_seq:
                keep = node
        seq = self._node_seq[keep]
        end = self._root_pos + int(tree.depth[keep]) + 1
        used = None if went_ahead else self._next_seq - self.seq0  # sequences that may hold cells
        self.share.commit(seq, end, used)  # the guess's seq may run on past the kept node
        self.n_cached = end
