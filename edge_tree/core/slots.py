"""Generations side by side (`serve --parallel N`): each on a lane of its own (lanes.py), every
round's trees verified in one target pass.

A round of the slots: each active run plans and drafts its tree (proposing), the draft decoding
a level of every run's tree in one llama_decode; the trees go into one batch, the prompts of runs
that joined fill the room left, one llama_decode evaluates them all, and each run verifies its
rows, commits and streams (conclude). A batch of many tokens costs little more than one where
the weights dominate (a GPU, a large model), which is where serving many requests gains. Runs
join and leave between rounds. A lone run with its prompt read takes the path generate() takes,
the draft working ahead where it may.
"""

from __future__ import annotations

from typing import Callable, Generator

from ..llamacpp.llama import Batch
from ..records import StepRecord
from .chat import Prompt
from .drafting import DraftCall, Proposal
from .engine import Engine, GenerationResult, Run
from .model_drafter import call_batch, decode_calls
from .options import GenOptions
from .prompt_cache import PromptCache
from .plan import PLAIN_SHARE, Beside
from .tree import common_prefix


SIMILAR = 0.1  # the share of a prompt a lane must hold to be picked for its cells


class Slots:
    def __init__(self, engine: Engine, cache: PromptCache | None = None):
        """cache: where a lane's cells go before a new request drops them (--cache-ram)."""
        self.engine = engine
        self.cache = cache
        self.lanes = engine.models.lanes
        self.runs: list[Run | None] = [None] * len(self.lanes)
        ctx = engine.models.target_ctx
        self._batch = Batch(ctx.n_batch, ctx.n_seq_max)  # a pass: every tree, then prompts
        draft_ctx = engine.models.draft_ctx
        self._draft_batch = call_batch(draft_ctx) if draft_ctx else None  # a level of every tree
        self._starts = 0
        self.passes = 0  # target passes run, and those that verified several runs' trees
        self.shared_passes = 0
        self.draft_decodes = 0  # the draft's llama_decodes for the runs' trees, and those for several runs
        self.shared_draft_decodes = 0
        self._started_at = [0] * len(self.lanes)  # which start each lane saw last

    def close(self) -> None:
        self._batch.close()
        if self._draft_batch:
            self._draft_batch.close()

    @property
    def busy(self) -> int:
        return sum(run is not None for run in self.runs)

    @property
    def free(self) -> int:
        return len(self.runs) - self.busy

    def start(self, prompt: Prompt, options: GenOptions, *, on_text: Callable[[str], None] | None = None,
              on_step: Callable[[StepRecord], None] | None = None,
              on_header: Callable[[dict], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> int:
        """Tokenize prompt and give it a free lane (one must be free); returns the lane's index.
        Its prompt is read in the next rounds' passes, beside the other runs' trees. Raises what
        generate() raises for the same request."""
        engine = self.engine
        mode = engine.check_mode(options.mode)
        tokens = engine.read_prompt(prompt, options, mode, on_header)
        slot = self._pick(tokens)
        self._keep_in_memory(slot, tokens)
        if options.cache_prompt and (taken := self._adopt(slot, tokens)):
            self.lanes[slot].context = taken  # what the run's prefill keeps (Run.begin)
        self._starts += 1
        self._started_at[slot] = self._starts
        run = Run(engine, self.lanes[slot], options, mode, on_text, on_step, should_stop, False)
        try:
            run.begin(tokens, later=True)
        except BaseException:
            self.lanes[slot].clear()
            raise
        self.runs[slot] = run
        return slot

    def _pick(self, tokens: list[int]) -> int:
        """The free lane whose last generation shares the longest start with these tokens (its
        cells are reused), if that is a tenth of them at least (llama-server's default
        --slot-prompt-similarity: a shared BOS alone is no reason to evict a conversation); else
        the one used longest ago, keeping recent ones' cells."""
        def reuse(slot: int) -> int:
            shared = common_prefix(self.lanes[slot].context, tokens)
            return shared if shared >= SIMILAR * len(tokens) else 0

        free = [slot for slot, run in enumerate(self.runs) if run is None]
        return max(free, key=lambda slot: (reuse(slot), -self._started_at[slot]))

    def _held(self, slot: int) -> list[int]:
        """The tokens whose cells lane `slot`'s target holds from position 0: its run's, or while
        it is free its last generation's."""
        run, lane = self.runs[slot], self.lanes[slot]
        return (run.tokens if run else lane.context)[:lane.target.n_cached]

    def _adopt(self, slot: int, tokens: list[int]) -> list[int]:
        """Start lane `slot` from the longest start of the prompt that another lane holds, busy or
        free, or that the prompt cache kept, where that beats what it holds itself: requests
        that share a system prompt, a document or a conversation read it once. Another lane's
        cells become shared by the two lanes' sequences (Share.adopt); cached ones come back
        into the target's cache, the draft reading its start again if a tree needs it (Share.
        restore). Returns the tokens taken (none where it took none)."""
        shared = {lane: common_prefix(self._held(lane), tokens[:-1]) for lane in range(len(self.lanes))}
        source = max(shared, key=shared.get)
        n = shared[source]
        saved, m = self.cache.best(tokens[:-1]) if self.cache else (None, 0)
        if saved and not self.lanes[slot].target.share.restorable(len(saved.tokens), m):
            m = 0
        if max(n, m) <= shared[slot] or max(n, m) < SIMILAR * len(tokens):  # as _pick: a BOS is not worth it
            return []
        lane, giver = self.lanes[slot], self.lanes[source]
        if m > n:
            lane.target.restore(saved.state, len(saved.tokens), m)
            if lane.model_drafter:
                lane.model_drafter.drop()
        else:
            lane.target.adopt(giver.target, n)
            if lane.model_drafter:
                lane.model_drafter.adopt(giver.model_drafter, n)
        return tokens[:lane.target.n_cached]

    def _keep_in_memory(self, slot: int, tokens: list[int]) -> None:
        """Save what free lane `slot` holds in the prompt cache before the request it takes for
        these tokens drops it, unless the request keeps nine tenths of it or more (the next turn
        of a chat: each save copies every cell), another lane holds it too, or the cache has it."""
        held = self._held(slot)
        if not self.cache or not held or len(held) - common_prefix(held, tokens[:-1]) < SIMILAR * len(held):
            return
        if self.cache.holds(held):
            return
        if any(common_prefix(self._held(lane), held) == len(held) for lane in range(len(self.lanes)) if lane != slot):
            return
        target = self.lanes[slot].target
        if target.share.holds(target.share.first, len(held)):  # (not a cache cleared behind its back)
            self.cache.add(held, target.save())

    def _catch_up(self, slot: int) -> None:
        """A run still reading its prompt takes a longer start of it that another lane read
        meanwhile (_adopt), and reads only the rest."""
        run = self.runs[slot]
        held = run.lane.target.n_cached
        self._adopt(slot, run.tokens)
        if run.lane.target.n_cached != held:  # more; or none, where the cells were not all there
            run.stats.prompt_cached = run.lane.target.n_cached
            run.unread = run.tokens[run.lane.target.n_cached:-1]

    def _reads_first(self, reader: int, slot: int) -> bool:
        """Whether run `slot` should wait while run `reader` reads the start of a prompt they
        share (requests that arrive together with one system prompt or document), to take its
        cells next pass (_catch_up) instead of reading that start too."""
        tokens = self.runs[slot].tokens
        shared = common_prefix(self.runs[reader].tokens[:-1], tokens[:-1])
        return shared - self.lanes[slot].target.n_cached >= SIMILAR * len(tokens)

    def step(self) -> list[tuple[int, GenerationResult | Exception]]:
        """One round for every active run: the trees of those generating and the next part of
        the prompts of those reading theirs, in one target pass. Returns the runs that ended in
        it: (slot, result), or (slot, error) for a run that failed; their lanes are free again."""
        ended: list[tuple[int, GenerationResult | Exception]] = []
        shares = {slot: run.policy.share for slot, run in enumerate(self.runs) if run and not run.unread}
        # runs still reading their prompt are in the pass too: the others plan as beside plain runs
        readers = [PLAIN_SHARE for run in self.runs if run and run.unread]
        everyone = sum([*shares.values(), *readers], Beside())
        proposals = {}
        for slot, outcome in self._draft({slot: self.runs[slot].proposing(everyone - shares[slot])
                                          for slot in shares}).items():
            if outcome is None or isinstance(outcome, Exception):
                ended.append(self._end(slot, outcome))
            else:
                proposals[slot] = outcome
        reading = sorted((slot for slot, run in enumerate(self.runs) if run and run.unread),
                         key=self._started_at.__getitem__)  # in arrival order
        if not proposals and not reading:
            return ended
        self.passes += 1
        self.shared_passes += len(proposals) + len(reading) > 1
        try:
            self._pass(proposals, reading)
        except Exception as error:  # noqa: BLE001  the pass failed: every run in it did
            return ended + [self._end(slot, error) for slot in dict.fromkeys([*proposals, *reading])]
        return ended + [self._end(slot) for slot in proposals if self.runs[slot].stop]

    def _draft(self, steps: dict[int, Generator]) -> dict[int, Proposal | None | Exception]:
        """Every run's tree, drafted side by side: each run's next draft call goes into one
        llama_decode of the draft with the other runs' (a level of every tree at once), and each
        run pays its share of the decode's seconds, by tokens. Returns each run's proposal
        (None: a stop rule fired) or the error that ended it; a failed decode fails the runs
        whose calls were in it."""
        done: dict[int, Proposal | None | Exception] = {}
        calls: dict[int, DraftCall] = {}

        def advance(slot: int, answer) -> None:
            try:
                calls[slot] = steps[slot].send(answer)
            except StopIteration as finished:
                done[slot] = finished.value
            except Exception as error:  # noqa: BLE001  this run fails; the others go on
                done[slot] = error

        for slot in steps:
            advance(slot, None)
        while calls:
            batch = self._draft_batch
            fitting, room = [], batch.capacity
            for slot, call in calls.items():  # what one decode holds; the rest go in the next
                if len(call.entries) <= room or not fitting:
                    fitting.append(slot)
                    room -= len(call.entries)
            taken = [calls.pop(slot) for slot in fitting]
            try:
                firsts, seconds = decode_calls(self.engine.models.draft_ctx, batch, taken)
            except Exception as error:  # noqa: BLE001
                done.update(dict.fromkeys(fitting, error))
                continue
            self.draft_decodes += 1
            self.shared_draft_decodes += len(fitting) > 1
            for slot, call, first in zip(fitting, taken, firsts):
                advance(slot, (first, seconds * len(call.entries) / batch.n_tokens))
        return done

    def _pass(self, proposals: dict, reading: list[int]) -> None:
        if len(proposals) == 1 and not reading:  # as generate() does it
            (slot, proposal), = proposals.items()
            self.runs[slot].verify_alone(proposal)
            return
        batch = self._batch
        batch.clear()
        starts = {slot: self.runs[slot].lane.target.stage(p.tree, batch) for slot, p in proposals.items()}
        sharing = [slot for slot in reading if self.runs[slot].options.cache_prompt]
        for slot in sharing:  # before any prompt is staged: a staged token has no cell yet
            self._catch_up(slot)
        parts: dict[int, list[int]] = {}
        for slot in reading:  # prompts fill the room the trees leave, in arrival order
            run = self.runs[slot]
            waits = slot in sharing and any(self._reads_first(other, slot) for other, part in parts.items() if part)
            parts[slot] = [] if waits else run.unread[:batch.capacity - batch.n_tokens]
            run.lane.target.stage_prompt(parts[slot], batch)
            if len(parts[slot]) == len(run.unread) and batch.n_tokens < batch.capacity:
                first = run.first_root()  # the first round right behind the prompt's end
                if first:
                    proposals[slot] = first
                    starts[slot] = run.lane.target.stage(first.tree, batch)
        ctx = self.engine.models.target_ctx
        before = ctx.decode_s
        ctx.decode(batch)
        pass_s = ctx.decode_s - before
        for slot in reading:  # a run reads until its whole prompt is in (another thread may look)
            run = self.runs[slot]
            if len(parts[slot]) < len(run.unread):
                run.unread = run.unread[len(parts[slot]):]
            else:
                run.prefilled()
        for slot, proposal in proposals.items():
            start = starts[slot]
            own_s = pass_s * proposal.tree.n / batch.n_tokens  # its part of the pass, by tokens
            self.runs[slot].conclude(proposal, lambda i, start=start: ctx.logits(start + i), own_s,
                                     pass_tokens=batch.n_tokens)

    def _end(self, slot: int, error: Exception | None = None) -> tuple[int, GenerationResult | Exception]:
        run, self.runs[slot] = self.runs[slot], None
        if error is not None:
            self.lanes[slot].clear()  # whatever the failed round left in the caches
            return slot, error
        return slot, run.finish()
