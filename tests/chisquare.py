"""Sampling compared by a chi-square test: the joint distribution of the first two generated
tokens over thousands of seeded generations (deterministic, so a result is reproducible)."""

from __future__ import annotations

from collections import Counter

from scipy.stats import chi2_contingency

from edge_tree.core.engine import Engine


N_SAMPLES = 3000
SETTINGS = dict(temperature=1.0, top_k=6)  # a small support keeps the 2-token table well filled
PROMPT = "The quick brown"
SIGNIFICANCE = 1e-3


def first_two_tokens(engine: Engine, mode: str, seed0: int, prompt: str = PROMPT, drafted: list | None = None,
                     **kw) -> Counter:
    """Generates 3 tokens (so the first round's tree is 2 levels deep) and counts the first 2;
    `drafted` collects how many nodes each generation drafted."""
    counts = Counter()
    for i in range(N_SAMPLES):
        result = engine.generate(prompt, max_tokens=3, mode=mode, seed=seed0 + i, **SETTINGS, **kw)
        counts[tuple(result.tokens[:2])] += 1
        if drafted is not None:
            drafted.append(result.stats["drafted"])
    return counts


def p_value(a: Counter, b: Counter) -> float:
    """Two-sample chi-square over the joint outcomes; rare outcomes pooled so expected counts >= 5."""
    total = a + b
    common = [k for k, n in total.items() if n >= 20]
    rare_a = sum(n for k, n in a.items() if k not in common)
    rare_b = sum(n for k, n in b.items() if k not in common)
    table = [[a[k] for k in common] + [rare_a], [b[k] for k in common] + [rare_b]]
    if rare_a + rare_b == 0:
        table = [row[:-1] for row in table]
    return chi2_contingency(table)[1]
