"""Pictures of steps, from synthetic step records alone (no model): DOT validity, counts, escaping,
the report (and its look in headless Chromium against a reference), its acceptance chart against
--stats on tiny models."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import pytest

from edge_tree.errors import EdgeTreeError
from edge_tree.records import StepRecord
from edge_tree.viz.graph import StepView, step_graph, write_step_files
from edge_tree.viz.jsonl import TraceWriter
from edge_tree.viz.outputs import render_trace, trace_sinks
from edge_tree.viz.report import write_report
from edge_tree.viz.terminal import text_tree
from edge_tree.viz.labels import visible
from steprecords import make_record, make_step, nasty_step

DATA = Path(__file__).resolve().parent / "data"
HAVE_DOT = shutil.which("dot") is not None
# The suite's set-up installs Graphviz: a missing `dot` fails these tests, it does not skip them.
needs_dot = pytest.mark.usefixtures("dot_program")


# ---------------------------------------------------------------------------------------------
# helpers




def records() -> dict[str, StepRecord]:
    return {
        "small": make_step(1),
        "nasty": nasty_step(2),
        "ar": make_step(3, branching=(), accept=(), mode="ar"),  # root + bonus only
        "chain": make_step(4, branching=(1, 1, 1, 1, 1), accept=(0, 0), mode="chain"),
        "none_accepted": make_step(5, branching=(3,), accept=()),
        "big": make_step(6, n_nodes=200, branching=(6, 4, 3, 3)),
    }


def png_pixels(data: bytes):
    """A tiny PNG decoder (8-bit, non-interlaced RGB/RGBA/grey) -> (width, height, channels, rows)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
    assert depth == 8 and interlace == 0, (depth, interlace)
    bpp = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev, i = [], bytearray(stride), 0
    for _ in range(h):
        f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + ((a + b) >> 1)) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, bpp, rows


def distinct_colours(data: bytes, step: int = 7) -> int:
    w, h, bpp, rows = png_pixels(data)
    seen = set()
    for y in range(0, h, step):
        row = rows[y]
        for x in range(0, w, step):
            seen.add(row[x * bpp:x * bpp + min(bpp, 3)])
    return len(seen)


def dot_json(path: Path) -> dict:
    """Layout of a DOT file as Graphviz's own JSON (robust node/edge counting)."""
    res = subprocess.run(["dot", "-Tjson", str(path)], capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stderr == b"", res.stderr.decode()  # no warnings either
    return json.loads(res.stdout)


def graph_nodes_edges(layout: dict) -> tuple[list[dict], list[dict]]:
    """Nodes and edges of the step itself: anything in a legend cluster is excluded (there is none
    today, the legend is the graph label, but the count must stay right if one is added)."""
    objects = layout.get("objects", [])
    legend_ids = set()
    for obj in objects:
        if "nodes" in obj and "legend" in obj.get("name", ""):
            legend_ids.update(obj["nodes"])
    nodes = [o for o in objects if "nodes" not in o and "subgraphs" not in o and o["_gvid"] not in legend_ids]
    edges = [e for e in layout.get("edges", []) if e["tail"] not in legend_ids and e["head"] not in legend_ids]
    return nodes, edges


def svg_texts(svg: bytes | str) -> str:
    root = ET.fromstring(svg)
    return "\n".join("".join(el.itertext()) for el in root.iter("{http://www.w3.org/2000/svg}text"))


# ---------------------------------------------------------------------------------------------
# visible()


def test_visible_makes_whitespace_and_controls_visible():
    assert visible(" a\tb\nc") == "\u2423a\u21e5b\u21b5c"
    assert visible("\x00\x07\x1b\x7f") == "\\x00\\x07\\x1b\\x7f"
    assert visible("\\") == "\\\\"
    assert visible("") == "\u2205"
    assert visible("é中文🙂") == "é中文🙂"
    assert visible("a\u200bb") == "a\\u200bb"
    assert visible("\u2028") == "\\u2028"
    assert visible("\ud800") == "\\ud800"  # a lone surrogate never reaches a UTF-8 encoder
    assert visible("\u2423") == "\\u2423"  # our own glyphs are escaped when literal
    assert visible("abcdefghij", limit=5) == "abcde\u2026"
    assert visible("\x00\x00", limit=5) == "\\x00\u2026"  # never cut inside an escape
    for ch in map(chr, range(0, 0x3000)):
        out = visible(ch)
        assert all(c == "\\" or not unicodedata_is_control(c) for c in out), repr(ch)


def unicodedata_is_control(c: str) -> bool:
    import unicodedata

    return unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


# ---------------------------------------------------------------------------------------------
# DOT / PNG / SVG


@pytest.mark.parametrize("name", list(records()))
def test_dot_parses_and_counts_match(name, tmp_path):
    record = records()[name]
    (path,) = write_step_files(record, tmp_path, ["dot"])
    assert path.name == f"step-{record.step:04d}.dot"
    assert HAVE_DOT, "Graphviz's dot program is not installed (apt-get install graphviz)"
    res = subprocess.run(["dot", "-Tcanon", str(path)], capture_output=True, timeout=120)
    assert res.returncode == 0 and res.stderr == b"", res.stderr.decode()
    nodes, edges = graph_nodes_edges(dot_json(path))
    n = record.n
    assert len(nodes) == n
    assert len(edges) == n - 1
    assert sorted(o["name"] for o in nodes) == sorted(f"n{i}" for i in range(n))
    by_id = {o["_gvid"]: o["name"] for o in nodes}
    got = sorted((by_id[e["tail"]], by_id[e["head"]]) for e in edges)
    want = sorted((f"n{p}", f"n{i}") for i, p in enumerate(record.nodes.parent) if p >= 0)
    assert got == want


def test_graph_object_counts_without_dot():
    """Counting on the graphviz object itself (no program needed): one node and one edge statement each."""
    for record in records().values():
        g = step_graph(record)
        node_stmts = [line for line in g.body if re.match(r"\s*n\d+ \[", line)]
        edge_stmts = [line for line in g.body if re.match(r"\s*n\d+ -> n\d+", line)]
        assert len(node_stmts) == record.n and len(edge_stmts) == record.n - 1
        assert 'rankdir=LR' in g.source


@needs_dot
def test_png_and_svg_files(tmp_path):
    record = nasty_step()
    paths = write_step_files(record, tmp_path, ["dot", "png", "svg"])
    assert [p.name for p in paths] == ["step-0002.dot", "step-0002.png", "step-0002.svg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)  # no temporary left
    png = paths[1].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert distinct_colours(png) > 5
    svg = paths[2].read_bytes()
    texts = svg_texts(svg)
    for raw in record.nodes.text:
        assert visible(raw, 24) in texts, raw
    for expected in ['"', "\\\\", "{}", "\u21b5", "\u21e5", "\\x00", "\\x1b", "<b>&amp;", "|", "é", "中文", "🙂",
                     "\\N", "\\G", "\u2205", "a\\u200bb", "\\x0d\\x7f\\x85"]:
        assert expected in texts, expected
    assert "\x1b" not in svg.decode("utf-8") and "\x00" not in svg.decode("utf-8")
    # tooltips carry the whole text (a backslash shows as the look-alike U+2216 there)
    tips = {}
    for g in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}g"):
        m = re.fullmatch(r"step2_n(\d+)", g.get("id", ""))
        if m:
            (a,) = g.iter("{http://www.w3.org/2000/svg}a")
            tips[int(m.group(1))] = a.get("{http://www.w3.org/1999/xlink}title")
    assert sorted(tips) == list(range(record.n))
    for i, raw in enumerate(record.nodes.text):
        assert tips[i].split("\n")[1] == "text " + visible(raw).replace("\\", "\u2216")


@needs_dot
def test_big_record_png(tmp_path):
    (png,) = write_step_files(make_step(9, n_nodes=200, branching=(6, 4, 3, 3)), tmp_path, ["png"])
    data = png.read_bytes()
    w, h = struct.unpack(">II", data[16:24])
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and w > 300 and h > 1000


def test_colours_and_best_path_in_dot():
    record = nasty_step()
    src = step_graph(record).source
    best = set(record.best_path)
    assert best and best != set(record.accepted)
    for i in best:
        assert re.search(rf"^\s*n{i} \[.*penwidth=2\.5", src, re.M), i
        p = record.nodes.parent[i]
        assert re.search(rf"^\s*n{p} -> n{i} \[.*penwidth=3", src, re.M), i
    assert "#b2f2bb" in src and "#f1f3f5" in src and "#99e9f2" in src and "#dbe4ff" in src
    assert "style=dashed" in src  # the bonus edge


def test_numpy_values_in_a_record_read_back():
    record = make_record(7)
    record["accepted"] = [np.int64(i) for i in record["accepted"]]
    record["best_path"] = [np.int64(i) for i in record["best_path"]]
    record["bonus"] = np.int64(record["bonus"])
    record["nodes"]["parent"] = [np.int64(p) for p in record["nodes"]["parent"]]
    step = StepRecord.from_json(record)
    assert type(step.bonus) is int and all(type(p) is int for p in step.nodes.parent)
    tree = text_tree(step)
    assert tree.count("\u2713") == 2 and "(bonus)" in tree
    assert "penwidth=2.5" in step_graph(step).source


@pytest.mark.parametrize("field, value, needle", [
    ("parent", 5, "parent"), ("status", "drafted", "status"), ("step", -1, "negative")])
def test_a_broken_record_is_a_user_error(field, value, needle):
    record = make_record(1)
    if field == "step":
        record["step"] = value
    else:
        record["nodes"][field][2] = value
    with pytest.raises(EdgeTreeError, match=needle):
        StepRecord.from_json(record)


# ---------------------------------------------------------------------------------------------
# text tree, notebook


def test_text_tree_plain_and_colour():
    record = nasty_step()
    plain = text_tree(record, color=False)
    lines = plain.rstrip("\n").split("\n")
    assert len(lines) == 1 + record.n
    assert "\x1b" not in plain and "\x00" not in plain
    assert lines[1].startswith("\u25cf ")
    assert any(line.startswith("\u251c\u2500 ") for line in lines) and any("\u2514\u2500 " in line for line in lines)
    assert plain.count("\u2713 ") == 2 and plain.count("(bonus)") == 1
    assert "q=0.30 p=0.80" in plain  # the first accepted node: rank 1 under the root
    coloured = text_tree(record, color=True)
    assert "\x1b[32m" in coloured and "\x1b[36m" in coloured and "\x1b[2;31m" in coloured
    # the only escape sequences are ours: every ESC starts a known SGR code
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == plain
    # the bonus line comes after its draft siblings
    bonus_line = next(i for i, line in enumerate(lines) if "(bonus)" in line)
    assert "\u2514\u2500 + " in lines[bonus_line]


def test_text_tree_deep_chain_no_recursion_limit():
    record = make_step(1, branching=(1,) * 1500, accept=(0,) * 10, n_nodes=1501)
    out = text_tree(record)
    assert out.count("\n") == 1 + 1501


@needs_dot
def test_step_view_repr_svg(tmp_path):
    view = StepView(nasty_step())
    svg = view._repr_svg_()
    assert svg.lstrip().startswith("<?xml") or "<svg" in svg[:400]
    ET.fromstring(svg.encode("utf-8"))
    assert "step 2" in repr(view)
    assert view.text_tree() == text_tree(view.record)
    assert [p.name for p in view.save(tmp_path, ["dot"])] == ["step-0002.dot"]


# ---------------------------------------------------------------------------------------------
# report.html and render_trace

HEADER = {"target": "t.gguf", "draft": "d.gguf", "mode": "tree", "settings": {"budget": 32},
          "prompt": "Once upon a time", "prompt_tokens": 5, "started": "2026-01-01T00:00:00Z"}


SUMMARY = {"stats": {"tokens": 9, "rounds": 3, "acceptance_by_depth": [0.5, 0.25], "acceptance_rate": None},
           "text": "x"}


def write_trace(path: Path, recs: list[StepRecord], summary: dict | None = SUMMARY, sinks=()) -> Path:
    """A trace as the CLI writes it; summary None: the run stopped before its summary."""
    with TraceWriter(path, sinks) as tw:
        tw.write_header(HEADER)
        for r in recs:
            tw.write_step(r)
        if summary is not None:
            tw.write_summary(summary)
    return path / "trace.jsonl"


EXTERNAL = re.compile(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}|url\(|@import|<link|<iframe|\ssrc=", re.I)


def chart_values(page: str, title: str) -> list[float]:
    """The numbers behind the bars of the report's chart called ``title``."""
    chart = re.search(rf'<svg class="chart"[^>]*aria-label="{re.escape(title)}".*?</svg>', page, re.S)
    assert chart, title
    return [float(v) for v in re.findall(r'<g class="bar"[^>]*data-value="([^"]+)"', chart.group(0))]


@needs_dot
def test_report_sections_and_self_contained(tmp_path):
    recs = list(records().values())
    header = {"target": "t", "draft": "d", "mode": "tree", "prompt": "P<>&", "settings": {"a": 1}}
    path = write_report(header, recs, {"type": "summary", "stats": {"tokens": 3}, "text": "x"}, tmp_path / "r.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]  # written whole, no temporary left
    page = path.read_text("utf-8")
    assert page.count('<section class="step"') == len(recs)
    for r in recs:
        assert f'id="step-{r.step}"' in page
    assert page.count("<svg") >= len(recs) + 2  # one graph per step plus the two charts
    assert not EXTERNAL.search(page), EXTERNAL.search(page)
    assert "\x1b" not in page and "\x00" not in page
    assert "ArrowRight" in page and "ArrowLeft" in page  # the script, inlined
    assert ".card{" in page  # the style sheet, inlined
    assert 'class="tok bonus' in page and 'title="step 2' in page
    assert "P&lt;&gt;&amp;" in page
    assert chart_values(page, "tokens emitted per step (green accepted, cyan bonus)") == [
        float(len(r.accepted)) for r in recs]


def test_report_escapes_every_text_it_shows(tmp_path):
    """Autoescape is on: markup in a prompt, a setting, a stat or a token is shown, never run."""
    evil = "<script>alert(1)</script>"
    record = make_record(1, texts=[evil])
    header = {"mode": evil, "prompt": evil, "settings": {evil: evil}}
    page = write_report(header, [StepRecord.from_json(record)], {"stats": {evil: evil}},
                        tmp_path / "r.html").read_text("utf-8")
    assert page.count("<script>") == 1  # the report's own
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_report_without_dot_shows_dot_source(tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    recs = [make_step(1), nasty_step(2)]
    page = write_report({"mode": "tree"}, recs, None, tmp_path / "r.html").read_text("utf-8")
    assert page.count('<section class="step"') == 2
    assert page.count("apt-get install graphviz") == 2
    assert "digraph step1 {" in page and "rankdir=LR" in page
    assert "interrupted" in page  # no summary record
    assert not EXTERNAL.search(page)


@needs_dot
def test_render_trace_rerenders_every_step(tmp_path):
    recs = [make_step(1), nasty_step(2), make_step(3, accept=())]
    trace = write_trace(tmp_path / "run", recs)
    paths = render_trace(trace, tmp_path / "out", ["png", "svg", "dot", "html"])
    names = [p.name for p in paths]
    assert names == [f"step-{k:04d}.{f}" for k in (1, 2, 3) for f in ("png", "svg", "dot")] + ["report.html"]
    assert all(p.stat().st_size > 0 for p in paths)
    # a trace directory works too
    assert [p.name for p in render_trace(tmp_path / "run", tmp_path / "out2", "dot")] == [
        "step-0001.dot", "step-0002.dot", "step-0003.dot"]


def test_render_trace_bad_format(tmp_path):
    from edge_tree.errors import UsageError

    trace = write_trace(tmp_path / "run", [make_step(1)])
    with pytest.raises(UsageError, match="--format"):
        render_trace(trace, tmp_path / "out", ["jpeg"])


# ---------------------------------------------------------------------------------------------
# the acceptance chart is the --stats metric

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def unsure_draft(tmp_path_factory):
    """The target's own weights with flatter logits: at temperature 1 it is accepted often but not
    always, at every depth (the draft equal to the target is always accepted)."""
    from tinymodels import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("unsure") / "unsure.gguf", seed=0, scale=0.5)


@pytest.mark.parametrize("draft", ["tiny_draft_same", "unsure_draft"])
@pytest.mark.parametrize("rounds", [None, 10], ids=["complete", "interrupted"])
def test_report_acceptance_chart_is_the_stats_metric(request, tmp_path, tiny_target, draft, rounds):
    """The chart equals result.stats["acceptance_by_depth"] (what --stats prints), also for a run
    that stopped without a summary record, where the report has only the steps to go by (an
    earlier renderer counted something else there: [0.4, 0.25] where --stats said [0.4, 0.5]
    for the unsure draft stopped after 10 rounds)."""
    from edge_tree.core.engine import Engine

    steps: list[StepRecord] = []
    with Engine(str(tiny_target), str(request.getfixturevalue(draft)), threads=1, ctx_size=512,
                policy="fixed") as engine:  # a tree every round, whatever the tiny draft costs
        result = engine.generate(PROMPT, max_tokens=60, temperature=1.0, seed=3, on_step=steps.append,
                                 should_stop=lambda: rounds is not None and len(steps) >= rounds)
    assert len(steps) == result.stats["rounds"] and (rounds is None or len(steps) == rounds)
    summary = {"stats": result.stats, "text": result.text} if rounds is None else None
    write_trace(tmp_path, steps, summary, sinks=trace_sinks(tmp_path, ["jsonl"]))
    page = (tmp_path / "report.html").read_text("utf-8")
    assert ("interrupted" in page) == (summary is None)
    chart = chart_values(page, "acceptance rate by depth")
    assert chart and [round(x, 4) for x in chart] == result.stats["acceptance_by_depth"]
    if draft == "unsure_draft":  # rounds stop at different depths: where the definitions differ
        assert len(chart) >= 2 and min(chart) < 1


# ---------------------------------------------------------------------------------------------
# the report in a browser: the same as the reference made before the viewer was split

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
WINDOW = (1280, 1600)


def screenshot(page: Path, shot: Path, profile: Path, fragment: str = "") -> bytes:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={shot}",
           f"--window-size={WINDOW[0]},{WINDOW[1]}", page.resolve().as_uri() + fragment]
    try:
        subprocess.run(cmd, capture_output=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("chromium did not finish in 180 s")
    assert shot.exists(), "chromium wrote no screenshot"
    return shot.read_bytes()


def pixels(data: bytes) -> np.ndarray:
    w, h, bpp, rows = png_pixels(data)
    return np.frombuffer(b"".join(rows), np.uint8).reshape(h, w, bpp)[:, :, :3].astype(np.int16)


@needs_dot
@pytest.mark.parametrize("fragment, reference", [("", "report-step1.png"), ("#step-2", "report-step2.png")])
def test_report_looks_as_before_in_headless_chromium(tmp_path, fragment, reference):
    """tests/data/report-trace.jsonl's report, screenshot in headless Chromium, against the
    screenshot an earlier renderer made of it (tests/data/report-step*.png): top of the page
    with step 1, and the page opened at #step-2 (the step whose token texts are all escapes)."""
    assert CHROMIUM, "no chromium for the screenshot test (apt-get install chromium)"
    (report,) = render_trace(DATA / "report-trace.jsonl", tmp_path / "out", ["html"])
    data = screenshot(report, tmp_path / "shot.png", tmp_path / "profile", fragment)
    got, want = pixels(data), pixels((DATA / reference).read_bytes())
    assert got.shape == want.shape == (WINDOW[1], WINDOW[0], 3)
    assert len(np.unique(got.reshape(-1, 3)[::97], axis=0)) > 20  # a page, not a blank window
    diff = np.abs(got - want)
    changed = (diff.max(axis=2) > 32).mean()
    assert diff.mean() < 0.5 and changed < 0.002, (diff.mean(), changed)
