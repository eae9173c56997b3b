"""The decoding trace: one JSON record per line in ``trace.jsonl``, and the directory that holds it.

A trace directory holds ``trace.jsonl`` (a header record, one step record per speculative decoding
round, a summary record at the end) and whatever the writer's sinks make from the records as they
come: ``step-0001.dot|png|svg`` per step, ``report.html`` when the trace closes.  Each line is
flushed as soon as it is written, so a killed run leaves a readable file; :func:`read_trace`
ignores a final partial line and a missing summary.  The format is described in
docs/trace-format.md.

Check options with :func:`check_formats` and :func:`check_trace_dir` *before* loading a model.
This module draws nothing: pictures and the report are sinks the caller hands to the writer.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from ..errors import EdgeTreeError, UsageError
from ..records import StepRecord

TRACE_VERSION = 1
TRACE_FILE = "trace.jsonl"
REPORT_FILE = "report.html"

TRACE_FORMATS = ("jsonl", "dot", "png", "svg")
"""``--trace-format`` values: jsonl (always written anyway) and per-step pictures."""

RENDER_FORMATS = ("dot", "png", "svg", "html")
"""``edge-tree render --format`` values; html writes report.html."""

PICTURE_FORMATS = ("dot", "png", "svg")
"""Per-step picture formats; png and svg need Graphviz's ``dot`` program, dot does not."""

_NEEDS_DOT = ("png", "svg")
_STEP_FILE = re.compile(r"step-\d{4,}\.(dot|png|svg)$")
_MAX_SINK_COMPLAINTS = 3  # per sink: a picture that fails once usually fails every step

Sink = Callable[[StepRecord], None]
"""A sink gets each step record as it is written; it may also have ``close(header, summary)``,
called once when the trace closes (``summary`` None for an interrupted run)."""


def step_filename(step: int, fmt: str) -> str:
    """``step-0003.png``: the name of a step's picture in a trace directory."""
    return f"step-{step:04d}.{fmt}"


def check_formats(formats, *, option: str = "--trace-format",
                  allowed: Iterable[str] = TRACE_FORMATS, check_tools: bool = True) -> tuple[str, ...]:
    """Normalise and validate output formats; returns them lower-cased, de-duplicated, in order.

    ``formats`` may be a string (``"png,svg"``) or an iterable of strings (each may hold commas);
    None means ``("jsonl",)``.  An unknown name raises ``UsageError(option, ...)``; png or svg
    without Graphviz's ``dot`` program on PATH raises a one-line EdgeTreeError naming the Debian
    package (``check_tools=False`` checks the names only).  dot needs no program.
    """
    allowed = tuple(allowed)
    if formats is None:
        formats = ("jsonl",) if "jsonl" in allowed else allowed[:1]
    if isinstance(formats, str):
        formats = [formats]
    out: list[str] = []
    for item in formats:
        if not isinstance(item, str):
            raise UsageError(option, f"expected format names, got {item!r}")
        for name in item.split(","):
            name = name.strip().lower().lstrip(".")
            if name and name not in allowed:
                raise UsageError(option, f"unknown format {name!r}; choose from {', '.join(allowed)}")
            if name and name not in out:
                out.append(name)
    if not out:
        raise UsageError(option, f"no format given; choose from {', '.join(allowed)}")
    needs = [f for f in out if f in _NEEDS_DOT]
    if needs and check_tools and shutil.which("dot") is None:
        alt = f" or use {option} dot" if "dot" in allowed else ""
        raise EdgeTreeError(
            f"{option} {needs[0]} needs Graphviz's `dot` program, which is not on PATH: "
            f"install it with `apt-get install graphviz` (Debian/Ubuntu){alt}"
        )
    return tuple(out)


def check_trace_dir(trace_dir) -> Path:
    """Create ``trace_dir`` if needed and make sure files can be written there; returns the Path.

    Raises EdgeTreeError (one line) when it is a file, cannot be created, or is not writable.
    """
    if trace_dir is None or str(trace_dir) == "":
        raise EdgeTreeError("no trace directory given")
    path = Path(trace_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise EdgeTreeError(f"trace directory {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeTreeError(f"cannot create trace directory {path}: {e.strerror or e}") from None
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".edge-tree-write-test-"):
            pass
    except OSError as e:
        raise EdgeTreeError(f"trace directory {path} is not writable: {e.strerror or e}") from None
    return path


def _json_default(obj):
    """numpy scalars and arrays (the engine's records may hold some), sets and paths (a header
    built in Python may)."""
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def dumps_record(record: dict) -> str:
    """One record as one line of JSON (ASCII only, so any token text stays on its line).

    Non-finite floats (a -inf log prob) are written as ``-Infinity``/``NaN`` like Python's json.
    """
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=_json_default)


class TraceWriter:
    """Writes ``trace.jsonl`` as decoding runs, and hands every step record to its sinks.

    ::

        with TraceWriter("runs/t1", sinks=[pictures, report]) as tw:
            tw.write_header(header)
            for record in steps:
                tw.write_step(record)        # a StepRecord: one line, then each sink
            tw.write_summary(summary)
        # closing tells each sink: close(header, summary)

    Opening a directory that already holds a trace replaces its ``trace.jsonl`` and removes the
    files an earlier run made from it (``step-NNNN.dot|png|svg``, ``report.html``; nothing else).
    A sink that fails is reported on stderr and never stops the run: the trace is the record,
    the rest are views of it.
    """

    def __init__(self, trace_dir, sinks: Iterable[Sink] = ()):
        self.dir = Path(trace_dir).expanduser()
        self.path = self.dir / TRACE_FILE
        self.sinks = list(sinks)
        self.n_steps = 0
        self._fh = None
        self._header: dict | None = None
        self._summary: dict | None = None
        self._complaints = [0] * len(self.sinks)
        self._closed = False

    def open(self) -> "TraceWriter":
        if self._fh is None:
            check_trace_dir(self.dir)
            if self.path.exists():
                self._remove_old_outputs()
            try:
                self._fh = open(self.path, "w", encoding="ascii", newline="\n")
            except OSError as e:
                raise EdgeTreeError(f"cannot write {self.path}: {e.strerror or e}") from None
        return self

    def _remove_old_outputs(self) -> None:
        for old in self.dir.iterdir():
            if (_STEP_FILE.match(old.name) or old.name == REPORT_FILE) and old.is_file():
                old.unlink(missing_ok=True)

    def __enter__(self) -> "TraceWriter":
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close()
        except Exception as e:  # noqa: BLE001 - never hide the exception that ended the run
            if exc_type is None:
                raise
            print(f"edge-tree: trace: could not finish {self.dir}: {e}", file=sys.stderr)

    def close(self) -> None:
        """Close trace.jsonl, then tell the sinks the trace is complete."""
        if self._closed:
            return
        self._closed = True
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._header is None:
            return  # nothing to show: the run stopped before it began
        for k, sink in enumerate(self.sinks):
            close = getattr(sink, "close", None)
            if close is not None:
                self._guard(k, f"could not finish {_name(sink)}", close, self._header, self._summary)

    def _write_line(self, record: dict) -> None:
        if self._closed:
            raise ValueError("TraceWriter is closed")
        self.open()
        self._fh.write(dumps_record(record) + "\n")
        self._fh.flush()

    def write_header(self, header: dict) -> None:
        """Write the header record (``type`` and ``version`` are filled in when missing)."""
        if self._header is not None:
            raise ValueError("the trace header was already written")
        record = {"type": "header", "version": TRACE_VERSION, **header}
        record["type"] = "header"
        self._write_line(record)
        self._header = record

    def write_step(self, record: StepRecord) -> None:
        """Append one step record, then hand it to each sink."""
        if self._header is None:
            raise ValueError("write_header must come before write_step")
        self._write_line(record.to_json())
        self.n_steps += 1
        for k, sink in enumerate(self.sinks):
            self._guard(k, f"{_name(sink)} failed on step {record.step}", sink, record)

    def write_summary(self, summary: dict) -> None:
        """Write the summary record; the sinks get it when the trace closes."""
        if self._header is None:
            raise ValueError("write_header must come before write_summary")
        record = {"type": "summary", **summary}
        record["type"] = "summary"
        self._write_line(record)
        self._summary = record

    def _guard(self, k: int, what: str, call, *args) -> None:
        """Run a sink's call; a failure is told on stderr (a few times per sink), never raised."""
        try:
            call(*args)
        except Exception as e:  # noqa: BLE001 - a view must never stop the decoding
            self._complaints[k] += 1
            if self._complaints[k] <= _MAX_SINK_COMPLAINTS:
                more = " (further failures not shown)" if self._complaints[k] == _MAX_SINK_COMPLAINTS else ""
                print(f"edge-tree: trace: {what}: {e}{more}", file=sys.stderr)


def _name(sink) -> str:
    return getattr(sink, "name", None) or type(sink).__name__


def read_trace(path) -> tuple[dict, list[StepRecord], dict | None]:
    """Read a trace: ``(header, steps, summary)``; ``path`` is trace.jsonl or its directory.

    ``summary`` is None for an interrupted run; a final line without its newline that does not
    parse (the run was killed mid-write) is ignored.  Unknown record types are skipped.  A file
    that is missing, empty, has no header first, a newer version, a broken line before the last or
    a step record that does not hold together raises EdgeTreeError naming the file and line.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / TRACE_FILE
    header, steps, summary = None, [], None
    for lineno, record in _records(p):
        kind = record.get("type")
        if header is None:
            header = _check_header(p, lineno, record)
        elif kind == "step":
            try:
                steps.append(StepRecord.from_json(record))
            except EdgeTreeError as e:
                raise EdgeTreeError(f"{p}:{lineno}: {e}") from None
        elif kind == "summary":
            summary = record
        elif kind == "header":
            raise EdgeTreeError(f"{p}:{lineno}: a second header record (two runs in one file?)")
    if header is None:
        raise EdgeTreeError(f"{p}: empty trace (the run stopped before writing its header)")
    return header, steps, summary


def _records(p: Path) -> Iterable[tuple[int, dict]]:
    """(line number, JSON object) for each non-blank line; a broken last line without its
    newline is where a killed run stopped writing, so it ends the file instead of failing."""
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise EdgeTreeError(f"no trace file {p}") from None
    except OSError as e:
        raise EdgeTreeError(f"cannot read trace file {p}: {e.strerror or e}") from None
    lines = data.split(b"\n")
    complete = len(lines) - 1  # the piece after the last newline is b"" or a partial line
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            if lineno > complete:
                return
            raise EdgeTreeError(f"{p}:{lineno}: not a JSON record ({getattr(e, 'msg', None) or e})") from None
        if not isinstance(record, dict):
            if lineno > complete:
                return
            raise EdgeTreeError(f"{p}:{lineno}: not a JSON object")
        yield lineno, record


def _check_header(p: Path, lineno: int, record: dict) -> dict:
    if record.get("type") != "header":
        raise EdgeTreeError(f"{p}:{lineno}: not an edge-tree trace (the first record is not a header)")
    version = record.get("version", TRACE_VERSION)
    if not isinstance(version, int) or version > TRACE_VERSION:
        raise EdgeTreeError(f"{p}: trace format version {version!r} is newer than this edge-tree reads "
                            f"(version {TRACE_VERSION}); upgrade edge-tree")
    return record
