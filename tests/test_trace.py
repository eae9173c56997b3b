"""The JSONL trace: writer, sinks, reader, option checks; synthetic records only (no model)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from edge_tree.errors import EdgeTreeError, UsageError
from edge_tree.records import StepRecord
from edge_tree.viz.jsonl import RENDER_FORMATS, TraceWriter, check_formats, check_trace_dir, read_trace
from edge_tree.viz.outputs import trace_sinks

from steprecords import make_record, make_step, nasty_step

HAVE_DOT = shutil.which("dot") is not None
# The suite's set-up installs Graphviz: a missing `dot` fails these tests, it does not skip them.
needs_dot = pytest.mark.usefixtures("dot_program")

HEADER = {"type": "header", "version": 1, "target": "target.gguf", "draft": None, "mode": "tree",
          "settings": {"budget": 64, "depth": 5, "temperature": 0.0}, "prompt": "Hello \"world\"\n\x00",
          "prompt_tokens": 4, "started": "2026-11-29T06:35:57+00:00"}
SUMMARY = {"type": "summary", "stats": {"tokens": 12, "wall_s": 0.5, "tokens_per_s": 24.0, "rounds": 3,
                                        "accepted": 7, "drafted": 30, "acceptance_by_depth": [0.9, 0.5, 0.1],
                                        "mean_accepted_per_pass": 2.33}, "text": "généré 🙂"}


def steps():
    return [make_step(1), nasty_step(2), make_step(3, accept=()), make_step(4, n_nodes=200, branching=(6, 4, 3, 3))]


def write(tmp_path: Path, recs=None, summary=True, formats=("jsonl",), report=True) -> Path:
    """A trace with the sinks the CLI gives it: pictures for formats, and report.html."""
    recs = steps() if recs is None else recs
    with TraceWriter(tmp_path, trace_sinks(tmp_path, check_formats(formats), report=report)) as tw:
        tw.write_header(HEADER)
        for r in recs:
            tw.write_step(r)
        if summary:
            tw.write_summary(SUMMARY)
    return tmp_path / "trace.jsonl"


def test_round_trip(tmp_path):
    recs = steps()
    path = write(tmp_path, recs, report=False)
    header, got, summary = read_trace(path)
    assert all(isinstance(r, StepRecord) for r in got)
    assert header == HEADER and got == recs and summary == SUMMARY
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(recs) + 3  # one record per line, newline-terminated
    assert all(json.loads(line) for line in lines[:-1])
    assert read_trace(tmp_path) == (header, got, summary)  # the directory works too
    assert not (tmp_path / "report.html").exists()


def test_round_trip_fills_type_and_version(tmp_path):
    with TraceWriter(tmp_path) as tw:
        tw.write_header({"target": "t", "draft": None, "mode": "ar"})
        tw.write_step(make_step(1))
        tw.write_summary({"stats": {}, "text": ""})
    header, (step,), summary = read_trace(tmp_path)
    assert header["type"] == "header" and header["version"] == 1
    assert step == make_step(1)
    assert json.loads((tmp_path / "trace.jsonl").read_text().split("\n")[1])["type"] == "step"
    assert summary == {"type": "summary", "stats": {}, "text": ""}


def test_non_finite_and_numpy_values(tmp_path):
    import numpy as np
    rec = make_step(1)  # the engine's records may carry numpy numbers
    rec.nodes.cum_logprob[3] = float("-inf")
    rec.nodes.draft_prob[3] = np.float32(0.5)
    rec.accepted = [np.int64(i) for i in rec.accepted]
    rec.bonus = np.int64(rec.bonus)
    rec.timings["draft_s"] = np.float64(0.25)
    write(tmp_path, [rec], report=False)
    _, (got,), _ = read_trace(tmp_path)
    assert got.nodes.cum_logprob[3] == -math.inf
    assert got.nodes.draft_prob[3] == 0.5 and type(got.accepted[0]) is int
    assert got.bonus == rec.bonus and got.timings["draft_s"] == 0.25


def test_lines_are_ascii_and_one_per_record(tmp_path):
    rec = make_step(1, texts=["a\u2028b", "\u2029", "\n", "\r", "🙂", "\ud800"])  # line separators, lone surrogate
    path = write(tmp_path, [rec], report=False)
    data = path.read_bytes()
    data.decode("ascii")
    assert data.count(b"\n") == 3
    assert read_trace(path)[1] == [rec]


def test_each_line_is_flushed_before_close(tmp_path):
    with TraceWriter(tmp_path) as tw:
        tw.write_header(HEADER)
        tw.write_step(make_step(1))
        # another reader sees a valid trace while the run goes on (a killed run leaves this)
        header, got, summary = read_trace(tmp_path / "trace.jsonl")
        assert header == HEADER and len(got) == 1 and summary is None
        tw.write_step(make_step(2))
        assert len(read_trace(tmp_path)[1]) == 2


def test_truncated_last_line_is_ignored(tmp_path):
    path = write(tmp_path, summary=False, report=False)
    data = path.read_bytes()
    extra = json.dumps(make_record(5)).encode()
    for cut in (1, len(extra) // 2, len(extra) - 1):
        path.write_bytes(data + extra[:cut])
        header, got, summary = read_trace(path)
        assert len(got) == 4 and summary is None
    # a complete last record that only lacks its newline is kept
    path.write_bytes(data + extra)
    assert len(read_trace(path)[1]) == 5
    # a trace cut inside the summary line: no summary
    full = write(tmp_path, report=False).read_bytes()
    path.write_bytes(full[:-10])
    assert read_trace(path)[2] is None and len(read_trace(path)[1]) == 4


def test_broken_lines(tmp_path):
    path = tmp_path / "trace.jsonl"
    good = json.dumps(HEADER) + "\n" + json.dumps(make_record(1)) + "\n"
    path.write_text(good + "{not json\n" + json.dumps(make_record(2)) + "\n")
    with pytest.raises(EdgeTreeError, match=r"trace\.jsonl:3: not a JSON record"):
        read_trace(path)
    path.write_text("")
    with pytest.raises(EdgeTreeError, match="empty trace"):
        read_trace(path)
    path.write_text(json.dumps(make_record(1)) + "\n")
    with pytest.raises(EdgeTreeError, match="not an edge-tree trace"):
        read_trace(path)
    path.write_text(json.dumps({**HEADER, "version": 2}) + "\n")
    with pytest.raises(EdgeTreeError, match="version 2"):
        read_trace(path)
    path.write_text(good + json.dumps({"type": "future-thing", "x": 1}) + "\n\n")
    assert len(read_trace(path)[1]) == 1  # unknown records and blank lines are skipped
    with pytest.raises(EdgeTreeError, match="no trace file"):
        read_trace(tmp_path / "missing.jsonl")
    broken = make_record(2)
    broken["nodes"]["parent"][3] = 7  # a parent after its child
    path.write_text(good + json.dumps(broken) + "\n")
    with pytest.raises(EdgeTreeError, match=r"trace\.jsonl:3: step 2: not a valid step record \(node 3 has parent 7"):
        read_trace(path)


def test_writer_order_is_enforced(tmp_path):
    with TraceWriter(tmp_path) as tw:
        with pytest.raises(ValueError):
            tw.write_step(make_step(1))
        tw.write_header(HEADER)
        with pytest.raises(ValueError):
            tw.write_header(HEADER)


@needs_dot
def test_step_files_and_report(tmp_path):
    write(tmp_path, formats=("jsonl", "dot", "png", "svg"))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["trace.jsonl", "report.html"]
                           + [f"step-{k:04d}.{f}" for k in (1, 2, 3, 4) for f in ("dot", "png", "svg")])
    assert (tmp_path / "step-0002.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "report.html").read_text("utf-8")
    assert page.count('<section class="step"') == 4 and "interrupted" not in page


def test_report_written_when_the_run_dies(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with TraceWriter(tmp_path, trace_sinks(tmp_path, ["dot"])) as tw:
            tw.write_header(HEADER)
            tw.write_step(make_step(1))
            tw.write_step(make_step(2))
            raise KeyboardInterrupt
    header, got, summary = read_trace(tmp_path)
    assert len(got) == 2 and summary is None
    page = (tmp_path / "report.html").read_text("utf-8")
    assert page.count('<section class="step"') == 2 and "interrupted" in page
    assert (tmp_path / "step-0002.dot").exists()


def test_reopening_a_trace_dir_replaces_the_old_trace(tmp_path):
    write(tmp_path, formats="dot")
    assert (tmp_path / "report.html").exists()
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "step-x.dot").write_text("not ours")
    write(tmp_path, [make_step(1)], formats="dot", report=False)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["notes.txt", "step-0001.dot", "step-x.dot", "trace.jsonl"]


def test_picture_failure_does_not_stop_the_run(tmp_path, monkeypatch, capsys):
    import edge_tree.viz.graph as graph

    def boom(*a, **k):
        raise EdgeTreeError("dot crashed")

    monkeypatch.setattr(graph, "write_step_files", boom)
    write(tmp_path, formats="dot")
    assert len(read_trace(tmp_path)[1]) == 4
    assert (tmp_path / "report.html").exists()  # the other sink goes on
    err = capsys.readouterr().err
    assert "edge-tree: trace: pictures failed on step 1: dot crashed\n" in err
    assert err.count("failed on step") == 3 and "further failures not shown" in err


class Recorder:
    """A sink as any caller can write one: a callable, told when the trace closes."""

    def __init__(self):
        self.steps, self.closed = [], []

    def __call__(self, record):
        self.steps.append(record.step)

    def close(self, header, summary):
        self.closed.append((header["mode"], summary is not None))


def test_sinks_get_every_step_then_the_close(tmp_path):
    recorder, calls = Recorder(), []
    with TraceWriter(tmp_path, [recorder, calls.append]) as tw:
        tw.write_header(HEADER)
        for r in steps():
            tw.write_step(r)
        assert recorder.closed == []
        tw.write_summary(SUMMARY)
    assert recorder.steps == [1, 2, 3, 4] and [r.step for r in calls] == [1, 2, 3, 4]
    assert recorder.closed == [("tree", True)]
    with TraceWriter(tmp_path / "killed", [recorder]) as tw:  # no summary: an interrupted run
        tw.write_header(HEADER)
    assert recorder.closed[-1] == ("tree", False)


def test_a_sink_that_fails_on_close_is_reported(tmp_path, capsys):
    class Broken(Recorder):
        def close(self, header, summary):
            raise OSError("disk full")

    with TraceWriter(tmp_path, [Broken()]) as tw:
        tw.write_header(HEADER)
    assert "edge-tree: trace: could not finish Broken: disk full" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# option checks (before any model loads)


def test_check_formats():
    assert check_formats(None) == ("jsonl",)
    assert check_formats("dot") == ("dot",)
    assert check_formats("jsonl,dot, DOT") == ("jsonl", "dot")
    assert check_formats(["dot", "jsonl,dot"]) == ("dot", "jsonl")
    with pytest.raises(UsageError) as e:
        check_formats(["dot", "jpeg"])
    assert e.value.option == "--trace-format" and e.value.exit_code == 2
    assert "'jpeg'" in str(e.value) and "png" in str(e.value)
    with pytest.raises(UsageError, match="--format"):
        check_formats("html", option="--format", allowed=("dot",))
    assert check_formats("html,svg", option="--format", allowed=RENDER_FORMATS) == ("html", "svg")
    with pytest.raises(UsageError):
        check_formats("")
    with pytest.raises(UsageError):  # html is a render format, not a trace format
        check_formats("html")


def test_check_formats_without_dot(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    for fmt in ("png", "svg", "jsonl,svg"):
        with pytest.raises(EdgeTreeError) as e:
            check_formats(fmt)
        msg = str(e.value)
        assert "apt-get install graphviz" in msg and "\n" not in msg and "dot" in msg
        assert not isinstance(e.value, UsageError)
    assert check_formats("jsonl,dot") == ("jsonl", "dot")
    # the dot format needs no program: graphviz's source writing is pure Python
    write(tmp_path / "t", [make_step(1), nasty_step(2)], formats="dot")
    assert (tmp_path / "t" / "step-0002.dot").read_text("utf-8").startswith("digraph step2 {")
    assert "apt-get install graphviz" in (tmp_path / "t" / "report.html").read_text("utf-8")


def test_check_trace_dir(tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    assert check_trace_dir(deep) == deep and deep.is_dir()
    assert list(deep.iterdir()) == []  # the write probe leaves nothing behind
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(EdgeTreeError, match="not a directory"):
        check_trace_dir(afile)
    with pytest.raises(EdgeTreeError, match="cannot create"):
        check_trace_dir(afile / "sub")
    with pytest.raises(EdgeTreeError):
        TraceWriter(afile / "sub").open()
