"""The demo pairs, by letter: `edge-tree bench --pair A|B|C|E`.

All four are made from the one demo model (Gemma 3 270M). C and E use a *deep* copy of the F32
target: 4x its layers, the added ones with zero output projections, so its text is exactly the
target's while each call costs about twice as much (measured: Gemma's 262k-row output matrix,
tied to the input table, is read whole on every call and outweighs the 18 blocks; the blocks
alone would have made it 4-5x). C is a pair with a real pair's cost ratio (a cheap draft, a costly
target: 5x the Q4_K_M draft, 11x its reduced copy); E a draft that costs more than the target,
where no speculation pays and `tree` must keep up with `ar`.
"""

from __future__ import annotations

from ..errors import UsageError
from ..llamacpp.demo import ensure_deep_target, ensure_demo

PAIRS = {
    "A": "F32 target + Q4_K_M draft (the demo file: nearly the target's own weights)",
    "B": "F32 target + Q4_0 draft requantized from it (a realistic draft)",
    "C": "4x-deep F32 target + Q4_K_M draft (a real pair's cost ratio)",
    "E": "F32 target + the 4x-deep copy as draft (a draft dearer than the target)",
}


def resolve_pair(name: str, progress: bool = False) -> tuple[str, str]:
    """(target, draft) paths of a demo pair, its files built on first use."""
    key = name.strip().upper()
    if key not in PAIRS:
        raise UsageError("--pair", f"unknown pair {name!r}: use one of {', '.join(PAIRS)}")
    demo = ensure_demo(progress=progress)
    deep = ensure_deep_target(progress=progress) if key in ("C", "E") else None
    target, draft = {"A": (demo.target, demo.draft), "B": (demo.target, demo.draft_q4_0),
                     "C": (deep, demo.draft), "E": (demo.target, deep)}[key]
    return str(target), str(draft)
