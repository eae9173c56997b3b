"""llama.cpp's own C++ tools: their command lines, running them, and reading what they print.

Speeds are what the tools print: llama-completion's ``eval time`` line (one decode call per token
after the first, which comes out of the prompt pass), llama-speculative's ``decoded N tokens in
X seconds`` line (after its prompt pass).

The tools get the same settings as our engine: threads, context, GPU layers (passed always: their
default is to offload what fits). The weight layout is each side's default: llama.cpp repacks
weights where the CPU has a layout for it, as a user's run does, even where edge-tree loads models
without llama.cpp's extra buffer types (CPUs with AMX, see llamacpp/llama.py): the peer is never
slowed down to match us, and the bench's table says what each side used.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import EdgeTreeError

COMPLETION = "llama-completion"
SPECULATIVE = "llama-speculative"
COMPLETION_ROW = "llama.cpp completion"
# (row name, --spec-draft-n-max, -np)
SPEC_CONFIGS: tuple[tuple[str, int, int], ...] = (
    ("llama.cpp spec chain 4", 4, 1),
    ("llama.cpp spec chain 8", 8, 1),
    ("llama.cpp spec chain 16", 16, 1),
    ("llama.cpp spec 4 branches", 8, 4),
)
BUILD_HINT = "scripts/build_llama_cpp.sh"

_COMPLETION_EVAL = re.compile(
    r"(?<!prompt )\beval time\s*=\s*([\d.]+)\s*ms\s*/\s*(\d+)\s*(?:runs|tokens)\s*"
    r"\(\s*[\d.]+\s*ms per token,\s*([\d.]+|inf|nan)\s*tokens per second\)")
_SPEC_DECODED = re.compile(
    r"decoded\s+(\d+)\s+tokens in\s+([\d.]+)\s+seconds, speed:\s+([\d.]+|inf|nan)\s+t/s")
_SPEC_ACCEPT = re.compile(r"\baccept\s*=\s*([\d.]+|nan|inf|-nan)%")
_SPEC_COUNT = re.compile(r"\b(n_draft|n_predict|n_drafted|n_accept)\s*=\s*(\d+)")


class ToolOutputError(EdgeTreeError):
    """A llama.cpp tool ran but printed no line we could read."""


# -- reading their output ------------------------------------------------------------------------

def parse_completion_output(text: str) -> dict:
    """llama-completion's timing: its last ``eval time = X ms / N runs (..., Y tokens per second)``
    line (not ``prompt eval time``). Returns tokens (decode calls), seconds, tokens_per_s."""
    matches = _COMPLETION_EVAL.findall(text)
    if not matches:
        raise ToolOutputError(f"{COMPLETION} printed no 'eval time' line")
    ms, runs, _ = matches[-1]
    return _speed(int(runs), float(ms) / 1000.0)


def parse_speculative_output(text: str) -> dict:
    """llama-speculative's summary: ``decoded N tokens in X seconds, speed: Y t/s`` and
    ``accept = Z%`` (accepted / drafted tokens), plus n_draft/n_drafted/n_accept when present."""
    m = _SPEC_DECODED.search(text)
    if not m:
        raise ToolOutputError(f"{SPECULATIVE} printed no 'decoded N tokens in X seconds' line")
    out = _speed(int(m.group(1)), float(m.group(2)))
    out["acceptance_rate"] = _acceptance(text)
    for key, value in _SPEC_COUNT.findall(text):
        out[key] = int(value)
    return out


def _speed(tokens: int, seconds: float) -> dict:
    return {"tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds if seconds > 0 else None}


def _acceptance(text: str) -> float | None:
    """accept = Z% as a fraction; None where it is missing or nan (nothing drafted)."""
    m = _SPEC_ACCEPT.search(text)
    try:
        rate = float(m.group(1)) / 100.0 if m else None
    except ValueError:
        return None
    return None if rate is None or rate != rate else rate


def spec_generated_text(stdout: str, prompt: str) -> str | None:
    """llama-speculative echoes the prompt (with <bos>) before the generated text."""
    i = stdout.find(prompt)
    return stdout[i + len(prompt):] if i >= 0 else None


def same_text(ours: str, theirs: str | None) -> bool | None:
    """Greedy text agreement, allowing one side to run longer (EOS on ours, overshoot on theirs)."""
    if theirs is None:
        return None
    a, b = ours.rstrip(), theirs.rstrip()
    if not a or not b:
        return None
    return a.startswith(b) or b.startswith(a)


# -- their command lines -------------------------------------------------------------------------

@dataclass(frozen=True)
class ToolSettings:
    """What every tool run shares: the folder, the models and the engine's load settings."""

    bin_dir: Path
    target: str
    draft: str | None
    max_tokens: int
    threads: int
    ctx_size: int
    n_gpu_layers: int = 0
    draft_n_gpu_layers: int = 0
    timeout: float = 600.0
    rpc: str | None = None  # the target's RPC hosts; the draft goes there only with -ngld

    def shared_args(self) -> list[str]:
        return ["-t", str(self.threads), "-tb", str(self.threads), "-c", str(self.ctx_size),
                "-ngl", gpu_layers_arg(self.n_gpu_layers), "--temp", "0", "-s", "0", "--ignore-eos",
                *(("--rpc", self.rpc) if self.rpc else ())]


def gpu_layers_arg(n: int) -> str:
    """Our -1 (every layer, as llama.cpp's C API reads it) is the tools' 'all'; their -1 is 'auto'."""
    return "all" if n < 0 else str(n)


def completion_command(s: ToolSettings, prompt: str) -> list[str]:
    """Plain greedy decoding of exactly max_tokens tokens, the prompt not echoed."""
    return [str(s.bin_dir / COMPLETION), "-m", s.target, "-p", prompt, "-n", str(s.max_tokens),
            *s.shared_args(), "-no-cnv", "--no-display-prompt"]


def speculative_command(s: ToolSettings, prompt: str, n_draft: int, n_parallel: int) -> list[str]:
    """Greedy speculative decoding. llama-speculative stops only once it has produced *more* than
    -n tokens, so it gets max_tokens - 1 (it then decodes max_tokens or a few more)."""
    return [str(s.bin_dir / SPECULATIVE), "-m", s.target, "-md", str(s.draft), "-p", prompt,
            "-n", str(max(1, s.max_tokens - 1)), *s.shared_args(),
            "-td", str(s.threads), "-tbd", str(s.threads),
            "-ngld", gpu_layers_arg(s.draft_n_gpu_layers),
            "--spec-draft-n-max", str(n_draft), "-np", str(n_parallel)]


def check_tool_dir(llama_cpp_dir: str | os.PathLike) -> Path:
    """The --llama-cpp folder, checked to hold at least one of the tools."""
    bin_dir = Path(llama_cpp_dir).expanduser()
    if not bin_dir.is_dir():
        raise EdgeTreeError(f"--llama-cpp: {bin_dir}: no such folder "
                            f"(build llama.cpp's tools there with {BUILD_HINT})")
    if not any((bin_dir / t).is_file() for t in (COMPLETION, SPECULATIVE)):
        raise EdgeTreeError(f"--llama-cpp: {bin_dir} holds neither {COMPLETION} nor {SPECULATIVE} "
                            f"(build them with {BUILD_HINT})")
    return bin_dir


# -- running them --------------------------------------------------------------------------------

def _tool_env(bin_dir: Path) -> dict:
    env = dict(os.environ)
    old = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = str(bin_dir) + (os.pathsep + old if old else "")
    return env


def run_tool(cmd: list[str], bin_dir: Path, parse: Callable[[str], dict],
             timeout: float) -> tuple[dict | None, str, str]:
    """Run one tool; returns (parsed numbers or None, stdout, error note or '')."""
    name = Path(cmd[0]).name
    if not Path(cmd[0]).is_file():
        return None, "", f"{name} not found in {bin_dir} (build it: {BUILD_HINT})"
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


def run_completion(s: ToolSettings, prompt: str) -> tuple[dict | None, str | None, str]:
    """(numbers, generated text, error note) of one llama-completion run."""
    return run_tool(completion_command(s, prompt), s.bin_dir, parse_completion_output, s.timeout)


def run_speculative(s: ToolSettings, prompt: str, n_draft: int,
                    n_parallel: int) -> tuple[dict | None, str | None, str]:
    """(numbers, generated text, error note) of one llama-speculative run."""
    parsed, stdout, error = run_tool(speculative_command(s, prompt, n_draft, n_parallel), s.bin_dir,
                                     parse_speculative_output, s.timeout)
    return parsed, spec_generated_text(stdout, prompt), error


def tool_commands(s: ToolSettings) -> dict[str, list[str]]:
    """Every tool row's command line, with PROMPT in place of the prompt (for the JSON config)."""
    return {COMPLETION_ROW: completion_command(s, "PROMPT"),
            **{name: speculative_command(s, "PROMPT", k, np_) for name, k, np_ in SPEC_CONFIGS}}
