"""Where a round goes: per-round means of one mode over the bench's prompts, and how often the
target takes the draft's top choice where its walk reaches it (the figure that bounds a chain).

    python scripts/round_profile.py --pair C [--mode tree] [-t 2] [-n 64] [--prompts 10] [--draft-vocab full]
    python scripts/round_profile.py -m TARGET -md DRAFT [--mode chain:4]       # a pair of your own

Greedy, the models loaded once, the prompts one after the other (as `edge-tree bench` runs them,
without the other modes in between). Prints tok/s; per round: drafted nodes, draft calls and
accepted tokens; milliseconds per round inside the target's llama_decode, the draft's, and on
the host; the share of the draft's top choices and of the context's guesses that the target took;
and the chain bound: the best speed a chain of any depth can reach at that share, with each
call's cost measured after the run (the fastest of a few: a bound, not a forecast) and the run's
host time per round; and with a draft that is always right.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import edge_tree
from edge_tree.bench.modes import parse_mode
from edge_tree.bench.pairs import resolve_pair
from edge_tree.bench.prompts import default_prompts
from edge_tree.core.calibrate import decode_costs
from edge_tree.core.costs import CostModel
from edge_tree.core.policy import Caps, chain_shape, shape_rate
from edge_tree.errors import user_errors
from edge_tree.records import walked

BOUND_DEPTH = 32  # the deepest chain the bound considers
BOUND_SIZES = (1, 2, 4, 8, 12, 16, 24, BOUND_DEPTH + 1)  # target passes timed for it

SUMMED = ("tokens", "rounds", "drafted", "accepted", "draft_calls", "target_decode_s", "draft_decode_s",
          "host_s")


def taken_by_source(step, taken: dict[str, list[int]]) -> None:
    """For each node the target's walk reached: did it take the draft's top child (rank 0), and
    a guessed child where there was one. taken[source] = [tried, taken]."""
    nodes = step.nodes
    for _, kids, took in walked(step.children(), step.accepted):
        for source in ("draft", "ngram"):
            tried = [c for c in kids if nodes.source[c] == source
                     and (source == "ngram" or nodes.rank[c] == 0)]
            if tried:
                taken[source][0] += 1
                taken[source][1] += took in tried


def chain_bound(right: float, cost: CostModel) -> tuple[int, float]:
    """(best depth, its tokens per second) over chains up to BOUND_DEPTH deep whose every token
    the target takes with probability `right`, as the policy rates a chain."""
    rates = {d: shape_rate(chain_shape(Caps(max_depth=d, max_total_nodes=d)), [right], cost)
             for d in range(1, BOUND_DEPTH + 1)}
    best = max(rates, key=rates.get)
    return best, rates[best]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pair", default="C", help="demo pair (edge-tree bench --pair), default C")
    ap.add_argument("-m", "--target", help="target GGUF (instead of --pair; with -md)")
    ap.add_argument("-md", "--draft", help="draft GGUF (with -m)")
    ap.add_argument("--mode", default="tree")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-n", "--max-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=10, help="how many of the bench's prompts")
    ap.add_argument("--draft-vocab", default="auto", help="as edge-tree bench's")
    args = ap.parse_args()

    if bool(args.target) != bool(args.draft):
        ap.error("-m and -md go together")
    target, draft = (args.target, args.draft) if args.target else resolve_pair(args.pair, progress=True)
    name = f"{Path(target).name} + {Path(draft).name}" if args.target else f"pair {args.pair}"
    totals = dict.fromkeys(SUMMED, 0.0)
    decode_s = 0.0
    taken = {"draft": [0, 0], "ngram": [0, 0]}
    spec = parse_mode(args.mode)  # as edge-tree bench --modes reads it: tree, chain:4, ...
    with edge_tree.load(target, draft, threads=args.threads, draft_vocab=args.draft_vocab) as engine:
        for prompt in default_prompts()[:args.prompts]:
            result = engine.generate(prompt["prompt"], max_tokens=args.max_tokens, mode=spec.mode,
                                     max_depth=spec.max_depth,
                                     on_step=lambda step: taken_by_source(step, taken))
            for key in SUMMED:
                totals[key] += result.stats[key]
            decode_s += result.stats["wall_s"] - result.stats["prompt_s"]
        # last: timing a call clears the context it runs in (the engine is not used after it)
        target_points = decode_costs(engine.models.target_ctx, BOUND_SIZES)
        draft_points = decode_costs(engine.models.draft_ctx, (1,))
    rounds = max(totals["rounds"], 1)
    print(f"{name}, {args.mode}: {totals['tokens'] / decode_s:.2f} tok/s over "
          f"{int(totals['tokens'])} tokens in {int(rounds)} rounds")
    print(f"per round: {totals['drafted'] / rounds:.1f} drafted nodes, {totals['draft_calls'] / rounds:.1f} "
          f"draft calls, {totals['accepted'] / rounds:.2f} accepted tokens")
    print(f"ms per round: target {1000 * totals['target_decode_s'] / rounds:.0f}, draft "
          f"{1000 * totals['draft_decode_s'] / rounds:.0f}, host {1000 * totals['host_s'] / rounds:.1f}")
    for source, label in (("draft", "the draft's top choice"), ("ngram", "a guess from the context")):
        tried, took = taken[source]
        if tried:
            print(f"the target took {label} {took / tried:.1%} of the {tried} times its walk reached one")
    tried, took = taken["draft"]
    if tried:
        cost = CostModel(target_points, draft_points, host_per_round=totals["host_s"] / rounds)
        depth, rate = chain_bound(took / tried, cost)
        sure_depth, sure_rate = chain_bound(1.0, cost)
        print(f"chain bound: {rate:.2f} tok/s at depth {depth} (a draft call {1000 * cost.draft_s(1):.1f} ms, "
              f"the target's pass {1000 * cost.verify_s(1):.1f} ms at 1 token, {1000 * cost.verify_s(1 + depth):.1f} "
              f"at {1 + depth}); a draft always right: {sure_rate:.2f} tok/s at depth {sure_depth}")


if __name__ == "__main__":
    with user_errors():  # a bad mode, pair, file or vocabulary: one line, not a traceback
        main()
