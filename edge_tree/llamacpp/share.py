"""A generation's share of a llama.cpp context that several generations use side by side."""

from __future__ import annotations

import numpy as np

from ..errors import EdgeTreeError
from .llama import Context


class Share:
    """One generation's part of a context that several generations use side by side (`serve
    --parallel`): the sequences first..first+count-1 and, by agreement, `cells` of the KV cells.
    A lone generation's share is the whole context, where one llama.cpp call does what a share
    otherwise does sequence by sequence (each cache operation scans every cell)."""

    def __init__(self, ctx: Context, first: int = 0, count: int | None = None, cells: int | None = None):
        self.ctx = ctx
        self.first = first
        self.count = ctx.n_seq_max if count is None else count
        self.cells = ctx.n_ctx if cells is None else cells
        self.whole = first == 0 and self.count == ctx.n_seq_max
        if first < 0 or first + self.count > ctx.n_seq_max or self.count < 1:
            raise EdgeTreeError(f"internal: sequences {first}..{first + self.count - 1} are not the context's")

    def holds(self, seq: int, n: int) -> bool:
        """Whether sequence `seq` (absolute) holds positions 0..n-1 and none past them, as its
        owner left it (a cache cleared behind its back holds nothing)."""
        return self.ctx.seq_pos_min(seq) == 0 and self.ctx.seq_pos_max(seq) == n - 1

    def adopt(self, source: "Share", n: int) -> int:
        """In place of all this share holds, the first n cells of `source`'s first sequence (another
        generation in the same context read them): this share's first sequence joins theirs, the
        cells shared, not copied (seq_cp, metadata in a unified cache); either side's removals
        later drop only its own hold. Returns n, or 0 where those cells are not all there."""
        self.clear()
        self.ctx.seq_cp(source.first, self.first, 0, n)
        return self._holding(n)

    def save(self) -> np.ndarray:
        """The cells of the share's first sequence, for restore() (a prompt kept in host memory
        after its cells went: core/prompt_cache.py)."""
        return self.ctx.seq_state(self.first)

    def restorable(self, saved: int, n: int) -> bool:
        """Whether restore() can give back the first n of `saved` cells: a sliding-window cache
        saved only the cells its window saw from the last position, so a start shorter than
        the whole needs the whole to have fit in the window."""
        window = self.ctx.model.n_swa
        return not (window and n < saved and saved > window)

    def restore(self, state: np.ndarray, saved: int, n: int) -> int:
        """In place of all this share holds, the first n cells of a save() of `saved` cells.
        Returns n, or 0 where they are not restorable() or llama.cpp found no room."""
        self.clear()
        if self.restorable(saved, n) and self.ctx.set_seq_state(state, self.first):
            self.ctx.seq_rm(self.first, n, -1)
            return self._holding(n)
        self.clear()  # (a failed read may leave what it got to)
        return 0

    def _holding(self, n: int) -> int:
        """n where the first sequence now holds positions 0..n-1 and no more (what adopt and
        restore put there); else 0, and the share holds nothing."""
        if self.holds(self.first, n):
            return n
        self.clear()
        return 0

    def clear(self) -> None:
        if self.whole:
            self.ctx.clear()
            return
        for seq in range(self.first, self.first + self.count):
            self.ctx.seq_rm(seq)

    def commit(self, seq: int, end: int, used: int | None = None, tail: bool = True) -> None:
        """A round's commit: sequence `seq`'s cells below position `end` (the accepted path) become
        the share's first sequence, every other cell goes. used: as keep_only's; tail=False: seq
        holds nothing at or past `end` (each cache operation scans every cell: skip what has
        nothing to do)."""
        if tail:
            self.ctx.seq_rm(seq, end, -1)
        if used == 1:  # the first sequence alone holds cells
            return
        if seq != self.first:
            self.keep_only(seq, used)
            self.ctx.seq_cp(seq, self.first)
        self.keep_only(self.first, used)

    def keep_only(self, seq: int, used: int | None = None) -> None:
        """Drop every cell not in sequence `seq` (absolute); `used`: how many of the share's
        sequences may hold cells (the rest are known empty)."""
        if self.whole:
            self.ctx.seq_keep(seq)
            return
        for other in range(self.first, self.first + min(self.count, used or self.count)):
            if other != seq:
                self.ctx.seq_rm(other)
