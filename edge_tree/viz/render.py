"""Pictures of speculative decoding steps, drawn from step records alone.

Everything here works on the plain JSON-able records described in docs/trace-format.md: no model is
loaded and llama_cpp is never imported, so a trace can be re-rendered on any machine.

* :func:`step_graph` -- one step as a ``graphviz.Digraph`` (left to right, one Graphviz node per
  record node, one edge per parent/child pair; the legend lives in the graph label, so it adds no
  nodes or edges).
* :func:`write_step_files` -- ``step-0001.dot|png|svg`` for one record.
* :func:`render_trace` -- the ``edge-tree render`` command: re-render every step of a trace file.
* :func:`write_report` -- a self-contained ``report.html`` (inline SVG, inline JS, no external URL).
* :func:`text_tree` -- an indented, optionally ANSI-coloured text tree for ``--show-tree``.
* :class:`StepView` -- displays a step inline in Jupyter (``_repr_svg_``).
"""

from __future__ import annotations

import html
import json
import math
import operator
import re
import shutil
import subprocess
import unicodedata
from pathlib import Path
from typing import Iterable, Sequence

import graphviz

from ..errors import EdgeTreeError

STEP_FILE_FORMATS = ("dot", "png", "svg")
"""Per-step picture formats; png and svg need Graphviz's ``dot`` program, dot does not."""

NEEDS_DOT = ("png", "svg")

DOT_MISSING = (
    "Graphviz's `dot` program is not on PATH; install it with `apt-get install graphviz` "
    "(Debian/Ubuntu; `brew install graphviz` on macOS)"
)

# Fill / border / font colours per node status.  Rejected nodes are greyed out.
STATUS_STYLE = {
    "root": ("#dbe4ff", "#364fc7", "#1c1c1c"),
    "accepted": ("#b2f2bb", "#2b8a3e", "#1c1c1c"),
    "rejected": ("#f1f3f5", "#adb5bd", "#868e96"),
    "bonus": ("#99e9f2", "#0b7285", "#1c1c1c"),
}
UNKNOWN_STYLE = ("#ffffff", "#495057", "#1c1c1c")
EDGE_COLOR = {"accepted": "#2b8a3e", "rejected": "#ced4da", "bonus": "#0b7285"}
BEST_COLOR = "#e8590c"  # the draft's best path (highest cumulative log prob): bold, orange when rejected
FONT = "DejaVu Sans"
MAX_LABEL_CHARS = 24  # token text in a node is cut here (the tooltip has all of it)

# ---------------------------------------------------------------------------------------------
# Text: make any token piece visible and safe


_SPECIAL = {" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5", "\\": "\\\\"}
# Our own marker glyphs, escaped when they occur literally so the display is unambiguous.
_MARKERS = {"\u2423", "\u21b5", "\u21e5", "\u2205"}
_EMPTY = "\u2205"  # ∅


def visible(text: str | None, limit: int | None = None) -> str:
    """A token piece with its invisible characters made visible, one line, safe for any terminal.

    Space -> ``␣``, newline -> ``↵``, tab -> ``⇥``, backslash -> ``\\\\``, other control, format,
    separator, surrogate and unassigned code points -> ``\\x07`` / ``\\u200b`` / ``\\U000e0001``;
    the empty string -> ``∅``.  Printable non-ASCII (é, 中文, 🙂) is kept.  With ``limit``, the
    result is cut to that many characters (escapes are never split) and ends with ``…``.
    """
    if text is None:
        return _EMPTY
    if text == "":
        return _EMPTY
    out: list[str] = []
    used = 0
    for ch in text:
        piece = _SPECIAL.get(ch)
        if piece is None:
            cat = unicodedata.category(ch)
            if ch in _MARKERS or cat[0] == "C" or cat in ("Zl", "Zp") or (cat == "Zs" and ch != " "):
                cp = ord(ch)
                piece = f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}"
            else:
                piece = ch
        if limit is not None and used + len(piece) > limit:
            out.append("\u2026")
            break
        out.append(piece)
        used += len(piece)
    return "".join(out)


def _esc_html(text: str) -> str:
    """Escape text for a Graphviz HTML-like label (after :func:`visible`, so no control chars).

    Besides the HTML escapes, backslashes are doubled: Graphviz runs label text, HTML-like too,
    through its escString substitution (``\\N`` becomes the node name, ``\\\\`` one backslash).
    """
    return html.escape(text.replace("\\", "\\\\"), quote=True)


def _esc_attr(text: str) -> str:
    """A plain DOT attribute value (a tooltip) showing ``text`` as literally as Graphviz allows.

    Graphviz unescapes backslashes in escString attributes a version-dependent number of times
    (and turns ``\\N`` into the node name), so a backslash is shown as the look-alike ``∖``
    (U+2216) in tooltips; the node label itself shows it exactly.  Its SVG writer passes anything
    that looks like an XML entity through, so ``&`` is written as ``&amp;``; quotes are escaped by
    the graphviz package.
    """
    return graphviz.nohtml(text.replace("&", "&amp;").replace("\\", "\u2216"))


# ---------------------------------------------------------------------------------------------
# Numbers


def _num(x) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def fmt_prob(p) -> str:
    """0.8312 -> '0.83'; 3.2e-05 -> '3e-05'; None -> '–'."""
    p = _num(p)
    if p is None:
        return "\u2013"
    if math.isnan(p):
        return "nan"
    if p == 0:
        return "0"
    if p >= 0.01:
        return f"{p:.2f}"
    return f"{p:.0e}"


def fmt_logprob(lp) -> str:
    """-0.1849 -> '-0.18'; -inf -> '-∞'; None -> '–'."""
    lp = _num(lp)
    if lp is None:
        return "\u2013"
    if math.isnan(lp):
        return "nan"
    if math.isinf(lp):
        return "-\u221e" if lp < 0 else "\u221e"
    if lp == 0:
        return "0"
    return f"{lp:.2f}"


# ---------------------------------------------------------------------------------------------
# Record access


def _int(x) -> int | None:
    """An int from an int-like (numpy integers included); None for anything else (bool, None, float)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        return operator.index(x)
    except TypeError:
        return None


class _Step:
    """Read-only, validated view of a step record's node lists."""

    def __init__(self, record: dict):
        if not isinstance(record, dict):
            raise EdgeTreeError(f"a step record must be a JSON object, not {type(record).__name__}")
        self.record = record
        nodes = record.get("nodes") or {}
        parent = [_int(p) for p in (nodes.get("parent") or [])]
        n = len(parent)
        self.n = n

        def col(name, default=None):
            values = list(nodes.get(name) or [])
            if len(values) < n:
                values += [default] * (n - len(values))
            return values[:n]

        self.token = col("token")
        self.text = [t if isinstance(t, str) else ("" if t is None else str(t)) for t in col("text", "")]
        self.parent = parent
        self.depth = [_int(d) for d in col("depth")]
        self.rank = [_int(r) for r in col("rank")]
        self.draft_prob = col("draft_prob")
        self.draft_logprob = col("draft_logprob")
        self.cum_logprob = col("cum_logprob")
        self.target_prob = col("target_prob")
        self.status = [s if isinstance(s, str) else "" for s in col("status", "")]
        self.step = _int(record.get("step"))
        for i, p in enumerate(parent):
            if p is None or p >= i or p < -1:
                raise EdgeTreeError(
                    f"step {self.step}: node {i} has parent {nodes['parent'][i]!r}; a parent must be -1 (root) or an "
                    "earlier node"
                )
            if p == -1 and i != 0:
                raise EdgeTreeError(f"step {self.step}: node {i} has parent -1 but only node 0 may be the root")
        for i, d in enumerate(self.depth):
            if d is None:
                self.depth[i] = 0 if parent[i] == -1 else (self.depth[parent[i]] or 0) + 1
        self.children: list[list[int]] = [[] for _ in range(n)]
        for i, p in enumerate(parent):
            if p >= 0:
                self.children[p].append(i)
        for kids in self.children:
            kids.sort(key=lambda i: (self.status[i] == "bonus",
                                     self.rank[i] if self.rank[i] is not None else 1 << 30, i))

        def indices(values) -> list[int]:
            out = [_int(i) for i in (values if isinstance(values, (list, tuple)) else list(values or []))]
            return [i for i in out if i is not None and 0 <= i < n]

        self.accepted = indices(record.get("accepted"))
        bonus = _int(record.get("bonus"))
        self.bonus = bonus if bonus is not None and 0 <= bonus < n else None
        self.best = set(indices(record.get("best_path")))
        self.mode = str(record.get("mode", ""))
        self.position = record.get("position")

    @property
    def drafted(self) -> int:
        return sum(1 for s in self.status if s in ("accepted", "rejected", "drafted"))

    def emitted_nodes(self) -> list[int]:
        out = list(self.accepted)
        if self.bonus is not None:
            out.append(self.bonus)
        return out

    def title(self) -> str:
        """'step 3 · tree · pos 17 · accepted 2 of 7 drafted + bonus'"""
        parts = [f"step {self.step}" if self.step is not None else "step"]
        if self.mode:
            parts.append(self.mode)
        if self.position is not None:
            parts.append(f"pos {self.position}")
        acc = f"accepted {len(self.accepted)} of {self.drafted} drafted"
        if self.bonus is not None:
            acc += " + bonus"
        parts.append(acc)
        return " \u00b7 ".join(parts)


# ---------------------------------------------------------------------------------------------
# Graphviz


def _node_label(s: _Step, i: int) -> str:
    status = s.status[i]
    _, _, font = STATUS_STYLE.get(status, UNKNOWN_STYLE)
    text = _esc_html(visible(s.text[i], MAX_LABEL_CHARS))
    if status == "root":
        stats = f"root \u00b7 pos {s.position}" if s.position is not None else "root"
    elif status == "bonus":
        stats = f"target's token \u00b7 p {fmt_prob(s.target_prob[i])}"
    else:
        stats = f"q {fmt_prob(s.draft_prob[i])} lq {fmt_logprob(s.draft_logprob[i])} "
        stats += f"\u03a3 {fmt_logprob(s.cum_logprob[i])} p {fmt_prob(s.target_prob[i])}"
    return (
        '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="0">'
        f'<TR><TD><FONT POINT-SIZE="10" COLOR="{font}">{text}</FONT></TD></TR>'
        f'<TR><TD><FONT POINT-SIZE="7" COLOR="{"#868e96" if status == "rejected" else "#495057"}">'
        f"{_esc_html(stats)}</FONT></TD></TR></TABLE>>"
    )


def _tooltip(s: _Step, i: int) -> str:
    lines = [
        f"node {i} \u00b7 {s.status[i] or '?'} \u00b7 depth {s.depth[i]} \u00b7 rank {s.rank[i]}"
        + (" \u00b7 draft's best path" if i in s.best else ""),
        f"text {visible(s.text[i])}",
        f"token {s.token[i]}",
        f"q (draft prob) {fmt_prob(s.draft_prob[i])}   log q {fmt_logprob(s.draft_logprob[i])}",
        f"\u03a3 (cum log q) {fmt_logprob(s.cum_logprob[i])}",
        f"p (target prob) {fmt_prob(s.target_prob[i])}",
    ]
    # escString: a literal "\n" is a line break in the tooltip
    return graphviz.nohtml("\\n".join(str(_esc_attr(line)) for line in lines))


def _legend_label(s: _Step, record: dict) -> str:
    emitted = record.get("emitted_text")
    if not isinstance(emitted, str):
        emitted = "".join(s.text[i] for i in s.emitted_nodes())
    head = _esc_html(s.title())
    emitted_html = _esc_html(visible(emitted, 60))

    def swatch(status: str, name: str) -> str:
        fill, border, font = STATUS_STYLE[status]
        return (
            f'<TD BGCOLOR="{fill}" COLOR="{border}" BORDER="1" STYLE="rounded">'
            f'<FONT POINT-SIZE="8" COLOR="{font}">{name}</FONT></TD>'
        )

    return (
        '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="1" CELLPADDING="1">'
        f'<TR><TD ALIGN="LEFT"><FONT POINT-SIZE="10"><B>{head}</B></FONT></TD></TR>'
        f'<TR><TD ALIGN="LEFT"><FONT POINT-SIZE="9">emitted {emitted_html}</FONT></TD></TR>'
        '<TR><TD ALIGN="LEFT"><TABLE BORDER="0" CELLBORDER="0" CELLSPACING="3" CELLPADDING="2"><TR>'
        + swatch("root", "root")
        + swatch("accepted", "accepted")
        + swatch("rejected", "rejected")
        + swatch("bonus", "bonus (target)")
        + f'<TD BORDER="2" COLOR="{BEST_COLOR}" STYLE="rounded"><FONT POINT-SIZE="8">bold: draft\'s best path</FONT></TD>'
        '</TR></TABLE></TD></TR><TR><TD ALIGN="LEFT"><FONT POINT-SIZE="8" COLOR="#495057">q draft prob \u00b7 '
        "lq draft log prob \u00b7 \u03a3 cumulative draft log prob \u00b7 p target prob</FONT></TD>"
        "</TR></TABLE>>"
    )


def step_graph(record: dict) -> graphviz.Digraph:
    """One decoding step as a left-to-right ``graphviz.Digraph``.

    Exactly one Graphviz node per record node (named ``n0``, ``n1``, ... after the record's node
    index) and one edge per (parent, child) pair; the title and legend are an HTML-like table in the
    *graph label*, so they add no nodes or edges.  Fill colours: root indigo, accepted green,
    rejected grey (greyed text), bonus cyan; the draft's best path (``best_path``) has bold borders
    and bold edges (orange where it was rejected).  The object displays inline in Jupyter.
    """
    s = _Step(record)
    name = f"step{s.step}" if s.step is not None else "step"
    g = graphviz.Digraph(name=name, encoding="utf-8")
    g.attr(
        "graph",
        rankdir="LR",
        id=name,
        fontname=FONT,
        fontsize="10",
        nodesep="0.06",
        ranksep="0.3",
        labelloc="t",
        labeljust="l",
        margin="0.1",
        ordering="out",
        bgcolor="white",
        label=_legend_label(s, record),
    )
    g.attr("node", shape="box", style="rounded,filled", fontname=FONT, fontsize="9", margin="0.04,0.02",
           height="0.2", width="0.3", penwidth="1")
    g.attr("edge", arrowsize="0.5", penwidth="1", color=EDGE_COLOR["rejected"])
    on_path = set(s.accepted)
    for i in range(s.n):
        status = s.status[i]
        fill, border, _ = STATUS_STYLE.get(status, UNKNOWN_STYLE)
        attrs = {"fillcolor": fill, "color": border, "id": f"{name}_n{i}", "tooltip": _tooltip(s, i)}
        if i in s.best:
            attrs["penwidth"] = "2.5"
            if status == "rejected":
                attrs["color"] = BEST_COLOR
        g.node(f"n{i}", label=_node_label(s, i), **attrs)
    for i in range(1, s.n):
        p = s.parent[i]
        status = s.status[i]
        attrs = {"id": f"{name}_e{i}", "color": EDGE_COLOR.get(status, "#495057")}
        if status == "bonus":
            attrs["style"] = "dashed"
        if status in ("accepted", "bonus") and (p == 0 or p in on_path):
            attrs["penwidth"] = "1.6"
        if i in s.best:
            attrs["penwidth"] = "3"
            if status == "rejected":
                attrs["color"] = BEST_COLOR
        g.edge(f"n{p}", f"n{i}", **attrs)
    return g


class StepView:
    """A step for notebooks: ``StepView(record)`` displays as an SVG graph in Jupyter.

    ``.graph`` is the ``graphviz.Digraph`` (which also displays inline), ``.text_tree()`` the text
    form, ``.save(out_dir, formats)`` writes ``step-NNNN.*`` files.
    """

    def __init__(self, record: dict):
        self.record = record
        self.graph = step_graph(record)

    def _repr_svg_(self) -> str:
        return _pipe(self.graph, "svg").decode("utf-8")

    def _repr_pretty_(self, p, cycle):  # IPython plain-text fallback
        p.text(self.text_tree())

    def text_tree(self, color: bool = False) -> str:
        return text_tree(self.record, color=color)

    def save(self, out_dir, formats: Sequence[str] = ("svg",)) -> list[Path]:
        return write_step_files(self.record, out_dir, formats)

    def __repr__(self) -> str:
        return f"StepView({_Step(self.record).title()})"


def _pipe(graph: graphviz.Digraph, fmt: str) -> bytes:
    try:
        return graph.pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        raise EdgeTreeError(f"cannot write {fmt}: {DOT_MISSING}") from None
    except subprocess.CalledProcessError as e:
        err = (e.stderr or b"").decode("utf-8", "replace").strip().splitlines()
        raise EdgeTreeError(f"Graphviz failed to draw {graph.name} as {fmt}: {err[0] if err else e}") from None


def step_filename(record: dict, fmt: str, fallback_number: int | None = None) -> str:
    """``step-0003.png`` from the record's ``step`` number."""
    n = _int(record.get("step")) if isinstance(record, dict) else None
    if n is None or n < 0:
        n = fallback_number if fallback_number is not None else 0
    return f"step-{n:04d}.{fmt}"


def write_step_files(record: dict, out_dir, formats: Iterable[str], *, graph=None,
                     fallback_number: int | None = None) -> list[Path]:
    """Write ``step-NNNN.<fmt>`` for each of ``formats`` among dot/png/svg; returns the paths.

    dot is graphviz's source (needs no Graphviz program); png and svg come from ``dot`` via
    ``graphviz``'s ``pipe``.  Other format names (jsonl, html) are ignored.
    """
    out = Path(out_dir)
    g = graph if graph is not None else step_graph(record)
    paths = []
    for fmt in formats:
        if fmt not in STEP_FILE_FORMATS:
            continue
        path = out / step_filename(record, fmt, fallback_number)
        if fmt == "dot":
            data = g.source.encode("utf-8")
        else:
            data = _pipe(g, fmt)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        paths.append(path)
    return paths


def render_trace(trace_path, out_dir, formats: Iterable[str] = ("svg",)) -> list[Path]:
    """``edge-tree render TRACE.jsonl --format png|svg|dot|html --out DIR``.

    Re-renders every step of the trace (a ``trace.jsonl`` file or a trace directory) from the JSONL
    alone into ``out_dir``; ``html`` writes ``report.html``.  Returns the written paths, in order.
    Raises EdgeTreeError / UsageError for a bad format, a missing ``dot``, a bad trace or an
    unwritable directory.
    """
    from .trace import RENDER_FORMATS, check_formats, check_trace_dir, read_trace

    fmts = check_formats(formats, option="--format", allowed=RENDER_FORMATS)
    header, steps, summary = read_trace(trace_path)
    out = check_trace_dir(out_dir)
    paths: list[Path] = []
    for k, record in enumerate(steps, start=1):
        paths += write_step_files(record, out, fmts, fallback_number=k)
    if "html" in fmts:
        paths.append(write_report(header, steps, summary, out / "report.html"))
    return paths


# ---------------------------------------------------------------------------------------------
# Text tree

_ANSI = {
    "root": "\x1b[1m",
    "accepted": "\x1b[32m",
    "rejected": "\x1b[2;31m",
    "bonus": "\x1b[36m",
}
_DIM = "\x1b[2m"
_RESET = "\x1b[0m"
_GLYPH = {"root": "\u25cf", "accepted": "\u2713", "rejected": "\u2717", "bonus": "+"}


def text_tree(record: dict, color: bool = False) -> str:
    """An indented text tree of one step, for ``--show-tree``.

    ::

        step 1 · tree · pos 17 · accepted 1 of 3 drafted + bonus · emitted ␣cat␣sat
        ● The  (root)
        ├─ ✓ ␣cat  q=0.83 p=0.91
        │  └─ + ␣sat  p=0.72  (bonus)
        └─ ✗ ␣dog  q=0.10 p=0.02

    Children are ordered by draft rank.  With ``color`` the lines use ANSI colours (accepted green,
    rejected dim red, bonus cyan); token texts never carry raw control characters either way.
    """
    s = _Step(record)
    emitted = record.get("emitted_text")
    if not isinstance(emitted, str):
        emitted = "".join(s.text[i] for i in s.emitted_nodes())
    lines = [f"{s.title()} \u00b7 emitted {visible(emitted)}"]
    if color:
        lines[0] = _DIM + lines[0] + _RESET
    if s.n == 0:
        return lines[0] + "\n"

    def node_line(i: int) -> str:
        status = s.status[i]
        glyph = _GLYPH.get(status, "?")
        text = visible(s.text[i])
        if status == "root":
            stats, note = "", "  (root)"
        elif status == "bonus":
            stats, note = f"  p={fmt_prob(s.target_prob[i])}", "  (bonus)"
        else:
            stats, note = f"  q={fmt_prob(s.draft_prob[i])} p={fmt_prob(s.target_prob[i])}", ""
        body = f"{glyph} {text}{stats}{note}"
        if color:
            body = _ANSI.get(status, "") + body + _RESET
        return body

    # iterative pre-order walk (deep chains must not hit the recursion limit)
    roots = [i for i in range(s.n) if s.parent[i] == -1]
    stack = [(r, "", "") for r in reversed(roots)]  # (node, its connector, prefix for its children)
    while stack:
        i, connector, prefix = stack.pop()
        branch = _DIM + connector + _RESET if (color and connector) else connector
        lines.append(branch + node_line(i))
        kids = s.children[i]
        for k in reversed(range(len(kids))):
            last = k == len(kids) - 1
            stack.append((kids[k], prefix + ("\u2514\u2500 " if last else "\u251c\u2500 "),
                          prefix + ("   " if last else "\u2502  ")))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# report.html

_XML_PROLOG = re.compile(r"<\?xml[^>]*\?>\s*")
_DOCTYPE = re.compile(r"<!DOCTYPE[^>]*>\s*", re.IGNORECASE)
_COMMENT = re.compile(r"<!--.*?-->\s*", re.DOTALL)
_XMLNS = re.compile(r'\s+xmlns(?::\w+)?="[^"]*"')


def _inline_svg(svg: str) -> str:
    """Graphviz SVG made fit for inlining in HTML: no prolog, doctype, comments or xmlns URLs."""
    svg = _XML_PROLOG.sub("", svg)
    svg = _DOCTYPE.sub("", svg)
    svg = _COMMENT.sub("", svg)
    svg = _XMLNS.sub("", svg, count=2)
    return svg.strip()


def _svgs(graphs: list[graphviz.Digraph], batch: int = 40) -> list[str | None]:
    """SVG text per graph (None where it could not be drawn), several graphs per ``dot`` run."""
    dot = shutil.which("dot")
    if dot is None:
        return [None] * len(graphs)
    out: list[str | None] = []
    for start in range(0, len(graphs), batch):
        chunk = graphs[start:start + batch]
        source = "\n".join(g.source for g in chunk)
        docs: list[str] = []
        try:
            res = subprocess.run([dot, "-Tsvg"], input=source.encode("utf-8"), capture_output=True, timeout=600)
            if res.returncode == 0:
                text = res.stdout.decode("utf-8", "replace")
                docs = [d for d in re.split(r"(?=<\?xml )", text) if d.strip()]
        except (OSError, subprocess.SubprocessError):
            docs = []
        if len(docs) == len(chunk):
            out += [_inline_svg(d) for d in docs]
            continue
        for g in chunk:  # one failed: draw them one by one so only the bad one is missing
            try:
                out.append(_inline_svg(g.pipe(format="svg").decode("utf-8", "replace")))
            except Exception:  # noqa: BLE001 - the report shows the DOT source instead
                out.append(None)
    return out


_STEP_HUES = ("#ffe066", "#b2f2bb", "#ffc9c9", "#d0bfff", "#ffd8a8", "#eebefa")  # .h0 ... .h5 in the CSS
_BONUS_BG = "#66d9e8"


def _text_html(text: str) -> str:
    """Generated text for HTML: raw newlines/tabs kept (pre-wrap), other control chars made visible."""
    out = []
    for ch in text:
        if ch in "\n\t" or not (unicodedata.category(ch)[0] == "C"):
            out.append(ch)
        else:
            out.append(visible(ch))
    return html.escape("".join(out), quote=True)


def _token_span(s: _Step, i: int, kind: str) -> str:
    raw = s.text[i]
    if raw == "":
        inner = f'<span class="ws">{_EMPTY}</span>'
    else:
        inner = _text_html(raw)
        if "\n" in raw:
            inner = inner.replace("\n", '<span class="ws">\u21b5</span>\n')
    if kind == "bonus":
        tip = f"step {s.step} \u00b7 bonus (target's own token) \u00b7 p={fmt_prob(s.target_prob[i])}"
    else:
        tip = (f"step {s.step} \u00b7 accepted at depth {s.depth[i]} \u00b7 q={fmt_prob(s.draft_prob[i])} "
               f"p={fmt_prob(s.target_prob[i])}")
    hue = (s.step or 0) % len(_STEP_HUES)
    return (f'<span class="tok {kind} h{hue}" data-step="{s.step}" title="{html.escape(tip, quote=True)}">'
            f"{inner}</span>")


def _bar_chart(values: list[float], labels: list[str], tips: list[str], *, title: str, ymax: float,
               fmt, colors: list[str] | None = None, stacked: list[float] | None = None,
               data_steps: list[int] | None = None, width: int = 560, height: int = 200) -> str:
    """A small bar chart as inline SVG (no script, no external resources)."""
    left, right, top, bottom = 40, 10, 28, 30
    w, h = width - left - right, height - top - bottom
    n = max(len(values), 1)
    slot = w / n
    bar = max(min(slot * 0.8, 48), 0.6)
    ymax = ymax if ymax > 0 else 1
    e = html.escape
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{e(title)}">',
             f'<text x="{left}" y="16" class="ct">{e(title)}</text>']
    for frac in (0, 0.5, 1):
        y = top + h - frac * h
        parts.append(f'<line x1="{left}" x2="{left + w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 3:.1f}" class="ax" text-anchor="end">{e(fmt(frac * ymax))}</text>')
    label_w = 6 * max((len(x) for x in labels), default=1) + 8  # px a label needs, roughly
    show_every = max(1, math.ceil(label_w / slot))
    for k, v in enumerate(values):
        x = left + k * slot + (slot - bar) / 2
        vh = max(0.0, min(v, ymax)) / ymax * h
        color = colors[k] if colors else "#4dabf7"
        extra = f' data-step="{data_steps[k]}"' if data_steps else ""
        parts.append(f'<g class="bar"{extra}><title>{e(tips[k])}</title>')
        parts.append(f'<rect x="{x:.2f}" y="{top + h - vh:.2f}" width="{bar:.2f}" height="{vh:.2f}" fill="{color}"/>')
        if stacked is not None and stacked[k] > 0:
            sh = min(stacked[k], ymax) / ymax * h
            parts.append(f'<rect x="{x:.2f}" y="{top + h - vh - sh:.2f}" width="{bar:.2f}" height="{sh:.2f}" '
                         f'fill="{_BONUS_BG}"/>')
        parts.append("</g>")
        if n <= 30 and slot >= 14:
            top_y = top + h - vh - (min(stacked[k], ymax) / ymax * h if stacked else 0) - 3
            parts.append(f'<text x="{x + bar / 2:.2f}" y="{top_y:.1f}" class="ax" text-anchor="middle">'
                         f"{e(fmt(v + (stacked[k] if stacked else 0)))}</text>")
        if k % show_every == 0:
            parts.append(f'<text x="{x + bar / 2:.2f}" y="{top + h + 13}" class="ax" text-anchor="middle">'
                         f"{e(labels[k])}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _acceptance_from_steps(steps: list[_Step]) -> list[float]:
    """Per depth d >= 1: steps that accepted a token at depth d / steps that drafted at depth d."""
    drafted: dict[int, int] = {}
    accepted: dict[int, int] = {}
    for s in steps:
        dd = {s.depth[i] for i in range(s.n) if s.status[i] in ("accepted", "rejected")}
        ad = {s.depth[i] for i in s.accepted}
        for d in dd:
            drafted[d] = drafted.get(d, 0) + 1
        for d in ad:
            accepted[d] = accepted.get(d, 0) + 1
    if not drafted:
        return []
    return [accepted.get(d, 0) / drafted[d] if drafted.get(d) else 0.0 for d in range(1, max(drafted) + 1)]


def _fmt_stat(v) -> str:
    if v is None:
        return "\u2013"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
        return ", ".join(f"{x:.2f}" if isinstance(x, float) else str(x) for x in v)
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


_CSS = """
:root{--fg:#1c1c1c;--muted:#6c757d;--line:#dee2e6}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI","DejaVu Sans",sans-serif;color:var(--fg);margin:0;background:#f8f9fa}
main{max-width:1240px;margin:0 auto;padding:14px 20px 40px}
h1{font-size:20px;margin:4px 0}h2{font-size:16px;margin:0 0 8px}h3{font-size:15px;margin:0}
.meta{color:var(--muted);margin:0 0 10px}.meta b{color:var(--fg);font-weight:600}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 14px;margin:12px 0}
.gen{white-space:pre-wrap;word-break:break-word;font:13px/1.7 ui-monospace,"DejaVu Sans Mono",monospace;max-height:340px;overflow:auto}
.prompt{color:var(--muted)}
.tok{border-radius:3px;cursor:pointer}
.tok.bonus{background:#66d9e8;box-shadow:inset 0 -2px 0 #0b7285}
.h0{background:#ffe066}.h1{background:#b2f2bb}.h2{background:#ffc9c9}.h3{background:#d0bfff}.h4{background:#ffd8a8}.h5{background:#eebefa}
.tok.cur{outline:1px solid #495057;outline-offset:-1px}
.ws{color:#868e96}
.legend span{display:inline-block;padding:0 6px;border-radius:3px;margin-right:6px;font-size:12px}
nav.steps{display:flex;gap:8px;align-items:center;flex-wrap:wrap}
.btn{display:inline-block;padding:3px 10px;border:1px solid #adb5bd;border-radius:5px;background:#fff;color:var(--fg);text-decoration:none;font-size:13px}
.btn:hover{background:#e9ecef}.btn.off{opacity:.35;pointer-events:none}
.hint{color:var(--muted);font-size:12px}
section.step{border-top:1px solid var(--line);padding-top:10px;margin-top:10px}
.stephead{display:flex;gap:10px;align-items:baseline;flex-wrap:wrap;margin-bottom:6px}
.stepmeta{color:var(--muted);font-size:13px}
.graph{overflow:auto;max-height:78vh;border:1px solid var(--line);border-radius:6px;background:#fff}
.graph svg{display:block}
pre{font:12px/1.35 ui-monospace,"DejaVu Sans Mono",monospace;white-space:pre;overflow:auto;background:#f1f3f5;padding:8px;border-radius:6px;max-height:420px}
table.kv{border-collapse:collapse;font-size:13px}table.kv td{padding:2px 12px 2px 0;vertical-align:top}
table.kv td:first-child{color:var(--muted)}
.charts{display:flex;flex-wrap:wrap;gap:16px}
svg.chart{max-width:100%;height:auto;background:#fff}
svg.chart .ct{font:600 12px system-ui,"DejaVu Sans",sans-serif;fill:#343a40}
svg.chart .ax{font:10px system-ui,"DejaVu Sans",sans-serif;fill:#6c757d}
svg.chart .grid{stroke:#e9ecef}
svg.chart g.bar[data-step]{cursor:pointer}
.note{background:#fff3bf;border:1px solid #ffe066;padding:6px 10px;border-radius:6px}
"""

_JS = """
(function(){
  var steps=[].slice.call(document.querySelectorAll('section.step'));
  if(!steps.length)return;
  var cur=0, label=document.getElementById('steplabel');
  function idx(n){for(var i=0;i<steps.length;i++){if(steps[i].getAttribute('data-step')===String(n))return i;}return -1;}
  function show(i,scroll){
    i=Math.max(0,Math.min(steps.length-1,i));cur=i;
    steps.forEach(function(s,j){s.hidden=(j!==i);});
    var n=steps[i].getAttribute('data-step');
    if(label)label.textContent='step '+n+' ('+(i+1)+' of '+steps.length+')';
    document.querySelectorAll('.tok.cur').forEach(function(t){t.classList.remove('cur');});
    document.querySelectorAll('.tok[data-step="'+n+'"]').forEach(function(t){t.classList.add('cur');});
    if(history.replaceState)history.replaceState(null,'','#'+steps[i].id);
    if(scroll)document.getElementById('viewer').scrollIntoView({block:'start'});
  }
  document.addEventListener('keydown',function(e){
    if(e.altKey||e.ctrlKey||e.metaKey)return;
    var t=e.target&&e.target.tagName;if(t==='INPUT'||t==='TEXTAREA'||t==='SELECT')return;
    if(e.key==='ArrowRight'||e.key==='j'){show(cur+1);e.preventDefault();}
    else if(e.key==='ArrowLeft'||e.key==='k'){show(cur-1);e.preventDefault();}
    else if(e.key==='Home'){show(0);e.preventDefault();}
    else if(e.key==='End'){show(steps.length-1);e.preventDefault();}
  });
  document.addEventListener('click',function(e){
    var a=e.target.closest('[data-go]');
    if(a){e.preventDefault();var g=a.getAttribute('data-go');show(g==='first'?0:g==='last'?steps.length-1:cur+parseInt(g,10));return;}
    var tok=e.target.closest('[data-step]');
    if(tok&&!tok.matches('section.step')){var i=idx(tok.getAttribute('data-step'));if(i>=0){e.preventDefault();show(i,true);}}
  });
  var h=location.hash.match(/^#step-(\\d+)$/);var start=h?idx(h[1]):-1;
  show(start>=0?start:0,start>=0);
})();
"""


def write_report(header: dict | None, steps: list[dict], summary: dict | None, path) -> Path:
    """Write a self-contained ``report.html`` and return its path.

    Sections: the generated text with each step's accepted tokens marked (one colour per step,
    bonus tokens cyan; hover shows the step, click jumps to it); a step viewer with one
    ``<section class="step">`` per step (inline SVG from ``dot -Tsvg``, or a note and the DOT source
    when ``dot`` is missing), prev/next buttons and the arrow keys; summary stats with two inline SVG
    bar charts (acceptance rate by depth, tokens emitted per step); the run's header.  No external
    resource is referenced.  Works for an interrupted run (``summary`` None).
    """
    path = Path(path)
    header = header or {}
    views = [_Step(r) for r in steps]
    graphs = [step_graph(r) for r in steps]
    svgs = _svgs(graphs)
    e = lambda x: html.escape(str(x), quote=True)  # noqa: E731
    total = len(views)

    out: list[str] = []
    title = f"edge-tree trace \u00b7 {header.get('mode', '')} \u00b7 {total} steps"
    out.append(f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
               f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head>'
               "<body><main>")
    meta = [("target", header.get("target")), ("draft", header.get("draft")), ("mode", header.get("mode")),
            ("started", header.get("started")), ("steps", total)]
    out.append("<h1>edge-tree trace</h1><p class=\"meta\">"
               + " \u00b7 ".join(f"{k} <b>{e(v)}</b>" for k, v in meta if v is not None) + "</p>")
    if summary is None:
        out.append('<p class="note">No summary record: the run was interrupted. Figures below are computed '
                   "from the recorded steps.</p>")

    # generated text
    tok_count = 0
    spans = []
    for s in views:
        for i in s.accepted:
            spans.append(_token_span(s, i, "acc"))
            tok_count += 1
        if s.bonus is not None:
            spans.append(_token_span(s, s.bonus, "bonus"))
            tok_count += 1
    prompt = header.get("prompt")
    out.append('<section class="card" id="text"><h2>Generated text</h2>'
               '<p class="legend hint"><span class="h1">accepted draft tokens (one colour per step)</span>'
               f'<span style="background:{_BONUS_BG}">bonus token (the target\'s own)</span>'
               '<span class="prompt">prompt</span> hover a token for its step, click to open it</p>'
               '<div class="gen">'
               + (f'<span class="prompt">{_text_html(prompt)}</span>' if isinstance(prompt, str) else "")
               + "".join(spans) + "</div></section>")

    # step viewer
    out.append('<section class="card" id="viewer"><nav class="steps"><h2 style="margin:0">Steps</h2>'
               '<a class="btn" href="#" data-go="first">\u00ab first</a>'
               '<a class="btn" href="#" data-go="-1">\u25c0 prev</a>'
               '<span id="steplabel"></span>'
               '<a class="btn" href="#" data-go="1">next \u25b6</a>'
               '<a class="btn" href="#" data-go="last">last \u00bb</a>'
               '<span class="hint">\u2190 / \u2192 keys move between steps</span></nav>')
    if not views:
        out.append('<p class="note">This trace has no steps.</p>')
    for k, (s, rec, svg, g) in enumerate(zip(views, steps, svgs, graphs)):
        sid = s.step if s.step is not None else k + 1
        prev_id = views[k - 1].step if k > 0 else None
        next_id = views[k + 1].step if k + 1 < total else None
        t = rec.get("timings") or {}
        timing = " \u00b7 ".join(f"{name} {float(t[key]) * 1000:.1f} ms" for key, name in
                                 (("draft_s", "draft"), ("verify_s", "verify"), ("total_s", "total"))
                                 if isinstance(t.get(key), (int, float)))
        emitted = rec.get("emitted_text")
        if not isinstance(emitted, str):
            emitted = "".join(s.text[i] for i in s.emitted_nodes())
        out.append(f'<section class="step" id="step-{sid}" data-step="{sid}"><div class="stephead">'
                   f"<h3>Step {e(sid)} <span class=\"hint\">({k + 1} of {total})</span></h3>"
                   + (f'<a class="btn" href="#step-{prev_id}" data-go="-1">\u25c0 prev</a>' if k > 0
                      else '<a class="btn off" href="#">\u25c0 prev</a>')
                   + (f'<a class="btn" href="#step-{next_id}" data-go="1">next \u25b6</a>' if k + 1 < total
                      else '<a class="btn off" href="#">next \u25b6</a>')
                   + f'<span class="stepmeta">{e(s.title())} \u00b7 emitted <code>{e(visible(emitted))}</code>'
                   + (f" \u00b7 {e(timing)}" if timing else "") + "</span></div>")
        if svg is not None:
            out.append(f'<div class="graph">{svg}</div>')
        else:
            out.append('<p class="note">Graphviz\'s <code>dot</code> program was not available (or failed) when '
                       "this report was written, so here is the step's DOT source; install Graphviz "
                       "(<code>apt-get install graphviz</code>) and run <code>edge-tree render</code> to draw it.</p>"
                       f"<pre>{e(g.source)}</pre>")
        out.append(f"<details><summary>text tree</summary><pre>{e(text_tree(rec, color=False))}</pre></details>"
                   "</section>")
    out.append("</section>")

    # summary
    stats = (summary or {}).get("stats") if isinstance(summary, dict) else None
    stats = stats if isinstance(stats, dict) else {}
    acc = stats.get("acceptance_by_depth")
    acc_src = "summary"
    if not (isinstance(acc, list) and all(isinstance(x, (int, float)) for x in acc)):
        acc, acc_src = _acceptance_from_steps(views), "steps"
    acc = [float(x) for x in acc]
    charts = []
    if acc:
        charts.append(_bar_chart(acc, [f"d{d}" for d in range(1, len(acc) + 1)],
                                 [f"depth {d}: {x:.1%} accepted" for d, x in enumerate(acc, 1)],
                                 title="acceptance rate by depth" + (" (from steps)" if acc_src == "steps" else ""),
                                 ymax=1.0, fmt=lambda v: f"{v:.0%}", colors=["#40c057"] * len(acc)))
    if views:
        accepted_counts = [float(len(s.accepted)) for s in views]
        bonus_counts = [1.0 if s.bonus is not None else 0.0 for s in views]
        ids = [s.step if s.step is not None else k + 1 for k, s in enumerate(views)]
        ymax = max(a + b for a, b in zip(accepted_counts, bonus_counts)) or 1
        charts.append(_bar_chart(accepted_counts, [str(i) for i in ids],
                                 [f"step {i}: {int(a)} accepted + {int(b)} bonus"
                                  for i, a, b in zip(ids, accepted_counts, bonus_counts)],
                                 title="tokens emitted per step (green accepted, cyan bonus)", ymax=ymax,
                                 fmt=lambda v: f"{v:g}" if v == int(v) else f"{v:.1f}",
                                 colors=["#40c057"] * len(views), stacked=bonus_counts, data_steps=ids))
    rows = "".join(f"<tr><td>{e(k)}</td><td>{e(_fmt_stat(v))}</td></tr>" for k, v in stats.items())
    if not rows:
        drafted = sum(s.drafted for s in views)
        accepted_total = sum(len(s.accepted) for s in views)
        computed = {"rounds": total, "tokens": tok_count, "drafted": drafted, "accepted": accepted_total,
                    "mean_accepted_per_pass": (accepted_total / total) if total else 0.0}
        rows = "".join(f"<tr><td>{e(k)}</td><td>{e(_fmt_stat(v))}</td></tr>" for k, v in computed.items())
    out.append('<section class="card" id="summary"><h2>Summary</h2><div class="charts">' + "".join(charts)
               + f'<table class="kv">{rows}</table></div></section>')

    # header
    settings = header.get("settings") if isinstance(header.get("settings"), dict) else {}
    hrows = "".join(f"<tr><td>{e(k)}</td><td>{e(_fmt_stat(v))}</td></tr>" for k, v in settings.items())
    extra = "".join(f"<tr><td>{e(k)}</td><td>{e(_fmt_stat(header[k]))}</td></tr>"
                    for k in ("version", "prompt_tokens") if k in header)
    out.append('<section class="card" id="run"><h2>Run</h2>'
               f'<table class="kv">{extra}{hrows}</table>'
               + (f"<details><summary>prompt</summary><pre>{_text_html(prompt)}</pre></details>"
                  if isinstance(prompt, str) else "")
               + "</section>")
    out.append(f"</main><script>{_JS}</script></body></html>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(out), encoding="utf-8")
    tmp.replace(path)
    return path
