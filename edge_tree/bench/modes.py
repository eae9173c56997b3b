"""The bench's rows of our own: ``--modes ar,chain:4,tree`` as generation options, greedy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..core.options import MODES, GenOptions
from ..errors import UsageError

DEFAULT_MODES = "ar,chain:4,chain:8,tree"


@dataclass(frozen=True)
class ModeSpec:
    label: str            # as the user wrote it: ar, chain:4, tree, tree:6
    options: GenOptions   # mode and max_depth; greedy (max_tokens is set per run)

    @property
    def mode(self) -> str:
        return self.options.mode

    @property
    def max_depth(self) -> int | None:
        return self.options.max_depth


def parse_mode(spec: str) -> ModeSpec:
    """``name[:depth]``: ``ar``, ``lookup[:N]``, ``chain:N`` (N drafted tokens per round),
    ``tree`` or ``tree:N`` (a hard cap on depth)."""
    text = spec.strip()
    name, sep, depth_text = text.partition(":")
    name = name.strip().lower()
    if name not in MODES:
        raise UsageError("--modes", f"unknown mode {text!r}: use ar, lookup, chain[:DEPTH] or tree[:DEPTH]")
    if not sep:
        return ModeSpec(name, GenOptions(mode=name, temperature=0.0))
    if name == "ar":
        raise UsageError("--modes", f"{text!r}: ar takes no depth")
    try:
        depth = int(depth_text)
    except ValueError:
        raise UsageError("--modes", f"{text!r}: the depth after ':' must be a whole number") from None
    try:
        options = GenOptions(mode=name, max_depth=depth, temperature=0.0)
    except UsageError as e:  # the depth, checked as --max-depth is
        raise UsageError("--modes", f"{text!r}: {e}") from None
    return ModeSpec(f"{name}:{depth}", options)


def parse_modes(modes: str | Iterable[str]) -> list[ModeSpec]:
    """A comma-separated string or a list of specs; `ar` is added first if missing (the baseline)."""
    items = modes.split(",") if isinstance(modes, str) else list(modes)
    specs: list[ModeSpec] = []
    for item in items:
        if not str(item).strip():
            continue
        spec = parse_mode(str(item))
        if spec.label in (s.label for s in specs):
            raise UsageError("--modes", f"{spec.label} is listed twice")
        specs.append(spec)
    if not specs:
        raise UsageError("--modes", "no mode given")
    if not any(s.mode == "ar" for s in specs):
        specs.insert(0, parse_mode("ar"))
    return specs
