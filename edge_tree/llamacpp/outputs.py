"""Output rows llama.cpp zeroes and nothing reads, handed back to the operating system.

A llama_context reserves a row of logits (n_vocab floats) for every one of its sequences when it
is created, and a larger reservation whenever a batch asks for more outputs (or for hidden states
too) than the last one held, and writes zeros through all of it each time (llama-context.cpp,
`output_reserve`: `ggml_backend_buffer_clear`). Every leaf of a tree is a sequence: a context of
edge-tree's holds 64 of them on a CPU, 8 more for each serving slot past eight, so 64 MiB of
zeros on Gemma's 262k vocabulary, in the target and again in a full draft, resident from the
start, where a pass writes only as many rows as its tree has nodes (llama.cpp's own tools hold
one sequence, or one a slot).

Rows past those the last decode wrote are never read (a row is valid until the next decode), so
after each new reservation they are given back with madvise(MADV_DONTNEED): a page given back
takes memory again only when a later decode writes it. Only on Linux, and only where the buffer is
plain host memory (no layer offloaded: with a GPU, llama.cpp pins it for the device's copies).
"""

from __future__ import annotations

import ctypes
import mmap
import sys

FLOAT = 4  # bytes
MADV_DONTNEED = 4  # Linux: the range reads as zeros after it, and holds no memory until written


def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc.madvise


_MADVISE = _madvise()


def give_back(address: int, size: int) -> None:
    """The whole pages inside [address, address + size) back to the system (their contents are
    not needed again)."""
    page = mmap.PAGESIZE
    start = -(-address // page) * page
    end = (address + size) // page * page
    if _MADVISE is not None and end > start:
        _MADVISE(start, end - start, MADV_DONTNEED)  # a refusal only leaves the pages resident


class OutputRows:
    """One context's output buffer as llama.cpp sizes it: rows = max(the batch's outputs, the
    context's sequences), each n_vocab logits and, while hidden states are on, n_embd floats.
    ctx: the llama_context; buffers: llama_get_logits and llama_get_embeddings, bound to return
    addresses (where llama.cpp laid the two out for the last decode)."""

    def __init__(self, ctx: int, model, n_seq_max: int, buffers):
        self.ctx, self.buffers = ctx, buffers
        self.n_vocab, self.n_embd, self.n_seq_max = model.n_vocab, model.n_embd, n_seq_max
        self.on = _MADVISE is not None and not model.offloaded_layers
        self.reserved = n_seq_max * model.n_vocab  # floats, as reserved when the context was made
        if self.on:
            self._give_back_past(0, n_seq_max, hidden=False)

    def decoded(self, outputs: int, hidden: bool) -> None:
        """After a decode that wrote `outputs` rows: where it made llama.cpp reserve (and zero)
        a larger buffer, give back the rows past those."""
        if not self.on:  # every decode passes here: nothing to work out where nothing goes back
            return
        rows = max(outputs, self.n_seq_max)
        wanted = rows * (self.n_vocab + (self.n_embd if hidden else 0))
        if wanted > self.reserved:
            self.reserved = wanted
            if rows > outputs:
                self._give_back_past(outputs, rows, hidden)

    def _give_back_past(self, written: int, rows: int, hidden: bool) -> None:
        for buffer, width in zip(self.buffers, (self.n_vocab, self.n_embd if hidden else 0)):
            base = width and buffer(self.ctx)
            if base:  # NULL where llama.cpp holds none
                give_back(base + written * width * FLOAT, (rows - written) * width * FLOAT)
