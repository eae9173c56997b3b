"""The decoding loop: prefill, then rounds of draft -> verify -> commit, until a stop rule fires.

One flow for every mode: `ar` is a round whose tree is the root alone, `chain` a tree of width
one, `tree` whatever the policy chooses. Step records (plain dicts) come out of every
speculative round for the trace, the pictures and `result.steps`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from . import draft_vocab as draft_vocabs
from . import llama
from .drafters import DraftModelDrafter, HybridDrafter, Proposal, TreeShape
from .errors import EdgeTreeError, UsageError
from .demo import cache_dir
from .calibrate import DRAFT_SIZES, TARGET_SIZES, cached_costs, host_cost_per_node
from .modelfile import check_gguf
from .policy import AdaptivePolicy, CostModel, FixedPolicy, Policy, validate_caps
from .sampling import SamplingParams
from .stats import RunStats
from .target import TargetRunner
from .text import TextStream, visible
from .tree import ACCEPTED, NGRAM, REJECTED, SOURCE_NAMES, STATUS_NAMES, TokenTree
from .verify import Verdict, verify
from .vocab import check_vocab

MODES = ("ar", "chain", "tree")
NGRAM_LEN = 10  # longest prompt-lookup guess grafted onto a tree
POLICIES = ("adaptive", "fixed")
CONTEXT_FULL = ("error", "stop")


def check_load_options(ctx_size: int, threads: int | None, draft_vocab: int | str = "auto") -> None:
    check_draft_vocab(draft_vocab)
    if ctx_size < 16:
        raise UsageError("--ctx-size", f"must be at least 16 tokens, got {ctx_size}")
    if threads is not None and threads < 1:
        raise UsageError("--threads", f"must be at least 1, got {threads}")


def check_draft_vocab(size: int | str) -> None:
    """"auto", "full", or a number of tokens (at least 2: a token and end-of-generation)."""
    if size in ("auto", "full"):
        return
    try:
        tokens = int(size)
    except (TypeError, ValueError):
        tokens = 0
    if tokens < 2:
        raise UsageError("--draft-vocab", f"must be auto, full, or a number of tokens >= 2, got {size!r}")


def check_run_options(max_tokens: int, max_time: float | None) -> None:
    if max_tokens < 1:
        raise UsageError("--max-tokens", f"must be at least 1, got {max_tokens}")
    if max_time is not None and max_time <= 0:
        raise UsageError("--max-time", f"must be > 0 seconds, got {max_time}")


@dataclass
class GenerationResult:
    text: str
    tokens: list[int]  # generated token ids (the prompt excluded)
    stats: dict
    steps: list[dict] = field(default_factory=list)
    stop_reason: str = ""  # eos | max_tokens | max_time | context | interrupted


class Engine:
    """A target (and optionally a draft) loaded once; generate() as often as you like."""

    def __init__(self, target: str, draft: str | None = None, *, n_gpu_layers: int = 0,
                 draft_n_gpu_layers: int = 0, threads: int | None = None, ctx_size: int = 4096,
                 verbose: bool = False, children: str = "sampled", policy: str = "adaptive",
                 draft_vocab: int | str = "auto", progress: bool = False):
        llama.set_verbose(verbose)
        check_load_options(ctx_size, threads, draft_vocab)
        self.target_path = str(check_gguf(target, "target"))
        self.draft_path = str(check_gguf(draft, "draft")) if draft else None
        self._closers: list[Callable[[], None]] = []
        try:
            self.target_model = self._keep(llama.Model(self.target_path, n_gpu_layers))
            self.draft_model = self.draft_vocab = None
            if self.draft_path:
                self.draft_model = self._keep(llama.Model(self.draft_path, draft_n_gpu_layers))
                check_vocab(self.target_model, self.draft_model)
                self.draft_vocab = draft_vocabs.load(self.draft_model, draft_vocab, cache_dir(),
                                                     threads, draft_n_gpu_layers, progress)
                if self.draft_vocab:  # the reduced copy replaces the full draft
                    self.draft_model.close()
                    self.draft_model = self._keep(self.draft_vocab.model)
            n_seq = llama.max_parallel_sequences()
            self.target_ctx = self._keep(llama.Context(self.target_model, ctx_size, n_seq, threads=threads))
            self.target = self._keep(TargetRunner(self.target_ctx))
            self.drafter = self.hybrid = None
            if self.draft_model:
                reduced = self.draft_vocab
                self.draft_ctx = self._keep(llama.Context(self.draft_model, ctx_size, n_seq, threads=threads,
                                                          embed=reduced and reduced.embed))
                self.drafter = self._keep(DraftModelDrafter(self.draft_ctx, children, reduced and reduced.ids,
                                                            reduced and reduced.full_vocab))
                self.hybrid = HybridDrafter(self.drafter)
            self.policy = self._make_policy(policy)
        except BaseException:
            self.close()
            raise

    def _make_policy(self, name: str) -> Policy:
        if name not in POLICIES:
            raise UsageError("--policy", f"must be one of {', '.join(POLICIES)}, got {name!r}")
        if name == "fixed" or not self.drafter:
            return FixedPolicy()
        cost = CostModel(cached_costs(self.target_ctx, TARGET_SIZES),
                         cached_costs(self.draft_ctx, DRAFT_SIZES),
                         host_per_node=host_cost_per_node(self.draft_model.n_vocab))
        return AdaptivePolicy(cost)

    def _keep(self, obj):
        self._closers.append(obj.close)
        return obj

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def model_state(self) -> dict:
        """GPU offload of both models, and how many tokens the draft may propose."""
        state = {"gpu_offload_supported": llama.supports_gpu_offload(),
                 "target_gpu_layers": self.target_model.offloaded_layers,
                 "target_layers": self.target_model.n_layer + 1}
        if self.draft_model:
            state.update(draft_vocab=self.draft_model.n_vocab,
                         draft_gpu_layers=self.draft_model.offloaded_layers,
                         draft_layers=self.draft_model.n_layer + 1)
        return state

    # ------------------------------------------------------------------------------------
    def generate(self, prompt: str, *, max_tokens: int = 128, mode: str | None = None,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 seed: int | None = None, max_depth: int | None = None,
                 max_nodes_per_level: int | None = None, max_total_nodes: int | None = None,
                 max_time: float | None = None, context_full: str = "error",
                 on_text: Callable[[str], None] | None = None,
                 on_step: Callable[[dict], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 record_steps: bool = True, ngram: bool = True) -> GenerationResult:
        """Generate a continuation of prompt. mode: ar | chain | tree (default with a draft);
        ngram: in tree mode, graft prompt-lookup guesses onto the draft's tree."""
        mode = self._check_mode(mode)
        params = SamplingParams(temperature, top_k, top_p, min_p, seed).validate()
        check_run_options(max_tokens, max_time)
        if context_full not in CONTEXT_FULL:
            raise UsageError("--context-full", f"must be one of {', '.join(CONTEXT_FULL)}")
        caps = validate_caps(max_depth, max_nodes_per_level, max_total_nodes)
        prompt_tokens = self.target_model.tokenize(prompt, add_special=True)
        if not prompt_tokens:
            raise EdgeTreeError("the prompt is empty and this model adds no BOS token to start from")
        n_ctx = self.target_ctx.n_ctx
        if len(prompt_tokens) >= n_ctx:
            raise EdgeTreeError(f"the prompt has {len(prompt_tokens)} tokens; the context holds {n_ctx} "
                                f"(raise --ctx-size)")
        if context_full == "error" and len(prompt_tokens) + max_tokens > n_ctx:
            raise EdgeTreeError(f"prompt ({len(prompt_tokens)} tokens) + --max-tokens {max_tokens} exceed "
                                f"the context of {n_ctx} tokens: raise --ctx-size, lower --max-tokens, "
                                f"or pass --context-full stop")
        seed = int(np.random.SeedSequence().entropy % 2**32) if seed is None else seed
        rng = np.random.default_rng(seed)
        drafter = None if mode == "ar" else self.hybrid if mode == "tree" and ngram else self.drafter
        run = _Run(self, drafter, mode, params, caps, rng, max_tokens, max_time, on_text, on_step,
                   should_stop, record_steps)
        return run.execute(prompt_tokens, seed)

    def _check_mode(self, mode: str | None) -> str:
        mode = mode or ("tree" if self.drafter else "ar")
        if mode not in MODES:
            raise UsageError("--mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
        if mode != "ar" and not self.drafter:
            raise UsageError("--mode", f"{mode} needs a draft model (--draft/-md)")
        return mode


class _Run:
    """One generation: the loop state that lives for a single generate() call."""

    def __init__(self, engine: Engine, drafter, mode, params, caps, rng, max_tokens, max_time,
                 on_text, on_step, should_stop, record_steps):
        self.e = engine
        self.drafter = drafter
        self.mode, self.params, self.caps, self.rng = mode, params, caps, rng
        self.max_tokens, self.max_time = max_tokens, max_time
        self.on_text, self.on_step = on_text, on_step
        self.should_stop = should_stop or (lambda: False)
        self.record_steps = record_steps
        self.stream = TextStream()
        self.generated: list[int] = []
        self.steps: list[dict] = []
        self.stats = RunStats(mode=mode, temperature=params.temperature)

    def execute(self, prompt_tokens: list[int], seed: int) -> GenerationResult:
        e = self.e
        start = time.perf_counter()
        e.target.reset()
        e.policy.reset()
        if self.drafter:
            self.drafter.reset()
        e.target.prefill(prompt_tokens)
        self.stats.prompt_s = time.perf_counter() - start
        tokens = list(prompt_tokens)
        stop = ""
        while not stop:
            stop = self._stop_before_round(start, len(tokens))
            if stop:
                break
            round_start = time.perf_counter()
            proposal = self._propose(tokens)
            verdict, verify_s = self._verify(proposal)
            new_tokens = [int(proposal.tree.token[i]) for i in verdict.accepted] + [verdict.bonus_token]
            stop = self._emit(new_tokens)
            tokens += new_tokens
            self.stats.add_round(proposal, verdict, verify_s)
            if self.record_steps or self.on_step:
                self._record(proposal, verdict, verify_s, time.perf_counter() - round_start)
        tail = self.stream.flush()
        if tail and self.on_text:
            self.on_text(tail)
        self.stats.finish(len(prompt_tokens), len(self.generated), time.perf_counter() - start,
                          seed, stop, e.model_state)
        return GenerationResult(self.stream.text, self.generated, self.stats.as_dict(), self.steps, stop)

    def _stop_before_round(self, start: float, n_tokens: int) -> str:
        if self.should_stop():
            return "interrupted"
        if self.max_time is not None and time.perf_counter() - start >= self.max_time:
            return "max_time"
        if n_tokens + 1 > self.e.target_ctx.n_ctx:  # the root itself needs a cell
            return "context"
        return ""

    def _shape(self, n_tokens: int) -> TreeShape:
        shape = self.e.policy.shape(self.mode, self.caps)
        cells = self.e.target_ctx.n_ctx - n_tokens  # KV cells left beside the committed tokens
        remaining = self.max_tokens - len(self.generated)  # no point drafting past the end
        total = max(0, min(shape.max_total_nodes, cells - 1))
        ngram_len = 0
        if self.drafter is self.e.hybrid:  # a guess is a branch too: it needs cells and a seq id
            ngram_len = max(0, min(NGRAM_LEN, self.caps.max_depth or NGRAM_LEN, remaining - 1,
                                   cells - 1 - total, self.e.target_ctx.n_seq_max - 1 - total))
        return replace(shape, max_depth=max(0, min(shape.max_depth, remaining - 1, cells - 1)),
                       max_total_nodes=total, ngram_len=ngram_len)

    def _propose(self, tokens: list[int]) -> Proposal:
        shape = self._shape(len(tokens)) if self.mode != "ar" else None
        if shape is None or shape.max_depth == 0 or shape.max_total_nodes == 0:
            return Proposal(TokenTree(0, tokens[-1]), None, 0.0, 0)
        return self.drafter.propose(tokens, shape, self.params, self.rng)

    def _verify(self, proposal: Proposal) -> tuple[Verdict, float]:
        t0 = time.perf_counter()
        tree = proposal.tree
        logits_of = self.e.target.evaluate(tree)
        verdict = verify(tree, logits_of, self.params, self.rng, proposal.draft_probs)
        self.e.target.commit(tree, verdict.last_node)
        if tree.n > 1:
            self.drafter.observe(tree, verdict)
            if proposal.draft_calls:  # the policy learns how the draft model ranks
                self.e.policy.observe(tree, verdict)
        return verdict, time.perf_counter() - t0

    def _emit(self, new_tokens: list[int]) -> str:
        """Stream the round's tokens; returns a stop reason if one fires inside them."""
        model = self.e.target_model
        for token in new_tokens:
            if model.is_eog(token):
                return "eos"
            self.generated.append(token)
            text = self.stream.push(model.token_bytes(token))
            if text and self.on_text:
                self.on_text(text)
            if len(self.generated) >= self.max_tokens:
                return "max_tokens"
        return ""

    def _record(self, proposal: Proposal, verdict: Verdict, verify_s: float, total_s: float) -> None:
        record = step_record(self.stats.rounds, self.mode, self.e.target.n_cached,
                             proposal, verdict, verify_s, total_s, self.e.target_model)
        if self.record_steps:
            self.steps.append(record)
        if self.on_step:
            self.on_step(record)


def step_record(step: int, mode: str, n_cached_after: int, proposal: Proposal, verdict: Verdict,
                verify_s: float, total_s: float, model: llama.Model) -> dict:
    """The round as plain data: the one record the trace, the pictures and result.steps share."""
    tree = proposal.tree
    n = tree.n
    status = np.full(n, REJECTED, np.int8)
    status[0] = tree.status[0]
    status[verdict.accepted] = ACCEPTED
    texts = [visible(model.token_bytes(int(t), special=True)) for t in tree.token[:n]]
    draft_prob = np.exp(tree.logprob[:n])
    target_prob = [None if np.isnan(p) else float(p) for p in verdict.target_prob]
    root_position = n_cached_after - 1 - len(verdict.accepted)
    best = tree.path(tree.best_leaf()) if n > 1 else []
    accepted_bytes = b"".join(model.token_bytes(int(tree.token[i])) for i in verdict.accepted)
    bonus_bytes = model.token_bytes(verdict.bonus_token)
    return {
        "type": "step", "step": step, "mode": mode, "position": root_position,
        "nodes": {
            "token": [int(t) for t in tree.token[:n]] + [verdict.bonus_token],
            "text": texts + [visible(model.token_bytes(verdict.bonus_token, special=True))],
            "parent": [int(p) for p in tree.parent[:n]] + [verdict.last_node],
            "depth": [int(d) for d in tree.depth[:n]] + [int(tree.depth[verdict.last_node]) + 1],
            "rank": [int(r) for r in tree.rank[:n]] + [0],
            "draft_prob": [1.0] + [None if tree.source[i] == NGRAM else float(draft_prob[i])
                                    for i in range(1, n)] + [None],
            "source": [SOURCE_NAMES[s] for s in tree.source[:n]] + ["target"],
            "draft_logprob": [float(x) for x in tree.logprob[:n]] + [None],
            "cum_logprob": [float(x) for x in tree.cum_logprob[:n]] + [None],
            "target_prob": target_prob + [None],
            "status": [STATUS_NAMES[s] for s in status] + ["bonus"],
        },
        "accepted": list(verdict.accepted),
        "bonus": n,
        "best_path": best,
        "emitted_text": visible(accepted_bytes + bonus_bytes),
        "timings": {"draft_s": proposal.draft_s, "verify_s": verify_s, "total_s": total_s},
    }
