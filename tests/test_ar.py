"""Engine.generate on tiny models: plain (ar) greedy decoding against a reference computed here
with the llama wrapper one token at a time, seeds, budgets, stop rules, stats, option checks."""

from __future__ import annotations

import numpy as np
import pytest

from edge_tree.llamacpp import llama
from edge_tree.core.engine import Engine
from edge_tree.errors import EdgeTreeError, UsageError

THREADS = 1  # a shared 2-core machine: more llama.cpp threads only contend

PROMPTS = ["hello world", "The quick brown fox", "a", "", "Once upon a time, there",
           "1, 2, 3, 4,", "héllo wörld ✓"]
STATS_KEYS = {"tokens", "wall_s", "tokens_per_s", "prompt_tokens", "rounds", "target_passes",
              "drafted", "accepted", "mean_accepted_per_pass", "acceptance_by_depth",
              "draft_share", "verify_share"}


@pytest.fixture(scope="module", autouse=True)
def module_private_cache(tmp_path_factory):
    """Engines may write measurements to the user cache: keep the tests' own out of it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def ar_engine(tiny_target):
    with Engine(str(tiny_target), threads=THREADS, ctx_size=4096) as e:
        yield e


@pytest.fixture(scope="module")
def tree_engine(tiny_target, tiny_draft_other):
    with Engine(str(tiny_target), str(tiny_draft_other), threads=THREADS, ctx_size=4096, policy="fixed") as e:
        yield e


@pytest.fixture(scope="module")
def same_engine(tiny_target, tiny_draft_same):
    with Engine(str(tiny_target), str(tiny_draft_same), threads=THREADS, ctx_size=4096, policy="fixed") as e:
        yield e


@pytest.fixture(scope="module")
def small_engine(tiny_target, tiny_draft_same):
    """The smallest context the engine takes (llama.cpp may round it up: read n_ctx back)."""
    with Engine(str(tiny_target), str(tiny_draft_same), threads=THREADS, ctx_size=16) as e:
        yield e


def reference_greedy(model: llama.Model, prompt: str, n: int) -> list[int]:
    """Plain greedy decoding: every token (the prompt's too) in a decode of its own, argmax."""
    tokens = model.tokenize(prompt)
    out: list[int] = []
    with llama.Context(model, 512, 1, threads=THREADS) as ctx, llama.Batch(1, 1) as batch:
        for pos, tok in enumerate(tokens):
            batch.clear()
            batch.add(tok, pos, (0,), True)
            ctx.decode(batch)
        while len(out) < n:
            tok = int(np.argmax(ctx.logits(0)))
            if model.is_eog(tok):
                break
            out.append(tok)
            batch.clear()
            batch.add(tok, len(tokens) + len(out) - 1, (0,), True)
            ctx.decode(batch)
    return out


def top2_gap(model: llama.Model, tokens: list[int]) -> float:
    with llama.Context(model, 512, 1, threads=THREADS) as ctx, llama.Batch(512, 1) as batch:
        row = np.sort(np.array(ctx.logits(ctx.feed(batch, tokens, 0))))
    return float(row[-1] - row[-2])


# -- greedy = the target's argmax ----------------------------------------------------------------

@pytest.mark.parametrize("prompt", PROMPTS)
def test_ar_greedy_equals_one_token_at_a_time_reference(ar_engine, prompt):
    n = 24
    model = ar_engine.target_model
    want = reference_greedy(model, prompt, n)
    got = ar_engine.generate(prompt, max_tokens=n, mode="ar", temperature=0.0)
    if got.tokens != want:
        split = next(i for i, (a, b) in enumerate(zip(want + [-1], got.tokens + [-2])) if a != b)
        gap = top2_gap(model, model.tokenize(prompt) + want[:split])
        pytest.fail(f"{prompt!r}: engine and reference part at token {split} "
                    f"(top-2 logit gap there {gap:.2e}): {got.tokens} vs {want}")
    assert got.stop_reason == ("max_tokens" if len(want) == n else "eos")
    assert got.text == b"".join(model.token_bytes(t) for t in want).decode("utf-8", "replace")
    assert got.stats["tokens"] == len(got.tokens) == len(want)
    assert got.stats["prompt_tokens"] == len(model.tokenize(prompt))


def test_greedy_runs_repeat_and_do_not_depend_on_the_engine(ar_engine, same_engine):
    """Greedy needs no seed. (Greedy chain/tree == ar is test_speculative.py's subject.)"""
    prompt = "the sea and the sky"
    ar = ar_engine.generate(prompt, max_tokens=20, mode="ar")
    assert ar_engine.generate(prompt, max_tokens=20, mode="ar").tokens == ar.tokens
    assert same_engine.generate(prompt, max_tokens=20, mode="ar").tokens == ar.tokens


def test_greedy_ignores_the_seed(ar_engine):
    a = ar_engine.generate("hello", max_tokens=12, seed=1)
    b = ar_engine.generate("hello", max_tokens=12, seed=2)
    assert a.tokens == b.tokens


# -- seeds ----------------------------------------------------------------------------------------

SEEDS = list(range(8))


@pytest.fixture(scope="module")
def fixed_tree_engine(tiny_target, tiny_draft_other):
    with Engine(str(tiny_target), str(tiny_draft_other), threads=THREADS, policy="fixed") as e:
        yield e


@pytest.mark.parametrize("engine_name, mode", [
    ("ar_engine", "ar"),
    ("tree_engine", "chain"),
    ("fixed_tree_engine", "tree"),
    # the adaptive policy (the default) learns from every generation; a sampled one must still
    # grow the same trees, hence draw the same random numbers, for the same seed (core/policy.py)
    ("tree_engine", "tree"),
])
def test_same_seed_same_text_and_other_seeds_differ(request, engine_name, mode):
    engine = request.getfixturevalue(engine_name)
    kw = dict(max_tokens=16, mode=mode, temperature=0.8)
    runs = {}
    for seed in SEEDS:
        first = engine.generate("once upon a time", seed=seed, **kw)
        again = engine.generate("once upon a time", seed=seed, **kw)
        assert (again.text, again.tokens) == (first.text, first.tokens), f"seed {seed}"
        assert first.stats["seed"] == seed
        runs[seed] = tuple(first.tokens)
    assert len(set(runs.values())) > 1, "every seed gave the same text"


def test_a_run_without_a_seed_reports_the_seed_that_replays_it(ar_engine):
    first = ar_engine.generate("hello", max_tokens=16, temperature=0.8)
    seed = first.stats["seed"]
    assert isinstance(seed, int)
    again = ar_engine.generate("hello", max_tokens=16, temperature=0.8, seed=seed)
    assert again.tokens == first.tokens


def test_the_same_seed_on_a_reloaded_engine(tiny_target, tiny_draft_other, fixed_tree_engine):
    kw = dict(max_tokens=12, mode="tree", temperature=0.8, seed=3)
    first = fixed_tree_engine.generate("hello world", **kw)
    with Engine(str(tiny_target), str(tiny_draft_other), threads=THREADS, policy="fixed") as fresh:
        assert fresh.generate("hello world", **kw).tokens == first.tokens


# -- budgets and stop rules ------------------------------------------------------------------------

@pytest.mark.parametrize("engine_name, mode", [("ar_engine", "ar"), ("same_engine", "chain"),
                                               ("same_engine", "tree")])
@pytest.mark.parametrize("n", [1, 2, 7, 13])
def test_max_tokens_is_exact(request, engine_name, mode, n):
    engine = request.getfixturevalue(engine_name)
    for temperature in (0.0, 0.8):
        r = engine.generate("hello world", max_tokens=n, mode=mode, temperature=temperature, seed=5)
        if r.stop_reason == "eos":  # possible when sampling: then fewer, never more
            assert len(r.tokens) < n
            continue
        assert r.stop_reason == "max_tokens"
        assert len(r.tokens) == r.stats["tokens"] == n
        assert r.text == b"".join(engine.target_model.token_bytes(t) for t in r.tokens).decode(
            "utf-8", "replace")


def test_stats_have_the_documented_keys_and_add_up(ar_engine, same_engine):
    ar = ar_engine.generate("hello world", max_tokens=10, mode="ar")
    assert STATS_KEYS <= set(ar.stats)
    s = ar.stats
    assert s["tokens"] == 10 and s["prompt_tokens"] == len(ar_engine.target_model.tokenize("hello world"))
    assert s["rounds"] == s["target_passes"] == 10  # one token per target pass
    assert s["drafted"] == s["accepted"] == 0 and s["mean_accepted_per_pass"] == 0
    assert s["acceptance_by_depth"] == []
    assert s["wall_s"] > 0 and s["tokens_per_s"] > 0

    chain = same_engine.generate("hello world", max_tokens=30, mode="chain", max_depth=4)
    c = chain.stats
    assert STATS_KEYS <= set(c)
    assert c["tokens"] == 30 and c["rounds"] == c["target_passes"]
    # an identical draft is right but at near-ties (batched and one-token logits differ slightly)
    assert c["drafted"] > 0 and 0.9 * c["drafted"] <= c["accepted"] <= c["drafted"]
    assert c["rounds"] < 30  # so rounds emit several tokens
    assert c["rounds"] <= c["tokens"] <= c["accepted"] + c["rounds"]
    assert c["mean_accepted_per_pass"] == pytest.approx(c["accepted"] / c["target_passes"], abs=1e-3)
    by_depth = c["acceptance_by_depth"]
    assert 1 <= len(by_depth) <= 4  # --max-depth 4
    assert all(0.0 <= x <= 1.0 for x in by_depth) and by_depth[0] >= 0.9
    assert 0 <= c["draft_share"] <= 1 and 0 <= c["verify_share"] <= 1
    assert c["draft_share"] + c["verify_share"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("engine_name, mode", [("ar_engine", "ar"), ("tree_engine", "tree")])
def test_max_time_stops_early(request, engine_name, mode):
    engine = request.getfixturevalue(engine_name)
    n_prompt = len(engine.target_model.tokenize("hello world"))
    budget = engine.target_ctx.n_ctx - n_prompt  # as many tokens as the context allows
    r = engine.generate("hello world", max_tokens=budget, mode=mode, max_time=0.2,
                        temperature=0.0)
    assert r.stop_reason == "max_time"
    assert len(r.tokens) < budget
    assert r.stats["wall_s"] >= 0.2
    assert r.stats["stop_reason"] == "max_time"


def test_max_time_shorter_than_the_prompt_gives_no_tokens(ar_engine):
    r = ar_engine.generate("hello world", max_tokens=50, max_time=1e-9)
    assert r.stop_reason == "max_time" and r.tokens == [] and r.text == ""


@pytest.mark.parametrize("mode", ["ar", "chain", "tree"])
def test_context_full_error_or_stop(small_engine, mode):
    engine = small_engine
    n_ctx = engine.target_ctx.n_ctx
    assert n_ctx >= 16
    prompt = "hello world"
    n_prompt = len(engine.target_model.tokenize(prompt))
    room = n_ctx - n_prompt

    with pytest.raises(EdgeTreeError, match="context") as info:
        engine.generate(prompt, max_tokens=room + 1, mode=mode)
    assert not isinstance(info.value, UsageError) and "--ctx-size" in str(info.value)

    # exactly what fits: fine in either setting
    full = engine.generate(prompt, max_tokens=room, mode=mode)
    assert full.stop_reason == "max_tokens" and len(full.tokens) == room

    stopped = engine.generate(prompt, max_tokens=room + 50, mode=mode, context_full="stop")
    assert stopped.stop_reason == "context"
    assert len(stopped.tokens) == room  # the context is used to its last cell, never beyond
    if mode == "ar":
        assert stopped.tokens == full.tokens
    assert engine.target_ctx.seq_pos_max(0) <= n_ctx - 1


def test_a_prompt_longer_than_the_context_is_refused(small_engine):
    n_ctx = small_engine.target_ctx.n_ctx
    prompt = "hello world " * n_ctx
    with pytest.raises(EdgeTreeError, match="prompt"):
        small_engine.generate(prompt, max_tokens=1, context_full="stop")


def test_engine_is_reusable_after_an_error(ar_engine):
    before = ar_engine.generate("hello", max_tokens=8)
    with pytest.raises(UsageError):
        ar_engine.generate("hello", max_tokens=0)
    with pytest.raises(EdgeTreeError):
        ar_engine.generate("hello", max_tokens=10**6)
    assert ar_engine.generate("hello", max_tokens=8).tokens == before.tokens


# -- bad option values ---------------------------------------------------------------------------

BAD_RUN_OPTIONS = [
    ("--max-tokens", dict(max_tokens=0)),
    ("--max-tokens", dict(max_tokens=-3)),
    ("--top-p", dict(top_p=0.0)),
    ("--top-p", dict(top_p=1.5)),
    ("--temperature", dict(temperature=-1.0)),
    ("--top-k", dict(top_k=-1)),
    ("--min-p", dict(min_p=1.0)),
    ("--max-depth", dict(max_depth=0)),
    ("--max-nodes-per-level", dict(max_nodes_per_level=0)),
    ("--max-total-nodes", dict(max_total_nodes=0)),
    ("--max-total-nodes", dict(max_total_nodes=10**6)),
    ("--max-time", dict(max_time=0)),
    ("--context-full", dict(context_full="wrap")),
    ("--mode", dict(mode="beam")),
]


@pytest.mark.parametrize("option, kw", BAD_RUN_OPTIONS, ids=[f"{o}={v}" for o, kw in BAD_RUN_OPTIONS
                                                             for v in kw.values()])
def test_bad_option_values_raise_usage_error_naming_the_option(tree_engine, option, kw):
    with pytest.raises(UsageError) as info:
        tree_engine.generate("hello", **kw)
    assert info.value.option == option
    assert str(info.value).startswith(option)
    assert info.value.exit_code == 2 and isinstance(info.value, EdgeTreeError)


@pytest.mark.parametrize("mode", ["tree", "chain"])
def test_draft_modes_without_a_draft_raise_usage_error(ar_engine, mode):
    with pytest.raises(UsageError) as info:
        ar_engine.generate("hello", max_tokens=4, mode=mode)
    assert info.value.option == "--mode" and "draft" in str(info.value)


def test_default_mode_is_ar_without_draft_and_tree_with_one(ar_engine, tree_engine):
    assert ar_engine.generate("hi", max_tokens=2).stats["mode"] == "ar"
    assert tree_engine.generate("hi", max_tokens=2).stats["mode"] == "tree"


@pytest.mark.parametrize("option, kw", [("--ctx-size", dict(ctx_size=8)), ("--threads", dict(threads=0))])
def test_bad_engine_options_raise_usage_error(tiny_target, option, kw):
    with pytest.raises(UsageError) as info:
        Engine(str(tiny_target), **kw)
    assert info.value.option == option


def test_engine_close_is_idempotent(tiny_target, tiny_draft_other):
    e = Engine(str(tiny_target), str(tiny_draft_other), threads=THREADS)
    assert e.generate("hello", max_tokens=3).tokens
    e.close()
    assert e.target_model._ptr is None and e.draft_model._ptr is None
    e.close()
