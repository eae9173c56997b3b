"""A draft model's tree with prompt-lookup guesses grafted onto it: two drafters composed.

Where the context match is long, the draft checks the guess in its first call (levels where it
agrees cost no further call), the context's continuation of the draft's favourite branch is
grafted below its end, and the guess itself beside the draft's first level. Guesses fill only the
room the plan leaves for them (`extra_nodes` asked, `shape.guess_nodes` granted), never deeper
than `shape.guess_depth`.

A round where the plan calls no draft model (the policy found that it does not pay here), or
where guesses keep landing (a streak), uses the guess alone (in a streak, as long as the room the
plan gives the model and the guesses together); the draft's cache catches up in one batched call
when it is next needed. Under sampling with drawn children the tree must hold draws
only: no guesses there.
"""

from __future__ import annotations

from typing import Sequence

from .drafting import DraftRequest, Proposal, Proposing, root_only
from .lookup import guess_tree, lookup
from .model_drafter import DraftModelDrafter
from .plan import GUESS_LEN
from .tree import NGRAM, TokenTree


class LookupGraftDrafter:
    STREAK = 2  # accepted guessed tokens that make the next round a guess-only round
    STRONG_MATCH = 3  # context-match length a guess needs to be worth its verify slots
    CHECKED_GUESS = 6  # guessed tokens the draft checks in its first call
    extra_nodes = GUESS_LEN

    def __init__(self, model: DraftModelDrafter):
        self.model = model
        self._model_round = False
        self._streak = False

    def start(self, prompt: list[int], held: Sequence[int] = (), read: bool = True) -> None:
        self.model.start(prompt, held, read)
        self._streak = False

    def proposing(self, request: DraftRequest) -> Proposing:
        shape = request.shape
        wants_model = shape.use_model and shape.max_total_nodes > 0
        if self.model.children == "sampled" and not request.params.greedy:
            self._model_round = wants_model
            return (yield from self.model.proposing(request)) if wants_model else root_only(request.tokens)
        guess, match = lookup(request.tokens, min(GUESS_LEN, shape.guess_depth))
        strong = match >= self.STRONG_MATCH
        self._model_round = wants_model and not (self._streak and strong)
        if not self._model_round:
            # a streak round drafts nothing with the model, so the guess may take the model's room
            # too: held to guess_nodes (2-3), streak rounds yielded 3 tokens where model rounds
            # yielded 8, and a repetitive stretch stayed in them
            room = shape.capacity if wants_model else shape.guess_nodes
            if strong and room:
                return Proposal(guess_tree(request.tokens, guess[:room]))
            return root_only(request.tokens)
        # the draft checks a guess in its first call only where the context match is long:
        # each guessed token costs part of a draft call, paid back only if the draft agrees
        checked = tuple(guess[:self.CHECKED_GUESS]) if strong else ()
        proposal = yield from self.model.proposing(request.but(lookahead=checked))
        self._graft_guesses(request, proposal.tree, guess if strong else [])
        return proposal

    def _graft_guesses(self, request: DraftRequest, tree: TokenTree, guess: list[int]) -> None:
        """The context's continuation of the draft's favourite branch below its end, then the
        root's guess; the tree's capacity bounds both to the room granted."""
        end = tree.best_leaf()
        path = [int(tree.token[i]) for i in tree.path(end)]
        depth_left = request.shape.guess_depth - int(tree.depth[end])
        tail, tail_match = lookup(request.tokens + path, min(GUESS_LEN, depth_left))
        if tail_match >= self.STRONG_MATCH:
            tree.graft(tail, NGRAM, at=end)
        tree.graft(guess, NGRAM)

    def ahead(self, tree, busy) -> None:
        if self._model_round:  # else the draft's cache lags behind the context
            self.model.ahead(tree, busy)

    def unread(self, tokens) -> int:
        return self.model.unread(tokens)

    def observe(self, tree, verdict) -> None:
        guessed = sum(1 for i in verdict.accepted if tree.source[i] == NGRAM)
        self._streak = guessed >= self.STREAK
        if self._model_round:
            self.model.observe(tree, verdict)
