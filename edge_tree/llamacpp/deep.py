"""A deep copy of a model: the same text at several times the cost per call.

Real draft/target pairs differ 5-15x in cost per call (a 0.5B draft for a 7B target); the demo
pair does not. ``make_deep`` copies a model to `factor` times its block count: the real blocks keep
their indices 0..n_layer-1 (sliding-window patterns and RoPE bases depend on the index), and each
added block N is a copy of block N % n_layer whose ``attn_output.weight`` and ``ffn_down.weight``
are zero. Such a block adds nothing to the residual stream: a pre-norm (llama-style) block adds
the two zero projections directly, and Gemma 3 adds ``post_attention_norm(attn_out)`` and
``post_ffw_norm(ffn_out)``, where the RMS norm of a zero vector is zero. So greedy text is exactly
the source's, while every call computes `factor` times the blocks.

A zero byte pattern is a zero tensor in every ggml type (quantized blocks then have zero scales),
so the source may be quantized too.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np

from ..errors import EdgeTreeError, UsageError
from ..files import atomic_write
from ..progress import Progress
from .ggufcopy import OutTensor, start_copy, write_tensors
from .modelfile import check_gguf, describe_gguf

ZEROED = ("attn_output.weight", "ffn_down.weight")
_BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.(.+)")


def make_deep(src: str | os.PathLike, dst: str | os.PathLike, factor: int = 4,
              progress: bool = False) -> Path:
    """Write to dst a copy of the GGUF model src with `factor` times its blocks, the added ones
    contributing nothing (see the module's docstring); whole or not at all. Returns dst."""
    if factor < 2:
        raise UsageError("--factor", f"the block count's multiple must be at least 2; got {factor}")
    src, dst = check_gguf(src), Path(dst).expanduser()
    n_layer = _block_count(src)
    log = Progress(progress)
    log.line(f"writing {dst.name}: {src.name} with {factor} x {n_layer} blocks, "
             f"the added ones with zero output projections ...")
    return atomic_write(dst, lambda tmp: _write_deep(src, tmp, n_layer, factor, log, dst.name),
                        f"the deep model {dst}")


def _block_count(path: Path) -> int:
    """The model's block count, after checking that every block has the tensors make_deep zeroes."""
    arch = describe_gguf(path)["architecture"]
    key = f"{arch}.block_count"
    info = describe_gguf(path, keys=(key,))
    n_layer = info["meta"][key]
    if not isinstance(n_layer, int) or n_layer < 1:
        raise EdgeTreeError(f"{path} has no {key}: not a model made of blocks")
    for i in range(n_layer):
        for name in ZEROED:
            if f"blk.{i}.{name}" not in info["tensors"]:
                raise EdgeTreeError(f"{path} has no blk.{i}.{name}: a deep copy zeroes "
                                    f"{' and '.join(ZEROED)} in every added block")
    return n_layer


def _deep_tensors(reader, n_layer: int, factor: int) -> list[OutTensor]:
    """Every tensor of the source, then blocks n_layer .. factor * n_layer - 1, each a copy of
    block N % n_layer with its ZEROED tensors zero."""
    out = [_copied(t.name, t, zero=False) for t in reader.tensors]
    blocks: dict[int, list] = {}  # block index -> [(name within the block, reader tensor)]
    for t in reader.tensors:
        match = _BLOCK_TENSOR.fullmatch(t.name)
        if match:
            blocks.setdefault(int(match[1]), []).append((match[2], t))
    for n in range(n_layer, factor * n_layer):
        out += [_copied(f"blk.{n}.{name}", t, zero=name in ZEROED) for name, t in blocks[n % n_layer]]
    return out


def _copied(name: str, t, zero: bool) -> OutTensor:
    data = t.data  # a view of the source's memory map: nothing is read until it is written
    source = (lambda: np.zeros(data.shape, data.dtype)) if zero else (lambda: data)
    return OutTensor(name, tuple(data.shape), data.dtype, int(t.tensor_type), source)


def _write_deep(src: Path, dst: Path, n_layer: int, factor: int, log: Progress, display_name: str) -> None:
    import gguf

    reader = gguf.GGUFReader(src, "r")  # ~10 s on a 262k-token vocabulary
    tensors = _deep_tensors(reader, n_layer, factor)
    # the header (metadata, the vocabulary) is as large as the source's
    _check_free_space(dst.parent, reader.data_offset + sum(t.nbytes for t in tensors), display_name)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = start_copy(reader, dst, skip=(f"{arch}.block_count",))
    writer.add_block_count(factor * n_layer)
    write_tensors(writer, tensors, reader.endianess, log, display_name)


def _check_free_space(folder: Path, needed: int, display_name: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise EdgeTreeError(f"not enough disk space for {display_name}: it needs {needed / 1e9:.2f} GB, "
                            f"{folder} has {free / 1e9:.2f} GB free")
