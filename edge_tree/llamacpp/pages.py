"""Memory pages llama.cpp makes resident with nothing in them, given back to the kernel.

A context reserves a row of logits per sequence at creation and clears it (`output_reserve`):
the clear writes every page, so 64 sequences of Gemma's 262,144-token vocabulary hold 64 MiB
from the start, though a pass writes only the rows of its outputs. Those pages hold zeros;
madvise(MADV_DONTNEED) gives them back, and private anonymous memory reads as zeros again (on
macOS the pages keep their zeros): the same contents, resident only once a pass writes them.
The C library's madvise is all this calls: llama.cpp itself is touched by llama.py alone.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

MADV_DONTNEED = 4  # the same on Linux and macOS


def give_back_zeros(address: int, size: int) -> None:
    """The whole pages inside [address, address + size), which hold zeros, back to the kernel;
    where madvise is missing or refuses, nothing changes."""
    page = mmap.PAGESIZE
    start = -(-address // page) * page
    end = (address + size) // page * page
    if end <= start or sys.platform == "win32":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED)
