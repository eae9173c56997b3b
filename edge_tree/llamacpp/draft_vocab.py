"""A draft that speaks only the tokens it uses most: a frequency-ranked draft vocabulary.

On a 262k-token vocabulary (Gemma 3) the draft's output matrix is most of its weights, and
every draft call reads all of it: 16.5 ms of a 270M Q4_K_M draft's one-token call on 2 cores
against 6.7 ms with 32k rows (FR-Spec, Zhao et al. 2025). So edge-tree derives from the user's
draft file a copy whose vocabulary is the K tokens the draft itself uses most, measured as its
mean next-token probability over contexts it samples from BOS (no corpus needed), and feeds
that copy input embeddings from the full table of the original file, so the draft still reads
every token exactly. Only the proposals narrow to K tokens; the target verifies as before, so
output is unchanged (lossless) and only the acceptance of rare tokens is lost.

The copy is written once per draft file into the cache (`draft-vocab/`), with the chosen token
ids in its metadata.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import llama
from .. import derived
from ..errors import EdgeTreeError
from .modelfile import describe_gguf
from ..files import atomic_write
from ..progress import Progress

DEFAULT_SIZE = 32768
# Below this vocabulary size the output matrix is no longer the draft's main cost.
MIN_FULL_VOCAB = 4 * DEFAULT_SIZE
# auto derives a copy only where the output matrix rows it drops are at least this share of
# what a draft call reads: less is not worth the acceptance a smaller vocabulary loses
MIN_SAVING = 0.15
# input embeddings of the copy's recent tokens kept dequantized (Gemma 3 270M: 2.5 KB each)
EMBEDDED_ROWS_KEPT = 1024
IDS_KEY = "edge_tree.draft_vocab.ids"
COVERAGE_KEY = "edge_tree.draft_vocab.coverage"
USAGE_SEQS, USAGE_STEPS, USAGE_SEED = 32, 64, 0  # 2,048 sampled contexts: about 15 s, once


@dataclass
class DraftVocab:
    """A reduced-vocab draft: its model, the target id of each of its tokens, and the input
    table that embeds any target token."""

    model: llama.Model
    ids: np.ndarray  # reduced id -> target id, ascending
    embed: "InputTable"
    full_vocab: int
    # the draft's own probability mass on the kept tokens, over the contexts it was chosen from:
    # about the share of its proposals the copy can still make
    coverage: float
    # the full draft's output rows of any token, to score dropped ones the context holds (None
    # where llama.cpp's logits could not be reproduced from the hidden state)
    output: "OutputRows | None" = None


def wanted(size: int | str, full: llama.Model) -> int | None:
    """The reduced vocabulary size to try, or None for the full draft. size: "auto", "full", or
    K; auto tries DEFAULT_SIZE where a large vocabulary makes the output matrix a large share of
    what a draft call reads (the engine then measures whether the copy pays)."""
    if size == "full":
        return None
    if size == "auto":
        big = full.n_vocab >= MIN_FULL_VOCAB and estimated_saving(full.path, DEFAULT_SIZE) >= MIN_SAVING
        return DEFAULT_SIZE if big else None
    return int(size) if int(size) < full.n_vocab else None


def estimated_saving(path: Path, k: int) -> float:
    """The share of the bytes a one-token draft call reads that a k-token copy drops: the output
    matrix's other rows (the input table is read a row a token, unless it is the output too)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    tensors = describe_gguf(path, "draft")["tensors"]
    sizes = {}
    for name, (qtype, dims, _) in tensors.items():
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
        sizes[name] = int(np.prod(dims)) // block * type_size
    output = "output.weight" if "output.weight" in sizes else "token_embd.weight"
    read = sum(sizes.values()) - (sizes.get("token_embd.weight", 0) if output == "output.weight" else 0)
    n_vocab = tensors[output][1][-1]
    return sizes[output] * max(0.0, 1 - k / n_vocab) / max(read, 1)


def token_usage(model: llama.Model, threads: int | None) -> np.ndarray:
    """The draft's mean next-token probability over contexts it samples itself from BOS."""
    usage = np.zeros(model.n_vocab)
    rng = np.random.default_rng(USAGE_SEED)
    with llama.Context(model, USAGE_SEQS * (USAGE_STEPS + 1), USAGE_SEQS, USAGE_SEQS,
                       threads=threads) as ctx, llama.Batch(USAGE_SEQS, 1) as batch:
        tokens = [model.bos] * USAGE_SEQS
        for pos in range(USAGE_STEPS):
            batch.clear()
            for seq, token in enumerate(tokens):
                batch.add(token, pos, (seq,), True)
            ctx.decode(batch)
            for seq in range(USAGE_SEQS):
                logits = ctx.logits(seq).astype(np.float64)
                p = np.exp(logits - logits.max())
                p /= p.sum()
                usage += p
                tokens[seq] = int(rng.choice(len(p), p=p))
    return usage / (USAGE_SEQS * USAGE_STEPS)


def choose_ids(usage: np.ndarray, must_keep: list[int], size: int) -> np.ndarray:
    """The `size` most used token ids (ties: lower id), always with must_keep, ascending."""
    order = np.argsort(-usage, kind="stable")
    keep = np.unique(np.asarray(must_keep, np.int64))
    rest = order[~np.isin(order, keep)][:max(size - len(keep), 0)]
    return np.sort(np.concatenate([keep, rest]))


def must_keep(model: llama.Model) -> list[int]:
    """Tokens the draft must be able to propose whatever their use: BOS/EOS and every
    end-of-generation token (a draft that cannot say "stop" is wrong at every stop)."""
    eog = [t for t in range(model.n_vocab) if model.is_eog(t)]
    return sorted({model.bos, model.eos, *eog} - {-1})


def write_reduced(src: Path, dst: Path, ids: np.ndarray, coverage: float) -> None:
    """Copy a GGUF model keeping only the given vocabulary rows (tokens, scores, types, the
    embedding / output matrices), special token ids renumbered, ids stored under IDS_KEY and the
    coverage under COVERAGE_KEY. Written whole or not at all: a failure partway leaves no
    temporary file."""
    atomic_write(dst, lambda tmp: _write_reduced(src, tmp, ids, coverage), f"the reduced draft {dst}")


def _write_reduced(src: Path, dst: Path, ids: np.ndarray, coverage: float) -> None:
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    new_id = {int(t): i for i, t in enumerate(ids)}
    writer = GGUFWriter(dst, arch)
    try:
        for name, field in reader.fields.items():
            if name.startswith("GGUF.") or name == "general.architecture":
                continue
            vtype = field.types[0]
            value = field.contents()
            sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
            if vtype == GGUFValueType.ARRAY and len(field.data) == n_vocab:
                value = [value[i] for i in ids]
            elif name.startswith("tokenizer.ggml.") and name.endswith("_token_id"):
                value = new_id.get(int(value), 0)
            writer.add_key_value(name, value, vtype, sub_type)
        writer.add_key_value(IDS_KEY, [int(i) for i in ids], GGUFValueType.ARRAY, GGUFValueType.INT32)
        writer.add_key_value(COVERAGE_KEY, coverage, GGUFValueType.FLOAT32)
        for tensor in reader.tensors:
            data = tensor.data
            if tensor.name in ("token_embd.weight", "output.weight") and data.shape[0] == n_vocab:
                data = data[ids]
            writer.add_tensor(tensor.name, np.ascontiguousarray(data), raw_dtype=tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


class InputTable:
    """Input embeddings of every token (or the rows of another per-token matrix: tensor_name),
    read row by row from the original draft file; tensors: its describe_gguf tensors. With
    cached_rows, that many dequantized rows are kept: every draft call embeds its tokens, a
    tree's tokens recur round after round, and a dequantize call costs ~0.15 ms however few
    rows it reads."""

    def __init__(self, path: Path, tensors: dict, scale: float = 1.0, tensor_name: str = "token_embd.weight",
                 cached_rows: int = 0):
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        tensor = tensors.get(tensor_name)
        if tensor is None:
            raise EdgeTreeError(f"draft {path.name} has no {tensor_name} to read rows from")
        qtype, (n_embd, n_vocab), offset = tensor
        self.qtype = GGMLQuantizationType(qtype)
        block, type_size = GGML_QUANT_SIZES[self.qtype]
        self.path, self.offset, self.row_bytes = path, offset, n_embd // block * type_size
        self.scale = scale
        self.cached_rows = cached_rows
        self._cached: dict[int, np.ndarray] = {}  # token -> its row, unscaled
        try:
            self(np.array([0]))
        except NotImplementedError:
            raise EdgeTreeError(f"draft {path.name}: the gguf package cannot read {self.qtype.name} "
                                "embeddings; use --draft-vocab full") from None

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        from gguf.quants import dequantize

        if not self.cached_rows:
            return dequantize(self._read(tokens), self.qtype) * self.scale
        ids = np.asarray(tokens).tolist()
        distinct = list(dict.fromkeys(ids))
        missing = [t for t in distinct if t not in self._cached]
        if missing:
            if len(self._cached) + len(missing) > self.cached_rows:  # full: start over with these
                self._cached.clear()
                missing = distinct
            self._cached.update(zip(missing, dequantize(self._read(missing), self.qtype)))
        return np.stack([self._cached[t] for t in ids]) * self.scale

    def _read(self, tokens) -> np.ndarray:
        """The raw rows of these tokens, read from the file, not mapped: a mapping kept every page
        its reads faulted in (and the kernel's neighbours of each) in this process's memory, 153
        MiB of the demo draft's embedding matrix after the load's check of every 16th row."""
        with open(self.path, "rb") as file:
            raw = b"".join(os.pread(file.fileno(), self.row_bytes, self.offset + int(t) * self.row_bytes)
                           for t in np.asarray(tokens).reshape(-1))
        return np.frombuffer(raw, np.uint8).reshape(-1, self.row_bytes)


class OutputRows:
    """The full draft's output matrix, row by row: the logits of tokens the reduced copy dropped
    are their rows times the copy's final hidden state (llama.cpp's `result_norm`), softcapped as
    the model's own are. So the draft can still propose a rare word the context repeats (measured
    on the demo pair: 83% of the target's tokens outside the 32,768 were earlier in the context)."""

    def __init__(self, path: Path, tensors: dict, softcap: float):
        self.table = InputTable(path, tensors, 1.0,
                                "output.weight" if "output.weight" in tensors else "token_embd.weight")
        self.softcap = softcap

    def rows(self, tokens: np.ndarray) -> np.ndarray:
        return self.table(tokens).astype(np.float32)

    def logits(self, rows: np.ndarray, hidden: np.ndarray) -> np.ndarray:
        scores = rows @ hidden
        return self.softcap * np.tanh(scores / self.softcap) if self.softcap else scores


@dataclass(frozen=True)
class FullDraft:
    """What the copy needs of the draft it was derived from, once that draft is closed."""

    path: Path
    n_vocab: int
    softcap: float
    rpc_hosts: tuple[str, ...]

    @classmethod
    def of(cls, model: llama.Model) -> "FullDraft":
        return cls(model.path, model.n_vocab, softcap(model), model.rpc_hosts)


def derive(full: llama.Model, size: int | str, cache: Path, threads: int | None = None,
           progress: bool = False) -> Path | None:
    """The reduced-vocab copy of a loaded draft, derived into the cache on first use, or None
    where the full draft is wanted. With size "auto", a draft that cannot be derived stays as it is."""
    k = wanted(size, full)
    if k is None:
        return None
    try:
        return _derive(full, k, cache, threads, progress)
    except EdgeTreeError:
        if size == "auto":
            return None
        raise


def _derive(full: llama.Model, k: int, cache: Path, threads: int | None, progress: bool) -> Path:
    source = full.path.resolve()
    stat = source.stat()
    tag = f"{source}|{stat.st_size}|{int(stat.st_mtime)}|{k}|{USAGE_SEQS}x{USAGE_STEPS}|{derived.made_by()}"
    digest = hashlib.sha1(tag.encode()).hexdigest()[:10]
    path = cache / "draft-vocab" / f"{full.path.stem}-vocab{k}-{digest}.gguf"
    if derived.is_current(path):
        derived.mark_used(path)
    else:
        log = Progress(progress)
        log.start(f"deriving a {k}-token draft from {full.path.name} (once, into {path.parent})")
        start = time.perf_counter()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            usage = token_usage(full, threads)
            ids = choose_ids(usage, must_keep(full), k)
            write_reduced(full.path, path, ids, float(usage[ids].sum() / usage.sum()))
            derived.record(path, source)
        except OSError as e:
            log.end("failed")
            raise EdgeTreeError(f"cannot write the reduced draft {path}: {e.strerror or e}") from None
        except BaseException:
            log.end("failed")
            raise
        log.end(f"{time.perf_counter() - start:.0f} s")
    return path


def open_copy(path: Path, full: FullDraft, threads: int | None = None, n_gpu_layers: int = 0) -> DraftVocab:
    """Load a copy derive() wrote, with the input table and output rows of the draft it came
    from (read from that file, not from a loaded model: the full draft may be closed)."""
    meta = describe_gguf(path, "draft", (IDS_KEY, COVERAGE_KEY))["meta"]
    ids = meta[IDS_KEY].astype(np.int64)
    tensors = describe_gguf(full.path, "draft")["tensors"]  # one header read for both tables (0.2 s on Gemma)
    table = InputTable(full.path, tensors, cached_rows=EMBEDDED_ROWS_KEPT)
    model = llama.Model(path, n_gpu_layers, full.rpc_hosts)  # where the full draft runs
    try:
        table.scale = input_scale(model, ids, table, threads)
        if table.scale is None:
            raise EdgeTreeError(f"draft {full.path.name}: this architecture does not take input "
                                "embeddings the way it embeds tokens; use --draft-vocab full")
        output = OutputRows(full.path, tensors, full.softcap)
        if not reproduces_logits(model, ids, table, output, threads):
            output = None
    except BaseException:
        model.close()  # nobody else holds it yet
        raise
    return DraftVocab(model, ids, table, full.n_vocab, float(meta[COVERAGE_KEY]), output)


def softcap(model: llama.Model) -> float:
    """The model's final logit softcapping (Gemma 2), or 0."""
    value = model.meta(f"{model.meta('general.architecture')}.final_logit_softcapping")
    return float(value) if value else 0.0


def reproduces_logits(model: llama.Model, ids: np.ndarray, table: InputTable, output: OutputRows,
                      threads: int | None) -> bool:
    """Whether output rows times the hidden state give llama.cpp's own logits, on every 16th kept
    token after a short context: within 5% of the logits' range (llama.cpp quantizes the hidden
    state for a quantized matrix; measured 1.4% on the demo draft). An architecture that scales or
    biases its logits otherwise keeps to the reduced vocabulary."""
    probe = ids[len(ids) // 2:len(ids) // 2 + 4]
    sample = np.arange(0, len(ids), 16)
    with llama.Context(model, 16, threads=threads, embed=table) as ctx, ctx.new_batch(len(probe), 1) as batch:
        ctx.output_hidden(True)
        ctx.feed(batch, [int(t) for t in probe], 0)
        expected = ctx.logits(len(probe) - 1)[sample]
        got = output.logits(output.rows(ids[sample]), ctx.hidden(len(probe) - 1))
    return bool(np.abs(got - expected).max() <= 0.05 * np.ptp(expected))


def input_scale(model: llama.Model, ids: np.ndarray, table: InputTable,
                threads: int | None) -> float | None:
    """The factor that makes embedding input decode exactly like token input: 1, or sqrt(n_embd)
    for architectures that scale token embeddings only (Gemma). None when neither does."""
    probe = ids[len(ids) // 2:len(ids) // 2 + 4]  # ordinary tokens, present in both tables
    reduced = np.searchsorted(ids, probe)
    with llama.Context(model, 16, threads=threads) as ctx, llama.Batch(len(probe), 1) as batch:
        ctx.feed(batch, [int(t) for t in reduced], 0)
        expected = ctx.logits(len(probe) - 1).copy()
    for scale in (1.0, float(np.sqrt(model.n_embd))):
        table.scale = scale
        with llama.Context(model, 16, threads=threads, embed=table) as ctx, \
                ctx.new_batch(len(probe), 1) as batch:
            ctx.feed(batch, [int(t) for t in probe], 0)
            if np.allclose(ctx.logits(len(probe) - 1), expected, rtol=0, atol=1e-3 * np.abs(expected).max()):
                return scale
    return None
