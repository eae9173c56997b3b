"""edge-tree: tree-based speculative decoding on llama.cpp: faster, lossless, and visible.

    import edge_tree
    engine = edge_tree.load()                      # the demo pair; or load(target=..., draft=...)
    result = engine.generate("The capital of France is", max_tokens=32)
    print(result.text, result.stats["tokens_per_s"])
"""

from __future__ import annotations

import inspect
from importlib.metadata import PackageNotFoundError, version

from .engine import Engine, GenerationResult
from .errors import EdgeTreeError, UsageError

try:
    __version__ = version("edge-tree")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = ["Engine", "GenerationResult", "EdgeTreeError", "UsageError", "load", "generate",
           "enhanced_speculative_decode", "__version__"]

_ENGINE_OPTIONS = set(inspect.signature(Engine.__init__).parameters) - {"self", "target", "draft"}


def load(target: str | None = None, draft: str | None = None, **options) -> Engine:
    """Load a target (and draft) once. target=None means the demo pair (built on first use)."""
    if target is None:
        from .demo import ensure_demo

        pair = ensure_demo(progress=True)
        target, draft = str(pair.target), str(draft or pair.draft)
        options.setdefault("progress", True)  # as the demo's build: first use takes a while
    return Engine(target, draft, **options)


def generate(prompt: str, target: str | None = None, draft: str | None = None, **kw) -> GenerationResult:
    """One-shot: load, generate, free. Engine options (threads, ctx_size, n_gpu_layers, ...) and
    generation options (max_tokens, mode, temperature, ...) may be mixed in kw."""
    engine_kw = {k: v for k, v in kw.items() if k in _ENGINE_OPTIONS}
    run_kw = {k: v for k, v in kw.items() if k not in _ENGINE_OPTIONS}
    with load(target, draft, **engine_kw) as engine:
        return engine.generate(prompt, **run_kw)


def enhanced_speculative_decode(prompt: str, max_tokens: int = 128, max_nodes_per_level: int | None = None,
                                max_total_nodes: int | None = None, max_time: float | None = None,
                                **kw) -> GenerationResult:
    """Tree speculative decoding in one call (the demo pair unless target=/draft= are given)."""
    return generate(prompt, max_tokens=max_tokens, max_nodes_per_level=max_nodes_per_level,
                    max_total_nodes=max_total_nodes, max_time=max_time, **kw)
