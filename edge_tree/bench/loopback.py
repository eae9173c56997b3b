"""Loopback RPC hosts for measurements and tests: llama.cpp's own ggml-rpc-server started on a
free port and waited for (stopped by stop() or its with block, never left behind), and a TCP proxy
that delays every byte by a fixed time each way (added network latency: this kernel has no netem
qdisc), as scripts/bench_rpc.py and the RPC tests use them.

    with RpcServer(rpc_server_binary()) as host, DelayProxy(("127.0.0.1", host.port), 0.005) as hop:
        ...  # give llama.cpp hop.endpoint: each request and its answer gain 2 x 5 ms

ggml-rpc-server comes from `scripts/build_llama_cpp.sh --rpc-server-only` (the README's test
command runs it): $EDGE_TREE_RPC_SERVER, else ~/.cache/edge-tree/llama.cpp/ggml-rpc-server.
The proxy forwards bytes read at time t at t + delay_s, in order; bandwidth is not limited; every
connection gets its own upstream connection; hold() stops it forwarding (a stalled host), release()
goes on.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from ..errors import EdgeTreeError
from ..files import cache_dir

CHUNK = 1 << 16
RPC_SERVER_ENV = "EDGE_TREE_RPC_SERVER"
BUILD_STEP = "scripts/build_llama_cpp.sh --rpc-server-only"
START_TIMEOUT_S = 20
STOP_TIMEOUT_S = 10


def rpc_server_binary() -> Path:
    """ggml-rpc-server where the build step put it; EdgeTreeError (in a test: a failure, never
    a skip) when it is not there."""
    binary = Path(os.environ.get(RPC_SERVER_ENV) or cache_dir() / "llama.cpp" / "ggml-rpc-server")
    if not binary.is_file():
        raise EdgeTreeError(f"{binary} is missing: build it with {BUILD_STEP} (or set {RPC_SERVER_ENV})")
    return binary


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


def accepts(port: int, timeout: float = 0.5) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
        return True
    except OSError:
        return False


class RpcServer:
    """One ggml-rpc-server on 127.0.0.1 (it serves one client at a time)."""

    def __init__(self, binary: Path, threads: int = 1, cache: bool = False, port: int | None = None):
        """cache: rpc-server's tensor cache (-c): big tensors it has seen come as hashes; port:
        a given one (a host restarted where it was), else a free one."""
        self.port = port or free_port()
        self._log = tempfile.TemporaryFile()
        command = [str(binary), "-H", "127.0.0.1", "-p", str(self.port), "-t", str(threads), *(["-c"] if cache else [])]
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not accepts(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise EdgeTreeError(f"ggml-rpc-server did not start on port {self.port}: {self.log}")
            time.sleep(0.05)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def kill(self) -> None:
        """As a host that dies: SIGKILL, no goodbye."""
        self.proc.kill()
        self.proc.wait(STOP_TIMEOUT_S)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def __enter__(self) -> "RpcServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_listening(listener: socket.socket) -> None:
    """Close a listening socket and wake the thread blocked in its accept() (on Linux a close
    alone does not)."""
    try:
        listener.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    listener.close()


class DelayProxy:
    def __init__(self, upstream: tuple[str, int], delay_s: float):
        self.upstream = upstream
        self.delay_s = delay_s
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._flowing = threading.Event()  # cleared: bytes are read and held, as by a stalled host
        self._flowing.set()
        threading.Thread(target=self._accept, name="delayproxy-accept", daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        """One pair of pumps per connection, until the listener closes."""
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:  # the upstream is gone: the client sees its connection close
                client.close()
                continue
            with self._lock:
                self._open += [client, server]
            for sock in (client, server):  # as llama.cpp's own sockets: no Nagle delays on top
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._pump(client, server)
            self._pump(server, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """src -> dst, each chunk held until delay_s after it was read; end of stream included."""
        held: queue.Queue = queue.Queue()

        def read() -> None:
            data = b"-"
            while data:
                try:
                    data = src.recv(CHUNK)
                except OSError:
                    data = b""
                held.put((time.monotonic() + self.delay_s, data))

        def write() -> None:
            while True:
                due, data = held.get()
                time.sleep(max(0.0, due - time.monotonic()))
                self._flowing.wait()
                try:
                    if not data:
                        dst.shutdown(socket.SHUT_WR)
                        return
                    dst.sendall(data)
                except OSError:
                    return

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()

    def hold(self) -> None:
        """Stop forwarding, connections kept open: a host that stops answering mid-pass."""
        self._flowing.clear()

    def release(self) -> None:
        """Forward again, what was held first."""
        self._flowing.set()

    def close(self) -> None:
        self._flowing.set()  # writers blocked on a hold go on, and end on the closed sockets
        stop_listening(self._listener)
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._open.clear()

    def __enter__(self) -> "DelayProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
