"""A lane: what one generation uses of the loaded models. Its share of the target's and of the
draft's context (llamacpp/share.py: a range of sequences and of cells), its drafters and its policy.
A lone engine has one lane over whole contexts; `serve --parallel N` has N, side by side in the
same two contexts, so that one target pass can verify every lane's tree (core/slots.py)."""

from __future__ import annotations

from dataclasses import dataclass

from .compose import LookupGraftDrafter
from .drafting import Drafter
from .lookup import LookupDrafter
from .model_drafter import DraftModelDrafter
from .policy import Policy
from .target import TargetRunner


@dataclass
class Lane:
    target: TargetRunner
    model_drafter: DraftModelDrafter | None
    policy: Policy

    def __post_init__(self):
        # the last generation's tokens, whose cells its runners' caches hold as far as each
        # says (n_cached): a prompt that begins with them starts from there (prompt cache)
        self.context: list[int] = []
        self.lookup_drafter = LookupDrafter()
        self.graft_drafter = self.model_drafter and LookupGraftDrafter(self.model_drafter)

    @property
    def cells(self) -> int:
        """The KV cells this lane may fill, the same in both contexts."""
        return self.target.cells

    @property
    def max_tree_nodes(self) -> int:
        """The most drafted and guessed nodes a round's tree may hold: one sequence each, at
        most, beside the committed one."""
        return self.target.share.count - 1

    def drafter_for(self, mode: str, ngram: bool) -> Drafter | None:
        """The drafter of a mode: none for ar; tree grafts guesses onto the model's unless told not to."""
        if mode == "lookup":
            return self.lookup_drafter
        if mode == "tree" and ngram:
            return self.graft_drafter
        return self.model_drafter if mode != "ar" else None

    def clear(self) -> None:
        """Empty both shares, after a generation failed with its caches in an unknown state."""
        self.context = []
        self.target.reset()
        if self.model_drafter:
            self.model_drafter.drop()

    def close(self) -> None:
        self.target.close()
        if self.model_drafter:
            self.model_drafter.close()
