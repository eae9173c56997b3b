"""Copying a GGUF model file with changes, one tensor at a time.

The metadata is copied (minus the keys a caller rewrites); each output tensor's data is produced
only when it is written, from the source's memory map, so a copy of several GB never sits in RAM.
Both the F32 demo target (demo.py) and the deep copy (deep.py) are written this way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..errors import EdgeTreeError
from ..progress import Progress


@dataclass(frozen=True)
class OutTensor:
    name: str
    shape: tuple[int, ...]  # numpy order (slowest dimension first), in bytes for quantized data
    dtype: np.dtype         # uint8 for quantized data, as the gguf reader gives it
    qtype: int              # ggml type (gguf.GGMLQuantizationType)
    data: Callable[[], np.ndarray]  # called once, when the tensor is written

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def start_copy(reader, dst: Path, skip: Iterable[str] = ()):
    """A gguf.GGUFWriter for dst holding reader's architecture, alignment and metadata, less the
    keys in skip (the caller adds their new values)."""
    import gguf

    arch_field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    if arch_field is None:
        raise EdgeTreeError(f"{reader.data.filename} has no general.architecture: not a model GGUF")
    writer = gguf.GGUFWriter(dst, arch_field.contents(), endianess=reader.endianess)
    alignment = reader.get_field(gguf.Keys.General.ALIGNMENT)
    if alignment is not None:
        writer.data_alignment = int(alignment.contents())
    # GGUF.* are the reader's virtual fields; the writer adds the architecture itself.
    skip = {gguf.Keys.General.ARCHITECTURE, *skip}
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in skip:
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub_type)
    return writer


def write_tensors(writer, tensors: list[OutTensor], endianess, log: Progress, display_name: str) -> None:
    """Write the header, the metadata and the tensors (in list order) through writer, then close
    it. The progress line counts bytes written."""
    total = sum(t.nbytes for t in tensors)
    t0 = time.perf_counter()
    try:
        for t in tensors:
            writer.add_tensor_info(t.name, t.shape, t.dtype, t.nbytes, raw_dtype=t.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        done, last_shown = 0, -1.0
        for t in tensors:
            writer.write_tensor_data(t.data(), tensor_endianess=endianess)
            done += t.nbytes
            now = time.monotonic()
            if now - last_shown >= 0.2 or done == total:
                last_shown = now
                log.update(f"writing {display_name} {100 * done / total:3.0f}% "
                           f"({done / 1e6:.0f}/{total / 1e6:.0f} MB)")
        log.end()
        log.line(f"wrote {display_name} ({total / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s")
    finally:
        writer.close()
