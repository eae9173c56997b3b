"""The target's side of a round: the whole tree in one llama_decode, then trim the cache.

Tree branches are parallel sequences in one unified KV cache: each leaf is a seq id, a node
carries the ids of every branch through it, and the committed prefix belongs to all of them
(seq_cp from seq 0, metadata only). After verification the accepted path is kept as seq 0 and
every other cell leaves the cache, the commit of llama.cpp's examples/speculative.
"""

from __future__ import annotations

import threading
from typing import Callable

from ..llamacpp.llama import Batch, Context
from .tree import TokenTree, branch_seq_ids


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
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.batch = Batch(ctx.n_batch, ctx.n_seq_max)
        self.n_cached = 0  # committed tokens in the cache; the round's root is not among them
        self._seqs: list[list[int]] = []

    def reset(self) -> None:
        self.ctx.clear()
        self.n_cached = 0

    def close(self) -> None:
        self.batch.close()

    def prefill(self, tokens: list[int]) -> None:
        """Everything but the last token, which becomes the first round's root."""
        if len(tokens) > 1:
            self.ctx.feed(self.batch, tokens[:-1], 0)
        self.n_cached = len(tokens) - 1

    def evaluate(self, tree: TokenTree, meanwhile: Callable[[Callable[[], bool]], None] | None = None):
        """One target pass over root + all nodes; returns node index -> logits (valid until the
        next decode). meanwhile(busy): work for this thread while the pass runs on another,
        until busy() turns False (the pass ends whether or not it looks)."""
        self._seqs = branch_seq_ids(tree)
        for seq in range(1, len(self._seqs[0])):
            self.ctx.seq_cp(0, seq)
        self.batch.clear()
        for i in range(tree.n):
            self.batch.add(int(tree.token[i]), self.n_cached + int(tree.depth[i]), self._seqs[i], True)
        if meanwhile:
            decode_while_ahead(self.ctx, self.batch, meanwhile)
        else:
            self.ctx.decode(self.batch)
        return self.ctx.logits  # batch index == node index

    def commit(self, tree: TokenTree, last_node: int) -> None:
        """Keep prefix + root + accepted path (ending at last_node) as seq 0, drop the rest."""
        seq = self._seqs[last_node][0]
        end = self.n_cached + int(tree.depth[last_node]) + 1
        # each cache operation scans every cell: skip those with nothing to do (plain decoding
        # keeps all it decoded, a chain has no other branch)
        if end < self.n_cached + tree.n:
            self.ctx.seq_rm(seq, end, -1)
        if len(self._seqs[0]) > 1:  # the root is in several branches
            if seq != 0:
                self.ctx.seq_keep(seq)
                self.ctx.seq_cp(seq, 0)
            self.ctx.seq_keep(0)
        self.n_cached = end
