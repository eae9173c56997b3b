"""Run the app on uvicorn until SIGINT or SIGTERM, then stop gracefully and exit 0."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import uvicorn

from ..core.engine import Engine
from ..errors import EdgeTreeError, TargetLost, error_line
from ..llamacpp import rpc
from .app import create_app
from .listener import start_over
from .wire import Limits
from .worker import Worker


RECONNECT_PERIOD_S = 1.0  # how often a lost host is asked whether it is back


def model_id(engine: Engine) -> str:
    """The name clients pass as `model`: the target file's name without .gguf."""
    return Path(engine.target_path).stem


@dataclass(frozen=True)
class Settings:
    """What `edge-tree serve` was told, beyond the models."""

    queue_size: int
    trace_dir: str | None
    api_key: str | None
    max_body: int
    loopback: bool  # bound to a loopback address: only loopback Host headers are answered
    cors_origins: tuple[str, ...]
    n_predict: int | None  # the default max_tokens
    timeout: float | None  # the longest generation, seconds
    rpc_timeout: float | None  # the longest pass over RPC hosts, seconds
    hosts: tuple[str, ...]  # the RPC hosts of both models
    cache_ram: int = 0  # MiB for prompts kept in host memory (-1: no limit, 0: none)


def run(load: Callable[[], Engine], listener: socket.socket, settings: Settings) -> None:
    """Load the engine on its worker's thread, then serve until a signal; then the running
    generations end after their round, the waiting requests get 503, and this returns."""
    worker = Worker(load, settings.queue_size, settings.trace_dir, settings.rpc_timeout, settings.hosts,
                    settings.cache_ram)
    worker.start()
    engine = worker.engine
    limits = Limits(engine.models.lanes[0].cells, settings.n_predict, settings.timeout)
    app = create_app(worker, model_id(engine), settings.api_key, settings.max_body, settings.loopback,
                     settings.cors_origins, limits)
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = GracefulServer(config, worker)
    host, port = listener.getsockname()[:2]
    print(f"edge-tree: serving {model_id(engine)} at http://{_url_host(host)}:{port}/v1 "
          f"({len(engine.models.lanes)} slot(s) of {limits.n_ctx} tokens, queue {settings.queue_size}; "
          "Ctrl-C to stop)", file=sys.stderr, flush=True)
    rpc.on_host_failure(lambda error: _target_lost(worker, error, listener))
    try:
        with _signals_end_quietly():
            server.run(sockets=[listener])
    finally:
        rpc.on_host_failure(None)
        worker.close()
        if not worker.join():  # its thread still waits inside llama.cpp on a host: leave without it
            print("edge-tree: stopped while waiting on an RPC host", file=sys.stderr, flush=True)
            os._exit(0)


def _target_lost(worker: Worker, error: TargetLost, listener: socket.socket) -> None:
    """Said once in the server's log; the server goes on, answering 503 (see Worker.target_lost),
    until the failed hosts answer again: then it starts over in place."""
    print(error_line(error) + "; answering 503 until the host is back", file=sys.stderr, flush=True)
    worker.target_lost(error)
    threading.Thread(target=_start_over_when_back, args=(error.hosts, listener), daemon=True,
                     name="edge-tree-reconnect").start()


def _start_over_when_back(hosts: tuple[str, ...], listener: socket.socket) -> None:
    """Once every failed host answers the RPC handshake again, load the models afresh by starting
    this server over in this process (listener.py): llama.cpp cannot free or reuse a model whose
    host died (its calls wait on it for good), and a fresh process can load it again."""
    while True:
        time.sleep(RECONNECT_PERIOD_S)
        try:
            for host in hosts:
                rpc.check_host(host, timeout=RECONNECT_PERIOD_S)
        except EdgeTreeError:
            continue
        print(f"edge-tree: RPC host {', '.join(hosts)} answers again: loading the models afresh",
              file=sys.stderr, flush=True)
        start_over(listener)


class GracefulServer(uvicorn.Server):
    """uvicorn's Server, closing the worker as soon as a signal asks it to stop. It looks at
    should_exit on each tick, in the event loop, so no lock is ever taken in a signal handler."""

    def __init__(self, config: uvicorn.Config, worker: Worker):
        super().__init__(config)
        self.worker = worker

    async def on_tick(self, counter: int) -> bool:
        should_exit = await super().on_tick(counter)
        if should_exit:
            self.worker.close()
        return should_exit


@contextmanager
def _signals_end_quietly():
    """uvicorn raises the signal that stopped it again once it has shut down, to the handler it
    found: make that handler a no-op, so that a graceful stop exits 0, not by SIGTERM."""
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
