"""The decoding trace: one JSON record per line in ``trace.jsonl``, plus optional pictures.

A trace directory holds ``trace.jsonl`` (a header record, one step record per speculative decoding
round, a summary record at the end), ``step-0001.dot|png|svg`` per step when asked for, and
``report.html`` written when the trace is closed.  Each line is flushed as soon as it is written, so
a killed run leaves a readable file; :func:`read_trace` ignores a final partial line and a missing
summary.  The format is described in docs/trace-format.md.

Validate options with :func:`check_formats` and :func:`check_trace_dir` *before* loading a model.
Nothing here imports llama_cpp.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterable

from ..errors import EdgeTreeError, UsageError

TRACE_VERSION = 1
TRACE_FILE = "trace.jsonl"
REPORT_FILE = "report.html"

TRACE_FORMATS = ("jsonl", "dot", "png", "svg")
"""``--trace-format`` values: jsonl (always written anyway) and per-step pictures."""

RENDER_FORMATS = ("dot", "png", "svg", "html")
"""``edge-tree render --format`` values; html writes report.html."""

_NEEDS_DOT = ("png", "svg")
_STEP_FILE = re.compile(r"step-\d{4,}\.(dot|png|svg)(\.tmp)?$")


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
            if not name:
                continue
            if name not in allowed:
                raise UsageError(option, f"unknown format {name!r}; choose from {', '.join(allowed)}")
            if name not in out:
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
    """numpy scalars / arrays and other number-likes, for records built with numpy."""
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "shape", None) == ():
        return obj.item()
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
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
    """Writes a trace directory as decoding runs.

    ::

        with TraceWriter("runs/t1", formats=("jsonl", "png")) as tw:
            tw.write_header(header)
            for record in steps:
                tw.write_step(record)
            tw.write_summary(summary)   # also writes report.html

    ``trace.jsonl`` is always written (the other outputs are re-rendered from it); each line is
    flushed at once.  ``formats`` among dot/png/svg add ``step-NNNN.<fmt>`` per step as it comes.
    ``report.html`` is written by :meth:`write_summary` or, for a run that ends without a summary
    (an exception, Ctrl-C), by :meth:`close`; ``report=False`` turns it off.  Opening a directory
    that already holds a trace replaces its ``trace.jsonl`` and removes its old ``step-NNNN.*``
    files (only files with exactly that name pattern).  A picture that cannot be drawn is reported
    on stderr and skipped: it never stops the run.
    """

    def __init__(self, trace_dir, formats: Iterable[str] | str = ("jsonl",), *, report: bool = True):
        self.formats = check_formats(formats)
        self.dir = Path(trace_dir).expanduser()
        self.path = self.dir / TRACE_FILE
        self.report_path = self.dir / REPORT_FILE
        self.report_enabled = report
        self.files: list[Path] = []  # every file written, in order
        self.n_steps = 0
        self._fh = None
        self._header_written = False
        self._summary_written = False
        self._report_current = False
        self._render_failures = 0
        self._closed = False

    # -- lifecycle

    def open(self) -> "TraceWriter":
        if self._fh is not None:
            return self
        check_trace_dir(self.dir)
        if self.path.exists():
            for old in self.dir.iterdir():
                if _STEP_FILE.match(old.name) and old.is_file():
                    try:
                        old.unlink()
                    except OSError:
                        pass
            if self.report_path.exists():
                try:
                    self.report_path.unlink()
                except OSError:
                    pass
        try:
            self._fh = open(self.path, "w", encoding="ascii", newline="\n")
        except OSError as e:
            raise EdgeTreeError(f"cannot write {self.path}: {e.strerror or e}") from None
        self.files.append(self.path)
        return self

    def __enter__(self) -> "TraceWriter":
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            try:
                self.close()
            except Exception as e:  # noqa: BLE001 - never hide the exception that ended the run
                print(f"edge-tree: trace: could not finish {self.dir}: {e}", file=sys.stderr)

    def close(self) -> None:
        """Close trace.jsonl and write report.html if it is not up to date yet."""
        if self._closed:
            return
        self._closed = True
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self.report_enabled and self._header_written and not self._report_current:
            self._write_report()

    # -- records

    def _write_line(self, record: dict) -> None:
        if self._closed:
            raise ValueError("TraceWriter is closed")
        if self._fh is None:
            self.open()
        line = dumps_record(record)
        self._fh.write(line + "\n")
        self._fh.flush()
        self._report_current = False

    def write_header(self, header: dict) -> None:
        """Write the header record (``type`` and ``version`` are filled in when missing)."""
        if self._header_written:
            raise ValueError("the trace header was already written")
        record = {"type": "header", "version": TRACE_VERSION}
        record.update(header)
        record["type"] = "header"
        self._write_line(record)
        self._header_written = True

    def write_step(self, record: dict) -> list[Path]:
        """Append one step record; draw its pictures for the dot/png/svg formats. Returns the picture paths."""
        if not self._header_written:
            raise ValueError("write_header must come before write_step")
        if record.get("type") != "step":
            record = {"type": "step", **record}
        self._write_line(record)
        self.n_steps += 1
        fmts = [f for f in self.formats if f in ("dot", "png", "svg")]
        if not fmts:
            return []
        from .render import write_step_files

        try:
            # round-trip through JSON so pictures are drawn from exactly what the file holds
            rec = json.loads(dumps_record(record))
            paths = write_step_files(rec, self.dir, fmts, fallback_number=self.n_steps)
        except Exception as e:  # noqa: BLE001 - a picture must never stop the decoding
            self._render_failures += 1
            if self._render_failures <= 3:
                more = " (further failures not shown)" if self._render_failures == 3 else ""
                print(f"edge-tree: trace: could not draw step {record.get('step', self.n_steps)}: {e}{more}",
                      file=sys.stderr)
            return []
        self.files += paths
        return paths

    def write_summary(self, summary: dict) -> None:
        """Write the summary record, then report.html."""
        if not self._header_written:
            raise ValueError("write_header must come before write_summary")
        record = {"type": "summary", **summary}
        record["type"] = "summary"
        self._write_line(record)
        self._summary_written = True
        if self.report_enabled:
            self._write_report()

    def _write_report(self) -> Path | None:
        from .render import write_report

        if self._fh is not None:
            self._fh.flush()
        try:
            header, steps, summary = read_trace(self.path)
            path = write_report(header, steps, summary, self.report_path)
        except Exception as e:  # noqa: BLE001 - the trace itself is complete; the report is a view
            print(f"edge-tree: trace: could not write {self.report_path}: {e}", file=sys.stderr)
            return None
        self._report_current = True
        if path not in self.files:
            self.files.append(path)
        return path


def read_trace(path) -> tuple[dict, list[dict], dict | None]:
    """Read a trace: ``(header, steps, summary)``; ``path`` is trace.jsonl or its directory.

    ``summary`` is None for an interrupted run; a final line without its newline that does not
    parse (the run was killed mid-write) is ignored.  Unknown record types are skipped.  A file
    that is missing, empty, has no header first, a newer version or a broken line before the last
    raises EdgeTreeError naming the file and line.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / TRACE_FILE
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise EdgeTreeError(f"no trace file {p}") from None
    except OSError as e:
        raise EdgeTreeError(f"cannot read trace file {p}: {e.strerror or e}") from None
    lines = data.split(b"\n")
    partial = lines.pop()  # b"" when the file ends with a newline
    header = None
    steps: list[dict] = []
    summary = None
    entries = [(n, line, False) for n, line in enumerate(lines, 1)]
    if partial.strip():
        entries.append((len(lines) + 1, partial, True))
    for lineno, raw, is_partial in entries:
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            if is_partial:
                break
            msg = getattr(e, "msg", None) or str(e)
            raise EdgeTreeError(f"{p}:{lineno}: not a JSON record ({msg})") from None
        if not isinstance(record, dict):
            if is_partial:
                break
            raise EdgeTreeError(f"{p}:{lineno}: not a JSON object")
        kind = record.get("type")
        if header is None:
            if kind != "header":
                raise EdgeTreeError(f"{p}:{lineno}: not an edge-tree trace (the first record is not a header)")
            version = record.get("version", TRACE_VERSION)
            if not isinstance(version, int) or version > TRACE_VERSION:
                raise EdgeTreeError(f"{p}: trace format version {version!r} is newer than this edge-tree reads "
                                    f"(version {TRACE_VERSION}); upgrade edge-tree")
            header = record
        elif kind == "step":
            steps.append(record)
        elif kind == "summary":
            summary = record
        elif kind == "header":
            raise EdgeTreeError(f"{p}:{lineno}: a second header record (two runs in one file?)")
    if header is None:
        raise EdgeTreeError(f"{p}: empty trace (the run stopped before writing its header)")
    return header, steps, summary


__all__ = [
    "TraceWriter", "read_trace", "check_trace_dir", "check_formats", "dumps_record",
    "TRACE_FILE", "REPORT_FILE", "TRACE_FORMATS", "RENDER_FORMATS", "TRACE_VERSION",
]
