"""What a round costs on this machine: the policy's price list.

The curves are measured once per model file and setting (calibrate.py): seconds per llama_decode
of n tokens, for the target and the draft. A calibration can be wrong for the run at hand (another
process on the cores, a GPU clocking down, a reduced draft), and the host's own work per round
(Python, numpy, ctypes) is not in it at all: so every round's measured decode times and host time
correct the model online, and a plan that loses here stops looking good.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .plan import ALONE, Beside, RoundOutcome

LEARNING_RATE = 0.1  # weight of the newest round in the running corrections
MAX_SURPRISE = 4.0  # one round moves a correction by at most this factor (a hiccup is not a trend)


@dataclass
class CostModel:
    """Seconds per llama_decode of n tokens (measured points, linear in between and beyond), the
    host's numpy work per drafted node, and what running rounds taught: a scale on each curve and
    the host's seconds per round."""

    verify_points: dict[int, float]
    draft_points: dict[int, float]
    host_per_node: float = 0.0
    verify_scale: float = 1.0  # measured / calibrated, the target's passes
    draft_relative: float = 1.0  # the draft's calls, relative to the target's correction
    host_per_round: float = 0.0
    host_per_call: float = 0.0  # Python and ctypes around a draft call, beyond its numpy work
    _verify: np.ndarray = field(init=False, repr=False)
    _draft: np.ndarray = field(init=False, repr=False)
    _host_fit: "HostFit" = field(init=False, repr=False)

    def __post_init__(self):
        # tabulated for every batch size a tree can have, as plain lists: the policy asks
        # thousands of times a plan, and a list index is several times cheaper than numpy's
        self._verify = self._table(self.verify_points).tolist()
        self._draft = self._table(self.draft_points).tolist()
        self._host_fit = HostFit(self.host_per_round, self.host_per_call)

    @staticmethod
    def _table(points: dict[int, float], size: int = 2049) -> np.ndarray:
        xs = np.array(sorted(points), float)
        ys = np.array([points[x] for x in sorted(points)], float)
        n = np.arange(size, dtype=float)
        table = np.interp(n, xs, ys)
        if len(xs) > 1:  # beyond the last point: extend the last segment's slope
            slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
            table[n > xs[-1]] = ys[-1] + slope * (n[n > xs[-1]] - xs[-1])
        return table

    def verify_s(self, n: int) -> float:
        """A target pass over n tokens (several generations' trees may share one)."""
        return self.verify_scale * self._verify[min(n, len(self._verify) - 1)]

    @property
    def draft_scale(self) -> float:
        """measured / calibrated, the draft's calls: a busier machine slows both models, so the
        target's correction applies to the draft too (it is measured every round, the draft only
        in rounds that call it)."""
        return self.verify_scale * self.draft_relative

    def draft_s(self, n: int) -> float:
        """A draft call over n tokens."""
        return self.draft_scale * self._draft[n]

    def read_s(self, n: int) -> float:
        """What n more tokens add to a draft call: the draft reading a backlog with a round's first
        call (a prompt longer than the table: its last slope)."""
        table = self._draft
        end = len(table) - 1
        fed = table[1 + n] if n < end else table[end] + (table[end] - table[end - 1]) * (1 + n - end)
        return self.draft_scale * (fed - table[1])

    def round_s(self, calls: Sequence[int], nodes: int, beside: Beside = ALONE) -> float:
        """A round: draft calls of these sizes, a target pass over the root and nodes, and the
        host's work; with other generations' work beside it in a shared round."""
        drafting = sum(self.draft_points_s(c, beside) for c in calls)
        return self.round_s_of(drafting, len(calls), sum(calls), nodes, beside)

    def draft_points_s(self, n: int, beside: Beside = ALONE) -> float:
        """A draft call over n tokens as calibrated, before the corrections (for round_s_of); in
        a shared round, this generation's part of a decode that carries a call of about the same
        size from each other generation that drafts (core/slots.py), by tokens."""
        sharing = 1 + beside.drafting
        return self._draft[min(n * sharing, len(self._draft) - 1)] / sharing

    def round_s_of(self, drafting: float, n_calls: int, fed: int, nodes: int, beside: Beside = ALONE) -> float:
        """round_s from running sums, for a search that grows a tree level by level: the
        calibrated seconds of its draft calls, how many calls, and the tokens they feed."""
        return (self.draft_scale * drafting + self.verify_s(1 + nodes + beside.nodes) + beside.seconds
                + self.host_per_round + self.host_per_call * n_calls + self.host_per_node * (fed + nodes))

    def signature(self) -> tuple:
        """The corrections, each to about 3%: plans made under the same signature are alike."""
        return tuple(round(float(np.log(max(x, 1e-9))) / 0.03) for x in
                     (self.verify_scale, self.draft_relative, self.host_per_round + 1e-5, self.host_per_call + 1e-5))

    def plain_s(self, beside: Beside = ALONE) -> float:
        """A round of plain decoding: the root alone."""
        return self.round_s((), 0, beside)

    def learn(self, outcome: RoundOutcome) -> None:
        """Move the corrections towards what this round measured. A pass shared with other
        generations' work teaches the target's curve at the pass's size (this tree's part of it
        is its share by tokens); its draft decodes and host time were shared too, and are left."""
        target_s, draft_s = outcome.decode
        if outcome.pass_tokens:
            pass_s = target_s * outcome.pass_tokens / outcome.tree.n
            calibrated = self._verify[min(outcome.pass_tokens, len(self._verify) - 1)]
            self.verify_scale = _toward(self.verify_scale, pass_s / calibrated)
            return
        self.verify_scale = _toward(self.verify_scale, target_s / self._verify[outcome.tree.n])
        if outcome.draft_sizes:
            predicted = sum(self._draft[min(n, len(self._draft) - 1)] for n in outcome.draft_sizes)
            self.draft_relative = _toward(self.draft_relative, draft_s / (predicted * self.verify_scale))
        scanned = sum(outcome.draft_sizes) + outcome.tree.n_drafted
        host = max(outcome.round_s - target_s - draft_s - self.host_per_node * scanned, 0.0)
        self.host_per_round, self.host_per_call = self._host_fit.add(outcome.draft_calls, host)


def _toward(scale: float, measured: float) -> float:
    measured = min(max(measured, scale / MAX_SURPRISE), scale * MAX_SURPRISE)
    return scale + LEARNING_RATE * (measured - scale)


class HostFit:
    """host seconds = per_round + per_call * draft calls, fitted by recursive least squares with
    forgetting: plain rounds tell the first term, rounds with draft calls the second."""

    FORGET = 0.97

    def __init__(self, per_round: float, per_call: float):
        self.a, self.b = per_round, per_call
        # covariance of (a, b): little confidence in the starting values. Plain floats, not
        # numpy: this runs every round, and a 2x2 is cheaper by hand than through numpy
        self.p_aa, self.p_ab, self.p_bb = 100.0, 0.0, 100.0

    def add(self, calls: int, host_s: float) -> tuple[float, float]:
        x = float(calls)  # the features are (1, calls)
        pa, pb = self.p_aa + self.p_ab * x, self.p_ab + self.p_bb * x  # P @ (1, x)
        scale = 1.0 / (self.FORGET + pa + pb * x)
        ga, gb = pa * scale, pb * scale
        error = host_s - (self.a + self.b * x)
        self.a, self.b = self.a + ga * error, self.b + gb * error
        self.p_aa = (self.p_aa - ga * pa) / self.FORGET
        self.p_ab = (self.p_ab - ga * pb) / self.FORGET
        self.p_bb = (self.p_bb - gb * pb) / self.FORGET
        return max(self.a, 0.0), max(self.b, 0.0)
