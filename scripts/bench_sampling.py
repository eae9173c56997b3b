"""Speed and acceptance of tree decoding with sampling, against plain sampling, side by side.

    python scripts/bench_sampling.py [-n 64] [--prompts 5] [-t 2]

Demo pair (F32 target, Q4_K_M draft); temperature 0.7 and 1.0 with top-k 40, top-p 0.95; the
same seeds for every row. Prints one line per row.
"""

import argparse

from edge_tree import load
from edge_tree.bench.prompts import default_prompts
from edge_tree.errors import user_errors

ROWS = [("ar", "ar", "sampled"), ("tree, drawn children", "tree", "sampled"),
        ("tree, top-k children", "tree", "topk")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("-t", "--threads", type=int, default=2)
    args = ap.parse_args()
    prompts = [p["prompt"] for p in default_prompts()][: args.prompts]
    engines = {children: load(threads=args.threads, ctx_size=2048, children=children)
               for children in ("sampled", "topk")}
    for temperature in (0.7, 1.0):
        for name, mode, children in ROWS:
            engine = engines[children]
            tokens = seconds = accepted = drafted = 0
            for seed, prompt in enumerate(prompts):
                stats = engine.generate(prompt, max_tokens=args.n, mode=mode, temperature=temperature,
                                        top_k=40, top_p=0.95, seed=seed, record_steps=False).stats
                tokens += stats["tokens"]
                seconds += stats["wall_s"] - stats["prompt_s"]
                accepted += stats["accepted"]
                drafted += stats["drafted"]
            rate = f"{accepted / drafted:.1%} accepted" if drafted else "-"
            print(f"T={temperature} {name:22} {tokens / seconds:6.2f} tok/s  {rate}", flush=True)
    for engine in engines.values():
        engine.close()


if __name__ == "__main__":
    with user_errors():  # a bad file, pair or mode: one line, not a traceback
        main()
