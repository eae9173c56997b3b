"""Logits to probabilities: the one place where temperature, top-k, top-p and min-p are applied.

The target's distribution p and the draft's q both come from here, with the same settings, so
that verification compares like with like.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np



@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy: argmax, no randomness
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    min_p: float = 0.0  # 0.0: off
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def distribution(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Dense probabilities over the vocabulary after temperature, top-k, top-p and min-p.

    Filters apply in llama.cpp's default order (top-k, top-p, min-p, then temperature on what
    is left); min-p and top-p are judged on the untempered distribution as llama.cpp does. Only
    the tokens a filter must rank are sorted: never the whole vocabulary.
    """
    keep = np.arange(logits.size)
    if 0 < params.top_k < logits.size:
        keep = top_k_indices(logits, params.top_k)
    kept = logits[keep].astype(np.float64)
    peak = kept.max()
    if params.top_p < 1.0:
        keep, kept = _nucleus(keep, kept, peak, params.top_p)
    if params.min_p > 0.0:  # p >= min_p * p_max, i.e. logit >= peak + log(min_p)
        near = kept >= peak + np.log(params.min_p)
        keep, kept = keep[near], kept[near]
    temperature = params.temperature if params.temperature > 0 else 1.0
    scaled = np.exp((kept - peak) / temperature)
    dense = np.zeros(logits.size, dtype=np.float64)
    dense[keep] = scaled / scaled.sum()
    return dense


def _nucleus(keep: np.ndarray, kept: np.ndarray, peak: float, top_p: float):
    """The smallest set of most likely tokens whose mass reaches top_p (at least one token): the
    set lies within some window below the peak, so only the tokens there are sorted."""
    weights = np.exp(kept - peak)
    needed = top_p * weights.sum()
    window = 2.0
    near = kept >= peak - window
    while weights[near].sum() < needed and not near.all():
        window *= 2
        near = kept >= peak - window
    keep, kept, weights = keep[near], kept[near], weights[near]
    order = np.lexsort((keep, -kept))  # likeliest first; equal logits: lower id first
    n = min(order.size, int(np.searchsorted(np.cumsum(weights[order]), needed)) + 1)
    return keep[order[:n]], kept[order[:n]]


def log_normalizer(logits: np.ndarray, peak: float) -> float:
    """log(sum(exp(logits))) given their maximum: softmax's denominator in one float32 pass over
    the vocabulary, so that a log-prob is logits[t] - log_normalizer. Summed in float32: numpy
    sums pairwise (relative error about 1e-6 over 262,144 terms, each in (0, 1]), where a float64
    sum would first convert every term (twice the time, once per draft call)."""
    shifted = np.subtract(logits, peak, dtype=np.float32)
    return peak + float(np.log(np.exp(shifted, out=shifted).sum()))


def top_k_indices(logits: np.ndarray, k: int) -> np.ndarray:
    """The k largest logits' indices, exactly: the top k all lie within some window below the
    peak, so partition only the few tokens there (a 262k-wide argpartition costs 2.4 ms)."""
    peak = float(logits.max())
    window = 2.0
    near = np.flatnonzero(logits >= peak - window)
    while near.size < k:
        window *= 2
        near = np.flatnonzero(logits >= peak - window)
    if near.size > k:
        near = near[np.argpartition(-logits[near], k - 1)[:k]]
    return near


def sample(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One draw from a dense distribution (inverse CDF: one uniform per draw, reproducible)."""
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), probs.size - 1))


def sample_without_replacement(probs: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct tokens drawn one after another from probs, each from what is left renormalised.

    Gumbel-top-k: sorting log p + Gumbel noise gives exactly that sequential draw, in draw order.
    """
    support = np.flatnonzero(probs)
    k = min(k, support.size)
    keys = np.log(probs[support]) + rng.gumbel(size=support.size)
    top = np.argpartition(-keys, k - 1)[:k] if k < support.size else np.arange(support.size)
    return support[top[np.argsort(-keys[top], kind="stable")]]
