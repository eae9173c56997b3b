"""Small bar charts for the report: the geometry here, the SVG markup in the report's template
(macro ``bar_chart``), so the page needs no script and no external resource to show them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

ACCEPTED_COLOR = "#40c057"
BONUS_COLOR = "#66d9e8"  # the report's colour for the target's own (bonus) tokens


@dataclass
class Bar:
    x: float  # left edge
    y: float  # top of the main bar
    height: float
    tip: str  # the hover text
    value: float  # the number the bar shows (a data-value attribute, for tests and scripts)
    stacked_height: float = 0.0  # a second bar on top (0: none)
    value_text: str | None = None  # the number above the bar, when bars are wide enough
    value_y: float = 0.0
    label: str | None = None  # under the axis; None where labels would overlap
    step: int | None = None  # the step a click on the bar opens


@dataclass
class Chart:
    title: str
    color: str
    bars: list[Bar]
    bar_width: float
    grid: list[tuple[float, str]]  # (y, tick text) of each horizontal grid line
    label_y: int
    width: int = 560
    height: int = 200
    left: int = 40
    right: int = 10


_TOP, _BOTTOM = 28, 30


def bar_chart(values: list[float], labels: list[str], tips: list[str], *, title: str, ymax: float,
              fmt: Callable[[float], str], color: str = ACCEPTED_COLOR, stacked: list[float] | None = None,
              steps: list[int] | None = None) -> Chart:
    """Bars for ``values`` on a 0..ymax axis (ticks at 0, half and ymax written with ``fmt``);
    ``stacked`` adds a bonus-coloured bar on top of each; ``steps`` makes each bar open a step."""
    chart = Chart(title=title, color=color, bars=[], bar_width=0.0, grid=[], label_y=0)
    w, h = chart.width - chart.left - chart.right, chart.height - _TOP - _BOTTOM
    ymax = ymax if ymax > 0 else 1
    slot = w / max(len(values), 1)
    chart.bar_width = max(min(slot * 0.8, 48), 0.6)
    chart.grid = [(_TOP + h - frac * h, fmt(frac * ymax)) for frac in (0, 0.5, 1)]
    chart.label_y = _TOP + h + 13
    label_w = 6 * max((len(x) for x in labels), default=1) + 8  # px a label needs, roughly
    label_every = max(1, math.ceil(label_w / slot))
    show_values = len(values) <= 30 and slot >= 14
    for k, v in enumerate(values):
        extra = stacked[k] if stacked else 0.0
        vh = max(0.0, min(v, ymax)) / ymax * h
        sh = min(extra, ymax) / ymax * h if extra > 0 else 0.0
        y = _TOP + h - vh
        chart.bars.append(Bar(
            x=chart.left + k * slot + (slot - chart.bar_width) / 2, y=y, height=vh, tip=tips[k], value=v,
            stacked_height=sh, value_text=fmt(v + extra) if show_values else None, value_y=y - sh - 3,
            label=labels[k] if k % label_every == 0 else None, step=steps[k] if steps else None))
    return chart
