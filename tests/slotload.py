"""Requests run through an engine's slots (core/slots.py) to their end, for the tests."""

from __future__ import annotations

from edge_tree.core.options import GenOptions
from edge_tree.core.slots import Slots


def run_all(slots: Slots, requests: dict[int, tuple[str, dict]], join_after: int = 0,
            later: dict[int, tuple[str, dict]] | None = None) -> dict[int, object]:
    """Start `requests` (key -> prompt, options), step; after join_after rounds start `later`
    too; returns key -> result."""
    lane_of, results = {}, {}
    for key, (prompt, options) in requests.items():
        lane_of[slots.start(prompt, GenOptions(**options))] = key
    rounds = 0
    while slots.busy:
        for lane, outcome in slots.step():
            assert not isinstance(outcome, Exception), outcome
            results[lane_of.pop(lane)] = outcome
        rounds += 1
        if later and rounds == join_after:
            for key, (prompt, options) in later.items():
                lane_of[slots.start(prompt, GenOptions(**options))] = key
    return results
