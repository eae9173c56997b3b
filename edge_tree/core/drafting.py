"""The drafter interface: one small protocol, one class per way of proposing a tree.

As in Hugging Face's CandidateGenerator, the loop knows drafters only through this:
    start(prompt, held, read)  a new generation: read the prompt (now, or with read=False
                             at its first tree), keeping what the last one (its tokens:
                             held) left in the cache that the prompt begins with
    proposing(request)       grow a TokenTree rooted at the context's last token: a generator
                             that yields each draft-model decode it needs (a DraftCall) and
                             is sent back where the call's first token sits in the batch
                             decoded, so that the caller may decode several lanes' calls in
                             one llama_decode (core/slots.py); it returns the Proposal
    ahead(tree, busy)        work while the target verifies the tree elsewhere (or nothing)
    observe(tree, verdict)   learn the outcome, trim caches
    unread(tokens)           committed tokens the draft model has yet to read: what a tree
                             of this context pays first (the policy weighs it)
and `extra_nodes`, the nodes a drafter may add beyond the policy's plan (guesses found in the
context), for which the loop leaves room within the user's hard caps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Generator, Protocol, Sequence

import numpy as np

from .plan import TreeShape
from .sampling import SamplingParams
from .tree import TokenTree
from .verify import Verdict


@dataclass(frozen=True)
class DraftRequest:
    tokens: list[int]  # the context; tokens[-1] is the root, not yet seen by the target
    shape: TreeShape
    params: SamplingParams
    rng: np.random.Generator
    # tokens the caller expects may follow the root: a drafter may score them in its first call,
    # so that levels where it agrees with them cost no further call
    lookahead: tuple[int, ...] = ()

    def but(self, **changes) -> "DraftRequest":
        return replace(self, **changes)


@dataclass
class Proposal:
    tree: TokenTree
    draft_probs: dict[int, np.ndarray] | None = None  # q at each expanded node when sampling
    draft_sizes: tuple[int, ...] = ()  # tokens fed to each batched draft-model decode
    ready_rows: int = 0  # draft-model logits rows decoded during the last target pass, no call now

    @property
    def draft_calls(self) -> int:
        return len(self.draft_sizes)


@dataclass(frozen=True)
class DraftCall:
    """One decode of the draft model a drafter needs: (token, position, seq ids, logits wanted)
    for each token, in order."""

    entries: tuple[tuple[int, int, tuple[int, ...], bool], ...]


# a drafter's round: yields its calls, is sent each call's first batch index, returns the tree
Proposing = Generator[DraftCall, int, Proposal]


def no_calls(proposal: Proposal) -> Proposing:
    """A proposal made without the draft model, as proposing() hands it over."""
    return proposal
    yield  # unreachable: it makes this a generator, which returns at its first step


def run_calls(steps: Generator, decode: Callable[[DraftCall], object]):
    """Drive a generator of draft calls to its end, sending back decode(call) for each call;
    returns what the generator returns."""
    answer = None
    while True:
        try:
            call = steps.send(answer)
        except StopIteration as done:
            return done.value
        answer = decode(call)


def root_only(tokens: list[int]) -> Proposal:
    """A round that proposes nothing: the target decodes the root alone (plain decoding)."""
    return Proposal(TokenTree(0, tokens[-1]))


class Drafter(Protocol):
    extra_nodes: int

    def start(self, prompt: list[int], held: Sequence[int] = (), read: bool = True) -> None: ...

    def proposing(self, request: DraftRequest) -> Proposing: ...

    def ahead(self, tree: TokenTree, busy: Callable[[], bool]) -> None: ...

    def observe(self, tree: TokenTree, verdict: Verdict) -> None: ...

    def unread(self, tokens: Sequence[int]) -> int: ...
