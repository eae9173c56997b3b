"""Many generations at once on the engine alone (core/slots.py, no HTTP): aggregate tokens per
second of N lanes, each mode in turn, in one process.

    python scripts/bench_lanes.py --pair A --lanes 2,4,8 [--modes tree,ar] [-t 2] [-ngl 99 -ngld 99]
    python scripts/bench_lanes.py -m TARGET -md DRAFT --lanes 8

For each lane count N: 2N greedy requests of -n tokens (the bench's prompts in turn), a new one
started whenever a lane is free, as `edge-tree serve -np N` does; tokens/s = generated tokens /
the wall time of the whole load, prompts included. Each mode runs --repeats times, alternating;
the draft's decodes and those that grew several lanes' trees at once are counted. Another
checkout first on PYTHONPATH is measured alike (a before/after).
"""

from __future__ import annotations

import argparse
import time

import edge_tree  # first: llama.cpp's library loads before numpy
from edge_tree.bench.pairs import resolve_pair
from edge_tree.bench.prompts import default_prompts
from edge_tree.core.options import GenOptions
from edge_tree.core.slots import Slots
from edge_tree.errors import user_errors


def load(engine, lanes: int, mode: str, prompts: list[str], max_tokens: int) -> dict:
    """2 x lanes requests through the slots; their tokens, wall time and the draft's decodes."""
    slots = Slots(engine)
    waiting = [prompts[k % len(prompts)] for k in range(2 * lanes)]
    tokens = 0
    started = time.perf_counter()
    try:
        while waiting or slots.busy:
            while slots.free and waiting:
                slots.start(waiting.pop(0), GenOptions(max_tokens=max_tokens, temperature=0.0, mode=mode))
            for _, result in slots.step():
                if isinstance(result, Exception):
                    raise result
                tokens += len(result.tokens)
        wall = time.perf_counter() - started
        # (an older checkout on PYTHONPATH, for a before/after, may not count the draft's decodes)
        return {"tokens_per_s": tokens / wall, "passes": slots.passes,
                "draft_decodes": getattr(slots, "draft_decodes", "-"),
                "shared_draft_decodes": getattr(slots, "shared_draft_decodes", "-")}
    finally:
        slots.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pair", default="A", help="demo pair (edge-tree bench --pair), default A")
    ap.add_argument("-m", "--target", help="target GGUF (instead of --pair; with -md)")
    ap.add_argument("-md", "--draft", help="draft GGUF (with -m)")
    ap.add_argument("--lanes", default="2,4,8", help="lane counts, e.g. 1,2,4,8,16")
    ap.add_argument("--modes", default="tree,ar")
    ap.add_argument("-n", "--max-tokens", type=int, default=64)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("-c", "--ctx-per-lane", type=int, default=2048)
    ap.add_argument("-ngl", "--n-gpu-layers", type=int, default=None)
    ap.add_argument("-ngld", "--draft-n-gpu-layers", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if bool(args.target) != bool(args.draft):
        ap.error("-m and -md go together")
    target, draft = (args.target, args.draft) if args.target else resolve_pair(args.pair, progress=True)
    prompts = [p["prompt"] for p in default_prompts()]
    for lanes in [int(n) for n in args.lanes.split(",")]:
        with edge_tree.load(target, draft, threads=args.threads, ctx_size=args.ctx_per_lane * lanes,
                            lanes=lanes, n_gpu_layers=args.n_gpu_layers,
                            draft_n_gpu_layers=args.draft_n_gpu_layers) as engine:
            for repeat in range(args.repeats):
                for mode in args.modes.split(","):
                    row = load(engine, lanes, mode, prompts, args.max_tokens)
                    print(f"{lanes:3d} lanes  {mode:6} run {repeat + 1}  {row['tokens_per_s']:8.2f} tok/s  "
                          f"passes {row['passes']}  draft decodes {row['draft_decodes']} "
                          f"(shared {row['shared_draft_decodes']})", flush=True)


if __name__ == "__main__":
    with user_errors():  # a bad file, pair or mode: one line, not a traceback
        main()
