"""Draft-side helpers: a model's full logits after some tokens (what a reduced draft must match
on its tokens), a drafter's proposal alone, and greedy output with a draft checked against plain
decoding."""

from __future__ import annotations

import numpy as np

from edge_tree.core.drafting import DraftRequest, Proposal, run_calls
from edge_tree.core.engine import Engine
from edge_tree.llamacpp import llama
from neartie import PROMPTS, assert_same_or_near_tie


K = 96  # of the tiny models' 512 tokens


def full_logits(path, tokens: list[int]) -> np.ndarray:
    with llama.Model(path) as model, llama.Context(model, 64, threads=1) as ctx, \
            llama.Batch(64, 1) as batch:
        return ctx.logits(ctx.feed(batch, tokens, 0)).copy()


def decoded(drafter, steps):
    """What a drafter's generator of draft calls returns, each call decoded in a llama_decode of
    its own (as for a generation alone)."""
    model = getattr(drafter, "model", drafter)  # a composed drafter decodes through its model's
    return run_calls(steps, lambda call: model.decode_alone(call)[0])


def propose(drafter, request: DraftRequest) -> Proposal:
    return decoded(drafter, drafter.proposing(request))


def assert_greedy_is_the_targets(engine: Engine, mode: str) -> None:
    for prompt in PROMPTS:
        reference = engine.generate(prompt, max_tokens=24, mode="ar").tokens
        got = engine.generate(prompt, max_tokens=24, mode=mode, max_depth=4).tokens
        assert_same_or_near_tie(engine, prompt, reference, got)
