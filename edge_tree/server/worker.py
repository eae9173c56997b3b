"""One engine, one generation at a time: a bounded FIFO of jobs and the thread that runs them.

An Engine is not thread-safe, so a single thread owns it and takes jobs in arrival order. A job
talks back to its request (on the server's event loop) through an asyncio queue of events:
("text", piece) as text streams, then ("done", GenerationResult) or ("error", exception), or
("closed", None) when the server shut down before the job ran, ("dropped", None) when its
client had left before it ran, or ("unavailable", TargetLost) when an RPC host of the target
stopped answering before it ran. A job whose client went away is cancelled: the engine stops it
at the next round boundary (should_stop), or skips it if it had not started.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core.engine import Engine, GenerationResult
from ..core.options import GenOptions
from ..errors import EdgeTreeError, TargetLost


class QueueFull(Exception):
    """Every place in the queue is taken."""


class Closed(Exception):
    """The server is shutting down and takes no more jobs."""


class Unavailable(Exception):
    """The target is lost (an RPC host stopped answering): no job can run any more."""


@dataclass
class Job:
    prompt: str  # a ChatPrompt for chat requests
    options: GenOptions
    request_id: str
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def send(self, kind: str, value=None) -> None:
        """From the engine's thread to the request's coroutine."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


@dataclass
class Counters:
    """What /health reports: jobs finished, jobs cancelled by their client, 429s given."""

    served: int = 0
    cancelled: int = 0
    rejected: int = 0


class Worker:
    """The engine's own thread. It loads the engine too: llama.cpp's CPU backend keeps an OpenMP
    thread team per calling thread, and a second team (the main thread's, from loading and the
    cost calibration) spinning beside the worker's slowed every generation by a third on 2 cores.
    All of llama.cpp's work therefore happens on this one thread."""

    def __init__(self, load: Callable[[], Engine], queue_size: int, trace_dir: str | None = None):
        self._load = load
        self.engine: Engine | None = None
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        self.queue_size = queue_size
        self.trace_dir = trace_dir
        self.counters = Counters()
        self.running: Job | None = None
        self.lost: TargetLost | None = None
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

    def _main(self) -> None:
        try:
            self.engine = self._load()
        except BaseException as e:  # told to start(), which raises it on the caller's thread
            self._load_error = e
            return
        finally:
            self._loaded.set()
        try:
            self._loop()
        finally:
            if not self.lost:  # a lost target's models wait on their host forever: never freed
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
            if self.lost:
                raise Unavailable(self.lost)
            idle = self.running is None and not self._waiting  # the job starts at once
            if not idle and len(self._waiting) >= self.queue_size:
                self.counters.rejected += 1
                raise QueueFull
            self._waiting.append(job)
            self._wake.notify()

    def close(self) -> None:
        """Take no more jobs: the running one stops after its round, the waiting ones are told
        the server closed. Safe to call from a signal handler (it only takes a short lock)."""
        with self._wake:
            self._closing = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            self._wake.notify()
        for job in waiting:
            job.send("closed")

    def target_lost(self, error: TargetLost) -> None:
        """On llama.cpp's thread, when an RPC host of the target stopped answering: the running
        job fails now (its thread stays inside llama.cpp for good, waiting on the host), the
        waiting ones and every later one are told the target is unavailable."""
        with self._wake:
            self.lost = error
            waiting, self._waiting = list(self._waiting), collections.deque()
        running = self.running
        if running:
            running.send("error", error)
        for job in waiting:
            job.send("unavailable", error)

    def join(self, timeout: float | None = None) -> None:
        if not self.lost:  # a lost target's thread never comes back
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._closing:
                    self._wake.wait()
                if self._closing:
                    return
                job = self.running = self._waiting.popleft()
            try:
                self._run(job)
            finally:
                self.running = None

    def _run(self, job: Job) -> None:
        if job.cancelled.is_set():  # its client left while it waited
            self.counters.cancelled += 1
            job.send("dropped")
            return
        try:
            result = generate_traced(self.engine, job, self.trace_dir, on_text=lambda text: job.send("text", text),
                                     should_stop=lambda: job.cancelled.is_set() or self._closing)
        except Exception as error:  # noqa: BLE001  the request answers it (400 or 500)
            job.send("error", error)
            return
        if result.stop_reason == "interrupted":  # its client left, or the server is closing
            self.counters.cancelled += 1
        else:
            self.counters.served += 1
        job.send("done", result)


def generate_traced(engine: Engine, job: Job, trace_dir: str | None, **callbacks) -> GenerationResult:
    """engine.generate, writing trace_dir/<request id>/ (trace.jsonl, report.html) when asked. A
    trace that cannot be written is said once in the server's log and dropped: the answer goes out."""
    if trace_dir is None:
        return engine.generate(job.prompt, job.options, **callbacks)
    from ..core.steps import trace_header
    from ..viz.jsonl import TraceWriter
    from ..viz.outputs import trace_sinks

    folder = Path(trace_dir) / job.request_id
    trace = TraceWriter(folder, trace_sinks(folder, ["jsonl"]))
    header = trace_header(engine, job.options, job.prompt) | {"request_id": job.request_id}
    writes = _TraceWrites(trace, job.request_id)
    writes.run(trace.write_header, header)
    try:
        result = engine.generate(job.prompt, job.options,
                                 on_step=lambda step: writes.run(trace.write_step, step), **callbacks)
        writes.run(trace.write_summary, {"stats": result.stats, "text": result.text})
    finally:
        writes.run(trace.close)
    return result


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
