"""How big a tree to grow each round: the user's hard caps, and the shape chosen within them."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from ..records import walked
from .costs import CostModel
from .options import MAX_TREE_NODES
from .plan import ALONE, GUESS_LEN, NO_BACKLOG, PLAIN, PLAIN_SHARE, Backlog, Beside, RoundOutcome, TreeShape, prob_bin
from .tree import DRAFT, NGRAM

CHAIN_DEPTH = 8
SEARCH_DEPTH = 24  # the deepest tree the shape search considers
# The most drafted nodes a plan uses: the most a tree may have (every leaf is a sequence of the
# target's cache), less one that the engine keeps beside them for a guess branch.
MAX_PLANNED_NODES = MAX_TREE_NODES - 1
# A CPU-sized default: one main branch decoded per level, with the draft's runner-up kept as a
# free sibling leaf (its logits are already computed; it only costs a verify slot).
DEFAULT_TREE = TreeShape(max_depth=8, max_nodes_per_level=2, max_total_nodes=16, branch=2, expand=1)


@dataclass(frozen=True)
class Caps:
    """The user's hard caps (None: no cap)."""

    max_depth: int | None = None
    max_nodes_per_level: int | None = None
    max_total_nodes: int | None = None


def chain_shape(caps: Caps) -> TreeShape:
    depth = min(caps.max_depth or CHAIN_DEPTH, caps.max_total_nodes or CHAIN_DEPTH)
    return TreeShape(max_depth=depth, max_nodes_per_level=1, max_total_nodes=depth, branch=1, expand=1)


def lookup_shape(caps: Caps) -> TreeShape:
    """--mode lookup: one branch of guesses, no draft model."""
    depth = min(caps.max_depth or GUESS_LEN, caps.max_total_nodes or GUESS_LEN)
    return TreeShape(max_depth=depth, max_nodes_per_level=1, max_total_nodes=depth, branch=1, expand=1,
                     use_model=False, guess_nodes=0)


def fixed_plan(mode: str, caps: Caps) -> TreeShape | None:
    """The plan of the modes no policy chooses for: ar, lookup, chain (None for tree)."""
    if mode == "ar":
        return PLAIN
    if mode == "lookup":
        return lookup_shape(caps)
    if mode == "chain":
        return chain_shape(caps)
    return None


class Policy(Protocol):
    share: Beside  # what the last plan brings to a shared round

    def plan(self, mode: str, caps: Caps, beside: Beside = ALONE, backlog: Backlog = NO_BACKLOG) -> TreeShape: ...

    def observe(self, outcome: RoundOutcome) -> None: ...

    def reset(self, learn_costs: bool = True) -> None: ...


class FixedPolicy:
    """The same shape every round: the user's values where given, else DEFAULT_TREE."""

    def __init__(self, base: TreeShape = DEFAULT_TREE):
        self.base = base
        self.reset()

    def plan(self, mode: str, caps: Caps, beside: Beside = ALONE, backlog: Backlog = NO_BACKLOG) -> TreeShape:
        shape = fixed_plan(mode, caps) or self._tree(caps)
        self.share = Beside(1.0, 0.0, 1 + shape.max_total_nodes, 1)  # no costs known: its nodes
        return shape

    def _tree(self, caps: Caps) -> TreeShape:
        """The user's values where given, else the base's (the engine enforces them as caps)."""
        per_level = caps.max_nodes_per_level or self.base.max_nodes_per_level
        branch = min(self.base.branch, per_level)
        return TreeShape(max_depth=caps.max_depth or self.base.max_depth,
                         max_nodes_per_level=per_level,
                         max_total_nodes=caps.max_total_nodes or self.base.max_total_nodes,
                         branch=branch, expand=min(max(self.base.expand, per_level // branch), per_level))

    def observe(self, outcome: RoundOutcome) -> None:
        pass

    def reset(self, learn_costs: bool = True) -> None:
        self.share = PLAIN_SHARE  # a new generation's first round may be plain, unplanned


def visited_children(tree, verdict, source: int = DRAFT):
    """For every node the target's walk visited: its children made by source (the draft model,
    or prompt lookup) in sibling order, and the child the target took (None where it took none)."""
    for _, kids, taken in walked(tree.children(), verdict.accepted):
        yield [c for c in kids if tree.source[c] == source], taken


class RankAcceptance:
    """How often the target's token is the draft's rank-r child, learned online.

    Kept as hazards h_r = P(rank r matches | no lower rank matched), which censored observations
    (a node with only ranks 0..b-1 drafted) estimate without bias; pi_r follows from them.
    """

    def __init__(self, max_rank: int = 8, prior=(0.8, 0.3), prior_weight: float = 4.0):
        self.hits = np.zeros(max_rank)
        self.trials = np.zeros(max_rank)
        self.prior = np.array([prior[0]] + [prior[1]] * (max_rank - 1))
        self.prior_weight = prior_weight

    def observe(self, tree, verdict) -> None:
        for children, matched in visited_children(tree, verdict):
            for child in children:
                rank = int(tree.rank[child])
                if rank >= self.hits.size:
                    break
                self.trials[rank] += 1
                if child == matched:
                    self.hits[rank] += 1
                    break

    def pi(self) -> np.ndarray:
        return self._from_hazards(self._hazards())

    def optimistic_pi(self, z: float = 2.0) -> np.ndarray:
        """pi with each hazard raised by z standard errors of its estimate: what the draft may
        still turn out to do, about two sides in a hundred beyond what was seen."""
        hazard = self._hazards()
        spread = np.sqrt(hazard * (1 - hazard) / (self.trials + self.prior_weight))
        return self._from_hazards(np.minimum(hazard + z * spread, 1.0))

    def _hazards(self) -> np.ndarray:
        return (self.hits + self.prior * self.prior_weight) / (self.trials + self.prior_weight)

    @staticmethod
    def _from_hazards(hazard: np.ndarray) -> np.ndarray:
        survive = np.concatenate([[1.0], np.cumprod(1 - hazard)[:-1]])
        return hazard * survive


class ProbCalibration:
    """P(the target takes a drafted child | the walk reached its parent), by the child's draft
    probability in ten bins, learned online. The prior, sqrt of the bin's probability, says what
    a draft of the target's family does under greedy verification: right more often than its
    own probability claims (a token at q = 0.5 is usually the target's argmax too).

    Older rounds fade (FORGET a round): how often the target takes the draft's confident tokens
    moves with the text, and a branch grows as deep as its reach allows, so a table that hundreds
    of rounds on other text set near 1.0 must come down within a few rounds where the target
    leaves the draft's confident path (a prompt that drafted 24 levels a round for 10 tokens)."""

    BINS = 10
    FORGET = 0.9  # a round ten rounds back weighs a third of the last one

    def __init__(self, prior_weight: float = 2.0):
        self.hits = np.zeros(self.BINS)
        self.trials = np.zeros(self.BINS)
        self.prior = np.sqrt((np.arange(self.BINS) + 0.5) / self.BINS)
        self.prior_weight = prior_weight

    def observe(self, tree, verdict) -> None:
        self.hits *= self.FORGET
        self.trials *= self.FORGET
        for children, matched in visited_children(tree, verdict):
            for child in children:
                index = prob_bin(float(tree.logprob[child]), self.BINS)
                self.trials[index] += 1
                self.hits[index] += child == matched

    def table(self) -> tuple:
        rates = (self.hits + self.prior * self.prior_weight) / (self.trials + self.prior_weight)
        return tuple(float(x) for x in rates)


def grow_levels(branch: int, expand: int, per_level: int, total: int, max_depth: int, pi: np.ndarray):
    """The tree the drafter grows, in expectation, when the target's token has the draft's rank r
    with probability pi[r]. Yields, for each depth d, the tree cut there: (d, expected accepted
    tokens, nodes, tokens fed per draft call, reach of the least likely node grown for it)."""
    pi = [float(x) for x in pi]  # plain floats: numpy scalars cost several times more per product
    ranks = range(branch)
    expanded = [1.0]  # probability that the walk reaches each expanded node of the last level
    nodes = 0
    accepted = 0.0
    calls = [1]  # the round's first draft call feeds the root
    for depth in range(1, max_depth + 1):
        room = min(per_level, total - nodes)
        if room <= 0:
            return
        level = sorted([p * pi[r] for p in expanded for r in ranks], reverse=True)[:room]
        nodes += len(level)
        accepted += sum(level)
        yield depth, accepted, nodes, calls, expanded[-1]
        expanded = level[:expand]
        calls = calls + [len(expanded)]


def round_rate(accepted: float, nodes: int, calls: list[int], cost: CostModel, beside: Beside = ALONE) -> float:
    """Expected generated tokens per second: (accepted + the bonus token) / the round's time; in
    a shared round, all its generations' tokens over its whole time."""
    return (accepted + 1.0 + beside.tokens) / cost.round_s(calls, nodes, beside)


def _expected(shape: TreeShape, pi: np.ndarray) -> tuple[float, int, list[int]]:
    """(accepted tokens, nodes, tokens fed per draft call) of a shape's tree, in expectation."""
    if not shape.max_total_nodes or not shape.max_depth:
        return 0.0, 0, []
    *_, (_, accepted, nodes, calls, _) = grow_levels(shape.branch, shape.expand, shape.max_nodes_per_level,
                                                      shape.max_total_nodes, shape.max_depth, pi)
    return accepted, nodes, calls


def shape_rate(shape: TreeShape, pi: np.ndarray, cost: CostModel, beside: Beside = ALONE) -> float:
    return round_rate(*_expected(shape, pi), cost, beside)


def shape_share(shape: TreeShape, pi: np.ndarray, cost: CostModel, beside: Beside = ALONE) -> Beside:
    """What a round of this shape brings to a shared round: its expected tokens, its seconds
    beside the pass (its part of the draft decodes it shares with the others that draft), its
    tokens in the pass (the root's included), whether it drafts."""
    accepted, nodes, calls = _expected(shape, pi)
    seconds = cost.round_s(calls, nodes, Beside(drafting=beside.drafting)) - cost.verify_s(1 + nodes)
    return Beside(accepted + 1.0, seconds, 1 + nodes, 1, int(bool(calls)))


def best_shape(caps: Caps, pi: np.ndarray, cost: CostModel, beside: Beside = ALONE) -> TreeShape:
    """Search branch x expand; every depth of a tree is a prefix of the deeper one, so each pair
    is grown once and cut at every depth. min_expand_prob is the reach of the least likely node
    the best tree grows: the drafter grows nodes at least that likely, however deep."""
    max_depth = min(caps.max_depth or SEARCH_DEPTH, SEARCH_DEPTH)
    per_level_cap = caps.max_nodes_per_level or 64
    total_cap = min(caps.max_total_nodes or MAX_PLANNED_NODES, MAX_PLANNED_NODES)
    best, best_rate = chain_shape(Caps(max_depth=1)), 0.0
    expands = (1, 2, 3, 4, 6, 8, 12, 16)
    call_s = [cost.draft_points_s(n, beside) for n in range(max(expands) + 1)]  # by tokens fed
    pi = [float(x) for x in pi]
    for branch, expand in itertools.product((1, 2, 3, 4), expands):
        per_level = min(per_level_cap, branch * expand)
        if expand > per_level or branch > per_level or (branch == 1 and expand > 1):  # branch 1: a chain
            continue
        drafting, fed = 0.0, 0  # running sums over the calls: each depth adds one call
        for depth, accepted, nodes, calls, floor in grow_levels(branch, expand, per_level,
                                                                total_cap, max_depth, pi):
            drafting += call_s[calls[-1]]
            fed += calls[-1]
            rate = (accepted + 1.0 + beside.tokens) / cost.round_s_of(drafting, len(calls), fed, nodes, beside)
            if rate > best_rate:
                best_rate = rate
                best = TreeShape(max_depth=depth, max_nodes_per_level=per_level,
                                 max_total_nodes=nodes, branch=branch, expand=expand,
                                 min_expand_prob=floor)
    return best


def expected_rate(cost: CostModel, pi: np.ndarray) -> float:
    """Expected tokens per second of the best tree for these costs and acceptance by rank."""
    shape = best_shape(Caps(), pi, cost)
    return shape_rate(shape, pi, cost)


def smaller_vocabulary_pays(full: CostModel, reduced: CostModel, coverage: float) -> bool:
    """Whether a draft with a reduced vocabulary beats the full one: the full draft at the prior
    acceptance, the reduced one at that times its coverage (the share of proposals it can make)."""
    prior = RankAcceptance().pi()
    return expected_rate(reduced, prior * coverage) > expected_rate(full, prior)


def slot_floor(rate: float, cost: CostModel) -> float:
    """Reach below which a drafted node is not worth its verify slot: its expected tokens per
    second of extra verify time fall below the round's rate."""
    verify_slope = (cost.verify_s(33) - cost.verify_s(1)) / 32 + cost.host_per_node
    return rate * verify_slope


class GuessAcceptance:
    """P(the target takes a guessed token | the walk reached its parent), learned online from the
    guesses the walk tried (prompt lookup: text found earlier in the context)."""

    def __init__(self, prior: float = 0.6, prior_weight: float = 4.0):
        self.hits = prior * prior_weight
        self.trials = prior_weight

    def observe(self, tree, verdict) -> None:
        for guesses, taken in visited_children(tree, verdict, NGRAM):
            if guesses:
                self.trials += 1
                self.hits += taken in guesses

    def rate(self) -> float:
        return self.hits / self.trials


def guess_budget(accept: float, rate: float, cost: CostModel, longest: int = GUESS_LEN) -> int:
    """How many guessed tokens are worth their verify slots: the k-th is reached and taken with
    probability accept**k, and must beat the slot floor of a round running at `rate`."""
    floor = slot_floor(rate, cost)
    if floor <= 0 or accept >= 1:
        return longest
    if accept <= floor:
        return 0
    return min(longest, int(np.log(floor) / np.log(accept)))


DYNAMIC_DEPTH = 24  # the deepest a branch may grow while it stays worth it
EXPAND_SLACK = 0.6


@dataclass
class Learned:
    """Acceptance learned online: by sibling rank, by draft probability, of guesses; and the
    rounds it was learned from, to space the draft's tries (AdaptivePolicy.plan)."""

    acceptance: RankAcceptance = field(default_factory=RankAcceptance)
    calibration: ProbCalibration = field(default_factory=ProbCalibration)
    guesses: GuessAcceptance = field(default_factory=GuessAcceptance)
    rounds: int = 0
    tried_at: int | None = None  # the round of the last try


@dataclass(frozen=True)
class Planned:
    """A search's answer for one set of caps and others in the round: the plan, what it brings
    to a shared round, the most seconds a tree saves a token of this generation (_saved_alone),
    plain decoding with guesses and its share (for a tree that cannot pay back the draft's
    backlog), a tree to try now and then while plain decoding wins (_hope), and the round it was
    made in."""

    chosen: TreeShape
    share: Beside
    saved_per_token: float
    plain: TreeShape
    plain_share: Beside
    explore: TreeShape | None
    at: int = 0


@dataclass
class Taught:
    """What greedy generations taught about a model pair on this machine: the costs as their
    rounds corrected them, and the draft's acceptance. One per engine, shared by its lanes (one
    target, one draft): what any slot learns, every slot plans with."""

    cost: CostModel
    learned: Learned = field(default_factory=Learned)
    searched: dict = field(default_factory=dict)  # best_shape's answers (_best_shape)


class AdaptivePolicy:
    """Each round, the way to spend it that maximises expected tokens per second, from measured
    costs (corrected online by what rounds really cost) and acceptance learned online: plain
    decoding, plain decoding with guesses found in the context, or a draft tree of the best shape.
    In a tree, branches grow node by node only while the target is likely enough to reach them
    (draft confidence, calibrated online). The user's caps bound everything."""

    REPLAN_EVERY = 8  # rounds between searches: acceptance statistics move slowly
    EXPLORE_EVERY = 32  # target passes between tries of the draft, while it may still beat plain rounds

    def __init__(self, cost: CostModel, taught: Taught | None = None):
        self._calibrated = cost  # as measured, never corrected
        self._taught = taught or Taught(replace(cost))
        self.learn_costs = False  # no generation yet: the first plans afresh
        self.reset()

    def reset(self, learn_costs: bool = True) -> None:
        """A new generation. Greedy text does not depend on the plan, so a greedy generation goes
        on from what earlier ones learned about the draft and the machine. learn_costs=False is
        for a generation whose text must depend on its seed alone (sampling: the tree's shape
        decides which random draws are made): it starts from the prior acceptance and plans with
        the costs as calibrated, unchanged by its rounds, as if alone (plan())."""
        if not (learn_costs and self.learn_costs):
            # by caps and the other generations in the round. A greedy generation goes on with
            # the plans of the greedy one before (a search costs a millisecond, and five in a
            # short generation's first rounds showed in its host time); a sampled one plans
            # afresh, and so does the greedy one after it.
            self._plans: dict[tuple[Caps, int], Planned] = {}
            self._rounds = 0
        self.cost = self._taught.cost if learn_costs else self._calibrated
        self.learned = self._taught.learned if learn_costs else Learned()
        self.learn_costs = learn_costs
        self.share = PLAIN_SHARE

    @property
    def acceptance(self) -> RankAcceptance:
        return self.learned.acceptance

    @property
    def calibration(self) -> ProbCalibration:
        return self.learned.calibration

    @property
    def guesses(self) -> GuessAcceptance:
        return self.learned.guesses

    def plan(self, mode: str, caps: Caps, beside: Beside = ALONE, backlog: Backlog = NO_BACKLOG) -> TreeShape:
        """The round's shape; beside: what the other generations bring to a shared round, whose
        tokens per second, all generations together, the plan maximises; backlog: what a tree
        would first pay, and the tokens left to pay it back in."""
        fixed = fixed_plan(mode, caps)
        if fixed:
            return fixed
        if not self.learn_costs:  # sampled: its plans follow from its seed alone, not from the
            beside, backlog = ALONE, NO_BACKLOG  # round's other generations or what the draft kept
        # learn fast while statistics are thin: replan after rounds 1, 2, 4 and 8, then every 8,
        # and when generations join or leave the shared round
        key = (caps, beside.runs)
        last = self._plans[key].at if key in self._plans else None
        due = min(max(last, 1), self.REPLAN_EVERY) if last is not None else 0
        if last is None or self._rounds >= last + due:
            self._plans[key] = self._plan(caps, beside.rounded())
        planned = self._plans[key]
        reading_s = self.cost.read_s(backlog.unread)
        # a try stalls the whole shared round: one in EXPLORE_EVERY target passes, whichever
        # slot's (what it learns about the draft serves every slot)
        if planned.explore is not None and self._try_due(beside, reading_s):
            self.learned.tried_at = self.learned.rounds
            self.share = planned.share
            return planned.explore
        if planned.chosen.use_model and planned.saved_per_token * backlog.left < reading_s:
            self.share = planned.plain_share
            return planned.plain
        self.share = planned.share
        return planned.chosen

    def _try_due(self, beside: Beside, reading_s: float) -> bool:
        """Whether EXPLORE_EVERY passes went by since the last try, as many more again for every
        plain round's time the draft's backlog takes to read: as many rounds per pass as
        generations share it (the others count their rounds in the same Learned)."""
        learned = self.learned
        if learned.tried_at is None:
            return True
        priced = 1.0 + reading_s / self.cost.plain_s(beside)
        return learned.rounds >= learned.tried_at + self.EXPLORE_EVERY * (1 + beside.runs) * priced

    def _plan(self, caps: Caps, beside: Beside) -> Planned:
        """The plan to use, and what it brings to a shared round (Planned)."""
        pi = np.round(self.acceptance.pi(), 2)  # coarse: the searches below are remembered by it
        shape = self._best_shape(caps, pi, beside)
        rate = shape_rate(shape, pi, self.cost, beside)
        plain_rate = (1.0 + beside.tokens) / self.cost.plain_s(beside)
        plain = replace(PLAIN, guess_nodes=guess_budget(self.guesses.rate(), plain_rate, self.cost))
        plain_share = shape_share(PLAIN, pi, self.cost)
        if rate <= plain_rate:
            return Planned(plain, plain_share, 0.0, plain, plain_share, self._hope(caps, beside, plain_rate),
                           self._rounds)
        return Planned(self._tree(shape, rate, caps, pi), shape_share(shape, pi, self.cost, beside),
                       self._saved_alone(caps, pi), plain, plain_share, None, self._rounds)

    def _saved_alone(self, caps: Caps, pi: np.ndarray) -> float:
        """The seconds a tree saves a token against plain decoding with no other generation beside
        it: the most it saves beside others too, who may finish first and leave it alone."""
        alone = self._best_shape(caps, pi, ALONE)
        return max(self.cost.plain_s() - 1 / shape_rate(alone, pi, self.cost), 0.0)

    def _hope(self, caps: Caps, beside: Beside, plain_rate: float) -> TreeShape | None:
        """The tree to try while plain decoding wins: the best under the acceptance the draft
        may still have (an upper bound, which its tries tighten), None once even that loses.
        A pessimistic first impression thus gets tried until the rounds say so, never frozen."""
        hope = np.round(self.acceptance.optimistic_pi(), 2)
        shape = self._best_shape(caps, hope, beside)
        rate = shape_rate(shape, hope, self.cost, beside)
        return self._tree(shape, rate, caps, hope) if rate > plain_rate else None

    def _best_shape(self, caps: Caps, pi: np.ndarray, beside: Beside) -> TreeShape:
        """best_shape, remembered: a search costs milliseconds, and every generation starts
        from the same prior on the same machine."""
        key = (caps, pi.tobytes(), self.cost.signature(), beside)
        searched = self._taught.searched
        if key not in searched:
            if len(searched) > 256:
                searched.clear()
            searched[key] = best_shape(caps, pi, self.cost, beside)
        return searched[key]

    def _tree(self, shape: TreeShape, rate: float, caps: Caps, pi: np.ndarray) -> TreeShape:
        # The plan's depth is what an average stretch of text affords; confident stretches may go
        # deeper and doubtful ones stop sooner, node by node, against the plan's floors.
        depth = min(caps.max_depth or DYNAMIC_DEPTH, DYNAMIC_DEPTH)
        total = min(caps.max_total_nodes or MAX_PLANNED_NODES,
                    max(shape.max_total_nodes, depth * shape.max_nodes_per_level))
        return replace(shape, max_depth=depth, max_total_nodes=total,
                       min_expand_prob=shape.min_expand_prob * EXPAND_SLACK,
                       min_node_prob=slot_floor(rate, self.cost),
                       guess_nodes=guess_budget(self.guesses.rate(), rate, self.cost),
                       accept_table=self.calibration.table())

    def observe(self, outcome: RoundOutcome) -> None:
        self._rounds += 1
        self.learned.rounds += 1
        if self.learn_costs:
            self.cost.learn(outcome)
        if outcome.tree.n > 1:  # a plain round guessed nothing
            self.guesses.observe(outcome.tree, outcome.verdict)
        if outcome.model_drafted:  # the statistics below are about how the draft model ranks
            self.acceptance.observe(outcome.tree, outcome.verdict)
            self.calibration.observe(outcome.tree, outcome.verdict)
