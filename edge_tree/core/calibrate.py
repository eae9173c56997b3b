"""Measure what a llama_decode of n tokens costs on this machine, once per model file and setting.

The adaptive policy sizes trees from these curves (docs/design.md, "Measured costs": on a 2-core CPU verifying
16 tokens costs 2.5 one-token passes with an F32 target, far less on a GPU). Results are cached
in the user cache dir, keyed by file, size, mtime, threads and placement: the layers offloaded
and the RPC hosts they run on (a pass over RPC pays the network's round trips, and the policy
must see them to grow trees where they dominate).
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np

from ..files import cache_dir
from ..llamacpp import llama

TARGET_SIZES = (1, 2, 4, 8, 16, 32, 64)
DRAFT_SIZES = (1, 2, 4, 8, 16)
REPEATS = 3  # keep the fastest: the machine is shared and noisy


def decode_costs(ctx: llama.Context, sizes, repeats: int = REPEATS) -> dict[int, float]:
    """Seconds for one decode of n chained tokens with logits for all, for each n in sizes."""
    sizes = [n for n in sizes if n <= min(ctx.n_batch, ctx.n_ctx, ctx.n_outputs)]
    costs = {}
    with ctx.new_batch(max(sizes), 1) as batch:
        for n in sizes:
            best = float("inf")
            for _ in range(repeats + 1):  # the first run also warms caches and allocators
                ctx.clear()
                batch.clear()
                for i in range(n):
                    batch.add(i % 64 + 100, i, (0,), True)
                start = time.perf_counter()
                ctx.decode(batch)
                best = min(best, time.perf_counter() - start)
            costs[n] = best
    ctx.clear()
    return costs


def host_cost_per_node(n_vocab: int, repeats: int = 5) -> float:
    """Seconds of numpy work the drafter spends per expanded node (top-k and normaliser)."""
    from .model_drafter import top_candidates

    logits = np.random.default_rng(0).normal(size=n_vocab).astype(np.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        top_candidates(logits, 4)
        best = min(best, time.perf_counter() - start)
    return best


def _key(model: llama.Model, threads: int) -> str:
    path = model.path.resolve()
    stat = path.stat()
    return "|".join(str(x) for x in (path, stat.st_size, int(stat.st_mtime), threads,
                                     model.offloaded_layers, llama.version(),
                                     *(f"rpc={host}" for host in model.rpc_hosts)))


def cached_costs(ctx: llama.Context, sizes, cache_file: Path | None = None) -> dict[int, float]:
    """decode_costs of this context's model, measured in it on the first call only."""
    return cached_model_costs(ctx.model, ctx.threads, sizes, lambda: nullcontext(ctx), cache_file)


def cached_model_costs(model: llama.Model, threads: int, sizes,
                       open_ctx: Callable[[], ContextManager[llama.Context]],
                       cache_file: Path | None = None) -> dict[int, float]:
    """decode_costs of a model, in a context open_ctx() opens only where nothing is cached: a
    context reserves its compute and output buffers as it is created (~100 MB on a 262k vocabulary)."""
    cache_file = cache_file or cache_dir() / "calibration.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    key = _key(model, threads)
    if key in cache:
        return {int(n): s for n, s in cache[key].items()}
    with open_ctx() as ctx:
        costs = decode_costs(ctx, sizes)
    cache[key] = costs
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(cache, indent=1))
    except OSError:
        pass  # a read-only cache only costs a re-measure next time
    return costs
