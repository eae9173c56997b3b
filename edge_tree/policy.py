"""How big a tree to grow each round: the user's hard caps, and the shape chosen within them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from . import llama
from .drafters import TreeShape
from .errors import UsageError

CHAIN_DEPTH = 8
# A CPU-sized default: one main branch decoded per level, with the draft's runner-up kept as a
# free sibling leaf (its logits are already computed; it only costs a verify slot).
DEFAULT_TREE = TreeShape(max_depth=8, max_nodes_per_level=2, max_total_nodes=16, branch=2, expand=1)


@dataclass(frozen=True)
class Caps:
    max_depth: int | None = None
    max_nodes_per_level: int | None = None
    max_total_nodes: int | None = None


def validate_caps(max_depth, max_nodes_per_level, max_total_nodes) -> Caps:
    for option, value in (("--max-depth", max_depth), ("--max-nodes-per-level", max_nodes_per_level),
                          ("--max-total-nodes", max_total_nodes)):
        if value is not None and value < 1:
            raise UsageError(option, f"must be at least 1, got {value}")
    # every leaf is a sequence of the target's KV cache, and a tree has at most as many leaves as nodes
    limit = llama.max_parallel_sequences() - 1
    if max_total_nodes is not None and max_total_nodes > limit:
        raise UsageError("--max-total-nodes", f"at most {limit}: each branch is a llama.cpp sequence "
                         f"and llama_max_parallel_sequences() is {limit + 1}")
    if max_nodes_per_level is not None and max_nodes_per_level > limit:
        raise UsageError("--max-nodes-per-level", f"at most {limit} (llama_max_parallel_sequences() - 1)")
    if max_depth is not None and max_depth > limit:
        raise UsageError("--max-depth", f"at most {limit}")
    return Caps(max_depth, max_nodes_per_level, max_total_nodes)


def chain_shape(caps: Caps) -> TreeShape:
    depth = min(caps.max_depth or CHAIN_DEPTH, caps.max_total_nodes or CHAIN_DEPTH)
    return TreeShape(max_depth=depth, max_nodes_per_level=1, max_total_nodes=depth, branch=1, expand=1)


def capped(shape: TreeShape, caps: Caps) -> TreeShape:
    depth = min(shape.max_depth, caps.max_depth or shape.max_depth)
    per_level = min(shape.max_nodes_per_level, caps.max_nodes_per_level or shape.max_nodes_per_level)
    total = min(shape.max_total_nodes, caps.max_total_nodes or shape.max_total_nodes)
    return TreeShape(max_depth=depth, max_nodes_per_level=per_level, max_total_nodes=total,
                     branch=min(shape.branch, per_level), expand=min(shape.expand, per_level),
                     min_prob=shape.min_prob)


class Policy(Protocol):
    def shape(self, mode: str, caps: Caps) -> TreeShape: ...

    def observe(self, record) -> None: ...


class FixedPolicy:
    """The same shape every round: the user's values where given, else DEFAULT_TREE."""

    def __init__(self, base: TreeShape = DEFAULT_TREE):
        self.base = base

    def shape(self, mode: str, caps: Caps) -> TreeShape:
        if mode == "chain":
            return chain_shape(caps)
        per_level = caps.max_nodes_per_level or self.base.max_nodes_per_level
        wanted = TreeShape(max_depth=caps.max_depth or self.base.max_depth,
                           max_nodes_per_level=per_level,
                           max_total_nodes=caps.max_total_nodes or self.base.max_total_nodes,
                           branch=self.base.branch,
                           expand=max(self.base.expand, per_level // self.base.branch))
        return capped(wanted, caps)

    def observe(self, record) -> None:
        pass
