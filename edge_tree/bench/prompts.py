"""The bench's prompts: the built-in set (package data, `prompts.jsonl`) or a user's JSONL file.

The built-in prompts are text to continue (the demo target is a base model, not chat-tuned),
chosen so that an end of text within 64 tokens is unlikely: our engine has no --ignore-eos,
llama.cpp's runs do.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Sequence

from ..errors import EdgeTreeError

DEFAULT_PROMPTS_FILE = "prompts.jsonl"


def default_prompts() -> list[dict]:
    """The built-in prompts: [{"name", "prompt"}, ...]."""
    text = resources.files(__package__).joinpath(DEFAULT_PROMPTS_FILE).read_text("utf-8")
    return parse_prompts(text, f"built-in {DEFAULT_PROMPTS_FILE}")


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
    return parse_prompts(text, f"--prompts: {p}")


def parse_prompts(text: str, where: str) -> list[dict]:
    """JSONL text -> prompts; `where` names the source in error messages."""
    prompts = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            prompts.append(_prompt_of_line(line, f"{where}:{lineno}", len(prompts) + 1))
    if not prompts:
        raise EdgeTreeError(f"{where} holds no prompts")
    return prompts


def _prompt_of_line(line: str, where: str, number: int) -> dict:
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
    return {"name": str(name) if name is not None else f"prompt{number}", "prompt": prompt}


def normalize_prompts(prompts: Sequence[str | dict] | None) -> list[dict]:
    """What the Python API accepts (strings, or dicts with a "prompt"), as {"name", "prompt"}
    dicts; None means the built-in set."""
    if prompts is None:
        return default_prompts()
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
