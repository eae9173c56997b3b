"""edge-tree: tree-based speculative decoding on llama.cpp: faster, lossless, and visible.

    import edge_tree
    engine = edge_tree.load()                      # the demo pair; or load(target=..., draft=...)
    result = engine.generate("The capital of France is", max_tokens=32)
    print(result.text, result.stats["tokens_per_s"])
"""

from __future__ import annotations

# First: llama.cpp's library must load before numpy does (llamacpp/__init__.py says why).
from . import llamacpp  # noqa: F401  isort: skip

from importlib.metadata import PackageNotFoundError, version  # noqa: E402

from .core.engine import Engine, GenerationResult, engine_and_options  # noqa: E402
from .core.options import GenOptions, LoadOptions  # noqa: E402
from .errors import EdgeTreeError, UsageError  # noqa: E402
from .records import StepRecord  # noqa: E402

try:
    __version__ = version("edge-tree")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = ["Engine", "GenerationResult", "GenOptions", "LoadOptions", "StepRecord", "EdgeTreeError",
           "UsageError", "load", "generate", "enhanced_speculative_decode", "__version__"]


def load(target: str | None = None, draft: str | None = None, **options) -> Engine:
    """Load a target (and draft) once. target=None means the demo pair (built on first use).
    options: the fields of LoadOptions (threads, ctx_size, n_gpu_layers, draft_vocab, ...)."""
    progress = options.pop("progress", target is None)  # the demo's first build takes a while
    return Engine(target, draft, progress=progress, **options)


def generate(prompt: str, target: str | None = None, draft: str | None = None, **options) -> GenerationResult:
    """One-shot: load, generate, free. Load options (threads, ctx_size, n_gpu_layers, ...) and
    generation options (max_tokens, mode, temperature, ...) may be mixed."""
    callbacks = {k: options.pop(k) for k in ("on_text", "on_step", "should_stop", "record_steps")
                 if k in options}
    engine, gen = engine_and_options({"target": target, "draft": draft, **options}, progress=target is None)
    with engine:
        return engine.generate(prompt, gen, **callbacks)


def enhanced_speculative_decode(prompt: str, max_tokens: int = 128, max_nodes_per_level: int | None = None,
                                max_total_nodes: int | None = None, max_time: float | None = None,
                                **options) -> GenerationResult:
    """Tree speculative decoding in one call (the demo pair unless target=/draft= are given)."""
    return generate(prompt, max_tokens=max_tokens, max_nodes_per_level=max_nodes_per_level,
                    max_total_nodes=max_total_nodes, max_time=max_time, **options)
