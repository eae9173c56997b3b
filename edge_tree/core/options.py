"""Options, typed and defined once: what to load (LoadOptions) and how to generate (GenOptions).

Every face builds them from the same field definitions: the CLI turns each field into a click
option (`click_options`), the Python API and the server pass keyword arguments or a JSON body
(`from_mapping`). A value is checked once, when the dataclass is built, and a bad one raises the
same UsageError with the same message whichever face it came through.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..errors import UsageError
from ..endpoints import endpoints_complaint, parse_endpoints
from .sampling import SamplingParams

MODES = ("ar", "lookup", "chain", "tree")
DRAFT_MODES = ("chain", "tree")  # the modes that call a draft model
POLICIES = ("adaptive", "fixed")
DRAFT_CHILDREN = ("sampled", "topk")
CONTEXT_FULL = ("error", "stop")
# the draft's KV cache types, as llama.cpp's tools name them (llamacpp/facts.py, KV_TYPES)
DRAFT_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
# every leaf of a tree is a llama.cpp sequence: LLAMA_MAX_SEQ (256) less the committed one
MAX_TREE_NODES = 255

Check = Callable[[Any], "str | None"]  # a complaint about a value, or None when it is fine


def _option(default, *flags: str, help: str, kind: type, check: Check | None = None,
            metavar: str | None = None):
    """A dataclass field that also knows its command-line flags, help text and check."""
    return dataclasses.field(default=default, metadata={
        "flags": flags, "help": help, "kind": kind, "check": check, "metavar": metavar})


def at_least(low) -> Check:
    def check(value):
        return f"must be at least {low}, got {value}" if value < low else None
    return check


def tree_cap(value) -> str | None:
    """A cap on tree nodes or depth: every leaf is a sequence of llama.cpp's KV cache."""
    if value < 1:
        return f"must be at least 1, got {value}"
    if value > MAX_TREE_NODES:
        return (f"must be at most {MAX_TREE_NODES}, got {value}: each branch is a llama.cpp sequence "
                f"and llama_max_parallel_sequences() is {MAX_TREE_NODES + 1}")
    return None


def seed_range(value) -> str | None:
    """A seed as llama.cpp takes one: an unsigned 32-bit integer."""
    return None if 0 <= value < 2**32 else f"must be in 0..{2**32 - 1}, got {value}"


def positive(value) -> str | None:
    return None if value > 0 else f"must be > 0, got {value}"


def one_of(*choices: str) -> Check:
    def check(value):
        return None if value in choices else f"must be one of {', '.join(choices)}, got {value!r}"
    return check


def _top_p(value) -> str | None:
    return None if 0.0 < value <= 1.0 else f"must be in (0, 1], got {value}"


def _min_p(value) -> str | None:
    return None if 0.0 <= value < 1.0 else f"must be in [0, 1), got {value}"


def _draft_vocab(value) -> str | None:
    """auto, full, or a number of tokens (at least 2: a token and end-of-generation)."""
    if value in ("auto", "full"):
        return None
    try:
        tokens = int(value)
    except (TypeError, ValueError):
        tokens = 0
    return None if tokens >= 2 else f"must be auto, full, or a number of tokens >= 2, got {value!r}"


def _stop(value) -> str | None:
    if not all(isinstance(s, str) and s for s in value):
        return f"must be non-empty strings, got {value!r}"
    return None if len(value) <= 16 else f"at most 16 stop strings, got {len(value)}"


class _Checked:
    """Checks every field against its definition when the dataclass is built."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            meta = f.metadata
            value = _coerce(value, meta["kind"], _flag(f), f.name)
            object.__setattr__(self, f.name, value)
            complaint = meta["check"](value) if meta["check"] else None
            if complaint:
                raise UsageError(_flag(f), complaint, field=f.name)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]):
        """Build from keyword arguments or a JSON body; an unknown name is a UsageError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UsageError(unknown[0], f"unknown option (known: {', '.join(sorted(names))})",
                             field=unknown[0])
        return cls(**values)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def _flag(f: dataclasses.Field) -> str:
    return next((x for x in f.metadata["flags"] if x.startswith("--")), f.name)


def _coerce(value, kind: type, flag: str, field: str):
    """The field's type, from what a face passed: JSON numbers, click strings, Python values.
    A complaint names the flag and the field (a --ngram/--no-ngram flag is no JSON name)."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(flag, f"must be true or false, got {value!r}", field=field)
    if kind is tuple:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise UsageError(flag, f"must be a string or a list of strings, got {value!r}", field=field)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise UsageError(flag, f"must be an integer, got {value!r}", field=field)
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UsageError(flag, f"must be a finite number, got {value!r}", field=field)
        return float(value)
    return str(value)


@dataclass(frozen=True)
class GenOptions(_Checked):
    """How to generate: the same for `edge-tree generate`, `Engine.generate` and a server request."""

    mode: str | None = _option(None, "--mode", kind=str, check=one_of(*MODES), help=(
        "ar: plain decoding; lookup: prompt-lookup guesses only (no draft model); chain: one "
        "drafted branch; tree (default with a draft): the adaptive policy picks the round."))
    max_tokens: int = _option(128, "-n", "--max-tokens", kind=int, check=at_least(1),
                              help="Tokens to generate.")
    temperature: float = _option(0.0, "--temperature", "--temp", kind=float, check=at_least(0.0),
                                 help="0 is greedy (exactly the target's argmax text); > 0 samples.")
    top_k: int = _option(0, "--top-k", kind=int, check=at_least(0), help="0 turns it off.")
    top_p: float = _option(1.0, "--top-p", kind=float, check=_top_p,
                           help="Nucleus sampling; 1 turns it off.")
    min_p: float = _option(0.0, "--min-p", kind=float, check=_min_p,
                           help="Drop tokens below min-p times the top probability; 0 turns it off.")
    seed: int | None = _option(None, "-s", "--seed", kind=int, check=seed_range,
                               help="Seed for sampling (0 to 2**32-1): the same seed gives the same text.")
    max_depth: int | None = _option(None, "--max-depth", kind=int, check=tree_cap,
                                    help="Hard cap on tree depth (drafted tokens per branch).")
    max_nodes_per_level: int | None = _option(None, "--max-nodes-per-level", kind=int,
                                              check=tree_cap,
                                              help="Hard cap on nodes per tree level.")
    max_total_nodes: int | None = _option(None, "--max-total-nodes", kind=int,
                                          check=tree_cap,
                                          help=("Hard cap on drafted nodes per round, guesses included. "
                                                "A round never takes more than the context's sequences "
                                                "less one: 63 on a CPU, 255 with layers on a GPU or RPC "
                                                "hosts."))
    max_time: float | None = _option(None, "--max-time", kind=float, check=positive,
                                     help="Stop cleanly after this many seconds.")
    context_full: str = _option("error", "--context-full", kind=str, check=one_of(*CONTEXT_FULL), help=(
        "Prompt + --max-tokens beyond the context: refuse up front (error), or stop cleanly there."))
    ngram: bool = _option(True, "--ngram/--no-ngram", kind=bool,
                          help="In tree mode, add prompt-lookup guesses (text found earlier in the context).")
    cache_prompt: bool = _option(True, "--cache-prompt/--no-cache-prompt", kind=bool, help=(
        "Start from the cache cells of the last generation where its tokens begin this prompt "
        "(the next turn of a chat): only the rest is prefilled."))
    stop: tuple = _option((), "--stop", kind=tuple, check=_stop, metavar="TEXT",
                          help="Stop before this text (repeatable); it is not part of the output.")

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_k, self.top_p, self.min_p, self.seed)


@dataclass(frozen=True)
class LoadOptions(_Checked):
    """What to load: the models, where they run, and the engine's fixed choices."""

    target: str | None = _option(None, "-m", "--target", kind=str,
                                 help="Target GGUF model (default: the demo pair).")
    draft: str | None = _option(None, "-md", "--draft", kind=str,
                                help="Draft GGUF model (same tokenizer as the target).")
    n_gpu_layers: int | None = _option(None, "-ngl", "--n-gpu-layers", kind=int, check=at_least(-1), help=(
        "Target layers to offload to the GPU or the --rpc hosts (-1 or 99: all; default: 0, or "
        "all with --rpc)."))
    draft_n_gpu_layers: int | None = _option(None, "-ngld", "--draft-n-gpu-layers", kind=int,
                                             check=at_least(-1), help=(
        "Draft layers to offload to the GPU or the --rpc-draft hosts (default: 0, or all with "
        "--rpc-draft)."))
    rpc: str | None = _option(None, "--rpc", kind=str, check=endpoints_complaint, metavar="HOST:PORT[,...]",
                              help=(
        "Run the target's layers on llama.cpp rpc-server hosts: all of them unless -ngl says "
        "how many, split between the hosts. The RPC protocol has no authentication: bind "
        "rpc-server to trusted interfaces only (docs/distributed.md)."))
    rpc_draft: str | None = _option(None, "--rpc-draft", kind=str, check=endpoints_complaint,
                                    metavar="HOST:PORT[,...]",
                                    help="Run the draft's layers on these rpc-server hosts (default: here).")
    threads: int | None = _option(None, "-t", "--threads", kind=int, check=at_least(1),
                                  help="CPU threads (default: all cores).")
    ctx_size: int = _option(4096, "-c", "--ctx-size", kind=int, check=at_least(16),
                            help="Context size in tokens.")
    policy: str = _option("adaptive", "--policy", kind=str, check=one_of(*POLICIES), help=(
        "Tree shape: sized each round from measured costs and learned acceptance, or fixed."))
    draft_children: str = _option("sampled", "--draft-children", kind=str, check=one_of(*DRAFT_CHILDREN),
                                  help="With --temperature > 0: children drawn from the draft "
                                       "(rejection sampling) or its top choices.")
    draft_vocab: str = _option("auto", "--draft-vocab", kind=str, check=_draft_vocab, help=(
        "Tokens the draft may propose: auto (a reduced copy where it measures faster), full, or a "
        "number N. A reduced draft is derived once into the cache; the output does not change."))
    cache_type_k_draft: str = _option("f16", "-ctkd", "--cache-type-k-draft", kind=str,
                                      check=one_of(*DRAFT_CACHE_TYPES), help=(
        "The draft's KV cache type for K, as in llama-server. The text is the target's whatever the "
        "draft holds; a quantized cache saves memory and may cost acceptance (docs/benchmarks.md)."))
    cache_type_v_draft: str = _option("f16", "-ctvd", "--cache-type-v-draft", kind=str,
                                      check=one_of(*DRAFT_CACHE_TYPES), help=(
        "The draft's KV cache type for V, as --cache-type-k-draft (a quantized V needs flash "
        "attention, which llama.cpp turns on where the backend has it)."))
    verbose: bool = _option(False, "--verbose", kind=bool, help="Show llama.cpp's own logs.")

    def __post_init__(self):
        super().__post_init__()
        # without -ngl / -ngld, a model given RPC hosts runs there whole, any other stays here
        for layers, hosts in (("n_gpu_layers", self.rpc), ("draft_n_gpu_layers", self.rpc_draft)):
            if getattr(self, layers) is None:
                object.__setattr__(self, layers, -1 if hosts else 0)

    @property
    def rpc_hosts(self) -> tuple[str, ...]:
        return parse_endpoints(self.rpc) if self.rpc else ()

    @property
    def rpc_draft_hosts(self) -> tuple[str, ...]:
        return parse_endpoints(self.rpc_draft) if self.rpc_draft else ()


def click_options(cls, *, only: tuple[str, ...] = (), skip: tuple[str, ...] = ()):
    """Decorator: one click option per field of an options dataclass (values unchecked here:
    the dataclass checks them, so every face says the same thing)."""
    import click

    def decorate(command):
        for f in reversed(dataclasses.fields(cls)):
            if (only and f.name not in only) or f.name in skip:
                continue
            meta = f.metadata
            kw: dict[str, Any] = {"help": meta["help"], "metavar": meta["metavar"]}
            if meta["kind"] is bool:
                flags = meta["flags"] if "/" in meta["flags"][0] else (*meta["flags"],)
                kw.update(is_flag=True, default=f.default, show_default="/" in meta["flags"][0])
            elif meta["kind"] is tuple:
                flags = meta["flags"]
                kw.update(multiple=True)
            else:
                flags = meta["flags"]
                click_type = {int: int, float: float, str: str}[meta["kind"]]
                kw.update(type=click_type, default=f.default, show_default=f.default is not None)
            command = click.option(*flags, f.name, **kw)(command)
        return command

    return decorate


def split_options(values: Mapping[str, Any]) -> tuple[dict, dict, dict]:
    """Keyword arguments -> (load options, generation options, the rest)."""
    load_names = {f.name for f in dataclasses.fields(LoadOptions)}
    gen_names = {f.name for f in dataclasses.fields(GenOptions)}
    load = {k: v for k, v in values.items() if k in load_names}
    gen = {k: v for k, v in values.items() if k in gen_names}
    rest = {k: v for k, v in values.items() if k not in load_names | gen_names}
    return load, gen, rest
