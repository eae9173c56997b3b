"""Step records: one speculative round as plain data, and the metrics computed from rounds.

The engine writes them, everything that shows decoding reads them (the trace, the pictures, the
report, the terminal tree): this module is where the two sides meet, so it imports nothing of
either. A record round-trips through JSON (docs/trace-format.md); `StepRecord.from_json` checks a
record read back from a file once, so readers can trust its fields.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, field
from typing import Iterable

from .errors import EdgeTreeError

STATUSES = ("root", "accepted", "rejected", "bonus")


@dataclass
class StepNodes:
    """Parallel columns, one entry per node: node 0 is the root, the last node the bonus token."""

    token: list[int]
    text: list[str]
    parent: list[int]
    depth: list[int]
    rank: list[int]
    status: list[str]
    source: list[str]  # draft | ngram (a prompt-lookup guess) | target (the bonus)
    draft_prob: list[float | None]
    draft_logprob: list[float | None]
    cum_logprob: list[float | None]
    target_prob: list[float | None]

    def __len__(self) -> int:
        return len(self.parent)


@dataclass
class StepRecord:
    step: int
    mode: str
    position: int  # KV position of the root token
    nodes: StepNodes
    accepted: list[int]  # node indices from depth 1 down (may be empty)
    bonus: int  # index of the bonus node
    best_path: list[int] = field(default_factory=list)  # the draft's favourite leaf's path
    emitted_text: str = ""
    timings: dict = field(default_factory=dict)  # seconds: draft_s, verify_s, total_s

    @property
    def n(self) -> int:
        return len(self.nodes)

    @property
    def drafted(self) -> int:
        return sum(1 for s in self.nodes.status if s in ("accepted", "rejected"))

    @property
    def deepest_drafted(self) -> int:
        """Depth of the deepest drafted node (0 for a round without a draft)."""
        return max((d for d, s in zip(self.nodes.depth, self.nodes.status)
                    if s in ("accepted", "rejected")), default=0)

    def children(self) -> list[list[int]]:
        """Children of every node in the order the verifier tried them (the bonus last)."""
        kids: list[list[int]] = [[] for _ in range(self.n)]
        for i, p in enumerate(self.nodes.parent):
            if p >= 0:
                kids[p].append(i)
        for row in kids:
            row.sort(key=lambda i: (self.nodes.status[i] == "bonus", self.nodes.rank[i], i))
        return kids

    def title(self) -> str:
        """'step 3 · tree · pos 17 · accepted 2 of 7 drafted + bonus'"""
        return (f"step {self.step} \u00b7 {self.mode} \u00b7 pos {self.position} \u00b7 "
                f"accepted {len(self.accepted)} of {self.drafted} drafted + bonus")

    def to_json(self) -> dict:
        return {"type": "step", **asdict(self)}

    @classmethod
    def from_json(cls, record: dict) -> "StepRecord":
        """A record read from a trace, checked: EdgeTreeError names what is wrong."""
        try:
            return _parse(record)
        except (KeyError, TypeError, ValueError) as e:
            step = record.get("step") if isinstance(record, dict) else None
            raise EdgeTreeError(f"step {step}: not a valid step record ({e})") from None


def _parse(record: dict) -> StepRecord:
    if not isinstance(record, dict):
        raise TypeError(f"a step record is a JSON object, not {type(record).__name__}")
    columns = record["nodes"]
    parent = [_index(p) for p in columns["parent"]]
    n = len(parent)

    def column(name, convert):
        values = columns.get(name)
        if values is None:
            values = [None] * n
        if len(values) != n:
            raise ValueError(f"nodes.{name} has {len(values)} entries for {n} nodes")
        return [convert(v) for v in values]

    for i, p in enumerate(parent):
        if not (p == -1 if i == 0 else 0 <= p < i):
            raise ValueError(f"node {i} has parent {p}: a parent is an earlier node (-1 for the root)")
    status = column("status", str)
    if any(s not in STATUSES for s in status):
        raise ValueError(f"nodes.status holds a value outside {', '.join(STATUSES)}")
    nodes = StepNodes(
        token=column("token", _index), text=column("text", lambda t: "" if t is None else str(t)),
        parent=parent, depth=column("depth", _index), rank=column("rank", lambda r: _index(r or 0)),
        status=status, source=column("source", lambda s: s or "draft"),
        draft_prob=column("draft_prob", _number), draft_logprob=column("draft_logprob", _number),
        cum_logprob=column("cum_logprob", _number), target_prob=column("target_prob", _number))
    accepted = [_node(i, n) for i in record.get("accepted", [])]
    return StepRecord(step=_step_number(record["step"]), mode=str(record.get("mode", "")),
                      position=_index(record.get("position", 0)), nodes=nodes, accepted=accepted,
                      bonus=_node(record["bonus"], n),
                      best_path=[_node(i, n) for i in record.get("best_path", [])],
                      emitted_text=str(record.get("emitted_text", "")),
                      timings={k: float(v) for k, v in (record.get("timings") or {}).items()})


def _index(value) -> int:
    if isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r}")
    return operator.index(value)


def _step_number(value) -> int:
    number = _index(value)
    if number < 0:
        raise ValueError("a step number is not negative")  # it names the step's picture files
    return number


def _node(value, n: int) -> int:
    index = _index(value)
    if not 0 <= index < n:
        raise ValueError(f"node index {index} outside 0..{n - 1}")
    return index


def _number(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number or null, got {value!r}")
    return float(value)


# -- metrics over rounds: the one definition that --stats, the report and the bench share --------

def walked(kids: list[list[int]], accepted: Iterable[int]):
    """For every node the target's walk visited, from the root: (node, its children, the child
    the walk took from it or None). kids: children per node, in the order they were tried."""
    path = [0, *accepted]
    for depth, node in enumerate(path):
        yield node, kids[node], path[depth + 1] if depth + 1 < len(path) else None


def acceptance_by_depth(rounds: Iterable[tuple[int, int]]) -> list[float]:
    """P(the target takes a depth-d node | the walk reached depth d - 1 and a node was drafted
    there), for d = 1 up to the deepest depth the walk ever tried.

    rounds: (accepted nodes, depth of the deepest drafted node) per round; rounds that drafted
    nothing do not count.
    """
    offered: list[int] = []
    taken: list[int] = []
    for accepted, deepest in rounds:
        tried = min(accepted + 1, deepest)  # the walk stops at the first depth it does not take
        while len(offered) < tried:
            offered.append(0)
            taken.append(0)
        for d in range(tried):
            offered[d] += 1
            taken[d] += d < accepted
    return [t / o for t, o in zip(taken, offered)]


def record_rounds(records: Iterable[StepRecord]) -> list[tuple[int, int]]:
    """The (accepted, deepest drafted depth) of each recorded round, for acceptance_by_depth."""
    return [(len(r.accepted), r.deepest_drafted) for r in records]
