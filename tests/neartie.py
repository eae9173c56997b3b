"""Greedy text from a batched pass may part from plain decoding only where the target's two best
tokens nearly tie (llama.cpp #3006: batched and one-token passes use different kernels)."""

from __future__ import annotations

import numpy as np

from edge_tree import Engine
from edge_tree.core.chat import Prompt, prompt_tokens
from edge_tree.llamacpp import llama

PROMPTS = ["hello world", "The quick brown fox", "a", "Once upon a time, there", "1, 2, 3, 4,",
           "the the the", "Zebra!", "In the beginning"]
# two best logits closer than this: the batched verify may pick the other one, and that is the
# only divergence from plain decoding we accept.
NEAR_TIE = 1e-3


def top2_gap(ctx: llama.Context, tokens: list[int]) -> float:
    ctx.clear()
    with llama.Batch(512, 1) as batch:
        row = np.sort(np.array(ctx.logits(ctx.feed(batch, tokens, 0))))
    return float(row[-1] - row[-2])


def assert_same_or_near_tie(engine: Engine, prompt: str, reference: list[int], got: list[int]):
    if got == reference:
        return
    split = next(i for i, (a, b) in enumerate(zip(reference, got)) if a != b)
    prefix = engine.target_model.tokenize(prompt) + reference[:split]
    gap = top2_gap(engine.target_ctx, prefix)
    assert gap < NEAR_TIE, f"diverged from plain decoding at token {split} where the top-2 gap is {gap}"


def assert_text_same_or_near_tie(engine: Engine, prompt: Prompt, reference: list[int], text: str,
                                 near_tie: float = NEAR_TIE):
    """As assert_same_or_near_tie, for a reply known by its text (a server's): it parts from the
    reference at the first token whose bytes it does not continue with."""
    got, model = text.encode(), engine.target_model
    pieces = [model.token_bytes(t) for t in reference]
    if got == b"".join(pieces):
        return
    done = b""
    split = len(reference)
    for k, piece in enumerate(pieces):
        if not got.startswith(done + piece):
            split = k
            break
        done += piece
    assert split < len(reference), "the reply runs on past the reference"
    gap = top2_gap(engine.target_ctx, prompt_tokens(model, prompt) + reference[:split])
    assert gap < near_tie, f"diverged from plain decoding at token {split} where the top-2 gap is {gap}"
