"""The prompt cache (core/prompt_cache.py, `serve --cache-ram`): which saved start a prompt takes,
what an entry replaces, what the limit drops; and Share.restore's rule for windowed caches."""

from __future__ import annotations

import numpy as np

from edge_tree import Engine
from edge_tree.core.prompt_cache import MIB, PromptCache
from edge_tree.core.slots import Slots

from neartie import PROMPTS
from slotload import run_all


def state(mib: float) -> np.ndarray:
    return np.zeros(int(mib * MIB), np.uint8)


def test_the_longest_shared_start_is_taken_and_becomes_the_most_recent():
    cache = PromptCache()
    cache.add([1, 2, 3, 4], state(0.1))
    cache.add([1, 2, 9], state(0.1))
    cache.add([7, 8], state(0.1))
    saved, n = cache.best([1, 2, 3, 5, 6])
    assert saved.tokens == [1, 2, 3, 4] and n == 3
    assert cache.best([5]) == (None, 0)
    cache.limit = int(0.25 * MIB)  # room for two: the least recently used goes
    cache.add([6], state(0.1))
    assert cache.best([1, 2, 9])[1] == 2 and cache.best([7, 8])[1] == 0  # [1, 2, 9] and [7, 8] went


def test_an_entry_replaces_those_it_extends_and_none_holds_it_twice():
    cache = PromptCache()
    cache.add([1, 2], state(0.1))
    cache.add([1, 2, 3], state(0.1))
    assert cache.size == int(0.1 * MIB)  # [1, 2] went: [1, 2, 3] holds all it held
    assert cache.holds([1, 2]) and cache.holds([1, 2, 3]) and not cache.holds([1, 2, 3, 4])


def test_the_limit_is_kept_and_a_state_larger_than_it_is_not():
    cache = PromptCache(limit_mib=1)
    cache.add([1], state(2))
    assert cache.size == 0
    for k in range(5):
        cache.add([k + 10], state(0.3))
    assert cache.size <= MIB and cache.best([14])[1] == 1 and cache.best([10])[1] == 0


def test_a_prompt_whose_cells_a_lane_gave_up_is_taken_back(tiny_target, tiny_draft_same):
    """One lane: a prompt, another that replaces its cells, the first again: saved before they
    went, its cells come back (the target's; the draft reads it again for its tree) and only
    the root is read; the reply equals the first. Without a cache it is read again."""
    with Engine(str(tiny_target), str(tiny_draft_same), threads=1, ctx_size=512, policy="fixed") as engine:
        first_prompt, second_prompt = " ".join(PROMPTS[:3]), " ".join(PROMPTS[3:])
        for cache, cached in ((PromptCache(), True), (None, False)):
            engine.models.lanes[0].clear()
            slots = Slots(engine, cache)
            results = [run_all(slots, {0: (prompt, {"max_tokens": 12, "mode": "tree"})})[0]
                       for prompt in (first_prompt, second_prompt, first_prompt)]
            slots.close()
            first, _, again = results
            assert first.stats["prompt_cached"] < first.stats["prompt_tokens"] - 1
            assert (again.stats["prompt_cached"] == again.stats["prompt_tokens"] - 1) == cached
            assert again.tokens == first.tokens


def test_a_windowed_cache_gives_back_a_shorter_start_only_where_its_window_held_it(tiny_target):
    """A sliding-window cache saves only the cells its window sees from the last position: a
    start shorter than the whole comes back only if the whole fits in the window."""
    with Engine(str(tiny_target), threads=1, ctx_size=256) as engine:
        share = engine.models.target.share
        ctx = share.ctx
        ctx.feed(engine.models.target.batch, list(range(3, 23)), 0, share.first)  # 20 cells
        saved = share.save()
        assert share.restore(saved, 20, 12) == 12 and share.holds(share.first, 12)
        window = ctx.model.n_swa
        try:
            ctx.model.n_swa = 8  # as a windowed model's would
            assert not share.restorable(20, 12) and share.restorable(20, 20) and share.restorable(6, 3)
            assert share.restore(saved, 20, 12) == 0 and ctx.seq_pos_max(share.first) == -1
            assert share.restore(saved, 20, 20) == 20
        finally:
            ctx.model.n_swa = window
