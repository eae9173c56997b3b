"""Counters of one generation, and the summary users see (--stats, --stats-json, result.stats)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..records import acceptance_by_depth
from .plan import RoundOutcome


@dataclass
class RunStats:
    mode: str
    temperature: float
    rounds: int = 0  # one target pass each
    draft_calls: int = 0
    drafted: int = 0
    accepted: int = 0
    draft_s: float = 0.0
    verify_s: float = 0.0
    prompt_s: float = 0.0
    prompt_cached: int = 0  # prompt tokens whose cells the cache held (not prefilled)
    model_rounds: int = 0  # rounds the draft model drafted
    ready_rounds: int = 0  # ... starting from rows it decoded during the last target pass
    ahead_s: float = 0.0  # the draft's decodes during target passes
    by_round: list[tuple[int, int]] = field(default_factory=list)  # (accepted, deepest drafted)
    summary: dict = field(default_factory=dict)

    def add_round(self, outcome: RoundOutcome) -> None:
        tree = outcome.tree
        self.rounds += 1
        self.draft_calls += outcome.draft_calls
        self.model_rounds += outcome.model_drafted
        self.ready_rounds += outcome.ready_rows > 0
        self.ahead_s += outcome.ahead_s
        self.drafted += tree.n_drafted
        self.accepted += len(outcome.verdict.accepted)
        self.draft_s += outcome.draft_s
        self.verify_s += outcome.verify_s
        if tree.n_drafted:
            self.by_round.append((len(outcome.verdict.accepted), tree.max_depth))

    def finish(self, prompt_tokens: int, tokens: int, wall_s: float, seed: int, stop: str,
               model_state: dict, *, decode_s: float, decode_clocks: tuple[float, float]) -> None:
        """decode_s: the generation after the prompt; decode_clocks: seconds inside llama_decode
        over it, (target, draft); what is left of decode_s is host work (Python, numpy, ctypes)."""
        target_s, draft_s = decode_clocks
        host_s = max(decode_s - target_s - (draft_s - self.ahead_s), 0.0)  # ahead: beside the target
        busy = max(self.draft_s + self.verify_s, 1e-9)
        per_token = 1000 / tokens if tokens else 0.0
        self.summary = {
            "tokens": tokens,
            "prompt_tokens": prompt_tokens,
            "wall_s": round(wall_s, 4),
            "prompt_s": round(self.prompt_s, 4),
            "prompt_cached": self.prompt_cached,
            "tokens_per_s": round(tokens / max(decode_s, 1e-9), 3),
            "mode": self.mode,
            "temperature": self.temperature,
            "seed": seed,
            "stop_reason": stop,
            "rounds": self.rounds,
            "target_passes": self.rounds,
            "target_passes_per_token": round(self.rounds / tokens, 4) if tokens else None,
            "model_rounds": self.model_rounds,
            "draft_calls": self.draft_calls,
            "ready_rounds": self.ready_rounds,
            "ahead_s": round(self.ahead_s, 4),
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": round(self.accepted / self.drafted, 4) if self.drafted else None,
            "mean_accepted_per_pass": round(self.accepted / max(self.rounds, 1), 4),
            "acceptance_by_depth": [round(x, 4) for x in acceptance_by_depth(self.by_round)],
            "draft_s": round(self.draft_s, 4),
            "verify_s": round(self.verify_s, 4),
            "draft_share": round(self.draft_s / busy, 4),
            "verify_share": round(self.verify_s / busy, 4),
            # where the decode time went: the target's llama_decode, the draft's, and the rest
            "target_decode_s": round(target_s, 4),
            "draft_decode_s": round(draft_s, 4),
            "host_s": round(host_s, 4),
            "host_ms_per_token": round(host_s * per_token, 4),
            "host_ms_per_round": round(1000 * host_s / self.rounds, 4) if self.rounds else None,
            **model_state,
        }

    def as_dict(self) -> dict:
        return dict(self.summary)


def format_stats(stats: dict) -> str:
    """The human summary for --stats (stderr)."""
    lines = [f"{stats['tokens']} tokens in {stats['wall_s']:.2f} s: {stats['tokens_per_s']:.2f} tok/s "
             f"(mode {stats['mode']}, prompt {stats['prompt_tokens']} tokens in {stats['prompt_s']:.2f} s, "
             f"stop: {stats['stop_reason']})"]
    if stats["drafted"]:
        by_depth = " ".join(f"{x:.2f}" for x in stats["acceptance_by_depth"])
        per_token = stats["target_passes_per_token"]  # None: no token came (the end of text at once)
        lines.append(f"{stats['rounds']} rounds, {stats['target_passes']} target passes"
                     + (f" ({per_token:.3f} per token)" if per_token is not None else "")
                     + f"; drafted {stats['drafted']}, "
                     f"accepted {stats['accepted']} ({stats['acceptance_rate']:.1%}), "
                     f"{stats['mean_accepted_per_pass']:.2f} accepted per pass")
        lines.append(f"acceptance by depth: {by_depth}; time: draft {stats['draft_share']:.0%}, "
                     f"verify {stats['verify_share']:.0%}"
                     + (f"; the draft proposes from {stats['draft_vocab']} tokens" if "draft_vocab" in stats else ""))
    lines.append(f"decode time: target {stats['target_decode_s']:.3f} s, draft {stats['draft_decode_s']:.3f} s, "
                 f"host {stats['host_s']:.3f} s ({stats['host_ms_per_token']:.2f} ms per token)")
    if stats["ahead_s"]:
        lines.append(f"the draft worked {stats['ahead_s']:.3f} s during the target's passes; "
                     f"{stats['ready_rounds']} rounds started from what it decoded then")
    lines.append(format_offload(stats))
    return "\n".join(lines)


def format_offload(state: dict) -> str:
    """'GPU offload: target 19/19 layers, draft 0/19 layers', from the model state in the stats;
    RPC hosts named after the layers they hold."""
    offload = (f"GPU offload: target {state['target_gpu_layers']}/{state['target_layers']} layers"
               + _on_hosts(state.get("target_rpc")))
    if "draft_layers" in state:
        offload += (f", draft {state['draft_gpu_layers']}/{state['draft_layers']} layers"
                    + _on_hosts(state.get("draft_rpc")))
    if not (state["gpu_offload_supported"] or state.get("target_rpc") or state.get("draft_rpc")):
        offload += " (this llama.cpp build has no GPU support)"
    return offload


def _on_hosts(hosts: list[str] | None) -> str:
    return f" on RPC hosts {', '.join(hosts)}" if hosts else ""
