"""Host time per round: wall time of a generation's rounds less the time spent inside llama_decode.

Times llama_decode from outside (a wrapper around llama-cpp-python's binding), so it measures any
edge-tree checkout alike, this one or an older one put first on PYTHONPATH:

    python scripts/host_time.py                              # this checkout, demo pair A
    PYTHONPATH=/path/to/old/checkout python scripts/host_time.py --label before

Prints one JSON line per mode: rounds, tokens, decode seconds, host ms per round and per token.
"""

from __future__ import annotations

import argparse
import json
import time

import edge_tree  # first: llama.cpp's library loads before numpy
import llama_cpp
from edge_tree.errors import user_errors

DEMO = "~/.cache/edge-tree/demo/"
PROMPTS = [
    "The old lighthouse keeper had not spoken to another person in three weeks. Every morning he",
    "def merge_sorted(a: list[int], b: list[int]) -> list[int]:\n    result = []\n",
    "Twelve simple habits for better sleep\n\n1. Go to bed and get up at the same time every day.\n2.",
]


class DecodeClock:
    """Wraps llama_decode wherever edge-tree's ctypes module calls it."""

    def __init__(self, module):
        self.seconds = 0.0
        self.module = module
        self.real = module.llama_decode
        module.llama_decode = self

    def __call__(self, ctx, batch):
        start = time.perf_counter()
        try:
            return self.real(ctx, batch)
        finally:
            self.seconds += time.perf_counter() - start


def wrapper_module():
    """The module object through which edge-tree calls llama.cpp (its layout changed over time)."""
    try:
        from edge_tree.llamacpp import llama as wrapper
    except ImportError:
        from edge_tree import llama as wrapper
    return wrapper.C


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-m", "--target", default=DEMO + "gemma-3-270m-f32.gguf")
    parser.add_argument("-md", "--draft", default=DEMO + "gemma-3-270m-q4_k_m.gguf")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-n", "--max-tokens", type=int, default=64)
    parser.add_argument("--modes", default="ar,tree")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    from pathlib import Path

    clock = DecodeClock(wrapper_module())
    with edge_tree.Engine(str(Path(args.target).expanduser()), str(Path(args.draft).expanduser()),
                          threads=args.threads, ctx_size=1024) as engine:
        for mode in args.modes.split(","):
            engine.generate("Warm up.", max_tokens=8, mode=mode)
            rounds = tokens = 0
            decode = wall = 0.0
            for _ in range(args.repeats):
                for prompt in PROMPTS:
                    start_decode = clock.seconds
                    result = engine.generate(prompt, max_tokens=args.max_tokens, mode=mode)
                    stats = result.stats
                    rounds += stats["rounds"]
                    tokens += stats["tokens"]
                    # the clock also counted the prompt's decodes: take them out with prompt_s
                    decode += clock.seconds - start_decode
                    wall += stats["wall_s"]
            host = wall - decode
            print(json.dumps({"label": args.label, "mode": mode, "rounds": rounds, "tokens": tokens,
                              "wall_s": round(wall, 3), "decode_s": round(decode, 3),
                              "host_ms_per_round": round(1000 * host / rounds, 3),
                              "host_ms_per_token": round(1000 * host / tokens, 3),
                              "llama_cpp_python": llama_cpp.__version__}))


if __name__ == "__main__":
    with user_errors():  # a bad file, pair or mode: one line, not a traceback
        main()
