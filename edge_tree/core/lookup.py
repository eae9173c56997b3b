"""Prompt lookup: guess the next tokens by finding the context's last few tokens earlier in it.

Free to compute (no model call); strong where text repeats or copies its input: lists, code,
extractive answers, and the loops small base models fall into. `LookupDrafter` is the drafter
of `--mode lookup`: it needs no draft model.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .drafting import DraftRequest, Proposal, Proposing, no_calls, root_only
from .plan import GUESS_LEN
from .tree import NGRAM, TokenTree

MAX_MATCH = 4  # longest suffix tried first: a longer match predicts better
MIN_MATCH = 2


def lookup(tokens: list[int], length: int, max_match: int = MAX_MATCH,
           min_match: int = MIN_MATCH) -> tuple[list[int], int]:
    """The tokens that followed the most recent earlier occurrence of the longest matching suffix
    (at most `length`; empty when the suffix never occurred before), and that suffix's length."""
    if length <= 0 or len(tokens) <= min_match:
        return [], 0
    context = np.asarray(tokens, dtype=np.int64)
    for n in range(min(max_match, len(context) - 1), min_match - 1, -1):
        suffix = context[-n:]
        # candidate starts: the suffix's first token, early enough to be followed by something
        starts = np.flatnonzero(context[: len(context) - n] == suffix[0])
        for start in starts[::-1]:
            if np.array_equal(context[start:start + n], suffix):
                follow = context[start + n:start + n + length]
                return [int(t) for t in follow], n
    return [], 0


def guess_tree(tokens: list[int], guess: list[int]) -> TokenTree:
    """A chain of guessed tokens below the root."""
    tree = TokenTree(len(guess), tokens[-1])
    tree.graft(guess, NGRAM)
    return tree


class LookupDrafter:
    """Proposes the context's continuation of its own last tokens as one branch, or nothing."""

    extra_nodes = 0

    def start(self, prompt: list[int], held: Sequence[int] = (), read: bool = True) -> None:
        pass

    def proposing(self, request: DraftRequest) -> Proposing:
        shape = request.shape
        guess, _ = lookup(request.tokens, min(GUESS_LEN, shape.max_depth, shape.max_total_nodes))
        return no_calls(Proposal(guess_tree(request.tokens, guess)) if guess else root_only(request.tokens))

    def ahead(self, tree, busy) -> None:
        pass

    def observe(self, tree, verdict) -> None:
        pass

    def unread(self, tokens) -> int:
        return 0  # no model to read them
