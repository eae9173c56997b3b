"""Decode speed with the target over llama.cpp's RPC backend, at added network latency.

    python scripts/bench_rpc.py [--pair B | -m T -md D] [--delays 0,1,5] [--prompts 10] [-n 64]
                                [--hosts 2] [-t 2] [--llama-cpp DIR] [--json FILE]

Starts --hosts ggml-rpc-server processes on loopback (with their tensor cache, -c, so that the
tools' repeated loads send hashes, not weights), and for each delay a delaying TCP proxy in
front of each (edge_tree/bench/loopback.py: D ms added each way, as a LAN hop would), then runs
`edge-tree bench` over them: our ar and tree (the draft local), and llama.cpp's
llama-completion --rpc and llama-speculative --rpc with the same files, settings and prompts
(after ours: an rpc-server serves one client at a time). Prints tokens/s per delay and the
ratios the issue asks for: tree / ar, and tree / llama.cpp's best speculative row.
Needs ggml-rpc-server (scripts/build_llama_cpp.sh) and llama.cpp with the RPC backend.
"""

from __future__ import annotations

import argparse
import json
from contextlib import ExitStack
from pathlib import Path

from edge_tree.bench.loopback import DelayProxy, RpcServer, rpc_server_binary
from edge_tree.bench.prompts import default_prompts
from edge_tree.bench.session import run_bench
from edge_tree.errors import user_errors
from edge_tree.files import cache_dir

SPECULATIVE_PREFIX = "llama.cpp spec"


def main() -> None:
    args = parse_args()
    prompts = default_prompts()[:args.prompts]
    load = dict(target=args.target, draft=args.draft, pair=None if args.target else args.pair,
                threads=args.threads, ctx_size=args.ctx_size, max_tokens=args.max_tokens,
                llama_cpp_dir=args.llama_cpp, modes="ar,tree", prompts=prompts, progress=not args.quiet)
    results = {}
    with ExitStack() as hosts:
        servers = [hosts.enter_context(RpcServer(rpc_server_binary(), args.server_threads, cache=True))
                   for _ in range(args.hosts)]
        for delay_ms in args.delays:
            with ExitStack() as proxies:
                endpoints = [proxies.enter_context(DelayProxy(("127.0.0.1", s.port), delay_ms / 1000)).endpoint
                             for s in servers]
                results[delay_ms] = run_bench(**load, rpc=",".join(endpoints))
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps({str(k): v for k, v in results.items()}, indent=2) + "\n")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pair", default="B", help="demo pair (edge-tree bench --pair), default B")
    ap.add_argument("-m", "--target", help="target GGUF instead of a demo pair")
    ap.add_argument("-md", "--draft", help="draft GGUF (with -m)")
    ap.add_argument("--delays", default="0,1,5", type=lambda s: [float(x) for x in s.split(",")],
                    help="added one-way delays in ms, comma-separated (default 0,1,5)")
    ap.add_argument("--prompts", type=int, default=10, help="how many of the bench's prompts")
    ap.add_argument("-n", "--max-tokens", type=int, default=64)
    ap.add_argument("--hosts", type=int, default=2, help="rpc-servers the target is split over")
    ap.add_argument("-t", "--threads", type=int, default=2, help="threads of the local side")
    ap.add_argument("--server-threads", type=int, default=1, help="threads of each rpc-server")
    ap.add_argument("-c", "--ctx-size", type=int, default=1024)
    ap.add_argument("--llama-cpp", default=str(cache_dir() / "llama.cpp"),
                    help="folder of llama-completion and llama-speculative built with the RPC backend")
    ap.add_argument("--json", help="write every bench result to FILE")
    ap.add_argument("-q", "--quiet", action="store_true")
    return ap.parse_args()


def report(results: dict[float, dict]) -> None:
    print(f"{'delay':>8}  {'row':28} {'tok/s':>8} {'vs ar':>7}  same as ar")
    for delay_ms, result in results.items():
        for row in result["rows"]:
            tps, vs_ar = row["tokens_per_s"], row["speedup_vs_ar"]
            print(f"{delay_ms:>5g} ms  {row['name']:28} {tps or float('nan'):8.2f} "
                  f"{vs_ar or float('nan'):6.2f}x  {row['same_as_ar'] or '-'}"
                  + (f"  ({row['error']})" if row["error"] else ""))
    for delay_ms, result in results.items():
        rows = {row["name"]: row for row in result["rows"]}
        tree = rows["tree"]["tokens_per_s"]
        spec = [r for name, r in rows.items() if name.startswith(SPECULATIVE_PREFIX) and r["tokens_per_s"]]
        best = max(spec, key=lambda r: r["tokens_per_s"], default=None)
        line = f"{delay_ms:g} ms each way: tree / ar {_ratio(tree, rows['ar']['tokens_per_s'])}"
        if best:
            line += f"; tree / best llama.cpp speculative ({best['name']}) {_ratio(tree, best['tokens_per_s'])}"
        print(line)


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


if __name__ == "__main__":
    with user_errors():  # a bad file, pair or mode: one line, not a traceback
        main()
