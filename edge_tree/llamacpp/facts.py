"""What llama.py learns outside llama.cpp's C API, in plain Python: why a load failed (from
llama.cpp's log lines), whether the CPU has AMX, whether the library ships a CUDA backend."""

from __future__ import annotations

import os
from pathlib import Path


def why(lines: list[str], n: int = 3) -> str:
    return " | ".join(lines[-n:])


def load_failure(log: list[str]) -> str:
    """Why llama.cpp refused a model file. It says so in a line "llama_model_load: error loading
    model: <reason>"; where its GGUF reader refused the file, that reason is only "failed to load
    model from PATH", and the reader's own first line says what is wrong."""
    reasons = [line.split("error loading model:", 1)[1].strip() for line in log
               if "error loading model:" in line]
    if not reasons:
        return why(log)
    gguf_reasons = [line.split(":", 1)[1].strip() for line in log if line.startswith("gguf_init_from")]
    if "failed to load model from" in reasons[-1] and gguf_reasons:
        return gguf_reasons[0]
    return reasons[-1]


def cpu_has_amx() -> bool:
    """Whether this CPU has Intel AMX tiles (Linux: the amx_* flags in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as info:
            return any(line.startswith("flags") and " amx_tile" in line for line in info)
    except OSError:
        return False


def is_cuda_build(lib_dir: str | os.PathLike) -> bool:
    """Whether the llama.cpp library in lib_dir ships a CUDA backend beside it."""
    return any(Path(lib_dir).glob("libggml-cuda.*"))
