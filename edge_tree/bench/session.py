"""The bench's run: one Engine loaded once, a warm-up, every prompt through every row in a
rotating order; then one summary row per mode or tool configuration.

After one short warm-up generation per mode, every prompt runs every row in turn, greedy; the
order rotates from prompt to prompt, so slow drift (thermal, other load on the machine) hits
every row alike. With ``llama_cpp_dir`` the same prompts also run through llama.cpp's
``llama-completion`` and ``llama-speculative`` (tools.py), in the same rotation.

Speeds are decode speeds: generated tokens / (wall time - prompt time). Our rows also say where
the decode time went: the target's llama_decode calls, the draft's, and host work (the rest).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..core.engine import Engine
from ..core.options import DRAFT_MODES, GenOptions, LoadOptions
from ..errors import EdgeTreeError, UsageError
from ..llamacpp import llama
from ..progress import Progress
from .modes import DEFAULT_MODES, ModeSpec, parse_modes
from .pairs import resolve_pair
from .prompts import normalize_prompts
from .tools import (COMPLETION_ROW, SPEC_CONFIGS, ToolSettings, check_tool_dir, run_completion,
                    run_speculative, same_text, tool_commands)

DEFAULT_MAX_TOKENS = 64
DEFAULT_TOOL_TIMEOUT = 600.0
WARMUP_PROMPT = "The weather today is"
WARMUP_TOKENS = 8
# carried from result.stats into each of our runs: where the decode time went
TIME_KEYS = ("rounds", "target_decode_s", "draft_decode_s", "host_s", "host_ms_per_token",
             "host_ms_per_round", "ready_rounds", "ahead_s")
OFFLOAD_KEYS = ("gpu_offload_supported", "target_gpu_layers", "target_layers", "draft_gpu_layers",
                "draft_layers", "target_rpc", "draft_rpc")


@dataclass(frozen=True)
class Row:
    """One row of the table: one of our modes, or one llama.cpp tool configuration."""

    label: str
    kind: str                         # ours | completion | speculative
    options: GenOptions | None = None  # ours: the run's generation options
    n_draft: int = 0
    n_parallel: int = 1


TOOL_ROWS = [Row(COMPLETION_ROW, "completion"),
             *(Row(name, "speculative", n_draft=k, n_parallel=np_) for name, k, np_ in SPEC_CONFIGS)]


def run_bench(target: str | None = None, draft: str | None = None,
              modes: str | Iterable[str] = DEFAULT_MODES, prompts: Sequence[str | dict] | None = None,
              max_tokens: int = DEFAULT_MAX_TOKENS, *, options: LoadOptions | None = None,
              pair: str | None = None, llama_cpp_dir: str | os.PathLike | None = None,
              progress: bool = True, tool_timeout: float = DEFAULT_TOOL_TIMEOUT,
              **load_options) -> dict:
    """Benchmark our modes (and llama.cpp's tools with llama_cpp_dir) on the prompts; greedy.

    What to load: target/draft and LoadOptions fields as keyword arguments (threads, ctx_size,
    n_gpu_layers, ...), or options=LoadOptions(...), or pair="A" (a demo pair, pairs.py).
    Returns a JSON-ready dict: ``config``, ``prompts``, ``rows`` (one per mode / tool
    configuration; see aggregate) and ``runs`` (one per prompt and row).
    """
    specs = parse_modes(modes)
    rows = [Row(s.label, "ours", s.options.replace(max_tokens=max_tokens)) for s in specs]
    load = _load_options(target, draft, options, load_options, pair)
    prompt_list = normalize_prompts(prompts)
    _check_draft(load, specs)
    bin_dir = None
    if llama_cpp_dir is not None:
        bin_dir = check_tool_dir(llama_cpp_dir)
        if load.draft is None and load.target is not None:
            raise EdgeTreeError("--llama-cpp: llama-speculative needs a draft model (-md)")
        if load.rpc_draft_hosts and set(load.rpc_draft_hosts) != set(load.rpc_hosts):
            raise UsageError("--rpc-draft", "llama.cpp's tools run the draft here or on the target's "
                                            "hosts: with --llama-cpp, give it the hosts of --rpc or leave it out")
        rows += TOOL_ROWS
    if pair is not None:  # last: it may build the demo files
        target, draft = resolve_pair(pair, progress)
        load = load.replace(target=target, draft=draft)

    log = Progress(progress, "[bench]")
    t_start = time.perf_counter()
    # rpc-server serves one client at a time: over RPC, llama.cpp's tools run after our rows,
    # once our engine has let the hosts go
    tools_after = [r for r in rows if r.kind != "ours"] if load.rpc or load.rpc_draft else []
    engine = _load_engine(load, log, progress)
    try:
        tools = bin_dir and ToolSettings(
            bin_dir, engine.target_path, engine.draft_path, max_tokens, load.threads, load.ctx_size,
            load.n_gpu_layers, load.draft_n_gpu_layers, tool_timeout,
            rpc=load.rpc)
        _warm_up(engine, rows, log)
        runs = _run_all(engine, tools, [r for r in rows if r not in tools_after], prompt_list, log)
        state = engine.models.model_state
    finally:
        engine.close()
    if tools_after:
        runs += _run_all(None, tools, tools_after, prompt_list, log)
    config = _config(engine, load, specs, prompt_list, max_tokens, state, pair, tools)
    config["elapsed_s"] = round(time.perf_counter() - t_start, 2)
    return {"config": config, "prompts": prompt_list, "rows": aggregate(rows, runs), "runs": runs}


def _load_options(target, draft, options: LoadOptions | None, load_options: dict,
                  pair: str | None) -> LoadOptions:
    """The one LoadOptions of the run, threads resolved (llama.cpp's tools need a number)."""
    if options is None:
        options = LoadOptions.from_mapping({"target": target, "draft": draft, **load_options})
    if pair is not None and (options.target or options.draft):
        raise UsageError("--pair", "give either --pair or -m/-md, not both")
    return options.replace(threads=options.threads or max(1, os.cpu_count() or 1))


def _check_draft(load: LoadOptions, specs: list[ModeSpec]) -> None:
    """Before anything loads: a target of the user's own and no draft leaves chain and tree out."""
    if load.target is not None and load.draft is None and any(s.mode in DRAFT_MODES for s in specs):
        raise UsageError("--draft", "chain and tree modes need a draft model (-md) with -m")


def _load_engine(load: LoadOptions, log: Progress, progress: bool) -> Engine:
    # whole lines: the engine may report progress of its own (deriving a reduced draft)
    names = Path(load.target).name if load.target else "the demo pair"
    log.line(f"loading {names}" + (f" + draft {Path(load.draft).name}" if load.draft else ""))
    t0 = time.perf_counter()
    engine = Engine(options=load, progress=progress)
    log.line(f"loaded in {time.perf_counter() - t0:.1f} s")
    return engine


def _warm_up(engine: Engine, rows: list[Row], log: Progress) -> None:
    for row in rows:
        if row.kind == "ours":
            log.start(f"warm-up {row.label}")
            engine.generate(WARMUP_PROMPT, row.options.replace(
                max_tokens=min(WARMUP_TOKENS, row.options.max_tokens)))
            log.end("done")


def _run_all(engine: Engine | None, tools: ToolSettings | None, rows: list[Row], prompts: list[dict],
             log: Progress) -> list[dict]:
    """Every prompt through every row, the order shifted by one row per prompt."""
    runs = []
    for pi, p in enumerate(prompts):
        shift = pi % len(rows)
        for row in rows[shift:] + rows[:shift]:
            log.start(f"prompt {pi + 1}/{len(prompts)} ({p['name']}) {row.label}")
            run = {"prompt_index": pi, "prompt_name": p["name"], "row": row.label, "kind": row.kind,
                   **_run_row(engine, tools, row, p["prompt"])}
            runs.append(run)
            log.end(_run_note(run))
    return runs


def _run_note(run: dict) -> str:
    if run.get("error"):
        return f"error: {run['error']}"
    tps = run.get("tokens_per_s")
    return f"{run['tokens']} tokens, {tps:.2f} tok/s" if tps else f"{run['tokens']} tokens"


def _run_row(engine: Engine | None, tools: ToolSettings | None, row: Row, prompt: str) -> dict:
    if row.kind == "ours":
        return _run_ours(engine, row.options, prompt)
    if row.kind == "completion":
        parsed, text, error = run_completion(tools, prompt)
    else:
        parsed, text, error = run_speculative(tools, prompt, row.n_draft, row.n_parallel)
    if error:
        return {"tokens": 0, "decode_s": 0.0, "tokens_per_s": None, "error": error}
    return {"tokens": parsed["tokens"], "decode_s": parsed["seconds"],
            "tokens_per_s": parsed["tokens_per_s"], "acceptance_rate": parsed.get("acceptance_rate"),
            "n_drafted": parsed.get("n_drafted"), "n_accept": parsed.get("n_accept"), "text": text}


def _run_ours(engine: Engine, options: GenOptions, prompt: str) -> dict:
    result = engine.generate(prompt, options)
    st = result.stats
    decode_s = max(st["wall_s"] - st["prompt_s"], 1e-9)
    return {"tokens": st["tokens"], "decode_s": decode_s, "tokens_per_s": st["tokens"] / decode_s,
            "prompt_s": st["prompt_s"], "target_passes": st["target_passes"],
            "drafted": st["drafted"], "accepted": st["accepted"],
            "acceptance_by_depth": st["acceptance_by_depth"], "draft_s": st["draft_s"],
            "verify_s": st["verify_s"], **{k: st[k] for k in TIME_KEYS},
            "stop_reason": result.stop_reason, "token_ids": list(result.tokens), "text": result.text}


def _config(engine: Engine, load: LoadOptions, specs: list[ModeSpec], prompts: list[dict],
            max_tokens: int, state: dict, pair: str | None, tools: ToolSettings | None) -> dict:
    config = {
        "target": engine.target_path, "draft": engine.draft_path,
        "pair": pair.strip().upper() if pair else None,
        "modes": [s.label for s in specs], "max_tokens": max_tokens, "threads": load.threads,
        "ctx_size": load.ctx_size, "n_prompts": len(prompts), "temperature": 0.0,
        "n_gpu_layers": load.n_gpu_layers, "draft_n_gpu_layers": load.draft_n_gpu_layers,
        "offload": {k: state[k] for k in OFFLOAD_KEYS if k in state},
        "draft_vocab": state.get("draft_vocab"), "draft_kv_types": state.get("draft_kv_types"),
        # edge-tree's: False on AMX CPUs (llamacpp/llama.py); llama.cpp's tools at their defaults
        "weight_repacking": llama.USE_EXTRA_BUFFER_TYPES,
        "llama_cpp_dir": str(tools.bin_dir) if tools else None,
        "order": "every prompt runs every row in turn; the order rotates by one per prompt"
                 + ("; llama.cpp's rows after ours (rpc-server serves one client at a time)"
                    if load.rpc or load.rpc_draft else ""),
        "rpc": load.rpc, "rpc_draft": load.rpc_draft,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version()},
        "versions": _versions(),
    }
    if tools:
        config["llama_cpp_commands"] = tool_commands(tools)
        config["llama_cpp_env"] = {"LD_LIBRARY_PATH": str(tools.bin_dir)}
    return config


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("edge-tree", "llama-cpp-python"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


# -- aggregation ---------------------------------------------------------------------------------

# every row has these; None where they do not apply (ours only, llama.cpp's only, or no data)
ROW_FIELDS = ("mean_accepted_per_pass", "target_passes_per_token", "draft_share", "verify_share",
              "acceptance_rate", "host_ms_per_token", "host_ms_per_round", "target_decode_share",
              "draft_decode_share", "host_share", "same_as_ar", "same_as_ar_basis", "error")


def aggregate(rows: list[Row], runs: list[dict]) -> list[dict]:
    """One summary per row: tokens, decode_s, tokens_per_s, speedup_vs_ar, speedup_vs_completion,
    the ROW_FIELDS; ours add mode, max_depth, stopped_early; llama-speculative's n_draft,
    n_parallel."""
    ar_label = next(r.label for r in rows if r.kind == "ours" and r.options.mode == "ar")
    ar_runs = {r["prompt_index"]: r for r in runs if r["row"] == ar_label}
    out = [_summary(row, [r for r in runs if r["row"] == row.label], ar_runs) for row in rows]
    ar_tps = next(r["tokens_per_s"] for r in out if r["name"] == ar_label)
    completion_tps = next((r["tokens_per_s"] for r in out if r["name"] == COMPLETION_ROW), None)
    for summary in out:
        summary["speedup_vs_ar"] = _ratio(summary["tokens_per_s"], ar_tps, 6)
        summary["speedup_vs_completion"] = _ratio(summary["tokens_per_s"], completion_tps, 6)
    for summary in out:
        summary["tokens_per_s"] = _round(summary["tokens_per_s"], 4)
    return out


def _summary(row: Row, runs: list[dict], ar_runs: dict[int, dict]) -> dict:
    ok = [r for r in runs if not r.get("error")]
    tokens = sum(r["tokens"] for r in ok)
    decode_s = sum(r["decode_s"] for r in ok)
    summary = {"name": row.label, "kind": "ours" if row.kind == "ours" else "llama.cpp",
               "runs": len(runs), "failed": len(runs) - len(ok), "tokens": tokens,
               "decode_s": round(decode_s, 4),
               "tokens_per_s": tokens / decode_s if ok and decode_s > 0 else None,
               **dict.fromkeys(ROW_FIELDS)}
    if row.kind == "ours":
        summary.update(_ours(row, ok, tokens, ar_runs))
    else:
        summary.update(_theirs(row, runs, ok, ar_runs))
    return summary


def _ours(row: Row, ok: list[dict], tokens: int, ar_runs: dict[int, dict]) -> dict:
    passes = sum(r["target_passes"] for r in ok)
    accepted = sum(r["accepted"] for r in ok)
    draft_s, verify_s = sum(r["draft_s"] for r in ok), sum(r["verify_s"] for r in ok)
    same = sum(1 for r in ok if r["prompt_index"] in ar_runs
               and r["token_ids"] == ar_runs[r["prompt_index"]]["token_ids"])
    return {"mode": row.options.mode, "max_depth": row.options.max_depth,
            "mean_accepted_per_pass": _ratio(accepted, passes, 4),
            "target_passes_per_token": _ratio(passes, tokens, 4),
            "draft_share": _ratio(draft_s, draft_s + verify_s, 4),
            "verify_share": _ratio(verify_s, draft_s + verify_s, 4),
            "acceptance_rate": _ratio(accepted, sum(r["drafted"] for r in ok), 4),
            **time_breakdown(ok, tokens),
            "same_as_ar": f"{same}/{len(ok)}", "same_as_ar_basis": "tokens",
            "stopped_early": sum(1 for r in ok if r["stop_reason"] != "max_tokens")}


def time_breakdown(runs: list[dict], tokens: int) -> dict:
    """Host time per token and per round, and each part's share of the decode time (target
    decode + draft decode + host), pooled over the runs."""
    target, draft, host = (sum(r[k] for r in runs) for k in ("target_decode_s", "draft_decode_s", "host_s"))
    draft -= sum(r.get("ahead_s", 0.0) for r in runs)  # its work beside the target's passes
    decode = target + draft + host
    return {"host_ms_per_token": _ratio(1000 * host, tokens, 4),
            "host_ms_per_round": _ratio(1000 * host, sum(r["rounds"] for r in runs), 4),
            "target_decode_share": _ratio(target, decode, 4),
            "draft_decode_share": _ratio(draft, decode, 4),
            "host_share": _ratio(host, decode, 4)}


def _theirs(row: Row, runs: list[dict], ok: list[dict], ar_runs: dict[int, dict]) -> dict:
    out: dict = {}
    if row.kind == "speculative":
        out.update(n_draft=row.n_draft, n_parallel=row.n_parallel,
                   acceptance_rate=_weighted_acceptance(ok))
    verdicts = [same_text(ar_runs[r["prompt_index"]]["text"], r.get("text")) for r in ok
                if r["prompt_index"] in ar_runs]
    compared = [v for v in verdicts if v is not None]
    if compared:
        out.update(same_as_ar=f"{sum(compared)}/{len(compared)}", same_as_ar_basis="text")
    errors = [r["error"] for r in runs if r.get("error")]
    if errors:
        out["error"] = errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
    return out


def _weighted_acceptance(runs: list[dict]) -> float | None:
    """llama-speculative's acceptance over runs, weighted by tokens drafted where it says them."""
    rates = [(r["acceptance_rate"], r.get("n_drafted") or 0) for r in runs
             if r.get("acceptance_rate") is not None]
    if not rates:
        return None
    weight = sum(d for _, d in rates)
    if weight:
        return round(sum(a * d for a, d in rates) / weight, 4)
    return round(sum(a for a, _ in rates) / len(rates), 4)


def _ratio(a, b, digits: int) -> float | None:
    """a / b rounded; None where either is missing or b is 0."""
    return None if a is None or not b else round(a / b, digits)


def _round(value, digits):
    return None if value is None else round(value, digits)
