"""Tree over RPC with the draft working during the target's passes and without, side by side.

    python scripts/ahead_ab.py [--pair C] [--prompts 4] [--delay-ms 5] [-n 64] [-t 2]

Starts two ggml-rpc-servers on loopback behind delaying proxies (as scripts/bench_rpc.py does),
loads the pair once with the target on them, and for each prompt generates with the draft's
work ahead off, then on (model_drafter.ahead): tokens/s of each, whether the text is the same,
rounds, rounds that started ready, and the draft's calls. What docs/distributed.md cites for
"what the draft working ahead gives".
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack

from edge_tree import Engine
from edge_tree.bench.loopback import DelayProxy, RpcServer, rpc_server_binary
from edge_tree.bench.pairs import resolve_pair
from edge_tree.bench.prompts import default_prompts, normalize_prompts
from edge_tree.errors import user_errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pair", default="C")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--delay-ms", type=float, default=5.0)
    ap.add_argument("-n", "--max-tokens", type=int, default=64)
    ap.add_argument("-t", "--threads", type=int, default=2)
    args = ap.parse_args()
    target, draft = resolve_pair(args.pair)
    prompts = [p["prompt"] for p in normalize_prompts(default_prompts()[:args.prompts])]
    totals = {False: [0, 0.0], True: [0, 0.0]}
    with ExitStack() as stack:
        servers = [stack.enter_context(RpcServer(rpc_server_binary(), 1, cache=True)) for _ in range(2)]
        hosts = [stack.enter_context(DelayProxy(("127.0.0.1", s.port), args.delay_ms / 1000)).endpoint
                 for s in servers]
        engine = stack.enter_context(Engine(target, draft, threads=args.threads, ctx_size=1024, rpc=",".join(hosts)))
        engine.generate("Hello", max_tokens=16)  # the first passes of each batch size cost more
        print("ahead  tok/s  rounds  ready  draft calls  same text")
        for prompt in prompts:
            texts = {}
            for ahead in (False, True):
                engine.models.works_ahead = ahead
                result = engine.generate(prompt, max_tokens=args.max_tokens, mode="tree")
                stats, texts[ahead] = result.stats, result.tokens
                totals[ahead][0] += stats["tokens"]
                totals[ahead][1] += stats["tokens"] / stats["tokens_per_s"]
                print(f"{'on' if ahead else 'off':5} {stats['tokens_per_s']:6.2f} {stats['rounds']:7} "
                      f"{stats['ready_rounds']:6} {stats['draft_calls']:12}  {texts[False] == texts.get(True, texts[False])}")
    off, on = (totals[k][0] / totals[k][1] for k in (False, True))
    print(f"all prompts: off {off:.2f} tok/s, on {on:.2f} tok/s ({on / off:.2f}x)")


if __name__ == "__main__":
    with user_errors():  # a bad file, pair or mode: one line, not a traceback
        main()
