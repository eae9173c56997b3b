"""Generations side by side on one engine (core/slots.py), on tiny models: every round's trees in
one target pass, each reply the same as the same request's reply alone; runs that join and leave
mid-run; the prompt cache, which prefills only what the last generation on a lane did not leave."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edge_tree import Engine
from edge_tree.core.policy import AdaptivePolicy, Taught
from edge_tree.core.plan import PLAIN_SHARE
from edge_tree.core.slots import Slots
from edge_tree.core.tree import common_prefix

from costs import CPU
from neartie import PROMPTS, assert_same_or_near_tie
from slotload import run_all

LANES = 8
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def alone(tiny_target, tiny_draft_same):
    with Engine(str(tiny_target), str(tiny_draft_same), threads=1, ctx_size=512, policy="fixed") as engine:
        yield engine


@pytest.fixture(scope="module")
def side_by_side(tiny_target, tiny_draft_same):
    with Engine(str(tiny_target), str(tiny_draft_same), threads=1, ctx_size=512 * LANES, policy="fixed",
                lanes=LANES) as engine:
        yield engine


@pytest.fixture
def slots(side_by_side, monkeypatch):
    """The engine's slots, counting the target's passes and the draft's calls."""
    slots = Slots(side_by_side)
    slots.decodes = _counting(side_by_side.models.target_ctx, monkeypatch)  # the size of every target decode
    slots.draft_calls = _counting(side_by_side.models.draft_ctx, monkeypatch)
    yield slots
    slots.close()


def _counting(ctx, monkeypatch) -> list[int]:
    sizes = []
    decode = ctx.decode
    monkeypatch.setattr(ctx, "decode", lambda batch: (sizes.append(batch.n_tokens), decode(batch))[1])
    return sizes


def test_eight_requests_side_by_side_each_equal_their_reply_alone(alone, slots):
    requests = {k: (prompt, {"max_tokens": MAX_TOKENS}) for k, prompt in enumerate(PROMPTS)}
    results = run_all(slots, requests)
    for k, prompt in enumerate(PROMPTS):
        reference = alone.generate(prompt, max_tokens=MAX_TOKENS, mode="ar").tokens
        assert len(results[k].tokens) == MAX_TOKENS
        assert_same_or_near_tie(alone, prompt, reference, results[k].tokens)
    rounds = sum(result.stats["rounds"] for result in results.values())
    drafted = sum(result.stats["drafted"] for result in results.values())
    tree_passes = [n for n in slots.decodes if n > 1]
    assert drafted > 0  # trees were drafted: the shared passes verified them
    # every round of every run was in a pass, and passes carried several runs' trees at once
    assert len(slots.decodes) < rounds / 2, (len(slots.decodes), rounds)
    assert max(tree_passes) > 2 * max(result.stats["drafted"] / result.stats["rounds"] + 1
                                      for result in results.values())
    # the target's compute buffer holds a row of logits per sequence, not per batch token
    target_ctx = slots.engine.models.target_ctx
    assert target_ctx.n_outputs == target_ctx.n_seq_max < target_ctx.n_batch
    # and the draft decoded a level of several runs' trees in each of its calls
    asked = sum(result.stats["draft_calls"] for result in results.values())
    assert len(slots.draft_calls) < asked / 2, (len(slots.draft_calls), asked)
    assert slots.shared_draft_decodes > len(slots.draft_calls) / 2


def test_requests_join_and_leave_mid_run(alone, slots):
    first = {k: (PROMPTS[k], {"max_tokens": 8 + 12 * k}) for k in range(3)}  # they leave in turn
    later = {3 + k: (PROMPTS[3 + k], {"max_tokens": 16, "mode": mode})
             for k, mode in enumerate(("tree", "chain", "ar"))}
    results = run_all(slots, first, join_after=3, later=later)
    assert sorted(results) == list(range(6))
    for key, (prompt, options) in {**first, **later}.items():
        reference = alone.generate(prompt, max_tokens=options["max_tokens"], mode="ar").tokens
        assert len(results[key].tokens) == options["max_tokens"]
        assert_same_or_near_tie(alone, prompt, reference, results[key].tokens)
    assert slots.free == LANES


def test_a_seeded_sampled_request_is_the_same_beside_others(slots):
    sampled = {"max_tokens": MAX_TOKENS, "temperature": 1.0, "seed": 1234}
    lone = run_all(slots, {0: (PROMPTS[1], sampled)})[0]
    crowd = {0: (PROMPTS[1], sampled)} | {k: (PROMPTS[k], {"max_tokens": MAX_TOKENS, "temperature": 0.7})
                                          for k in range(2, 6)}
    beside = run_all(slots, crowd)[0]
    assert beside.text == lone.text and beside.tokens == lone.tokens


def test_a_seeded_sampled_request_plans_as_if_alone(tiny_target, tiny_draft_same):
    """The adaptive policy sizes a greedy run's tree by what the others bring to the round (here
    costs of a 2-core CPU, where a pass of many tokens costs several passes of one); a sampled
    run's tree decides which random draws it makes, so it plans as if alone and its text follows
    from its seed, whatever runs beside it."""
    sampled = {"max_tokens": MAX_TOKENS, "temperature": 1.0, "seed": 99}
    crowd = {k: (PROMPTS[k], {"max_tokens": MAX_TOKENS}) for k in range(2, 6)}
    with Engine(str(tiny_target), str(tiny_draft_same), threads=1, ctx_size=512 * 6, lanes=6) as engine:
        taught = Taught(replace(CPU))
        for lane in engine.models.lanes:
            lane.policy = AdaptivePolicy(replace(CPU), taught)
        plans = _plans_of_sampled_runs(engine)
        slots = Slots(engine)
        lone = run_all(slots, {0: (PROMPTS[1], sampled)})[0]
        alone_plans, plans[:] = list(plans), []
        beside = run_all(slots, {0: (PROMPTS[1], sampled)} | crowd)[0]
        slots.close()
    assert any(plan.use_model for plan in alone_plans) and plans == alone_plans
    assert beside.tokens == lone.tokens


def _plans_of_sampled_runs(engine) -> list:
    """Every plan the lanes' policies make for a sampled run (one that does not learn costs)."""
    plans = []
    for policy in (lane.policy for lane in engine.models.lanes):
        def planning(mode, caps, beside, backlog, policy=policy, plan=policy.plan):
            shape = plan(mode, caps, beside, backlog)
            if not policy.learn_costs:
                plans.append(shape)
            return shape
        policy.plan = planning
    return plans


def test_a_failing_request_leaves_the_others_running(alone, slots, monkeypatch):
    from edge_tree.core.options import GenOptions

    good = slots.start(PROMPTS[0], GenOptions(max_tokens=MAX_TOKENS))
    bad = slots.start(PROMPTS[1], GenOptions(max_tokens=MAX_TOKENS))
    drafter = slots.runs[bad].drafter
    monkeypatch.setattr(drafter, "proposing", lambda request: (_ for _ in ()).throw(RuntimeError("drafter broke")))
    ended = {}
    while slots.busy:
        ended.update(slots.step())
    assert isinstance(ended[bad], RuntimeError)
    reference = alone.generate(PROMPTS[0], max_tokens=MAX_TOKENS, mode="ar").tokens
    assert_same_or_near_tie(alone, PROMPTS[0], reference, ended[good].tokens)
    monkeypatch.undo()
    again = run_all(slots, {0: (PROMPTS[1], {"max_tokens": MAX_TOKENS})})[0]  # the lane is clean
    assert_same_or_near_tie(alone, PROMPTS[1], alone.generate(PROMPTS[1], max_tokens=MAX_TOKENS, mode="ar").tokens,
                            again.tokens)


# -- the prompt cache ---------------------------------------------------------------------------

def test_the_next_turn_prefills_only_its_new_tokens(tiny_target, tiny_draft_same):
    with Engine(str(tiny_target), str(tiny_draft_same), threads=1, ctx_size=1024, policy="fixed") as engine:
        first_prompt = "Once upon a time, there"
        first = engine.generate(first_prompt, max_tokens=MAX_TOKENS)
        assert first.stats["prompt_cached"] == 0
        follow = first_prompt + first.text + " and then"
        tokens = engine.target_model.tokenize(follow)
        # the cache holds all but the last token: that was the next round's root
        held = (engine.target_model.tokenize(first_prompt) + first.tokens)[:-1]
        second = engine.generate(follow, max_tokens=MAX_TOKENS)
        fresh = engine.generate(follow, max_tokens=MAX_TOKENS, cache_prompt=False)
        assert fresh.stats["prompt_cached"] == 0
        asked_first = len(engine.target_model.tokenize(first_prompt))
    expected = common_prefix(held, tokens[:-1])
    assert expected > asked_first  # the reply's tokens too
    assert second.stats["prompt_cached"] == expected
    assert second.text == fresh.text


def test_a_cache_cleared_behind_the_engines_back_is_not_trusted(tiny_target, tiny_draft_same):
    with Engine(str(tiny_target), str(tiny_draft_same), threads=1, ctx_size=1024, policy="fixed") as engine:
        first = engine.generate(PROMPTS[0], max_tokens=MAX_TOKENS)
        engine.models.target_ctx.clear()
        engine.models.draft_ctx.clear()
        again = engine.generate(PROMPTS[0], max_tokens=MAX_TOKENS)
        assert again.stats["prompt_cached"] == 0
        assert again.tokens == first.tokens


def test_slots_pick_the_lane_that_holds_the_longest_start(side_by_side):
    from edge_tree.core.options import GenOptions

    slots = Slots(side_by_side)
    try:
        for prompt in PROMPTS[:3]:  # three lanes hold three conversations
            run_all(slots, {0: (prompt, {"max_tokens": 8})})
        asked = side_by_side.target_model.tokenize(PROMPTS[1])
        holder = next(k for k, lane in enumerate(slots.lanes) if lane.context[:len(asked)] == asked)
        slot = slots.start(PROMPTS[1] + " and more", GenOptions(max_tokens=4))
        assert slot == holder
        assert slots.runs[slot].stats.prompt_cached >= len(asked) - 1
        while slots.busy:
            slots.step()
    finally:
        slots.close()


def test_a_prompt_another_lane_holds_is_read_once(alone, slots):
    """A request whose prompt another lane has read (a shared system prompt) starts from that
    lane's cells, and stays right after that lane ends and reads another prompt."""
    from edge_tree.core.options import GenOptions

    prompt = PROMPTS[3]
    giver = slots.start(prompt, GenOptions(max_tokens=4))
    slots.step()  # the giver reads its prompt
    taker = slots.start(prompt, GenOptions(max_tokens=MAX_TOKENS))
    asked = len(slots.runs[taker].tokens)
    assert slots.runs[taker].stats.prompt_cached == asked - 1  # all but the root: nothing to read
    ended = {}
    while giver not in ended:
        ended.update(slots.step())
    given = ended.pop(giver)
    others = [slots.start(PROMPTS[k % len(PROMPTS)], GenOptions(max_tokens=8)) for k in range(slots.free)]
    assert giver in others  # the giver's lane now reads another prompt
    while slots.busy:
        ended.update(slots.step())
    reference = alone.generate(prompt, max_tokens=MAX_TOKENS, mode="ar").tokens
    assert_same_or_near_tie(alone, prompt, reference, ended[taker].tokens)
    assert_same_or_near_tie(alone, prompt, reference[:4], given.tokens)


def test_a_lane_takes_another_lanes_cells_only_where_they_are(side_by_side):
    slots = Slots(side_by_side)
    try:
        run_all(slots, {0: (PROMPTS[3], {"max_tokens": 8})})
        giver = max(slots.lanes, key=lambda lane: lane.target.n_cached)
        taker = next(lane for lane in slots.lanes if lane is not giver)
        held, drafted = giver.target.n_cached, giver.model_drafter.n_cached
        assert held > 4 and drafted > 4
        taker.target.adopt(giver.target, held)
        taker.model_drafter.adopt(giver.model_drafter, held)
        assert (taker.target.n_cached, taker.model_drafter.n_cached) == (held, min(held, drafted))
        giver.target.share.clear()  # behind the runners' backs
        giver.model_drafter.share.clear()
        taker.target.share.clear()
        taker.model_drafter.share.clear()
        taker.target.adopt(giver.target, held)
        taker.model_drafter.adopt(giver.model_drafter, held)
        assert (taker.target.n_cached, taker.model_drafter.n_cached) == (0, 0)
    finally:
        for lane in slots.lanes:
            lane.clear()
        slots.close()


def test_requests_that_arrive_together_with_one_system_prompt_read_it_once(alone, slots):
    from edge_tree.core.options import GenOptions

    system = "Answer as a ship's cook would. " + " ".join(PROMPTS)
    asked = {key: system + question for key, question in (("a", " What is for dinner?"), ("b", " And then?"))}
    slots._started_at = [1, 0] + [1] * (LANES - 2)  # lanes used longest ago: 1, then 0
    started = {key: slots.start(prompt, GenOptions(max_tokens=MAX_TOKENS)) for key, prompt in asked.items()}
    assert started["b"] < started["a"]  # the first to arrive reads, wherever its lane is
    tokens = {key: slots.runs[slot].tokens for key, slot in started.items()}
    shared = common_prefix(tokens["a"][:-1], tokens["b"][:-1])
    assert shared > len(tokens["b"]) / 2
    ended = {}
    while slots.busy:
        ended.update(slots.step())
    assert ended[started["a"]].stats["prompt_cached"] <= 1  # its lane's BOS at most: it reads the rest
    assert ended[started["b"]].stats["prompt_cached"] == shared  # read once, by the first
    for key, slot in started.items():
        reference = alone.generate(asked[key], max_tokens=MAX_TOKENS, mode="ar").tokens
        assert_same_or_near_tie(alone, asked[key], reference, ended[slot].tokens)


def test_a_greedy_first_token_comes_out_of_the_pass_that_reads_the_prompt(slots):
    from edge_tree.core.options import GenOptions

    slots.start(PROMPTS[0], GenOptions(max_tokens=MAX_TOKENS))
    slots.step()
    greedy = slots.runs[slots.start("A prompt that no lane has read", GenOptions(max_tokens=MAX_TOKENS))]
    assert greedy.unread
    passes = len(slots.decodes)
    slots.step()  # one pass: the first run's round, the prompt, and the greedy run's first round
    assert len(slots.decodes) == passes + 1
    assert not greedy.unread and len(greedy.generated) == 1
    assert greedy.policy.share == PLAIN_SHARE  # unplanned: the others saw a plain round beside theirs
    while slots.busy:
        slots.step()


def test_a_long_prompt_is_read_in_parts_while_the_others_go_on(alone, tiny_target, tiny_draft_same):
    from edge_tree.core.options import GenOptions

    long_prompt = " ".join(PROMPTS) * 12  # more tokens than a pass holds (512)
    with Engine(str(tiny_target), str(tiny_draft_same), threads=1, ctx_size=2048, policy="fixed",
                lanes=2) as engine:
        slots = Slots(engine)
        talking = slots.start(PROMPTS[0], GenOptions(max_tokens=40))
        slots.step()
        reading = slots.start(long_prompt, GenOptions(max_tokens=MAX_TOKENS))
        parts, grew = 0, 0
        while slots.runs[reading].unread:
            before = len(slots.runs[talking].generated)
            slots.step()
            parts += 1
            grew += len(slots.runs[talking].generated) > before
        ended = {}
        while slots.busy:
            ended.update(slots.step())
        slots.close()
    assert parts >= 2 and grew == parts  # the talking run gained tokens in every pass of the read
    assert ended[reading].stats["prompt_tokens"] > 512
    with Engine(str(tiny_target), threads=1, ctx_size=1024) as solo:
        reference = solo.generate(long_prompt, max_tokens=MAX_TOKENS, mode="ar")
        assert_same_or_near_tie(solo, long_prompt, reference.tokens, ended[reading].tokens)


def test_each_request_counts_its_part_of_a_shared_pass(slots):
    requests = {k: (prompt, {"max_tokens": MAX_TOKENS}) for k, prompt in enumerate(PROMPTS[:4])}
    ctx = slots.engine.models.target_ctx
    before = ctx.decode_s
    results = run_all(slots, requests)
    spent = ctx.decode_s - before
    counted = sum(result.stats["target_decode_s"] for result in results.values())
    # the parts add up to the passes' time, less the prompts' parts (read before decoding began),
    # each part rounded to 0.1 ms in the stats
    assert 0 < counted <= spent * 1.001 + 0.00005 * len(results)
    assert counted > 0.5 * spent


def test_the_slots_learn_the_draft_together(tiny_target, tiny_draft_same):
    """One engine's slots share one target and one draft: what one slot's rounds teach about the
    draft and the costs, every slot plans with (policy.Taught). A sampled request plans apart,
    from the prior and the calibrated costs (its text depends on its seed alone)."""
    with Engine(str(tiny_target), str(tiny_draft_same), threads=1, ctx_size=1024, lanes=2) as engine:
        first, second = (lane.policy for lane in engine.models.lanes)
        assert first.learned is second.learned and first.cost is second.cost
        second.reset(learn_costs=False)
        assert second.learned is not first.learned and second.cost is not first.cost


def test_each_plan_knows_what_the_draft_has_yet_to_read_and_the_tokens_left(alone, slots, monkeypatch):
    """A run that reads its prompt beside others leaves it unread by the draft until a tree needs
    it (Backlog.unread: what a tree would first pay), a run alone has the draft read it with the
    prompt; every plan knows the tokens the run may still make (Backlog.left)."""
    def spy(policy, seen):
        plan = policy.plan

        def planning(mode, caps, beside, backlog):
            seen.append(backlog)
            return plan(mode, caps, beside, backlog)
        monkeypatch.setattr(policy, "plan", planning)

    beside: dict[int, list] = {}
    for lane, policy in enumerate(lane.policy for lane in slots.lanes):
        spy(policy, beside.setdefault(lane, []))
    fresh = {"max_tokens": MAX_TOKENS, "cache_prompt": False}  # nothing kept from the tests before
    results = run_all(slots, {k: (PROMPTS[k], fresh) for k in range(2)})
    planned = [seen for seen in beside.values() if seen]  # the two lanes the requests took
    # the first token came out of the prompt's pass, unplanned: the draft has read nothing yet
    assert sorted(seen[0].unread for seen in planned) == sorted(r.stats["prompt_tokens"] for r in results.values())
    for seen in planned:
        assert seen[0].left == MAX_TOKENS - 1
        assert len(seen) > 1 and all(b.unread < seen[0].unread for b in seen[1:])  # the first tree read it
        lefts = [b.left for b in seen]
        assert lefts == sorted(set(lefts), reverse=True)  # every round made tokens
    lone: list = []
    spy(alone.models.lanes[0].policy, lone)
    alone.generate(PROMPTS[0], max_tokens=MAX_TOKENS)
    assert lone[0].unread == 0 and lone[0].left == MAX_TOKENS
