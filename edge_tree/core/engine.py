"""The decoding loop: prefill, then rounds of plan -> draft -> verify -> commit, until a stop rule.

One flow for every mode: `ar` is a round whose tree is the root alone, `lookup` a branch of
guesses found in the context, `chain` a tree of width one, `tree` whatever the policy plans,
plain decoding included. A round's outcome feeds the statistics, the policy and, when someone
reads them, the step records (records.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Generator

import numpy as np

from ..errors import InputError, UsageError
from ..records import StepRecord
from .chat import Prompt, prompt_tokens
from .detokenize import StopText
from .drafting import DraftCall, DraftRequest, Proposal, Proposing, root_only, run_calls
from .lanes import Lane
from .models import LoadedModels
from .options import DRAFT_MODES, GenOptions, LoadOptions, split_options
from .plan import ALONE, PLAIN, Backlog, Beside, RoundOutcome, TreeShape
from .policy import Caps
from .stats import RunStats
from .steps import step_record, trace_header
from .verify import verify

NO_CAP = 1 << 30


@dataclass
class GenerationResult:
    text: str
    tokens: list[int]  # generated token ids (the prompt excluded)
    stats: dict
    steps: list[StepRecord] = field(default_factory=list)  # with record_steps=True
    stop_reason: str = ""  # eos | stop | max_tokens | max_time | context | interrupted


class Engine:
    """A target (and optionally a draft) loaded once; generate() as often as you like.

    Engine(target, draft, threads=2, ...) or Engine(options=LoadOptions(...)); target None means
    the demo pair. lanes > 1 splits the contexts for generations side by side (core/slots.py);
    generate() uses the first lane."""

    def __init__(self, target: str | None = None, draft: str | None = None, *,
                 options: LoadOptions | None = None, progress: bool = False, lanes: int = 1,
                 **load_options):
        if options is None:
            options = LoadOptions.from_mapping({"target": target, "draft": draft, **load_options})
        self.options = options
        self.models = LoadedModels(options, progress, lanes)
        self.target_model = self.models.target_model
        self.draft_model = self.models.draft_model
        self.target_ctx = self.models.target_ctx

    @property
    def target_path(self) -> str:
        return self.models.target_path

    @property
    def draft_path(self) -> str | None:
        return self.models.draft_path

    @property
    def has_draft(self) -> bool:
        return self.models.model_drafter is not None

    def close(self) -> None:
        self.models.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def generate(self, prompt: Prompt, options: GenOptions | None = None, *,
                 on_text: Callable[[str], None] | None = None,
                 on_step: Callable[[StepRecord], None] | None = None,
                 on_header: Callable[[dict], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 record_steps: bool = False, **gen_options) -> GenerationResult:
        """Generate a continuation of prompt: GenOptions, or its fields as keyword arguments.
        on_text gets text as it streams, on_step each round's record, on_header a trace's header
        before anything runs; record_steps keeps the records in result.steps."""
        if options is None:
            options = GenOptions.from_mapping(gen_options)
        elif gen_options:
            options = options.replace(**gen_options)
        mode = self.check_mode(options.mode)
        prompt_tokens = self.read_prompt(prompt, options, mode, on_header)
        return Run(self, self.models.lanes[0], options, mode, on_text, on_step, should_stop,
                    record_steps).execute(prompt_tokens)

    def check_mode(self, mode: str | None) -> str:
        mode = mode or ("tree" if self.has_draft else "ar")
        if mode in DRAFT_MODES and not self.has_draft:
            raise UsageError("--mode", f"{mode} needs a draft model (--draft/-md)", field="mode")
        return mode

    def read_prompt(self, prompt: Prompt, options: GenOptions, mode: str,
                    on_header: Callable[[dict], None] | None = None) -> list[int]:
        """The prompt's tokens, once checked against the context; on_header gets the trace's
        header first (a trace begins even for a request that fails here)."""
        tokens = prompt_tokens(self.target_model, prompt)  # a ChatPrompt parses special tokens
        if on_header:
            on_header(trace_header(self, options, mode, prompt, len(tokens)))
        if not tokens:
            raise InputError("prompt", "the prompt is empty and this model adds no BOS token to start from")
        n_ctx = self.models.lanes[0].cells  # a generation's, where several run side by side
        if len(tokens) >= n_ctx:
            raise InputError("prompt", f"the prompt has {len(tokens)} tokens; the context holds {n_ctx} "
                                       f"(raise --ctx-size)", code="context_length_exceeded")
        if options.context_full == "error" and len(tokens) + options.max_tokens > n_ctx:
            raise InputError("max_tokens", f"prompt ({len(tokens)} tokens) + --max-tokens {options.max_tokens} "
                                           f"exceed the context of {n_ctx} tokens: raise --ctx-size, lower "
                                           f"--max-tokens, or pass --context-full stop",
                             code="context_length_exceeded")
        return tokens


class Run:
    """One generation: the loop state that lives for a single generate() call, on one lane.

    Its rounds come in two halves around the target's pass, so that several runs can share one
    pass (core/slots.py): propose() plans and drafts the round's tree, conclude() verifies the
    pass's logits, commits and streams."""

    def __init__(self, engine: Engine, lane: Lane, options: GenOptions, mode: str, on_text, on_step,
                 should_stop, record_steps: bool):
        self.models = engine.models
        self.lane = lane
        self.options, self.mode = options, mode
        self.drafter = lane.drafter_for(mode, options.ngram)
        self.policy = lane.policy
        node_limit = lane.max_tree_nodes
        self.caps = Caps(options.max_depth, options.max_nodes_per_level,
                         min(options.max_total_nodes or node_limit, node_limit))
        self.seed = int(np.random.SeedSequence().entropy % 2**32) if options.seed is None else options.seed
        self.rng = np.random.default_rng(self.seed)
        self.on_text, self.on_step = on_text, on_step
        self.should_stop = should_stop or (lambda: False)
        self.keep_steps = record_steps
        self.text = StopText(options.stop)
        self.generated: list[int] = []
        self.steps: list[StepRecord] = []
        self.stats = RunStats(mode=mode, temperature=options.temperature)
        self.tokens: list[int] = []
        self.unread: list[int] = []  # prompt tokens not yet in the target's cache (begin(later=True))
        self.decode_started: float | None = None  # once the prompt is in
        self._first_token_first = False
        self.stop = ""
        self._round_start: tuple[float, TreeShape, float, float] | None = None
        self._decode_clocks = [0.0, 0.0]  # this run's seconds inside llama_decode, (target, draft)

    def execute(self, prompt_tokens: list[int]) -> GenerationResult:
        """The whole generation, alone on the lane's contexts."""
        self.begin(prompt_tokens)
        while (proposal := self.propose()) is not None:
            self.verify_alone(proposal)
        return self.finish()

    def begin(self, prompt_tokens: list[int], later: bool = False) -> None:
        """Prefill the target's cache (and ready the draft's) from what the lane's last
        generation left where it may. later: leave the prompt's rest in `unread`, for the
        caller to feed in passes of its own (core/slots.py), then call prefilled()."""
        self.started = time.perf_counter()
        self.policy.reset(learn_costs=self.params.greedy)
        lane = self.lane
        held, lane.context = lane.context, []  # until finish(): a failure leaves the caches unknown
        if not self.options.cache_prompt:
            held = []
        if later:
            self.stats.prompt_cached = lane.target.keep(prompt_tokens, held)
            self.unread = prompt_tokens[self.stats.prompt_cached:-1]
        else:
            self.stats.prompt_cached = lane.target.prefill(prompt_tokens, held)
        if self.drafter:  # beside others (later), the draft reads the prompt only if a tree pays
            self.drafter.start(prompt_tokens, held, read=not later)
        # greedy, a generation that reads its prompt later sends its first token before the
        # draft reads it (as llama-server does); sampled text keeps generate()'s random draws
        self._first_token_first = later and self.params.greedy
        if lane.model_drafter and self.drafter not in (lane.model_drafter, lane.graft_drafter):
            lane.model_drafter.forget()  # its cache will not follow this generation
        self.n_prompt = len(prompt_tokens)
        self.tokens = list(prompt_tokens)
        if not self.unread:
            self.prefilled()

    def prefilled(self) -> None:
        self.stats.prompt_s = time.perf_counter() - self.started
        self.decode_started = time.perf_counter()
        self.unread = []  # last: a reader on another thread sees decode_started once this is empty

    @property
    def params(self):
        return self.options.sampling

    def propose(self, beside: Beside = ALONE) -> Proposal | None:
        """The first half of a round: plan and draft its tree, each draft call a llama_decode of
        its own; None once a stop rule fired. beside: what other generations bring to the
        round, when its pass is shared."""
        drafter = self.lane.model_drafter
        return run_calls(self.proposing(beside), drafter.decode_alone if drafter else None)

    def first_root(self) -> Proposal | None:
        """For a run whose prompt's end is read in a pass beside others (core/slots.py): its first
        round, to ride in the same pass right behind the prompt, as llama-server's first token
        comes out of the prompt pass; only where that round is plain (greedy: the first token
        goes out before the draft reads the prompt), else None and it waits for the next round."""
        if not (self._first_token_first and not self.generated):
            return None
        return run_calls(self.proposing(), None)

    def proposing(self, beside: Beside = ALONE) -> Generator[DraftCall, tuple[int, float], Proposal | None]:
        """propose() as a generator of the draft calls it needs, for a caller that decodes them
        beside other runs' (core/slots.py) and sends back (first batch index, this call's
        seconds of the decode)."""
        self.stop = self.stop or self._stop_before_round()
        if self.stop:
            return None
        started = time.perf_counter()
        if self._first_token_first and not self.generated:
            shape = PLAIN  # the draft has not read the prompt: the first token goes out first
        else:  # (the policy not asked: its share, what it tells the others, stays a plain round's)
            shape = self._shape(len(self.tokens), beside)
        draft_s = 0.0
        if self.drafter and shape.capacity:
            request = DraftRequest(self.tokens, shape, self.params, self.rng)
            proposal, draft_s = yield from self._timed(self.drafter.proposing(request))
        else:
            proposal = root_only(self.tokens)
        self._round_start = (started, shape, time.perf_counter(), draft_s)
        return proposal

    def _timed(self, steps: Proposing):
        """Pass a drafter's calls on to the caller; returns its proposal and this run's seconds
        inside the draft's llama_decode: the calls it makes itself (catching up on a long
        context), and its share of those the caller decoded."""
        draft_s, first = 0.0, None
        while True:
            before = self.models.decode_clocks()[1]
            try:
                call = steps.send(first)
            except StopIteration as done:
                return done.value, draft_s + self.models.decode_clocks()[1] - before
            draft_s += self.models.decode_clocks()[1] - before
            first, seconds = yield call
            draft_s += seconds

    def verify_alone(self, proposal: Proposal) -> None:
        """A target pass over this run's tree alone, the draft working ahead where it may; then
        conclude."""
        before_pass = self.models.decode_clocks()
        logits_of = self.lane.target.evaluate(proposal.tree, self._work_ahead(proposal.tree))
        target_s, ahead_s = self.models.decode_clocks(since=before_pass)
        self.conclude(proposal, logits_of, target_s, ahead_s)

    def conclude(self, proposal: Proposal, logits_of, target_s: float, ahead_s: float = 0.0,
                 pass_tokens: int = 0) -> None:
        """The second half: verify the target pass's logits for this tree, commit both caches,
        learn, and stream the new tokens. target_s: the pass's seconds (this tree's part of a
        shared one); ahead_s: the draft's decodes beside it; pass_tokens: all the tokens of a
        pass that carried other runs' trees or prompts too."""
        started, shape, drafted, draft_s = self._round_start
        tree = proposal.tree
        verdict = verify(tree, logits_of, self.params, self.rng, proposal.draft_probs,
                         target_probs=self.keep_steps or self.on_step is not None)
        self.lane.target.commit(tree, verdict.last_node)
        verified = time.perf_counter()
        if tree.n > 1:
            self.drafter.observe(tree, verdict)
        self._decode_clocks[0] += target_s
        self._decode_clocks[1] += draft_s + ahead_s
        outcome = RoundOutcome(tree, verdict, shape, proposal.draft_sizes, draft_s=drafted - started,
                               verify_s=verified - drafted, round_s=time.perf_counter() - started,
                               decode=(target_s, draft_s), ready_rows=proposal.ready_rows,
                               ahead_s=ahead_s, pass_tokens=pass_tokens)
        self.policy.observe(outcome)
        self.stats.add_round(outcome)
        if self.keep_steps or self.on_step:
            self._record(outcome, len(self.tokens))
        new_tokens = [int(tree.token[i]) for i in verdict.accepted] + [verdict.bonus_token]
        self.stop = self._emit(new_tokens)
        self.tokens += new_tokens

    def finish(self) -> GenerationResult:
        self.lane.context = self.tokens
        self._flush_text()
        now = time.perf_counter()
        self.stats.finish(self.n_prompt, len(self.generated), now - self.started, self.seed, self.stop,
                          self.models.model_state, decode_s=now - self.decode_started,
                          decode_clocks=tuple(self._decode_clocks))
        return GenerationResult(self.text.text, self.generated, self.stats.as_dict(), self.steps, self.stop)

    def _stop_before_round(self) -> str:
        if self.should_stop():
            return "interrupted"
        if self.options.max_time is not None and time.perf_counter() - self.started >= self.options.max_time:
            return "max_time"
        if len(self.tokens) + 1 > self.lane.cells:  # the root itself needs a cell
            return "context"
        return ""

    def _work_ahead(self, tree):
        """What the drafter does during the target's pass: where the two share no device, decode
        ahead for the next round (model_drafter.py); elsewhere nothing, the pass on this thread."""
        if self.models.works_ahead and tree.n > 1:
            return partial(self.drafter.ahead, tree)
        return None

    def _shape(self, n_tokens: int, beside: Beside = ALONE) -> TreeShape:
        """The policy's plan, cut to the hard limits: the user's caps, the KV cells left beside
        the committed tokens, the sequences a tree may use, and the tokens still wanted."""
        cells = self.lane.cells - n_tokens
        remaining = self.options.max_tokens - len(self.generated)  # no point drafting past the end
        unread = self.drafter.unread(self.tokens) if self.drafter else 0
        plan = self.policy.plan(self.mode, self.caps, beside, Backlog(unread, min(remaining, cells)))
        if not self.drafter:
            return plan  # plain decoding: nothing to cut
        depth_cap = max(0, min(self.caps.max_depth or NO_CAP, remaining - 1, cells - 1))
        node_cap = max(0, min(self.caps.max_total_nodes, cells - 1))
        depth = min(plan.max_depth, depth_cap)
        nodes = min(plan.max_total_nodes, node_cap) if depth else 0
        per_level = min(plan.max_nodes_per_level, self.caps.max_nodes_per_level or NO_CAP)
        extra = self.drafter.extra_nodes
        wanted = extra if plan.guess_nodes is None else min(plan.guess_nodes, extra)
        # the draft's cache holds the committed tokens, the guess it checks in its first call (up
        # to guess_depth tokens) and a cell per node it expands (fewer than `nodes`): all in n_ctx
        guess_depth = min(depth_cap, max(0, cells - 1 - nodes))
        return replace(plan, max_depth=depth, max_total_nodes=nodes, max_nodes_per_level=per_level,
                       guess_depth=guess_depth,
                       guess_nodes=min(wanted, node_cap - nodes) if guess_depth else 0)

    def _emit(self, new_tokens: list[int]) -> str:
        """Stream the round's tokens, in one piece: a listener wakes once a round, not once a
        token (on 2 cores, a server thread woken per token stalls llama.cpp's threads). Returns
        a stop reason if one fires inside them."""
        released: list[str] = []
        stop = self._take(new_tokens, released)
        if released and self.on_text:
            self.on_text("".join(released))
        return stop

    def _take(self, new_tokens: list[int], released: list[str]) -> str:
        model = self.models.target_model
        for token in new_tokens:
            if model.is_eog(token):
                return "eos"
            self.generated.append(token)
            text, stopped = self.text.push(model.token_bytes(token))
            released.append(text)
            if stopped:
                return "stop"
            if len(self.generated) >= self.options.max_tokens:
                return "max_tokens"
        return ""

    def _flush_text(self) -> None:
        tail = self.text.flush()
        if tail and self.on_text:
            self.on_text(tail)

    def _record(self, outcome: RoundOutcome, n_tokens: int) -> None:
        record = step_record(self.stats.rounds, self.mode, n_tokens - 1, outcome,
                             self.models.target_model)
        if self.keep_steps:
            self.steps.append(record)
        if self.on_step:
            self.on_step(record)


def engine_and_options(values: dict, progress: bool = False) -> tuple[Engine, GenOptions]:
    """A face's keyword arguments, load and generation options mixed, split and built once."""
    load, gen, rest = split_options(values)
    if rest:
        raise UsageError(sorted(rest)[0], "unknown option", field=sorted(rest)[0])
    options = GenOptions.from_mapping(gen)
    return Engine(options=LoadOptions.from_mapping(load), progress=progress), options
