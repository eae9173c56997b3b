"""The engine's slots and the thread that runs them, with a bounded FIFO of jobs waiting for one.

An Engine is not thread-safe, so a single thread owns it: it gives each waiting job a free slot
(core/slots.py) in arrival order, and runs rounds of every busy slot, all trees in one target
pass. A job talks back to its request (on the server's event loop) through an asyncio queue of
events: ("text", piece) as text streams, then ("done", GenerationResult) or ("error", exception),
or ("closed", None) when the server shut down before the job ran, ("dropped", None) when its
client had left before it ran, or ("unavailable", TargetLost) when an RPC host of the target
stopped answering before it ran. A job whose client went away is cancelled: its slot stops at
the next round boundary (should_stop) and is free again; a waiting one leaves the queue at once.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core.chat import Prompt
from ..core.engine import Engine, GenerationResult
from ..core.options import GenOptions
from ..core.prompt_cache import PromptCache
from ..core.slots import Slots
from ..errors import EdgeTreeError, HostStalled, TargetLost, error_line


class QueueFull(Exception):
    """Every place in the queue is taken."""


class Closed(Exception):
    """The server is shutting down and takes no more jobs."""


class Unavailable(Exception):
    """The target is lost (an RPC host stopped answering): no job can run any more."""


@dataclass
class Job:
    prompt: Prompt  # a ChatPrompt for chat requests
    options: GenOptions
    request_id: str
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    failed: bool = False  # told its error while its generation was still inside a pass
    trace: "_TraceWrites | None" = None

    def send(self, kind: str, value=None) -> None:
        """From the engine's thread to the request's coroutine."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


@dataclass
class Counters:
    """What /health and /metrics report: jobs finished, jobs cancelled by their client, 429s
    given, and the tokens of the jobs that ended (cancelled ones included)."""

    served: int = 0
    cancelled: int = 0
    rejected: int = 0
    prompt_tokens: int = 0
    prompt_cached: int = 0
    tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    decode_s: float = 0.0

    def add(self, stats: dict) -> None:
        self.prompt_tokens += stats["prompt_tokens"]
        self.prompt_cached += stats["prompt_cached"]
        self.tokens += stats["tokens"]
        self.drafted += stats["drafted"]
        self.accepted += stats["accepted"]
        self.rounds += stats["rounds"]
        self.decode_s += stats["wall_s"] - stats["prompt_s"]


class Worker:
    """The engine's own thread. It loads the engine too: llama.cpp's CPU backend keeps an OpenMP
    thread team per calling thread, and a second team (the main thread's, from loading and the
    cost calibration) spinning beside the worker's slowed every generation by a third on 2 cores.
    All of llama.cpp's work therefore happens on this one thread."""

    def __init__(self, load: Callable[[], Engine], queue_size: int, trace_dir: str | None = None,
                 pass_deadline: float | None = None, hosts: tuple[str, ...] = (), cache_ram: int = 0):
        """pass_deadline: seconds a round's pass over the RPC hosts may take before its requests
        fail (None: no limit); hosts: those hosts, as the errors name them; cache_ram: MiB of
        host memory for prompts whose cells left the cache (-1: no limit, 0: none kept)."""
        self._load = load
        self.cache_ram = cache_ram
        self.engine: Engine | None = None
        self.slots: Slots | None = None
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        self.queue_size = queue_size
        self.trace_dir = trace_dir
        self.counters = Counters()
        self.running: dict[int, Job] = {}  # by slot
        self.lost: TargetLost | None = None
        self.pass_deadline, self.hosts = pass_deadline, hosts
        self.stalled: HostStalled | None = None  # while a pass is past its deadline
        self._pass_started: float | None = None  # time.monotonic() of the round in progress
        self._waiting: collections.deque[Job] = collections.deque()
        self._closing = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._main, name="edge-tree-engine", daemon=True)

    def start(self) -> None:
        """Start the thread and wait until it has loaded the engine; its load error is raised here."""
        self._thread.start()
        self._loaded.wait()
        if self._load_error is not None:
            raise self._load_error
        if self.pass_deadline and self.hosts:
            threading.Thread(target=self._watch, name="edge-tree-pass-deadline", daemon=True).start()

    def _main(self) -> None:
        try:
            self.engine = self._load()
            self.slots = Slots(self.engine, PromptCache(self.cache_ram) if self.cache_ram else None)
        except BaseException as e:  # told to start(), which raises it on the caller's thread
            self._load_error = e
            return
        finally:
            self._loaded.set()
        try:
            self._loop()
        finally:
            if not self.lost:  # a lost target's models wait on their host forever: never freed
                self.slots.close()
                self.engine.close()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, job: Job) -> None:
        """Queue a job; QueueFull when the queue is full, Closed when shutting down, Unavailable
        once the target is lost."""
        with self._wake:
            if self._closing:
                raise Closed
            if self.lost or self.stalled:
                raise Unavailable(self.lost or self.stalled)
            if len(self._waiting) - self.slots.free >= self.queue_size:  # jobs it would wait behind
                self.counters.rejected += 1
                raise QueueFull
            self._waiting.append(job)
            self._wake.notify()

    def withdraw(self, job: Job) -> None:
        """A waiting job whose client left: its place goes at once (a running one stops at its
        next round, through job.cancelled)."""
        with self._wake:
            if job not in self._waiting:
                return
            self._waiting.remove(job)
            self.counters.cancelled += 1
        job.send("dropped")

    def close(self) -> None:
        """Take no more jobs: the running ones stop after their round, the waiting ones are told
        the server closed. Safe to call from a signal handler (it only takes a short lock)."""
        with self._wake:
            self._closing = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            self._wake.notify()
        for job in waiting:
            job.send("closed")

    def target_lost(self, error: TargetLost) -> None:
        """On llama.cpp's thread, when an RPC host of the target stopped answering: the running
        jobs fail now (the thread stays inside llama.cpp for good, waiting on the host), the
        waiting ones and every later one are told the target is unavailable."""
        with self._wake:
            self.lost = error
            waiting, self._waiting = list(self._waiting), collections.deque()
        for job in list(self.running.values()):
            job.send("error", error)
        for job in waiting:
            job.send("unavailable", error)

    def slot_states(self) -> list[dict]:
        """Each slot: idle, reading a request's prompt, or generating (the tokens so far)."""
        states = []
        for slot, run in enumerate(list(self.slots.runs) if self.slots else []):
            job = self.running.get(slot)
            if run is None or job is None:
                states.append({"id": slot, "state": "idle"})
            elif run.unread or run.decode_started is None:
                states.append({"id": slot, "state": "reading", "request_id": job.request_id,
                               "prompt_left": len(run.unread)})
            else:
                elapsed = time.perf_counter() - run.decode_started
                states.append({"id": slot, "state": "generating", "request_id": job.request_id,
                               "tokens": len(run.generated),
                               "tokens_per_s": round(len(run.generated) / max(elapsed, 1e-9), 3)})
        return states

    def join(self) -> bool:
        """Wait for the engine's thread to end after close(); False where it still waits inside
        llama.cpp on an RPC host past the deadline (given one more deadline to come back). A lost
        target's thread never comes back: it waits in Python, and the process may end around it."""
        if self.lost:
            return True
        while self._thread.is_alive() and not self.stalled:
            self._thread.join(0.1)
        if self.stalled:
            self._thread.join(self.pass_deadline)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self.running and not self._closing:
                    self._wake.wait()
                if self._closing and not self.running:
                    return
                admitted = [self._waiting.popleft() for _ in range(min(self.slots.free, len(self._waiting)))]
            for job in admitted:
                self._start(job)
            if self.running:
                self._pass_started = time.monotonic()
                try:
                    ended = self.slots.step()
                finally:
                    self._pass_started = None
                self._answered_again()
                for slot, outcome in ended:
                    self._end(self.running[slot], outcome)
                    del self.running[slot]  # after the counts: /health never sees it half-ended

    def _watch(self) -> None:
        """Fail the requests of a pass that outlives the deadline: the host holding it up may
        never answer, and their clients should not wait on it (llama.cpp's RPC client has no
        timeout of its own; this thread cannot take the engine's thread out of its wait)."""
        period = min(1.0, self.pass_deadline / 10)
        while self._thread.is_alive():
            time.sleep(period)
            started = self._pass_started
            if started is not None and not self.stalled and time.monotonic() - started > self.pass_deadline:
                self._stall()

    def _stall(self) -> None:
        hosts = ", ".join(self.hosts)
        where = f"RPC host {hosts}" if len(self.hosts) == 1 else f"one of the RPC hosts {hosts}"
        error = HostStalled(f"{where} did not answer within {self.pass_deadline:g} s (--rpc-timeout)")
        with self._wake:
            self.stalled = error
            waiting, self._waiting = list(self._waiting), collections.deque()
            running = list(self.running.values())
        print(error_line(error) + "; answering 503 until it answers", file=sys.stderr, flush=True)
        for job in running:  # their runs stop at the next round, if the pass ever returns
            job.failed = True
            job.cancelled.set()
            job.send("error", error)
        for job in waiting:
            job.send("unavailable", error)

    def _answered_again(self) -> None:
        if self.stalled:
            print("edge-tree: the RPC hosts answered again: serving", file=sys.stderr, flush=True)
            with self._wake:
                self.stalled = None

    def _start(self, job: Job) -> None:
        if job.cancelled.is_set():  # its client left while it waited
            self.counters.cancelled += 1
            job.send("dropped")
            return
        try:
            on_header, on_step = open_trace(job, self.trace_dir)
            slot = self.slots.start(job.prompt, job.options, on_text=lambda text: job.send("text", text),
                                    on_step=on_step, on_header=on_header,
                                    should_stop=lambda: job.cancelled.is_set() or self._closing)
        except Exception as error:  # noqa: BLE001  the request answers it (400 or 500)
            self._end(job, error)
            return
        self.running[slot] = job

    def _end(self, job: Job, outcome: GenerationResult | Exception) -> None:
        if job.trace:
            if not isinstance(outcome, Exception):
                job.trace.run(job.trace.trace.write_summary, {"stats": outcome.stats, "text": outcome.text})
            job.trace.run(job.trace.trace.close)
        if job.failed:  # its client has its error already
            return
        if isinstance(outcome, Exception):
            job.send("error", outcome)
            return
        if outcome.stop_reason == "interrupted":  # its client left, or the server is closing
            self.counters.cancelled += 1
        else:
            self.counters.served += 1
        self.counters.add(outcome.stats)
        job.send("done", outcome)


def open_trace(job: Job, trace_dir: str | None):
    """Start trace_dir/<request id>/ (trace.jsonl, report.html) when asked: the on_header and
    on_step callbacks that write the header and each round; the summary and the close come at
    the end. A trace that cannot be written is said once in the server's log and dropped: the
    answer goes out."""
    if trace_dir is None:
        return None, None
    from ..viz.jsonl import TraceWriter
    from ..viz.outputs import trace_sinks

    folder = Path(trace_dir) / job.request_id
    trace = TraceWriter(folder, trace_sinks(folder, ["jsonl"]))
    job.trace = writes = _TraceWrites(trace, job.request_id)
    return (lambda header: writes.run(trace.write_header, header | {"request_id": job.request_id}),
            lambda step: writes.run(trace.write_step, step))


class _TraceWrites:
    """A request's trace writes until one fails: that one is logged, the rest are skipped."""

    def __init__(self, trace, request_id: str):
        self.trace, self.request_id, self.failed = trace, request_id, False

    def run(self, write, *args) -> None:
        if self.failed:
            return
        try:
            write(*args)
        except (OSError, EdgeTreeError, ValueError) as e:
            self.failed = True
            print(f"edge-tree: trace of {self.request_id} not written: {e}", file=sys.stderr, flush=True)
            try:
                self.trace.close()
            except (OSError, EdgeTreeError, ValueError):
                pass
