"""`edge-tree bench`: the click command over session.run_bench and table.format_table."""

from __future__ import annotations

import json
import sys

import click

from ..core.options import LoadOptions, click_options
from ..errors import UsageError, user_errors
from ..files import check_writable_file, write_text
from .modes import DEFAULT_MODES
from .pairs import PAIRS
from .prompts import load_prompts
from .session import DEFAULT_MAX_TOKENS, DEFAULT_TOOL_TIMEOUT, run_bench
from .table import format_table

# what to load: the same options, checks and messages as `edge-tree generate`
LOAD_FIELDS = ("target", "draft", "threads", "ctx_size", "draft_vocab", "n_gpu_layers",
               "draft_n_gpu_layers", "rpc", "rpc_draft", "cache_type_k_draft", "cache_type_v_draft")

BENCH_EXAMPLES = """
\b
Examples:
  edge-tree bench -n 16 --modes ar,tree                       # demo pair A, quick look
  edge-tree bench --pair B --json bench.json                  # the realistic draft
  edge-tree bench --llama-cpp ~/.cache/edge-tree/llama.cpp -t 2   # and llama.cpp's own tools
  edge-tree bench --pair C -ngl 99 -ngld 99                   # on a GPU (llama.cpp's tools too)
  edge-tree bench --pair B --rpc 10.0.0.2:50052 --llama-cpp DIR   # the target on another host

\b
Pairs (--pair), all made from the demo model, Gemma 3 270M:
""" + "\n".join(f"  {name}  {what}" for name, what in PAIRS.items()) + """
  C and E build the deep copy on first use (edge-tree models prepare --deep)
"""


@click.command("bench", epilog=BENCH_EXAMPLES)
@click_options(LoadOptions, only=LOAD_FIELDS)
@click.option("--pair", help=f"A demo pair instead of -m/-md: {', '.join(PAIRS)} (see below).")
@click.option("--modes", default=DEFAULT_MODES, show_default=True,
              help="Comma-separated: ar, lookup, chain:N (N drafted tokens), tree, tree:N (max "
                   "depth N). ar is always run (the baseline).")
@click.option("--prompts", "prompts_file", type=click.Path(),
              help='JSONL file, one {"prompt": "...", "name": "..."} per line (default: 10 built-in prompts).')
@click.option("-n", "--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, show_default=True,
              help="Tokens to generate per prompt.")
@click.option("--llama-cpp", "llama_cpp_dir", type=click.Path(),
              help="Folder with llama.cpp's llama-completion and llama-speculative "
                   "(scripts/build_llama_cpp.sh): run them on the same prompts and settings too.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), help="Write the full result as JSON to FILE.")
@click.option("--tool-timeout", type=float, default=DEFAULT_TOOL_TIMEOUT, show_default=True,
              help="Seconds before one llama.cpp run is given up (its row gets an error note).")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr.")
def bench(pair, modes, prompts_file, max_tokens, llama_cpp_dir, json_file, tool_timeout, quiet,
          **load_values):
    """Speed of ar / lookup / chain / tree decoding (and llama.cpp's own tools) over a prompt set.

    Greedy, every prompt through every mode in rotating order; prints a table on stdout: speed,
    acceptance, where the time goes (host ms per token), and the GPU offload of both models.
    """
    with user_errors():
        # everything that can be checked without a model is checked before one loads
        options = LoadOptions.from_mapping(load_values)
        if tool_timeout <= 0:
            raise UsageError("--tool-timeout", f"must be > 0, got {tool_timeout}")
        prompts = load_prompts(prompts_file) if prompts_file else None
        if json_file:
            check_writable_file(json_file, "--json")
        try:
            result = run_bench(modes=modes, prompts=prompts, max_tokens=max_tokens, options=options,
                               pair=pair, llama_cpp_dir=llama_cpp_dir, progress=not quiet,
                               tool_timeout=tool_timeout)
        except KeyboardInterrupt:
            click.echo("\nedge-tree: bench interrupted", err=True)
            sys.exit(130)
        click.echo(format_table(result))
        if json_file:
            write_text(json_file, json.dumps(result, indent=2) + "\n", f"--json {json_file}")
