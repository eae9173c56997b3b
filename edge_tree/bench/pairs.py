"""The demo pairs, by letter: `edge-tree bench --pair A|B|C|E`.

All four are made from the one demo model (Gemma 3 270M). C and E use a *deep* copy of the F32
target: 4x its layers, the added ones with zero output projections, so its text is exactly the
target's while each call costs about four times as much (FIELD.md section 8). C is a pair with a
real pair's cost ratio (a cheap draft, a costly target); E a draft that costs more than the
target, where no speculation pays and `tree` must keep up with `ar`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import EdgeTreeError, UsageError
from ..llamacpp.demo import demo_dir, ensure_demo

DEEP_TARGET_NAME = "gemma-3-270m-f32-deep4.gguf"

PAIRS = {
    "A": "F32 target + Q4_K_M draft (the demo file: nearly the target's own weights)",
    "B": "F32 target + Q4_0 draft requantized from it (a realistic draft)",
    "C": "4x-deep F32 target + Q4_K_M draft (a real pair's cost ratio)",
    "E": "F32 target + the 4x-deep copy as draft (a draft dearer than the target)",
}


def deep_target_path() -> Path:
    """Where `edge-tree models make-deep` writes the 4x-deep copy of the F32 demo target."""
    return demo_dir() / DEEP_TARGET_NAME


def resolve_pair(name: str, progress: bool = False) -> tuple[str, str]:
    """(target, draft) paths of a demo pair; the demo files are built on first use, the deep
    copy is not (it takes a command of its own)."""
    key = name.strip().upper()
    if key not in PAIRS:
        raise UsageError("--pair", f"unknown pair {name!r}: use one of {', '.join(PAIRS)}")
    deep = deep_target_path()
    if key in ("C", "E") and not deep.is_file():
        raise EdgeTreeError(f"--pair {key}: {deep} is missing; make it with `edge-tree models make-deep`")
    demo = ensure_demo(progress=progress)
    target, draft = {"A": (demo.target, demo.draft), "B": (demo.target, demo.draft_q4_0),
                     "C": (deep, demo.draft), "E": (demo.target, deep)}[key]
    return str(target), str(draft)
