"""One decoding step as an indented text tree, for ``--show-tree`` and the report's text view."""

from __future__ import annotations

from ..records import StepRecord
from .labels import fmt_prob, visible

_ANSI = {
    "root": "\x1b[1m",
    "accepted": "\x1b[32m",
    "rejected": "\x1b[2;31m",
    "bonus": "\x1b[36m",
}
_DIM = "\x1b[2m"
_RESET = "\x1b[0m"
_GLYPH = {"root": "\u25cf", "accepted": "\u2713", "rejected": "\u2717", "bonus": "+"}


def text_tree(record: StepRecord, color: bool = False) -> str:
    """An indented text tree of one step.

    ::

        step 1 · tree · pos 17 · accepted 1 of 3 drafted + bonus · emitted ␣cat␣sat
        ● The  (root)
        ├─ ✓ ␣cat  q=0.83 p=0.91
        │  └─ + ␣sat  p=0.72  (bonus)
        └─ ✗ ␣dog  q=0.10 p=0.02

    Children are ordered by draft rank, the bonus last.  With ``color`` the lines use ANSI colours
    (accepted green, rejected dim red, bonus cyan); token texts never carry raw control characters
    either way.
    """
    head = f"{record.title()} \u00b7 emitted {visible(record.emitted_text)}"
    lines = [_DIM + head + _RESET if color else head]
    children = record.children()
    # iterative pre-order walk (deep chains must not hit the recursion limit)
    stack = [(0, "", "")]  # (node, its connector, prefix for its children)
    while stack:
        i, connector, prefix = stack.pop()
        branch = _DIM + connector + _RESET if (color and connector) else connector
        lines.append(branch + _node_line(record, i, color))
        kids = children[i]
        for k in reversed(range(len(kids))):
            last = k == len(kids) - 1
            stack.append((kids[k], prefix + ("\u2514\u2500 " if last else "\u251c\u2500 "),
                          prefix + ("   " if last else "\u2502  ")))
    return "\n".join(lines) + "\n"


def _node_line(record: StepRecord, i: int, color: bool) -> str:
    nodes = record.nodes
    status = nodes.status[i]
    if status == "root":
        numbers, note = "", "  (root)"
    elif status == "bonus":
        numbers, note = f"  p={fmt_prob(nodes.target_prob[i])}", "  (bonus)"
    else:
        numbers, note = f"  q={fmt_prob(nodes.draft_prob[i])} p={fmt_prob(nodes.target_prob[i])}", ""
    body = f"{_GLYPH[status]} {visible(nodes.text[i])}{numbers}{note}"
    return _ANSI[status] + body + _RESET if color else body
