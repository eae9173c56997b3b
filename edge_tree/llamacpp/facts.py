"""What llama.py learns outside llama.cpp's C API, in plain Python: why a load failed (from
llama.cpp's log lines), whether the CPU has AMX, whether the library ships a CUDA backend, the
threads a context runs with, and llama.h's numbers for file and KV cache types."""

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


def threads_for(threads: int | None) -> int:
    """The threads a context runs with when asked for `threads` (None: every core)."""
    return threads or max(1, os.cpu_count() or 1)


# llama_ftype values for the quantization types edge-tree offers (llama.h, enum llama_ftype).
FTYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
          "Q2_K": 10, "Q3_K_M": 12, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}

# KV cache types as llama.cpp's tools name them (--cache-type-k / -v), and their ggml type ids
KV_TYPES = {"f32": 0, "f16": 1, "bf16": 30, "q8_0": 8, "q4_0": 2, "q4_1": 3, "iq4_nl": 20, "q5_0": 6,
            "q5_1": 7}
