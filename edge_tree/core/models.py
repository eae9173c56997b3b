"""What an Engine holds: the models as loaded, their contexts, the drafters and the policy.

Loading checks the files before llama.cpp sees them, the two vocabularies against each other, and
derives a reduced-vocabulary copy of the draft where that pays; everything opened is closed in
reverse order, also when loading fails halfway.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ..files import cache_dir
from ..llamacpp import draft_vocab as draft_vocabs
from ..llamacpp import llama
from ..llamacpp.facts import threads_for
from ..llamacpp.share import Share
from ..llamacpp.demo import ensure_demo
from ..llamacpp.logs import LogView
from ..llamacpp.modelfile import check_gguf
from ..llamacpp.vocab import check_vocab
from ..errors import EdgeTreeError, UsageError
from .calibrate import DRAFT_SIZES, TARGET_SIZES, cached_costs, cached_model_costs, host_cost_per_node
from .lanes import Lane
from .model_drafter import DraftModelDrafter
from .options import LoadOptions
from .costs import CostModel
from .policy import AdaptivePolicy, FixedPolicy, Policy, Taught, smaller_vocabulary_pays
from .target import TargetRunner

# Every leaf of a tree is a sequence of llama.cpp's KV cache, and a context keeps a row of logits
# (n_vocab floats) for each of its sequences from its creation on, written through once: 256
# sequences hold 268 MB on Gemma's 262k vocabulary, in the target and again in the draft
# (docs/benchmarks.md, "Memory, byte for byte"); on a CPU the rows no pass wrote are given back
# (llamacpp/outputs.py), with a GPU they stay (pinned host memory). On a CPU a pass over 64
# tokens costs 7 to 17 one-token passes, so a larger tree would rarely pay: a context there
# offers 64 sequences; with layers on a GPU or RPC hosts, whose cost curves are flat, all 256.
CPU_SEQUENCES = 64
LANE_SEQUENCES = 8  # at least, for each of several lanes: a tree of 7 nodes, a draft of 3 levels


def sequences_for(model: llama.Model, lanes: int = 1) -> int:
    """How many sequences a context of a pair led by this target offers, for all its lanes."""
    most = llama.max_parallel_sequences()
    wanted = most if model.offloaded_layers else min(CPU_SEQUENCES, most)
    return min(max(wanted, LANE_SEQUENCES * lanes), most)


class LoadedModels:
    """lanes: generations that may run side by side (core/lanes.py); each has an equal share
    of the context's cells and sequences."""

    def __init__(self, options: LoadOptions, progress: bool = False, lanes: int = 1):
        self._closers: list[Callable[[], None]] = []
        self._keep(LogView(options.verbose))
        try:
            self._load(options, progress, lanes)
        except BaseException:
            self.close()
            raise

    def _load(self, options: LoadOptions, progress: bool, lanes: int) -> None:
        target, draft = options.target, options.draft
        llama.connect_rpc(dict.fromkeys(options.rpc_hosts + options.rpc_draft_hosts))  # fail fast
        if target is None:  # the demo pair, built on first use
            pair = ensure_demo(progress=progress)
            target, draft = str(pair.target), str(draft or pair.draft)
        self.target_path = str(check_gguf(target, "target"))
        self.draft_path = str(check_gguf(draft, "draft")) if draft else None
        threads, n_ctx = options.threads, options.ctx_size
        self.target_model = self._keep(llama.Model(self.target_path, options.n_gpu_layers,
                                                       options.rpc_hosts))
        if n_ctx // lanes < 16:
            raise UsageError("--ctx-size", f"{n_ctx} tokens leave under 16 for each of {lanes} slots")
        n_seq = sequences_for(self.target_model, lanes)
        # the full draft is weighed (and closed, where its copy drafts) before the target's
        # context exists: the two are never held at once (pair B: 357 MiB and 136 MiB)
        chosen = self._weigh_full_draft(options, progress) if self.draft_path else None
        # a pass asks for a row of logits per tree node, and a lane's tree has a node per sequence
        # at most: the compute buffer is sized for that many rows, not for n_batch (Gemma: 67
        # MiB, not 514, reserved; on a GPU, device memory). The draft's stays at n_batch: while
        # it returns hidden states every token it is fed is an output.
        self.target_ctx = self._keep(llama.Context(self.target_model, n_ctx, n_seq, threads=threads,
                                                   n_outputs=n_seq))
        self.draft_model = self.reduced = None
        if chosen:
            self._load_draft(chosen, options)
        self.draft_ctx = None
        reduced = self.reduced
        if self.draft_model:
            self.draft_kv_types = (options.cache_type_k_draft, options.cache_type_v_draft)
            self.draft_ctx = self._keep(llama.Context(self.draft_model, n_ctx, n_seq, threads=threads,
                                                      embed=reduced and reduced.embed,
                                                      kv_types=self.draft_kv_types))
        self.lanes = [self._keep(self._lane(k, lanes, options, policy))
                      for k, policy in enumerate(self._policies(options.policy, lanes))]
        # the draft decodes during the target's passes
        self.works_ahead = lanes == 1 and self._can_work_ahead(options)

    def _policies(self, policy: str, lanes: int) -> list[Policy]:
        """A policy per lane; adaptive ones learn together (one target, one draft: Taught)."""
        costs = self._costs(policy)
        if costs is None:
            return [FixedPolicy() for _ in range(lanes)]
        taught = Taught(replace(costs))
        return [AdaptivePolicy(costs, taught) for _ in range(lanes)]

    def _lane(self, k: int, lanes: int, options: LoadOptions, policy: Policy) -> Lane:
        """The k-th of `lanes` equal shares of both contexts, with its drafters and policy."""
        count = self.target_ctx.n_seq_max // lanes
        cells = self.target_ctx.n_ctx // lanes
        target = TargetRunner(Share(self.target_ctx, k * count, count, cells))
        drafter = None
        if self.draft_ctx:
            reduced = self.reduced
            drafter = DraftModelDrafter(Share(self.draft_ctx, k * count, count, cells),
                                        options.draft_children, reduced and reduced.ids,
                                        reduced and reduced.full_vocab, reduced and reduced.output)
        return Lane(target, drafter, policy)

    # the lone lane's parts, for one generation at a time
    @property
    def target(self) -> TargetRunner:
        return self.lanes[0].target

    @property
    def model_drafter(self) -> DraftModelDrafter | None:
        return self.lanes[0].model_drafter

    @property
    def policy(self) -> Policy:
        return self.lanes[0].policy

    def _can_work_ahead(self, options: LoadOptions) -> bool:
        """Whether the draft may work while the target's pass runs: only where they share no
        device, the target whole on RPC hosts and the draft not on them. On shared cores or one
        GPU the two would only slow each other."""
        target = self.target_model
        return bool(self.model_drafter and options.rpc_hosts and target.offloaded_layers > target.n_layer
                    and not set(options.rpc_hosts) & set(options.rpc_draft_hosts))

    def _weigh_full_draft(self, options: LoadOptions, progress: bool) -> "_FullDraftWeighed":
        """The draft as given, checked against the target, with the reduced-vocabulary copy
        (llamacpp.draft_vocab) derived where asked or, under auto, where it may pay, and the
        full draft's call costs where auto must weigh the two. The full draft stays open (kept)
        only where no copy is to be tried: it is closed before the copy loads, and before the
        target's context is made."""
        full = self._open_full_draft(options)
        try:
            check_vocab(self.target_model, full)
            copy = draft_vocabs.derive(full, options.draft_vocab, cache_dir(), options.threads, progress)
            source = draft_vocabs.FullDraft.of(full)
            weigh = copy is not None and options.draft_vocab == "auto"  # does the copy pay?
            full_points = self._draft_points(full, options.threads) if weigh else None
        except BaseException:
            full.close()
            raise
        if copy:
            full.close()
            return _FullDraftWeighed(None, copy, source, full_points)
        return _FullDraftWeighed(self._keep(full), None, source, None)

    def _load_draft(self, chosen: "_FullDraftWeighed", options: LoadOptions) -> None:
        """The full draft kept, or the copy where it loads and (auto) pays, else the full draft
        opened again."""
        full = chosen.full
        if chosen.copy:
            self.reduced = self._open_copy(chosen, options)
            full = None if self.reduced else self._keep(self._open_full_draft(options))
        self.draft_model = self._keep(self.reduced.model) if self.reduced else full

    def _open_full_draft(self, options: LoadOptions) -> llama.Model:
        return llama.Model(self.draft_path, options.draft_n_gpu_layers, options.rpc_draft_hosts)

    def _open_copy(self, chosen: "_FullDraftWeighed", options: LoadOptions):
        """The reduced copy, or None where under auto it does not load, or its measured cost
        saving does not outweigh the proposals it can no longer make: the expected tokens per
        second of the best tree with each draft, the full draft at the policy's prior acceptance
        and the copy at that times its coverage."""
        auto = options.draft_vocab == "auto"
        try:
            reduced = draft_vocabs.open_copy(chosen.copy, chosen.source, options.threads,
                                             options.draft_n_gpu_layers)
        except EdgeTreeError:
            if auto:
                return None
            raise
        try:
            if not auto:
                return reduced
            target = cached_costs(self.target_ctx, TARGET_SIZES)
            full_cost = CostModel(target, chosen.full_points, host_cost_per_node(chosen.source.n_vocab))
            reduced_cost = CostModel(target, self._draft_points(reduced.model, options.threads, reduced.embed),
                                     host_cost_per_node(reduced.model.n_vocab))
            if smaller_vocabulary_pays(full_cost, reduced_cost, reduced.coverage):
                return reduced
        except BaseException:
            reduced.model.close()
            raise
        reduced.model.close()
        return None

    def _draft_points(self, draft: llama.Model, threads: int | None, embed=None) -> dict[int, float]:
        """A draft's call costs, measured in a small context opened only where nothing is cached."""
        threads_used = threads_for(threads)  # what llama.Context makes of `threads`
        return cached_model_costs(draft, threads_used, DRAFT_SIZES,
                                  lambda: llama.Context(draft, 64, threads=threads, embed=embed))

    def _costs(self, policy: str) -> CostModel | None:
        """The adaptive policy's price list; None for a fixed plan (without a draft, every mode
        has one)."""
        if policy == "fixed" or not self.draft_ctx:
            return None
        return CostModel(cached_costs(self.target_ctx, TARGET_SIZES), cached_costs(self.draft_ctx, DRAFT_SIZES),
                         host_per_node=host_cost_per_node(self.draft_model.n_vocab))

    def decode_clocks(self, since: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float]:
        """Seconds inside llama_decode so far, (target, draft), less `since`."""
        draft = self.draft_ctx.decode_s if self.draft_ctx else 0.0
        return self.target_ctx.decode_s - since[0], draft - since[1]

    @property
    def model_state(self) -> dict:
        """GPU offload of both models (and their RPC hosts), and how many tokens the draft may propose."""
        state = {"gpu_offload_supported": llama.supports_gpu_offload(),
                 "target_gpu_layers": self.target_model.offloaded_layers,
                 "target_layers": self.target_model.n_layer + 1,
                 "target_rpc": list(self.target_model.rpc_hosts)}
        if self.draft_model:
            state.update(draft_vocab=self.draft_model.n_vocab, draft_kv_types=list(self.draft_kv_types),
                         draft_gpu_layers=self.draft_model.offloaded_layers,
                         draft_layers=self.draft_model.n_layer + 1,
                         draft_rpc=list(self.draft_model.rpc_hosts))
        return state

    def _keep(self, obj):
        self._closers.append(obj.close)
        return obj

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()


@dataclass(frozen=True)
class _FullDraftWeighed:
    """What loading learned of the draft as given: the full draft where it drafts (kept open),
    else the copy to try, with what the copy needs of it (closed by then)."""

    full: llama.Model | None
    copy: Path | None
    source: draft_vocabs.FullDraft
    full_points: dict[int, float] | None  # its call costs, where auto weighs the copy against it
