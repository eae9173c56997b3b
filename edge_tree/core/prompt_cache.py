"""Prompts kept in host memory once their cells left the target's KV cache (`serve --cache-ram`,
as llama-server's): before a slot's new request drops the cells of its last generation, they are
saved here (Share.save), and a later request that starts as one of them did takes those cells
back (core/slots.py) instead of reading that start again. Least recently used go first past the
limit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .tree import common_prefix

MIB = 1 << 20


@dataclass
class Saved:
    tokens: list[int]  # whose cells, from position 0
    state: np.ndarray  # as Share.save() wrote them


class PromptCache:
    def __init__(self, limit_mib: int = -1):
        self.limit = None if limit_mib < 0 else limit_mib * MIB  # -1: no limit
        self._saved: list[Saved] = []  # least recently used first

    @property
    def size(self) -> int:
        """Bytes held."""
        return sum(saved.state.nbytes for saved in self._saved)

    def holds(self, tokens: Sequence[int]) -> bool:
        """Whether an entry begins with all of these tokens (saving them would add nothing)."""
        return any(common_prefix(saved.tokens, tokens) == len(tokens) for saved in self._saved)

    def add(self, tokens: Sequence[int], state: np.ndarray) -> None:
        """Keep the cells of these tokens; entries they extend go (this one holds what they held)."""
        self._saved = [saved for saved in self._saved if common_prefix(saved.tokens, tokens) < len(saved.tokens)]
        if self.limit is not None and state.nbytes > self.limit:
            return
        self._saved.append(Saved(list(tokens), state))
        while self.limit is not None and self.size > self.limit:
            self._saved.pop(0)

    def best(self, tokens: Sequence[int]) -> tuple[Saved | None, int]:
        """The entry that shares the longest start with these tokens, and that start's length
        (None, 0 where none shares any); it becomes the most recently used."""
        if not self._saved:
            return None, 0
        shared = [common_prefix(saved.tokens, tokens) for saved in self._saved]
        k = max(range(len(shared)), key=shared.__getitem__)
        if not shared[k]:
            return None, 0
        self._saved.append(self._saved.pop(k))
        return self._saved[-1], shared[k]
