"""One decoding step as a Graphviz picture: the graph, its files (dot, png, svg), the trace sink
that draws them as steps come, and the notebook view.

No model is loaded here: a step record holds everything a picture shows.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Sequence

import graphviz

from ..errors import EdgeTreeError
from ..files import atomic_write
from ..records import StepRecord
from .jsonl import PICTURE_FORMATS, step_filename
from .terminal import text_tree
from .labels import fmt_logprob, fmt_prob, visible

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
EDGE_COLOR = {"root": "#495057", "accepted": "#2b8a3e", "rejected": "#ced4da", "bonus": "#0b7285"}
BEST_COLOR = "#e8590c"  # the draft's best path (highest cumulative log prob): bold, orange when rejected
FONT = "DejaVu Sans"
MAX_LABEL_CHARS = 24  # token text in a node is cut here (the tooltip has all of it)


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
    return text.replace("&", "&amp;").replace("\\", "\u2216")


def _node_label(r: StepRecord, i: int) -> str:
    nodes, status = r.nodes, r.nodes.status[i]
    font = STATUS_STYLE[status][2]
    text = _esc_html(visible(nodes.text[i], MAX_LABEL_CHARS))
    if status == "root":
        numbers = f"root \u00b7 pos {r.position}"
    elif status == "bonus":
        numbers = f"target's token \u00b7 p {fmt_prob(nodes.target_prob[i])}"
    else:
        numbers = (f"q {fmt_prob(nodes.draft_prob[i])} lq {fmt_logprob(nodes.draft_logprob[i])} "
                   f"\u03a3 {fmt_logprob(nodes.cum_logprob[i])} p {fmt_prob(nodes.target_prob[i])}")
    return (
        '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="0">'
        f'<TR><TD><FONT POINT-SIZE="10" COLOR="{font}">{text}</FONT></TD></TR>'
        f'<TR><TD><FONT POINT-SIZE="7" COLOR="{"#868e96" if status == "rejected" else "#495057"}">'
        f"{_esc_html(numbers)}</FONT></TD></TR></TABLE>>"
    )


def _tooltip(r: StepRecord, i: int) -> str:
    nodes = r.nodes
    lines = [
        f"node {i} \u00b7 {nodes.status[i]} \u00b7 depth {nodes.depth[i]} \u00b7 rank {nodes.rank[i]}"
        + (" \u00b7 draft's best path" if i in r.best_path else ""),
        f"text {visible(nodes.text[i])}",
        f"token {nodes.token[i]}",
        f"q (draft prob) {fmt_prob(nodes.draft_prob[i])}   log q {fmt_logprob(nodes.draft_logprob[i])}",
        f"\u03a3 (cum log q) {fmt_logprob(nodes.cum_logprob[i])}",
        f"p (target prob) {fmt_prob(nodes.target_prob[i])}",
    ]
    # escString: a literal "\n" is a line break in the tooltip
    return graphviz.nohtml("\\n".join(_esc_attr(line) for line in lines))


def _swatch(status: str, name: str) -> str:
    fill, border, font = STATUS_STYLE[status]
    return (f'<TD BGCOLOR="{fill}" COLOR="{border}" BORDER="1" STYLE="rounded">'
            f'<FONT POINT-SIZE="8" COLOR="{font}">{name}</FONT></TD>')


def _legend_label(r: StepRecord) -> str:
    return (
        '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="1" CELLPADDING="1">'
        f'<TR><TD ALIGN="LEFT"><FONT POINT-SIZE="10"><B>{_esc_html(r.title())}</B></FONT></TD></TR>'
        f'<TR><TD ALIGN="LEFT"><FONT POINT-SIZE="9">emitted {_esc_html(visible(r.emitted_text, 60))}'
        '</FONT></TD></TR>'
        '<TR><TD ALIGN="LEFT"><TABLE BORDER="0" CELLBORDER="0" CELLSPACING="3" CELLPADDING="2"><TR>'
        + _swatch("root", "root") + _swatch("accepted", "accepted") + _swatch("rejected", "rejected")
        + _swatch("bonus", "bonus (target)")
        + f'<TD BORDER="2" COLOR="{BEST_COLOR}" STYLE="rounded"><FONT POINT-SIZE="8">bold: draft\'s best path</FONT></TD>'
        '</TR></TABLE></TD></TR><TR><TD ALIGN="LEFT"><FONT POINT-SIZE="8" COLOR="#495057">q draft prob \u00b7 '
        "lq draft log prob \u00b7 \u03a3 cumulative draft log prob \u00b7 p target prob</FONT></TD>"
        "</TR></TABLE>>"
    )


def step_graph(record: StepRecord) -> graphviz.Digraph:
    """One decoding step as a left-to-right ``graphviz.Digraph``.

    Exactly one Graphviz node per record node (named ``n0``, ``n1``, ... after the record's node
    index) and one edge per (parent, child) pair; the title and legend are an HTML-like table in the
    *graph label*, so they add no nodes or edges.  Fill colours: root indigo, accepted green,
    rejected grey (greyed text), bonus cyan; the draft's best path (``best_path``) has bold borders
    and bold edges (orange where it was rejected).  The object displays inline in Jupyter.
    """
    name = f"step{record.step}"
    g = graphviz.Digraph(name=name, encoding="utf-8")
    g.attr("graph", rankdir="LR", id=name, fontname=FONT, fontsize="10", nodesep="0.06", ranksep="0.3",
           labelloc="t", labeljust="l", margin="0.1", ordering="out", bgcolor="white",
           label=_legend_label(record))
    g.attr("node", shape="box", style="rounded,filled", fontname=FONT, fontsize="9", margin="0.04,0.02",
           height="0.2", width="0.3", penwidth="1")
    g.attr("edge", arrowsize="0.5", penwidth="1", color=EDGE_COLOR["rejected"])
    best, on_path = set(record.best_path), set(record.accepted)
    for i, status in enumerate(record.nodes.status):
        fill, border, _ = STATUS_STYLE[status]
        attrs = {"fillcolor": fill, "color": border, "id": f"{name}_n{i}", "tooltip": _tooltip(record, i)}
        if i in best:
            attrs["penwidth"] = "2.5"
            if status == "rejected":
                attrs["color"] = BEST_COLOR
        g.node(f"n{i}", label=_node_label(record, i), **attrs)
    for i in range(1, record.n):
        p, status = record.nodes.parent[i], record.nodes.status[i]
        attrs = {"id": f"{name}_e{i}", "color": EDGE_COLOR[status]}
        if status == "bonus":
            attrs["style"] = "dashed"
        if status in ("accepted", "bonus") and (p == 0 or p in on_path):
            attrs["penwidth"] = "1.6"
        if i in best:
            attrs["penwidth"] = "3"
            if status == "rejected":
                attrs["color"] = BEST_COLOR
        g.edge(f"n{p}", f"n{i}", **attrs)
    return g


def pipe(graph: graphviz.Digraph, fmt: str) -> bytes:
    """The graph drawn by Graphviz's ``dot`` as png or svg bytes; a one-line EdgeTreeError when
    ``dot`` is missing or fails."""
    try:
        return graph.pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        raise EdgeTreeError(f"cannot write {fmt}: {DOT_MISSING}") from None
    except subprocess.CalledProcessError as e:
        err = (e.stderr or b"").decode("utf-8", "replace").strip().splitlines()
        raise EdgeTreeError(f"Graphviz failed to draw {graph.name} as {fmt}: {err[0] if err else e}") from None


def write_step_files(record: StepRecord, out_dir, formats: Iterable[str]) -> list[Path]:
    """Write ``step-NNNN.<fmt>`` for each of ``formats`` among dot/png/svg; returns the paths.

    dot is graphviz's source (needs no Graphviz program); png and svg come from ``dot``.  Other
    format names (jsonl, html) are ignored.
    """
    graph = step_graph(record)
    paths = []
    for fmt in formats:
        if fmt in PICTURE_FORMATS:
            data = graph.source.encode("utf-8") if fmt == "dot" else pipe(graph, fmt)
            path = Path(out_dir) / step_filename(record.step, fmt)
            paths.append(atomic_write(path, lambda tmp, data=data: tmp.write_bytes(data)))
    return paths


class StepPictures:
    """A trace sink: draws ``step-NNNN.<fmt>`` in ``out_dir`` for each step as it comes."""

    name = "pictures"

    def __init__(self, out_dir, formats: Iterable[str]):
        self.dir = Path(out_dir)
        self.formats = [f for f in formats if f in PICTURE_FORMATS]
        self.files: list[Path] = []  # every picture written, in order

    def __call__(self, record: StepRecord) -> None:
        self.files += write_step_files(record, self.dir, self.formats)


# -- SVG for a web page ----------------------------------------------------------------------

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


def inline_svgs(graphs: list[graphviz.Digraph], batch: int = 40) -> list[str | None]:
    """SVG text per graph, ready to inline in HTML (None where it could not be drawn); several
    graphs per ``dot`` run, since starting ``dot`` costs more than drawing a small graph."""
    dot = shutil.which("dot")
    if dot is None:
        return [None] * len(graphs)
    out: list[str | None] = []
    for start in range(0, len(graphs), batch):
        chunk = graphs[start:start + batch]
        docs = _draw_together(dot, chunk)
        if len(docs) == len(chunk):
            out += [_inline_svg(d) for d in docs]
            continue
        for g in chunk:  # one failed: draw them one by one so only the bad one is missing
            try:
                out.append(_inline_svg(g.pipe(format="svg").decode("utf-8", "replace")))
            except Exception:  # noqa: BLE001 - the report shows the DOT source instead
                out.append(None)
    return out


def _draw_together(dot: str, graphs: list[graphviz.Digraph]) -> list[str]:
    """One SVG document per graph from a single ``dot`` run ([] when it fails)."""
    source = "\n".join(g.source for g in graphs)
    try:
        res = subprocess.run([dot, "-Tsvg"], input=source.encode("utf-8"), capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError):
        return []
    if res.returncode != 0:
        return []
    return [d for d in re.split(r"(?=<\?xml )", res.stdout.decode("utf-8", "replace")) if d.strip()]


class StepView:
    """A step for notebooks: ``StepView(record)`` displays as an SVG graph in Jupyter.

    ``.graph`` is the ``graphviz.Digraph`` (which also displays inline), ``.text_tree()`` the text
    form, ``.save(out_dir, formats)`` writes ``step-NNNN.*`` files.
    """

    def __init__(self, record: StepRecord):
        self.record = record
        self.graph = step_graph(record)

    def _repr_svg_(self) -> str:
        return pipe(self.graph, "svg").decode("utf-8")

    def _repr_pretty_(self, p, cycle):  # IPython plain-text fallback
        p.text(self.text_tree())

    def text_tree(self, color: bool = False) -> str:
        return text_tree(self.record, color=color)

    def save(self, out_dir, formats: Sequence[str] = ("svg",)) -> list[Path]:
        return write_step_files(self.record, out_dir, formats)

    def __repr__(self) -> str:
        return f"StepView({self.record.title()})"
