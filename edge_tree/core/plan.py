"""A round's plan: what the policy decides and the drafters carry out.

The plan lives apart from its executors (drafters) and from the one who makes it (the policy), so
that neither needs the other to read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # for annotations only: the plan needs neither at run time
    from .tree import TokenTree
    from .verify import Verdict

GUESS_LEN = 10  # the longest guess (prompt lookup) a round uses: policy and drafters read it here


@dataclass(frozen=True)
class TreeShape:
    """How big a tree to grow this round: the main drafter's part (max_depth, max_total_nodes and
    the shape within them), and room for guesses beside it (guess_nodes nodes, none deeper than
    guess_depth). The loop cuts both to the user's hard caps before a drafter sees them."""

    max_depth: int = 6
    max_nodes_per_level: int = 8
    max_total_nodes: int = 48
    branch: int = 2  # children proposed per expanded node (the draft's top choices / draws)
    expand: int = 2  # nodes per level decoded in the draft, to grow the next level
    use_model: bool = True  # False: this round calls no draft model (guesses alone, or nothing)
    guess_nodes: int | None = None  # None: the room a drafter asks for (its extra_nodes)
    guess_depth: int = 0
    # Worth-it thresholds on a node's estimated reach, the chance the target's walk gets to it:
    # drafted nodes below min_node_prob are not worth a verify slot, and nodes below
    # min_expand_prob are not worth a draft call to grow. Reach multiplies, along the path,
    # accept_table[bin of the draft probability] (P(target takes a child | its draft prob),
    # learned online; empty: the draft probability itself).
    min_node_prob: float = 0.0
    min_expand_prob: float = 0.0
    accept_table: tuple = ()

    @property
    def capacity(self) -> int:
        """Every node a round may draft: the main drafter's and the guesses'."""
        return self.max_total_nodes + (self.guess_nodes or 0)


@dataclass(frozen=True)
class Beside:
    """What the other generations of a shared round bring to it (serve --parallel): the tokens
    they expect to gain, the seconds they spend beside the target's pass (drafting, host work),
    the tokens they add to the pass, and how many of them call the draft model (each level's
    calls of all of them go into one draft decode, core/slots.py). A round's rate is all its
    tokens over all its time."""

    tokens: float = 0.0
    seconds: float = 0.0
    nodes: int = 0
    runs: int = 0
    drafting: int = 0

    def __add__(self, other: "Beside") -> "Beside":
        return Beside(self.tokens + other.tokens, self.seconds + other.seconds, self.nodes + other.nodes,
                      self.runs + other.runs, self.drafting + other.drafting)

    def __sub__(self, other: "Beside") -> "Beside":
        return Beside(self.tokens - other.tokens, self.seconds - other.seconds, self.nodes - other.nodes,
                      self.runs - other.runs, self.drafting - other.drafting)

    def rounded(self) -> "Beside":
        """Coarse (a tenth of a token, a millisecond, eight nodes past the first eight): plans are
        remembered by it. (A plain slot's node beside a plan is not rounded away.)"""
        nodes = self.nodes if self.nodes < 8 else 8 * round(self.nodes / 8)
        return Beside(round(self.tokens, 1), round(self.seconds, 3), nodes, self.runs, self.drafting)


ALONE = Beside()
# what a plain round brings: its token, its root in the pass (also a run that reads its prompt:
# the policy plans beside it as beside a plain run)
PLAIN_SHARE = Beside(1.0, 0.0, 1, 1)


@dataclass(frozen=True)
class Backlog:
    """What a tree must first pay, and the tokens it has to pay it back in: the committed tokens
    the draft model has not read (a prompt read beside others, rounds decoded without the draft),
    which a tree's first draft call reads while every generation in the round waits; and the
    tokens the generation may still make (a tree saves time on each of them)."""

    unread: int = 0
    left: float = math.inf


NO_BACKLOG = Backlog()


PLAIN = TreeShape(max_depth=0, max_nodes_per_level=0, max_total_nodes=0, branch=0, expand=0,
                  use_model=False, guess_nodes=0)


def prob_bin(logprob: float, n_bins: int) -> int:
    """Which of n_bins equal slices of [0, 1] a token's draft probability falls in."""
    return min(int(np.exp(logprob) * n_bins), n_bins - 1)


@dataclass
class RoundOutcome:
    """What a round did and cost: the statistics, the policy and the step records learn from it."""

    tree: "TokenTree"
    verdict: "Verdict"
    shape: TreeShape  # the plan as the drafter received it
    draft_sizes: tuple[int, ...]  # tokens fed to each batched draft-model decode
    draft_s: float  # proposing: draft-model decodes and the drafter's host work
    verify_s: float  # the target's pass, verification and the cache commit
    round_s: float  # the whole round, bookkeeping included
    decode: tuple[float, float]  # seconds inside llama_decode: (target, draft), this round's own
    ready_rows: int = 0  # draft rows this round took from the last target pass, for no call
    ahead_s: float = 0.0  # draft decodes during this round's target pass, for the next round
    pass_tokens: int = 0  # a pass shared with other generations' work: all its tokens (0: its own)

    @property
    def draft_calls(self) -> int:
        return len(self.draft_sizes)

    @property
    def model_drafted(self) -> bool:
        """Whether the draft model proposed this round's tree (with calls, or with rows ready)."""
        return bool(self.draft_sizes) or self.ready_rows > 0
