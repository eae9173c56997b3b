"""``report.html``: one self-contained page per trace, from a Jinja2 template and static files
shipped in the package (``templates/report.html.jinja``, ``static/report.css|js``), inlined so
the page opens anywhere without a network or a server.

The page shows the generated text with each step's tokens marked, a step viewer (one Graphviz
picture per step), summary charts and the run's settings.  Its acceptance-by-depth chart is
:func:`edge_tree.records.acceptance_by_depth` over the recorded rounds: the figure ``--stats``
prints, for complete and interrupted runs alike.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

import jinja2
from markupsafe import Markup, escape

from ..files import write_text
from ..records import StepRecord, acceptance_by_depth, record_rounds
from .charts import ACCEPTED_COLOR, BONUS_COLOR, Chart, bar_chart
from .graph import inline_svgs, step_graph
from .terminal import text_tree
from .labels import EMPTY, fmt_prob, shown_in_flow, visible

STEP_HUES = 6  # token colours .h0 ... .h5 in report.css: one per step, cycling


def write_report(header: dict | None, steps: list[StepRecord], summary: dict | None, path) -> Path:
    """Write ``report.html`` (atomically) and return its path; ``summary`` None for a run that was
    interrupted. Graphviz's ``dot`` draws the steps; without it each step shows its DOT source."""
    return write_text(path, report_html(header or {}, steps, summary))


def report_html(header: dict, steps: list[StepRecord], summary: dict | None) -> str:
    """The page itself (what write_report writes)."""
    return _template().render(
        header=header, prompt=header.get("prompt") if isinstance(header.get("prompt"), str) else None,
        meta=_meta(header, steps), interrupted=summary is None,
        steps=_step_views(steps), charts=_charts(steps), stats=_stats(steps, summary),
        run=_run_rows(header), bonus_color=BONUS_COLOR, step_hues=STEP_HUES,
        css=Markup(_static("report.css")), js=Markup(_static("report.js")))


class ReportSink:
    """A trace sink: keeps the steps as they come and writes the report when the trace closes."""

    name = "report.html"

    def __init__(self, path):
        self.path = Path(path)
        self.steps: list[StepRecord] = []
        self.files: list[Path] = []  # the report, once written

    def __call__(self, record: StepRecord) -> None:
        self.steps.append(record)

    def close(self, header: dict, summary: dict | None) -> None:
        self.files = [write_report(header, self.steps, summary, self.path)]


# -- what the template shows ------------------------------------------------------------------

def _meta(header: dict, steps: list[StepRecord]) -> list[tuple[str, object]]:
    meta = [(key, header.get(key)) for key in ("target", "draft", "mode", "started")]
    return [(key, value) for key, value in meta + [("steps", len(steps))] if value is not None]


def _step_views(steps: list[StepRecord]) -> list[dict]:
    graphs = [step_graph(r) for r in steps]
    views = []
    for record, graph, svg in zip(steps, graphs, inline_svgs(graphs)):
        views.append({"record": record, "tree": text_tree(record), "timing": _timing(record.timings),
                      "svg": Markup(svg) if svg is not None else None, "dot": graph.source})
    return views


def _timing(timings: dict) -> str:
    names = (("draft_s", "draft"), ("verify_s", "verify"), ("total_s", "total"))
    return " \u00b7 ".join(f"{name} {timings[key] * 1000:.1f} ms" for key, name in names if key in timings)


def _charts(steps: list[StepRecord]) -> list[Chart]:
    charts = []
    by_depth = acceptance_by_depth(record_rounds(steps))
    if by_depth:
        charts.append(bar_chart(
            by_depth, [f"d{d}" for d in range(1, len(by_depth) + 1)],
            [f"depth {d}: {x:.1%} accepted" for d, x in enumerate(by_depth, 1)],
            title="acceptance rate by depth", ymax=1.0, fmt=lambda v: f"{v:.0%}"))
    if steps:
        accepted = [float(len(r.accepted)) for r in steps]
        ids = [r.step for r in steps]
        charts.append(bar_chart(
            accepted, [str(i) for i in ids], [f"step {r.step}: {len(r.accepted)} accepted + 1 bonus" for r in steps],
            title="tokens emitted per step (green accepted, cyan bonus)", ymax=max(accepted) + 1,
            fmt=lambda v: f"{v:g}" if v == int(v) else f"{v:.1f}", color=ACCEPTED_COLOR,
            stacked=[1.0] * len(steps), steps=ids))
    return charts


def _stats(steps: list[StepRecord], summary: dict | None) -> dict:
    """The summary's stats; for an interrupted run, the few that the steps give."""
    stats = summary.get("stats") if isinstance(summary, dict) else None
    if isinstance(stats, dict) and stats:
        return stats
    accepted = sum(len(r.accepted) for r in steps)
    return {"rounds": len(steps), "tokens": accepted + len(steps), "drafted": sum(r.drafted for r in steps),
            "accepted": accepted, "mean_accepted_per_pass": accepted / len(steps) if steps else 0.0}


def _run_rows(header: dict) -> dict:
    rows = {key: header[key] for key in ("version", "prompt_tokens") if key in header}
    settings = header.get("settings")
    return {**rows, **(settings if isinstance(settings, dict) else {})}


# -- the template and its filters ---------------------------------------------------------------

def _format_stat(value) -> str:
    if value is None:
        return "\u2013"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and all(isinstance(x, (int, float)) for x in value):
        return ", ".join(f"{x:.2f}" if isinstance(x, float) else str(x) for x in value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _token_html(text: str) -> Markup:
    """A generated token in the page's text: an empty one shows ∅, a newline shows ↵ and breaks."""
    if text == "":
        return Markup(f'<span class="ws">{EMPTY}</span>')
    return escape(shown_in_flow(text)).replace("\n", Markup('<span class="ws">\u21b5</span>\n'))


def _static(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text("utf-8")


@functools.cache
def _template() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader(__package__, "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    environment.filters.update(visible=visible, prob=fmt_prob, flow=shown_in_flow, stat=_format_stat,
                               token=_token_html)
    return environment.get_template("report.html.jinja")
