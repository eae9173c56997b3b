"""`edge-tree bench`: our modes against each other and against llama.cpp's own C++ tools.

One Engine (target + draft) is loaded once. After one short warm-up generation per mode, every
prompt runs every mode in turn, greedy; the order rotates from prompt to prompt, so slow drift
(thermal, other load on the machine) hits every mode alike. With ``llama_cpp_dir`` the same
prompts also run through ``llama-completion`` (plain decoding) and ``llama-speculative`` (chains
of 4, 8 and 16 drafted tokens, and 4 branches), in the same rotation.

Speeds are decode speeds: generated tokens / (wall time - prompt time). For llama.cpp's tools
they are what the tools print: llama-completion's ``eval time`` line (one decode call per token
after the first, which comes out of the prompt pass), llama-speculative's ``decoded N tokens in
X seconds`` line (after its prompt pass).

    from edge_tree.bench import run_bench, format_table
    result = run_bench(target, draft, ["ar", "chain:4", "tree"], prompts, max_tokens=64, threads=2)
    print(format_table(result))
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import click

from ..core.options import LoadOptions, click_options
from ..errors import EdgeTreeError, UsageError, user_errors
from ..progress import Progress

DEFAULT_MODES = "ar,chain:4,chain:8,tree"
DEFAULT_MAX_TOKENS = 64
DEFAULT_CTX_SIZE = 4096
DEFAULT_TOOL_TIMEOUT = 600.0
WARMUP_PROMPT = "The weather today is"
WARMUP_TOKENS = 8

# Text to continue (the demo target is a base model, not chat-tuned), chosen so that an end of
# text within 64 tokens is unlikely: our engine has no --ignore-eos, llama.cpp's runs do.
DEFAULT_PROMPTS: list[dict] = [
    {"name": "prose", "prompt":
        "The old lighthouse keeper had not spoken to another person in three weeks. Every morning "
        "he climbed the hundred and twelve steps to the lamp room, wiped the salt from the glass, "
        "and wrote the same two words in his logbook. But on the first Tuesday of November,"},
    {"name": "code", "prompt":
        "def merge_sorted(a: list[int], b: list[int]) -> list[int]:\n"
        "    \"\"\"Merge two sorted lists into a single sorted list in linear time.\"\"\"\n"
        "    result = []\n"
        "    i = j = 0\n"},
    {"name": "list", "prompt":
        "Twelve simple habits for better sleep\n\n"
        "1. Go to bed and get up at the same time every day, even on weekends.\n"
        "2. Keep your bedroom cool, dark and quiet.\n"
        "3."},
    {"name": "extractive_qa", "prompt":
        "Read the passage and answer the questions.\n\n"
        "Passage: The Amazon River flows for about 6,400 kilometres from the Andes mountains of "
        "Peru to the Atlantic Ocean in Brazil. It carries more water than any other river in the "
        "world, roughly a fifth of all the fresh water that rivers pour into the oceans. The river "
        "has no bridges along its main course, partly because most of it runs through rainforest "
        "with few roads, and partly because its banks shift from season to season.\n\n"
        "Question 1: Where does the Amazon River begin?\n"
        "Answer 1: In the Andes mountains of Peru.\n\n"
        "Question 2: Why are there no bridges across the main course of the Amazon?\n"
        "Answer 2:"},
    {"name": "letter", "prompt":
        "Dear Mrs. Patel,\n\n"
        "Thank you for your letter of 3 March about the delayed delivery of your kitchen cabinets. "
        "I am very sorry for the trouble this has caused you and your family. I have looked into "
        "your order myself, and"},
    {"name": "recipe", "prompt":
        "Classic Banana Bread\n\n"
        "Ingredients:\n"
        "- 3 ripe bananas, mashed\n"
        "- 75 g melted butter\n"
        "- 150 g sugar\n"
        "- 1 egg, beaten\n"
        "- 1 teaspoon vanilla extract\n"
        "- 1 teaspoon baking soda\n"
        "- a pinch of salt\n"
        "- 190 g plain flour\n\n"
        "Method:\n"
        "1. Preheat the oven to 175 C and butter a loaf tin.\n"
        "2."},
    {"name": "dialogue", "prompt":
        "The following is a conversation between two coworkers in an office kitchen.\n\n"
        "Maria: Morning! Did you manage to finish the quarterly report last night?\n"
        "Tom: Almost. I still need the sales figures for March from the Berlin office.\n"
        "Maria: I think Jens sent those on Friday. Did you check the shared folder?\n"
        "Tom:"},
    {"name": "explanation", "prompt":
        "How vaccines work\n\n"
        "A vaccine trains the immune system to recognise a germ without causing the disease. It "
        "contains a harmless piece or weakened form of the germ, called an antigen. When the "
        "antigen enters the body,"},
    {"name": "news", "prompt":
        "CITY COUNCIL APPROVES NEW BIKE LANES\n\n"
        "The city council voted 7 to 2 on Tuesday evening to build twenty kilometres of protected "
        "bike lanes over the next three years. The plan, which will cost an estimated"},
    {"name": "howto", "prompt":
        "How to change a flat tyre\n\n"
        "Step 1: Find a safe, flat place to stop, away from traffic, and turn on your hazard lights.\n"
        "Step 2: Apply the parking brake and place wedges behind the wheels.\n"
        "Step 3:"},
]

COMPLETION_ROW = "llama.cpp completion"
# (row name, --spec-draft-n-max, -np)
SPEC_CONFIGS: tuple[tuple[str, int, int], ...] = (
    ("llama.cpp spec chain 4", 4, 1),
    ("llama.cpp spec chain 8", 8, 1),
    ("llama.cpp spec chain 16", 16, 1),
    ("llama.cpp spec 4 branches", 8, 4),
)


# -- modes ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModeSpec:
    label: str               # as the user wrote it: ar, chain:4, tree, tree:6
    mode: str                # ar | chain | tree
    max_depth: int | None = None


def parse_mode(spec: str) -> ModeSpec:
    """``name[:depth]``: ``ar``, ``chain:N`` (N drafted tokens per round), ``tree`` or ``tree:N``."""
    text = spec.strip()
    name, sep, depth_text = text.partition(":")
    name = name.strip().lower()
    if name not in ("ar", "chain", "tree"):
        raise UsageError("--modes", f"unknown mode {text!r}: use ar, chain[:DEPTH] or tree[:DEPTH]")
    if not sep:
        return ModeSpec(name, name)
    if name == "ar":
        raise UsageError("--modes", f"{text!r}: ar takes no depth")
    try:
        depth = int(depth_text)
    except ValueError:
        raise UsageError("--modes", f"{text!r}: the depth after ':' must be a whole number") from None
    if depth < 1:
        raise UsageError("--modes", f"{text!r}: the depth must be at least 1")
    return ModeSpec(f"{name}:{depth}", name, depth)


def parse_modes(modes: str | Iterable[str]) -> list[ModeSpec]:
    """A comma-separated string or a list of specs; `ar` is added first if missing (the baseline)."""
    items = modes.split(",") if isinstance(modes, str) else list(modes)
    specs: list[ModeSpec] = []
    for item in items:
        if not str(item).strip():
            continue
        spec = parse_mode(str(item))
        if spec.label in (s.label for s in specs):
            raise UsageError("--modes", f"{spec.label} is listed twice")
        specs.append(spec)
    if not specs:
        raise UsageError("--modes", "no mode given")
    if not any(s.mode == "ar" for s in specs):
        specs.insert(0, ModeSpec("ar", "ar"))
    return specs


# -- prompts -------------------------------------------------------------------------------------

def load_prompts(path: str | os.PathLike) -> list[dict]:
    """A JSONL file: one JSON object a line with a non-empty string ``prompt`` (optional ``name``).

    Blank lines are skipped. Anything else is an EdgeTreeError naming the file and line.
    """
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EdgeTreeError(f"--prompts: {p}: no such file") from None
    except IsADirectoryError:
        raise EdgeTreeError(f"--prompts: {p} is a folder, not a JSONL file") from None
    except UnicodeDecodeError:
        raise EdgeTreeError(f"--prompts: {p} is not UTF-8 text") from None
    except OSError as e:
        raise EdgeTreeError(f"--prompts: cannot read {p}: {e.strerror or e}") from None
    prompts = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"--prompts: {p}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise EdgeTreeError(f"{where}: not JSON ({e.msg}); each line must be an object like "
                                f'{{"prompt": "..."}}') from None
        if not isinstance(obj, dict):
            raise EdgeTreeError(f'{where}: expected an object like {{"prompt": "..."}}, '
                                f"got {type(obj).__name__}")
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise EdgeTreeError(f'{where}: needs a non-empty string "prompt"')
        name = obj.get("name")
        prompts.append({"name": str(name) if name is not None else f"prompt{len(prompts) + 1}",
                        "prompt": prompt})
    if not prompts:
        raise EdgeTreeError(f"--prompts: {p} holds no prompts")
    return prompts


def _normalize_prompts(prompts: Sequence[str | dict] | None) -> list[dict]:
    if prompts is None:
        return [dict(p) for p in DEFAULT_PROMPTS]
    out = []
    for i, p in enumerate(prompts, 1):
        if isinstance(p, str):
            out.append({"name": f"prompt{i}", "prompt": p})
        elif isinstance(p, dict) and isinstance(p.get("prompt"), str):
            out.append({"name": str(p.get("name") or f"prompt{i}"), "prompt": p["prompt"]})
        else:
            raise EdgeTreeError(f"prompt {i}: expected a string or a dict with a 'prompt' string")
        if not out[-1]["prompt"]:
            raise EdgeTreeError(f"prompt {i} is empty")
    if not out:
        raise EdgeTreeError("no prompts to benchmark")
    return out


# -- llama.cpp's tools: command lines and their output -------------------------------------------

_COMPLETION_EVAL = re.compile(
    r"(?<!prompt )\beval time\s*=\s*([\d.]+)\s*ms\s*/\s*(\d+)\s*(?:runs|tokens)\s*"
    r"\(\s*[\d.]+\s*ms per token,\s*([\d.]+|inf|nan)\s*tokens per second\)")
_SPEC_DECODED = re.compile(
    r"decoded\s+(\d+)\s+tokens in\s+([\d.]+)\s+seconds, speed:\s+([\d.]+|inf|nan)\s+t/s")
_SPEC_ACCEPT = re.compile(r"\baccept\s*=\s*([\d.]+|nan|inf|-nan)%")
_SPEC_COUNT = re.compile(r"\b(n_draft|n_predict|n_drafted|n_accept)\s*=\s*(\d+)")


class ToolOutputError(EdgeTreeError):
    """A llama.cpp tool ran but printed no line we could read."""


def parse_completion_output(text: str) -> dict:
    """llama-completion's timing: its last ``eval time = X ms / N runs (..., Y tokens per second)``
    line (not ``prompt eval time``). Returns tokens (decode calls), seconds, tokens_per_s."""
    matches = _COMPLETION_EVAL.findall(text)
    if not matches:
        raise ToolOutputError("llama-completion printed no 'eval time' line")
    ms, runs, _ = matches[-1]
    seconds = float(ms) / 1000.0
    tokens = int(runs)
    return {"tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds if seconds > 0 else None}


def parse_speculative_output(text: str) -> dict:
    """llama-speculative's summary: ``decoded N tokens in X seconds, speed: Y t/s`` and
    ``accept = Z%`` (accepted / drafted tokens), plus n_draft/n_drafted/n_accept when present."""
    m = _SPEC_DECODED.search(text)
    if not m:
        raise ToolOutputError("llama-speculative printed no 'decoded N tokens in X seconds' line")
    tokens, seconds = int(m.group(1)), float(m.group(2))
    out = {"tokens": tokens, "seconds": seconds,
           "tokens_per_s": tokens / seconds if seconds > 0 else None}
    a = _SPEC_ACCEPT.search(text)
    try:
        out["acceptance_rate"] = float(a.group(1)) / 100.0 if a else None
    except ValueError:
        out["acceptance_rate"] = None
    if out["acceptance_rate"] is not None and out["acceptance_rate"] != out["acceptance_rate"]:
        out["acceptance_rate"] = None  # nan: nothing drafted
    for key, value in _SPEC_COUNT.findall(text):
        out[key] = int(value)
    return out


def completion_command(bin_dir: Path, target: str, prompt: str, max_tokens: int, threads: int,
                       ctx_size: int) -> list[str]:
    """Plain greedy decoding of exactly max_tokens tokens, the prompt not echoed."""
    return [str(bin_dir / "llama-completion"), "-m", target, "-p", prompt,
            "-n", str(max_tokens), "-t", str(threads), "-tb", str(threads), "-c", str(ctx_size),
            "--temp", "0", "-s", "0", "--ignore-eos", "-no-cnv", "--no-display-prompt"]


def speculative_command(bin_dir: Path, target: str, draft: str, prompt: str, max_tokens: int,
                        threads: int, ctx_size: int, n_draft: int, n_parallel: int) -> list[str]:
    """Greedy speculative decoding. llama-speculative stops only once it has produced *more* than
    -n tokens, so it gets max_tokens - 1 (it then decodes max_tokens or a few more)."""
    return [str(bin_dir / "llama-speculative"), "-m", target, "-md", draft, "-p", prompt,
            "-n", str(max(1, max_tokens - 1)), "-t", str(threads), "-tb", str(threads),
            "-td", str(threads), "-tbd", str(threads), "-c", str(ctx_size),
            "--temp", "0", "-s", "0", "--ignore-eos",
            "--spec-draft-n-max", str(n_draft), "-np", str(n_parallel)]


def _tool_env(bin_dir: Path) -> dict:
    env = dict(os.environ)
    old = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = str(bin_dir) + (os.pathsep + old if old else "")
    return env


def run_tool(cmd: list[str], bin_dir: Path, parse, timeout: float) -> tuple[dict | None, str, str]:
    """Run one tool; returns (parsed numbers or None, stdout, error note or '')."""
    name = Path(cmd[0]).name
    if not Path(cmd[0]).is_file():
        return None, "", f"{name} not found in {bin_dir} (build it: scripts/build_llama_cpp.sh)"
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                              env=_tool_env(bin_dir))
    except subprocess.TimeoutExpired:
        return None, "", f"{name} timed out after {timeout:.0f} s"
    except OSError as e:
        return None, "", f"{name} could not start: {e.strerror or e}"
    stdout = proc.stdout.decode("utf-8", "replace")
    stderr = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        last = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()), "")
        return None, stdout, f"{name} exited with {proc.returncode}" + (f": {last[-160:]}" if last else "")
    try:
        return parse(stdout + "\n" + stderr), stdout, ""
    except ToolOutputError as e:
        return None, stdout, str(e)


def _spec_generated_text(stdout: str, prompt: str) -> str | None:
    """llama-speculative echoes the prompt (with <bos>) before the generated text."""
    i = stdout.find(prompt)
    return stdout[i + len(prompt):] if i >= 0 else None


def _same_text(ours: str, theirs: str | None) -> bool | None:
    """Greedy text agreement, allowing one side to run longer (EOS on ours, overshoot on theirs)."""
    if theirs is None:
        return None
    a, b = ours.rstrip(), theirs.rstrip()
    if not a or not b:
        return None
    return a.startswith(b) or b.startswith(a)


# -- the run -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Entry:
    label: str
    kind: str                # ours | completion | speculative
    spec: ModeSpec | None = None
    n_draft: int = 0
    n_parallel: int = 1


def run_bench(target: str, draft: str | None, modes: str | Iterable[str] = DEFAULT_MODES,
              prompts: Sequence[str | dict] | None = None, max_tokens: int = DEFAULT_MAX_TOKENS,
              threads: int | None = None, llama_cpp_dir: str | os.PathLike | None = None,
              progress: bool = True, *, ctx_size: int = DEFAULT_CTX_SIZE,
              tool_timeout: float = DEFAULT_TOOL_TIMEOUT, draft_vocab: int | str = "auto") -> dict:
    """Benchmark our modes (and llama.cpp's tools with llama_cpp_dir) on the prompts; greedy.

    Returns a JSON-ready dict: ``config``, ``prompts``, ``rows`` (one per mode / tool config:
    tokens, decode_s, tokens_per_s, speedup_vs_ar, speedup_vs_completion,
    mean_accepted_per_pass, target_passes_per_token, draft_share, verify_share,
    acceptance_rate, same_as_ar "k/n", error) and ``runs`` (one per prompt and row).
    """
    from ..core.engine import Engine

    specs = parse_modes(modes)
    prompt_list = _normalize_prompts(prompts)
    if max_tokens < 1:
        raise UsageError("--max-tokens", f"must be at least 1, got {max_tokens}")
    if threads is not None and threads < 1:
        raise UsageError("--threads", f"must be at least 1, got {threads}")
    threads = threads or max(1, os.cpu_count() or 1)
    bin_dir = None
    if llama_cpp_dir is not None:
        bin_dir = Path(llama_cpp_dir).expanduser()
        if not bin_dir.is_dir():
            raise EdgeTreeError(f"--llama-cpp: {bin_dir}: no such folder "
                                f"(build llama.cpp's tools there with scripts/build_llama_cpp.sh)")
        if not any((bin_dir / t).is_file() for t in ("llama-completion", "llama-speculative")):
            raise EdgeTreeError(f"--llama-cpp: {bin_dir} holds neither llama-completion nor "
                                f"llama-speculative (build them with scripts/build_llama_cpp.sh)")
        if not draft:
            raise EdgeTreeError("--llama-cpp: llama-speculative needs a draft model (-md)")

    entries = [_Entry(s.label, "ours", spec=s) for s in specs]
    if bin_dir is not None:
        entries.append(_Entry(COMPLETION_ROW, "completion"))
        entries += [_Entry(name, "speculative", n_draft=k, n_parallel=np_)
                    for name, k, np_ in SPEC_CONFIGS]

    log = Progress(progress, "[bench]")
    t_start = time.perf_counter()
    # whole lines: the engine may report progress of its own (deriving a reduced draft)
    log.line(f"loading {Path(target).name}" + (f" + draft {Path(draft).name}" if draft else ""))
    t0 = time.perf_counter()
    engine = Engine(target, draft, threads=threads, ctx_size=ctx_size, draft_vocab=draft_vocab,
                    progress=progress)
    log.line(f"loaded in {time.perf_counter() - t0:.1f} s")
    runs: list[dict] = []
    try:
        for s in specs:
            log.start(f"warm-up {s.label}")
            engine.generate(WARMUP_PROMPT, max_tokens=min(WARMUP_TOKENS, max_tokens), mode=s.mode,
                            max_depth=s.max_depth, temperature=0.0, record_steps=False)
            log.end("done")
        n = len(prompt_list)
        for pi, p in enumerate(prompt_list):
            shift = pi % len(entries)
            order = entries[shift:] + entries[:shift]
            for entry in order:
                log.start(f"prompt {pi + 1}/{n} ({p['name']}) {entry.label}")
                run = _run_entry(engine, entry, p, pi, target, draft, max_tokens, threads,
                                 ctx_size, bin_dir, tool_timeout)
                runs.append(run)
                if run.get("error"):
                    log.end(f"error: {run['error']}")
                else:
                    tps = run.get("tokens_per_s")
                    log.end(f"{run['tokens']} tokens, {tps:.2f} tok/s" if tps else f"{run['tokens']} tokens")
    finally:
        engine.close()

    rows = _aggregate(entries, runs, len(prompt_list))
    config = {
        "target": str(target), "draft": str(draft) if draft else None,
        "modes": [s.label for s in specs], "max_tokens": max_tokens, "threads": threads,
        "ctx_size": ctx_size, "n_prompts": len(prompt_list), "temperature": 0.0,
        "draft_vocab": engine.draft_model.n_vocab if engine.draft_model else None,
        "llama_cpp_dir": str(bin_dir) if bin_dir else None,
        "order": "every prompt runs every row in turn; the order rotates by one per prompt",
        "elapsed_s": round(time.perf_counter() - t_start, 2),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version()},
        "versions": _versions(),
    }
    if bin_dir is not None:
        config["llama_cpp_commands"] = {
            COMPLETION_ROW: completion_command(bin_dir, str(target), "PROMPT", max_tokens, threads, ctx_size),
            **{name: speculative_command(bin_dir, str(target), str(draft), "PROMPT", max_tokens,
                                         threads, ctx_size, k, np_)
               for name, k, np_ in SPEC_CONFIGS},
        }
        config["llama_cpp_env"] = {"LD_LIBRARY_PATH": str(bin_dir)}
    return {"config": config, "prompts": prompt_list, "rows": rows, "runs": runs}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("edge-tree", "llama-cpp-python"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _run_entry(engine, entry: _Entry, p: dict, pi: int, target, draft, max_tokens, threads,
               ctx_size, bin_dir, tool_timeout) -> dict:
    base = {"prompt_index": pi, "prompt_name": p["name"], "row": entry.label, "kind": entry.kind}
    if entry.kind == "ours":
        s = entry.spec
        result = engine.generate(p["prompt"], max_tokens=max_tokens, mode=s.mode,
                                 max_depth=s.max_depth, temperature=0.0, record_steps=False)
        st = result.stats
        decode_s = max(st["wall_s"] - st["prompt_s"], 1e-9)
        return {**base, "tokens": st["tokens"], "decode_s": decode_s,
                "tokens_per_s": st["tokens"] / decode_s, "prompt_s": st["prompt_s"],
                "target_passes": st["target_passes"], "drafted": st["drafted"],
                "accepted": st["accepted"], "draft_s": st["draft_s"], "verify_s": st["verify_s"],
                "stop_reason": result.stop_reason, "token_ids": list(result.tokens),
                "text": result.text}
    if entry.kind == "completion":
        cmd = completion_command(bin_dir, str(target), p["prompt"], max_tokens, threads, ctx_size)
        parsed, stdout, error = run_tool(cmd, bin_dir, parse_completion_output, tool_timeout)
        text = stdout
    else:
        cmd = speculative_command(bin_dir, str(target), str(draft), p["prompt"], max_tokens,
                                  threads, ctx_size, entry.n_draft, entry.n_parallel)
        parsed, stdout, error = run_tool(cmd, bin_dir, parse_speculative_output, tool_timeout)
        text = _spec_generated_text(stdout, p["prompt"])
    if error:
        return {**base, "tokens": 0, "decode_s": 0.0, "tokens_per_s": None, "error": error}
    return {**base, "tokens": parsed["tokens"], "decode_s": parsed["seconds"],
            "tokens_per_s": parsed["tokens_per_s"], "acceptance_rate": parsed.get("acceptance_rate"),
            "n_drafted": parsed.get("n_drafted"), "n_accept": parsed.get("n_accept"),
            "text": text}


def _ratio(a, b):
    return a / b if a and b else None


def _aggregate(entries: list[_Entry], runs: list[dict], n_prompts: int) -> list[dict]:
    by_row = {e.label: [r for r in runs if r["row"] == e.label] for e in entries}
    ar_label = next(e.label for e in entries if e.kind == "ours" and e.spec.mode == "ar")
    ar_runs = {r["prompt_index"]: r for r in by_row[ar_label]}
    rows = []
    for e in entries:
        rs = by_row[e.label]
        ok = [r for r in rs if not r.get("error")]
        tokens = sum(r["tokens"] for r in ok)
        decode_s = sum(r["decode_s"] for r in ok)
        row = {"name": e.label, "kind": "ours" if e.kind == "ours" else "llama.cpp",
               "runs": len(rs), "failed": len(rs) - len(ok), "tokens": tokens,
               "decode_s": round(decode_s, 4),
               "tokens_per_s": tokens / decode_s if ok and decode_s > 0 else None,
               "mean_accepted_per_pass": None, "target_passes_per_token": None,
               "draft_share": None, "verify_share": None, "acceptance_rate": None,
               "same_as_ar": None, "same_as_ar_basis": None, "error": None}
        if e.kind == "ours":
            passes = sum(r["target_passes"] for r in ok)
            drafted = sum(r["drafted"] for r in ok)
            accepted = sum(r["accepted"] for r in ok)
            busy = sum(r["draft_s"] + r["verify_s"] for r in ok)
            row.update(mode=e.spec.mode, max_depth=e.spec.max_depth,
                       mean_accepted_per_pass=round(accepted / passes, 4) if passes else None,
                       target_passes_per_token=round(passes / tokens, 4) if tokens else None,
                       draft_share=round(sum(r["draft_s"] for r in ok) / busy, 4) if busy else None,
                       verify_share=round(sum(r["verify_s"] for r in ok) / busy, 4) if busy else None,
                       acceptance_rate=round(accepted / drafted, 4) if drafted else None)
            same = sum(1 for r in ok if r["prompt_index"] in ar_runs
                       and r["token_ids"] == ar_runs[r["prompt_index"]]["token_ids"])
            row.update(same_as_ar=f"{same}/{len(ok)}", same_as_ar_basis="tokens",
                       stopped_early=sum(1 for r in ok if r["stop_reason"] != "max_tokens"))
        else:
            if e.kind == "speculative":
                cfg = next(c for c in SPEC_CONFIGS if c[0] == e.label)
                row.update(n_draft=cfg[1], n_parallel=cfg[2])
                rates = [(r["acceptance_rate"], r.get("n_drafted")) for r in ok
                         if r.get("acceptance_rate") is not None]
                weight = sum(d or 0 for _, d in rates)
                if rates and weight:
                    row["acceptance_rate"] = round(sum(a * (d or 0) for a, d in rates) / weight, 4)
                elif rates:
                    row["acceptance_rate"] = round(sum(a for a, _ in rates) / len(rates), 4)
            verdicts = [_same_text(ar_runs[r["prompt_index"]]["text"], r.get("text")) for r in ok
                        if r["prompt_index"] in ar_runs]
            compared = [v for v in verdicts if v is not None]
            if compared:
                row.update(same_as_ar=f"{sum(compared)}/{len(compared)}", same_as_ar_basis="text")
            errors = [r["error"] for r in rs if r.get("error")]
            if errors:
                row["error"] = errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
        rows.append(row)
    ar_tps = next(r["tokens_per_s"] for r in rows if r["name"] == ar_label)
    comp = next((r for r in rows if r["name"] == COMPLETION_ROW), None)
    comp_tps = comp["tokens_per_s"] if comp else None
    for row in rows:
        row["speedup_vs_ar"] = _round(_ratio(row["tokens_per_s"], ar_tps), 6)
        row["speedup_vs_completion"] = _round(_ratio(row["tokens_per_s"], comp_tps), 6)
    for row in rows:
        row["tokens_per_s"] = _round(row["tokens_per_s"], 4)
    return rows


def _round(value, digits):
    return None if value is None else round(value, digits)


# -- output --------------------------------------------------------------------------------------

def _fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def format_table(result: dict) -> str:
    """A fixed-width text table of result["rows"], with a header line of the settings."""
    cfg = result["config"]
    has_llama = any(r["kind"] == "llama.cpp" for r in result["rows"])
    cols = [("mode", "<"), ("tokens", ">"), ("tok/s", ">"), ("vs ar", ">")]
    if has_llama:
        cols.append(("vs llama", ">"))
    cols += [("acc/pass", ">"), ("passes/tok", ">"), ("accept", ">"), ("draft", ">"),
             ("verify", ">"), ("same as ar", ">")]
    lines = []
    notes = []
    for r in result["rows"]:
        cells = [r["name"], str(r["tokens"]), _fmt(r["tokens_per_s"], ".2f"),
                 _fmt(r["speedup_vs_ar"], ".2f", "-") + ("x" if r["speedup_vs_ar"] is not None else "")]
        if has_llama:
            v = r["speedup_vs_completion"]
            cells.append(_fmt(v, ".2f") + ("x" if v is not None else ""))
        same = r["same_as_ar"] or "-"
        if r.get("same_as_ar_basis") == "text":
            same += " text"
        cells += [_fmt(r["mean_accepted_per_pass"], ".2f"), _fmt(r["target_passes_per_token"], ".3f"),
                  _fmt(r["acceptance_rate"], ".0%"), _fmt(r["draft_share"], ".0%"),
                  _fmt(r["verify_share"], ".0%"), same]
        lines.append(cells)
        if r.get("stopped_early"):
            notes.append(f"  {r['name']}: {r['stopped_early']}/{r['runs']} runs ended (end of text) "
                         f"before {cfg['max_tokens']} tokens")
        if r.get("error"):
            notes.append(f"  {r['name']}: {r['failed']}/{r['runs']} runs failed: {r['error']}")
    widths = [max(len(c[0]), *(len(row[i]) for row in lines)) for i, c in enumerate(cols)]

    def fmt_row(cells):
        return "  ".join(f"{cell:{align}{w}}" for cell, (_, align), w in zip(cells, cols, widths)).rstrip()

    header = (f"{cfg['n_prompts']} prompts x {cfg['max_tokens']} tokens, greedy, {cfg['threads']} "
              f"thread{'s' if cfg['threads'] != 1 else ''}; target {Path(cfg['target']).name}"
              + (f", draft {Path(cfg['draft']).name}" if cfg.get("draft") else ""))
    out = [header, fmt_row([c[0] for c in cols]), "  ".join("-" * w for w in widths)]
    out += [fmt_row(cells) for cells in lines]
    if has_llama:
        notes.insert(0, "  vs llama = speed / llama-completion's; 'same as ar ... text': generated "
                        "text agrees with our ar (either may run longer)")
    if notes:
        out.append("notes:")
        out += notes
    return "\n".join(out)


# -- the command ---------------------------------------------------------------------------------

BENCH_EXAMPLES = """
\b
Examples:
  edge-tree bench -n 16 --modes ar,tree                       # demo pair, quick look
  edge-tree bench -md ~/.cache/edge-tree/demo/gemma-3-270m-q4_0.gguf --json bench.json
  edge-tree bench --llama-cpp ~/.cache/edge-tree/llama.cpp -t 2   # and llama.cpp's own tools
"""


@click.command("bench", epilog=BENCH_EXAMPLES)
@click.option("-m", "--target", type=click.Path(), help="Target GGUF model (default: the demo pair).")
@click.option("-md", "--draft", type=click.Path(), help="Draft GGUF model (default with no -m: the demo draft).")
@click.option("--modes", default=DEFAULT_MODES, show_default=True,
              help="Comma-separated: ar, chain:N (N drafted tokens), tree, tree:N (max depth N). "
                   "ar is always run (the baseline).")
@click.option("--prompts", "prompts_file", type=click.Path(),
              help='JSONL file, one {"prompt": "...", "name": "..."} per line (default: 10 built-in prompts).')
@click.option("-n", "--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, show_default=True,
              help="Tokens to generate per prompt.")
@click.option("-t", "--threads", type=int, help="CPU threads, for us and llama.cpp alike (default: all cores).")
@click.option("--llama-cpp", "llama_cpp_dir", type=click.Path(),
              help="Folder with llama.cpp's llama-completion and llama-speculative "
                   "(scripts/build_llama_cpp.sh): run them on the same prompts too.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), help="Write the full result as JSON to FILE.")
@click.option("--tool-timeout", type=float, default=DEFAULT_TOOL_TIMEOUT, show_default=True,
              help="Seconds before one llama.cpp run is given up (its row gets an error note).")
@click_options(LoadOptions, only=("draft_vocab",))
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr.")
def bench(target, draft, modes, prompts_file, max_tokens, threads, llama_cpp_dir, json_file,
          tool_timeout, draft_vocab, quiet):
    """Speed of ar / chain / tree decoding (and llama.cpp's own tools) over a prompt set.

    Greedy, every prompt through every mode in rotating order; prints a table on stdout.
    """

    with user_errors():
        specs = parse_modes(modes)  # bad modes fail before any model loads
        LoadOptions(draft_vocab=draft_vocab)
        prompts = load_prompts(prompts_file) if prompts_file else None
        if target is None:
            from ..llamacpp.demo import ensure_demo

            pair = ensure_demo(progress=not quiet)
            target, draft = str(pair.target), str(draft or pair.draft)
        elif draft is None and any(s.mode != "ar" for s in specs):
            raise UsageError("--draft", "chain and tree modes need a draft model (-md) with -m")
        try:
            result = run_bench(target, draft, [s.label for s in specs], prompts, max_tokens, threads,
                               llama_cpp_dir=llama_cpp_dir, progress=not quiet,
                               tool_timeout=tool_timeout, draft_vocab=draft_vocab)
        except KeyboardInterrupt:
            click.echo("\nedge-tree: bench interrupted", err=True)
            sys.exit(130)
        click.echo(format_table(result))
        if json_file:
            try:
                Path(json_file).write_text(json.dumps(result, indent=2) + "\n")
            except OSError as e:
                raise EdgeTreeError(f"--json: cannot write {json_file}: {e.strerror or e}") from None
