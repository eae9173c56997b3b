"""The target's side of a round: the whole tree in one llama_decode, then trim the cache.

Tree branches are parallel sequences in one unified KV cache: each leaf is a seq id, a node
carries the ids of every branch through it, and the committed prefix belongs to all of them
(seq_cp from seq 0, metadata only). After verification the accepted path is kept as seq 0 and
every other cell leaves the cache, the commit of llama.cpp's examples/speculative.
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

import numpy as np

from ..llamacpp.llama import Batch, Context
from ..llamacpp.share import Share
from .tree import TokenTree, branch_seq_ids, common_prefix


def decode_while_ahead(ctx: Context, batch: Batch, meanwhile: Callable[[Callable[[], bool]], None]) -> None:
    """ctx.decode(batch) on a thread of its own (ctypes lets go of the GIL inside llama.cpp) while
    meanwhile(busy) runs on this one; returns once both are done, raising what either raised."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            ctx.decode(batch)
        except BaseException as error:  # handed to the caller's thread
            raised.append(error)

    # a daemon: a host that fails mid-pass leaves its thread waiting for good (llamacpp/rpc.py)
    worker = threading.Thread(target=run, name="edge-tree-target-pass", daemon=True)
    worker.start()
    try:
        meanwhile(worker.is_alive)
    finally:
        worker.join()  # nothing may touch the target's context while the pass runs
    if raised:
        raise raised[0]


class TargetRunner:
    """The target's side of one generation, in its share of the target's context (llamacpp/share.py):
    seq ids below are the share's own, 0 the committed sequence."""

    def __init__(self, share: Share):
        self.share = share
        self.ctx = share.ctx
        self.batch = Batch(self.ctx.n_batch, self.ctx.n_seq_max)
        self.n_cached = 0  # committed tokens in the cache; the round's root is not among them
        self._seqs: list[list[int]] = []

    @property
    def cells(self) -> int:
        return self.share.cells

    def reset(self) -> None:
        self.share.clear()
        self.n_cached = 0

    def close(self) -> None:
        self.batch.close()

    def prefill(self, tokens: list[int], held: Sequence[int] = ()) -> int:
        """Everything but the last token, which becomes the first round's root. held: the tokens
        of the last generation on this share, whose first n_cached cells its commits left in
        the cache: the part they share with the prompt is kept, not decoded again. Returns how
        many tokens were kept."""
        kept = self.keep(tokens, held)
        if len(tokens) - 1 > kept:
            self.ctx.feed(self.batch, tokens[kept:-1], kept, self.share.first)
        self.n_cached = len(tokens) - 1
        return kept

    def keep(self, tokens: list[int], held: Sequence[int] = ()) -> int:
        """prefill's first half: keep the cells of what held and the prompt share, drop the
        rest; n_cached becomes how many were kept (the prompt's rest is for feed or stage)."""
        first = self.share.first
        kept = common_prefix(held[:self.n_cached], tokens[:-1])
        if kept and not self.share.holds(first, self.n_cached):
            kept = 0
        if kept:
            self.ctx.seq_rm(first, kept, -1)  # commits left no other sequence holding cells
        else:
            self.reset()
        self.n_cached = kept
        return kept

    def adopt(self, source: "TargetRunner", n: int) -> None:
        """In place of this runner's cache, the first n committed cells of another's in the same
        context (core/slots.py: another lane read that start of the prompt); none if they are
        not all there (Share.adopt)."""
        self.n_cached = self.share.adopt(source.share, n)

    def save(self) -> np.ndarray:
        """The committed cells, for restore() once they are gone (core/prompt_cache.py)."""
        return self.share.save()

    def restore(self, state: np.ndarray, saved: int, n: int) -> None:
        """In place of this runner's cache, the first n of a save() of `saved` committed cells;
        none where they cannot come back (Share.restore)."""
        self.n_cached = self.share.restore(state, saved, n)

    def stage_prompt(self, tokens: Sequence[int], batch: Batch) -> None:
        """Add prompt tokens after the cached ones to a shared pass, without logits; they are
        cached once the pass ran (n_cached moves on now: nothing reads it in between)."""
        first = self.share.first
        for k, token in enumerate(tokens):
            batch.add(int(token), self.n_cached + k, (first,), False)
        self.n_cached += len(tokens)

    def evaluate(self, tree: TokenTree, meanwhile: Callable[[Callable[[], bool]], None] | None = None):
        """One target pass over root + all nodes; returns node index -> logits (valid until the
        next decode). meanwhile(busy): work for this thread while the pass runs on another,
        until busy() turns False (the pass ends whether or not it looks)."""
        self.batch.clear()
        self.stage(tree, self.batch)
        if meanwhile:
            decode_while_ahead(self.ctx, self.batch, meanwhile)
        else:
            self.ctx.decode(self.batch)
        return self.ctx.logits  # batch index == node index

    def stage(self, tree: TokenTree, batch: Batch) -> int:
        """Add root + all nodes to `batch` (a pass that may carry other generations' trees too);
        returns the batch index of the root, the first of the tree's rows."""
        first = self.share.first
        self._seqs = branch_seq_ids(tree)
        for seq in range(1, len(self._seqs[0])):
            self.ctx.seq_cp(first, first + seq)
        start = batch.n_tokens
        for i in range(tree.n):
            batch.add(int(tree.token[i]), self.n_cached + int(tree.depth[i]),
                      [first + seq for seq in self._seqs[i]], True)
        return start

    def commit(self, tree: TokenTree, last_node: int) -> None:
        """Keep prefix + root + accepted path (ending at last_node) as seq 0, drop the rest."""
        first, used = self.share.first, len(self._seqs[0])
        seq = first + self._seqs[last_node][0]
        end = self.n_cached + int(tree.depth[last_node]) + 1
        # plain decoding keeps all it decoded, and a chain has no other branch
        self.share.commit(seq, end, used, tail=end < self.n_cached + tree.n)
        self.n_cached = end
