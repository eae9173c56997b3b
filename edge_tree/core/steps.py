"""A round's outcome as a step record (records.py): what the trace, the pictures and
result.steps show. Built only when someone reads it: it costs host time."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import numpy as np

from ..llamacpp.llama import Model
from ..records import StepNodes, StepRecord
from .chat import Prompt, prompt_text
from .detokenize import piece_text
from .options import GenOptions
from .plan import RoundOutcome
from .tree import ACCEPTED, NGRAM, REJECTED, SOURCE_NAMES, STATUS_NAMES


def step_record(step: int, mode: str, root_position: int, outcome: RoundOutcome, model: Model) -> StepRecord:
    tree, verdict = outcome.tree, outcome.verdict
    n = tree.n
    status = np.full(n, REJECTED, np.int8)
    status[0] = tree.status[0]
    status[verdict.accepted] = ACCEPTED
    draft_prob = np.exp(tree.logprob[:n])
    nodes = StepNodes(
        token=[int(t) for t in tree.token[:n]] + [verdict.bonus_token],
        text=[piece_text(model.token_bytes(int(t), special=True)) for t in tree.token[:n]]
        + [piece_text(model.token_bytes(verdict.bonus_token, special=True))],
        parent=[int(p) for p in tree.parent[:n]] + [verdict.last_node],
        depth=[int(d) for d in tree.depth[:n]] + [int(tree.depth[verdict.last_node]) + 1],
        rank=[int(r) for r in tree.rank[:n]] + [0],
        status=[STATUS_NAMES[s] for s in status] + ["bonus"],
        source=[SOURCE_NAMES[s] for s in tree.source[:n]] + ["target"],
        draft_prob=[1.0] + [None if tree.source[i] == NGRAM else float(draft_prob[i]) for i in range(1, n)] + [None],
        draft_logprob=[float(x) for x in tree.logprob[:n]] + [None],
        cum_logprob=[float(x) for x in tree.cum_logprob[:n]] + [None],
        target_prob=[None if np.isnan(p) else float(p) for p in verdict.target_prob] + [None])
    accepted_bytes = b"".join(model.token_bytes(int(tree.token[i])) for i in verdict.accepted)
    return StepRecord(
        step=step, mode=mode, position=root_position, nodes=nodes, accepted=list(verdict.accepted),
        bonus=n, best_path=tree.path(tree.best_leaf()) if n > 1 else [],
        emitted_text=piece_text(accepted_bytes + model.token_bytes(verdict.bonus_token)),
        timings={"draft_s": outcome.draft_s, "verify_s": outcome.verify_s, "total_s": outcome.round_s})


def trace_header(engine, options: GenOptions, mode: str, prompt: Prompt, n_tokens: int) -> dict:
    """A trace's first record: the models, the settings, the mode decided and the prompt, as the
    engine read it (Engine.read_prompt, for every face)."""
    return {"target": engine.target_path, "draft": engine.draft_path, "mode": mode,
            "settings": dataclasses.asdict(options), "prompt": prompt_text(prompt),
            "prompt_tokens": n_tokens, "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
