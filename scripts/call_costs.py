"""Call for call: what each kind of llama_decode costs in edge-tree's contexts and in llama.cpp's own.

For the target and the draft, the same file through the same llama.cpp library, two contexts side
by side: edge-tree's, exactly as the engine creates it (core/models.py: unified KV cache, full-size
sliding-window cache, a sequence per tree leaf), and one from llama_context_default_params(), what
llama.cpp's tools start from (one sequence, its own batch sizes), with the same context size and
threads. Each kind of call runs in turn in both, `--repeats` times, after a 128-token prompt:

  pass N     N chained tokens, logits for all (a target pass over a chain, a draft level)
  prompt     128 prompt tokens, logits for the last (prompt processing)

and the median of each goes in a row with the ratio edge-tree / llama.cpp (1.00 = the same cost;
above 1.03 is a defect to find). With --llama-cpp DIR, llama-completion's own report of its one-
token decodes and its prompt processing on the same target is printed beside them.

    python scripts/call_costs.py -m TARGET.gguf -md DRAFT.gguf -t 2 -c 4096 [--llama-cpp DIR] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import time
from pathlib import Path

import edge_tree  # first: llama.cpp's library loads before numpy
import llama_cpp as C
from edge_tree.bench.tools import parse_completion_output
from edge_tree.core.models import sequences_for
from edge_tree.errors import user_errors
from edge_tree.llamacpp import llama

PROMPT_LEN = 128
TARGET_PASSES = (1, 2, 4, 8, 16, 32)
DRAFT_PASSES = (1, 2, 4, 8)


class PeerContext:
    """A context from llama.cpp's default parameters (n_ctx and threads set as a user sets them)."""

    def __init__(self, model: llama.Model, n_ctx: int, threads: int):
        params = C.llama_context_default_params()
        params.n_ctx, params.n_threads, params.n_threads_batch = n_ctx, threads, threads
        params.no_perf = True
        self._ptr = C.llama_init_from_model(model._ptr, params)
        self._mem = C.llama_get_memory(self._ptr)

    def close(self) -> None:
        C.llama_free(self._ptr)


def timed_decode(ctx, batch: llama.Batch, tokens: list[int], start: int, all_logits: bool) -> float:
    """Seconds for one llama_decode of tokens at positions start.., in seq 0, cells past start dropped."""
    C.llama_memory_seq_rm(ctx._mem, 0, start, -1)
    batch.clear()
    for k, token in enumerate(tokens):
        batch.add(token, start + k, (0,), all_logits or k == len(tokens) - 1)
    began = time.perf_counter()
    rc = C.llama_decode(ctx._ptr, batch._raw)
    C.llama_synchronize(ctx._ptr)
    elapsed = time.perf_counter() - began
    if rc != 0:
        raise SystemExit(f"llama_decode failed ({rc})")
    return elapsed


def compare(model: llama.Model, passes, n_ctx: int, threads: int, repeats: int) -> list[dict]:
    """Rows of (call, edge-tree ms, llama.cpp ms, ratio), both contexts alive, calls alternating."""
    ours = llama.Context(model, n_ctx, sequences_for(model), threads=threads)
    peer = PeerContext(model, n_ctx, threads)
    prompt = [100 + (i * 37) % 900 for i in range(PROMPT_LEN)]
    # the prompt call comes first and puts the prompt back for the passes behind it
    calls = [("prompt", prompt, 0, False)] + [(f"pass {n}", prompt[:n], PROMPT_LEN, True) for n in passes]
    times = {name: ([], []) for name, *_ in calls}
    with llama.Batch(512, 1) as batch:
        for ctx in (ours, peer):  # the prompt both calls sit behind
            timed_decode(ctx, batch, prompt, 0, False)
        for _ in range(repeats + 1):  # the first round warms both up and is dropped
            for name, tokens, start, all_logits in calls:
                for side, ctx in zip(times[name], (ours, peer)):
                    side.append(timed_decode(ctx, batch, tokens, start, all_logits))
    ours.close()
    peer.close()
    rows = []
    for name, (mine, theirs) in times.items():
        a, b = statistics.median(mine[1:]) * 1e3, statistics.median(theirs[1:]) * 1e3
        rows.append({"call": name, "edge_tree_ms": round(a, 3), "llama_cpp_ms": round(b, 3),
                     "ratio": round(a / b, 3)})
    return rows


def completion_report(tools: Path, target: str, n_ctx: int, threads: int) -> dict:
    """llama-completion's own timings: prompt processing and one-token decodes, ms per token."""
    env = dict(os.environ, LD_LIBRARY_PATH=str(tools))
    prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 12)
    out = subprocess.run([str(tools / "llama-completion"), "-m", target, "-c", str(n_ctx), "-t", str(threads),
                          "-n", "64", "--temp", "0", "-no-cnv", "-p", prompt, "--ignore-eos"],
                         env=env, capture_output=True, text=True, timeout=600).stderr
    decode = parse_completion_output(out)  # the bench's reading of its one-token decodes
    found = {"decode_ms_per_token": round(decode["seconds"] / decode["tokens"] * 1e3, 3)}
    match = re.search(r"prompt eval time =\s*[\d.]+ ms /\s*\d+ tokens\s*\(\s*([\d.]+) ms per token", out)
    if match:
        found["prompt_ms_per_token"] = float(match.group(1))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-m", "--target", required=True)
    parser.add_argument("-md", "--draft")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-c", "--ctx-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--llama-cpp", type=Path, help="folder with llama-completion (scripts/build_llama_cpp.sh)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = {"threads": args.threads, "ctx_size": args.ctx_size, "repeats": args.repeats,
              "llama_cpp_python": llama.version(), "extra_buffer_types": llama.USE_EXTRA_BUFFER_TYPES}
    for role, path, passes in (("target", args.target, TARGET_PASSES), ("draft", args.draft, DRAFT_PASSES)):
        if not path:
            continue
        with llama.Model(path) as model:
            result[role] = {"file": Path(path).name, "calls": compare(model, passes, args.ctx_size,
                                                                     args.threads, args.repeats)}
        print(f"{role}: {Path(path).name} (ms per call, median of {args.repeats})")
        print(f"  {'call':10} {'edge-tree':>10} {'llama.cpp':>10} {'ratio':>7}")
        for row in result[role]["calls"]:
            print(f"  {row['call']:10} {row['edge_tree_ms']:10.2f} {row['llama_cpp_ms']:10.2f} {row['ratio']:7.3f}")
    if args.llama_cpp:
        result["llama_completion"] = completion_report(args.llama_cpp, args.target, args.ctx_size, args.threads)
        print(f"llama-completion on the target, ms per token: {result['llama_completion']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    with user_errors():  # a bad file, pair or mode: one line, not a traceback
        main()
