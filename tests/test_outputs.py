"""Output rows handed back (edge_tree/llamacpp/outputs.py): which rows go and when, that a page
handed back reads as zeros, and that a context's logits are the same with and without it."""

from __future__ import annotations

import ctypes
import mmap
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from edge_tree.llamacpp import llama, outputs

PAGE = mmap.PAGESIZE
V, E, SEQS = 1000, 64, 8  # vocabulary, hidden width, sequences of the fake context
LOGITS, STATES = 1 << 24, 1 << 26  # the fake buffers' addresses


@pytest.fixture
def given_back(monkeypatch):
    """give_back's calls, as (start, end) in floats from the buffer's start."""
    calls = []

    def record(address, size):
        base = LOGITS if address < STATES else STATES
        calls.append(("logits" if base == LOGITS else "states", (address - base) // 4, (address - base + size) // 4))

    monkeypatch.setattr(outputs, "give_back", record)
    monkeypatch.setattr(outputs, "_MADVISE", lambda *a: 0)
    return calls


def fake_rows(offloaded: int = 0) -> outputs.OutputRows:
    model = SimpleNamespace(n_vocab=V, n_embd=E, offloaded_layers=offloaded)
    return outputs.OutputRows(7, model, SEQS, (lambda ctx: LOGITS, lambda ctx: STATES))


def test_a_context_gives_back_every_row_it_made_and_those_a_larger_reservation_zeroed(given_back):
    rows = fake_rows()
    assert given_back == [("logits", 0, SEQS * V)]  # all of the first reservation: nothing wrote it
    rows.decoded(5, hidden=False)  # within it: llama.cpp reserves nothing new, nothing to give back
    rows.decoded(SEQS, hidden=False)
    assert len(given_back) == 1
    rows.decoded(3, hidden=True)  # hidden states on: a new buffer, logits and states, zeroed
    assert given_back[1:] == [("logits", 3 * V, SEQS * V), ("states", 3 * E, SEQS * E)]
    rows.decoded(20, hidden=True)  # more outputs than sequences: a larger one
    assert given_back[3:] == []  # all 20 rows written: none left over
    rows.decoded(2, hidden=False)  # smaller again: the buffer stays as it is
    rows.decoded(4, hidden=True)
    assert len(given_back) == 3


def test_nothing_is_given_back_where_layers_are_offloaded(given_back):
    rows = fake_rows(offloaded=5)  # with a GPU, llama.cpp pins the buffer for the device's copies
    rows.decoded(3, hidden=True)
    assert given_back == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise(MADV_DONTNEED) is used on Linux only")
def test_a_page_given_back_reads_as_zeros_and_the_pages_around_it_keep_their_bytes():
    region = mmap.mmap(-1, 8 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # as malloc's memory
    region.write(b"\xab" * (8 * PAGE))
    address = ctypes.addressof(ctypes.c_char.from_buffer(region))
    outputs.give_back(address + PAGE // 2, 3 * PAGE)  # whole pages inside: the 2nd and 3rd only
    data = np.frombuffer(region, np.uint8)
    assert (data[PAGE:3 * PAGE] == 0).all()
    assert (data[:PAGE] == 0xAB).all() and (data[3 * PAGE:] == 0xAB).all()
    del data
    region.close()


def test_logits_are_the_same_with_rows_given_back(tiny_target, monkeypatch):
    def rows_read() -> np.ndarray:
        with llama.Model(tiny_target) as model, llama.Context(model, 256, 64, threads=1) as ctx, \
                ctx.new_batch(16, 4) as batch:
            for i, token in enumerate([5, 9, 13, 17]):  # two branches: a shared stem, then their own
                batch.add(token, i, (0, 1), True)
            for i, token in enumerate([21, 25]):
                batch.add(token, 4 + i, (1,), True)
            ctx.decode(batch)
            read = [ctx.logits(i).copy() for i in range(6)]
            ctx.output_hidden(True)  # a larger reservation, zeroed, given back past its one row
            batch.clear()
            batch.add(29, 4, (0,), True)
            ctx.decode(batch)
            return np.concatenate(read + [ctx.logits(0), ctx.hidden(0)])

    given = rows_read()
    monkeypatch.setattr(outputs, "_MADVISE", None)  # as on a machine where nothing is given back
    kept = rows_read()
    assert np.isfinite(given).all() and np.abs(given).max() > 0
    np.testing.assert_array_equal(given, kept)
