"""Counters of one generation, and the summary users see (--stats, --stats-json, result.stats)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    # per depth d (index d-1): rounds whose walk reached a node with children at depth d, and
    # how many of those accepted a depth-d node: acceptance given the parent was accepted
    offered_by_depth: list[int] = field(default_factory=list)
    accepted_by_depth: list[int] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def add_round(self, proposal, verdict, verify_s: float) -> None:
        tree = proposal.tree
        self.rounds += 1
        self.draft_calls += proposal.draft_calls
        self.drafted += tree.n_drafted
        self.accepted += len(verdict.accepted)
        self.draft_s += proposal.draft_s
        self.verify_s += verify_s
        if tree.n_drafted == 0:
            return
        deepest = tree.max_depth
        self._grow(deepest)
        reached = len(verdict.accepted)  # the walk tried depth reached+1 and stopped there
        for d in range(1, min(reached + 1, deepest) + 1):
            self.offered_by_depth[d - 1] += 1
            self.accepted_by_depth[d - 1] += d <= reached

    def _grow(self, depth: int) -> None:
        while len(self.offered_by_depth) < depth:
            self.offered_by_depth.append(0)
            self.accepted_by_depth.append(0)

    @property
    def acceptance_by_depth(self) -> list[float]:
        """Up to the deepest depth the walk ever tried (deeper drafted nodes were never reached)."""
        tried = [o for o in self.offered_by_depth if o]
        return [a / o for a, o in zip(self.accepted_by_depth, self.offered_by_depth[:len(tried)])]

    def finish(self, prompt_tokens: int, tokens: int, wall_s: float, seed: int, stop: str,
               model_state: dict) -> None:
        decode_s = max(wall_s - self.prompt_s, 1e-9)
        busy = max(self.draft_s + self.verify_s, 1e-9)
        self.summary = {
            "tokens": tokens,
            "prompt_tokens": prompt_tokens,
            "wall_s": round(wall_s, 4),
            "prompt_s": round(self.prompt_s, 4),
            "tokens_per_s": round(tokens / decode_s, 3),
            "mode": self.mode,
            "temperature": self.temperature,
            "seed": seed,
            "stop_reason": stop,
            "rounds": self.rounds,
            "target_passes": self.rounds,
            "target_passes_per_token": round(self.rounds / tokens, 4) if tokens else None,
            "draft_calls": self.draft_calls,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": round(self.accepted / self.drafted, 4) if self.drafted else None,
            "mean_accepted_per_pass": round(self.accepted / max(self.rounds, 1), 4),
            "acceptance_by_depth": [round(x, 4) for x in self.acceptance_by_depth],
            "draft_s": round(self.draft_s, 4),
            "verify_s": round(self.verify_s, 4),
            "draft_share": round(self.draft_s / busy, 4),
            "verify_share": round(self.verify_s / busy, 4),
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
        lines.append(f"{stats['rounds']} rounds, {stats['target_passes']} target passes "
                     f"({stats['target_passes_per_token']:.3f} per token); drafted {stats['drafted']}, "
                     f"accepted {stats['accepted']} ({stats['acceptance_rate']:.1%}), "
                     f"{stats['mean_accepted_per_pass']:.2f} accepted per pass")
        lines.append(f"acceptance by depth: {by_depth}; time: draft {stats['draft_share']:.0%}, "
                     f"verify {stats['verify_share']:.0%}; the draft proposes from "
                     f"{stats['draft_vocab']} tokens")
    offload = f"GPU offload: target {stats['target_gpu_layers']}/{stats['target_layers']} layers"
    if "draft_layers" in stats:
        offload += f", draft {stats['draft_gpu_layers']}/{stats['draft_layers']} layers"
    if not stats["gpu_offload_supported"]:
        offload += " (this llama.cpp build has no GPU support)"
    lines.append(offload)
    return "\n".join(lines)
