"""What a trace directory holds besides ``trace.jsonl``, and making it again from the trace alone
(``edge-tree render``): the same sinks draw the pictures and the report during a run and after."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .graph import StepPictures
from .jsonl import PICTURE_FORMATS, RENDER_FORMATS, REPORT_FILE, check_formats, check_trace_dir, read_trace
from .report import ReportSink


def trace_sinks(out_dir, formats: Iterable[str], *, report: bool = True) -> list:
    """The sinks that make ``formats``' pictures (dot/png/svg) in ``out_dir`` and, with ``report``,
    its ``report.html``; other format names (jsonl, html) ask for nothing more."""
    formats = list(formats)
    sinks: list = []
    if any(f in PICTURE_FORMATS for f in formats):
        sinks.append(StepPictures(out_dir, formats))
    if report:
        sinks.append(ReportSink(Path(out_dir) / REPORT_FILE))
    return sinks


def render_trace(trace_path, out_dir, formats: Iterable[str] | str = ("svg",)) -> list[Path]:
    """``edge-tree render TRACE --format png|svg|dot|html --out DIR``.

    Re-renders every step of the trace (a ``trace.jsonl`` file or a trace directory) from the JSONL
    alone into ``out_dir``; ``html`` writes ``report.html``.  Returns the written paths, in order.
    Raises EdgeTreeError / UsageError for a bad format, a missing ``dot``, a bad trace or an
    unwritable directory.
    """
    formats = check_formats(formats, option="--format", allowed=RENDER_FORMATS)
    header, steps, summary = read_trace(trace_path)
    sinks = trace_sinks(check_trace_dir(out_dir), formats, report="html" in formats)
    for record in steps:
        for sink in sinks:
            sink(record)
    for sink in sinks:
        close = getattr(sink, "close", None)
        if close is not None:
            close(header, summary)
    return [path for sink in sinks for path in sink.files]
