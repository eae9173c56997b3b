"""RPC hosts on loopback for the tests and scripts/bench_rpc.py: llama.cpp's own ggml-rpc-server,
started on a free port and waited for, and a fake server that answers the RPC handshake with
another protocol version. Every one is stopped by stop() (or its with block), never left behind.

ggml-rpc-server comes from `scripts/build_llama_cpp.sh --rpc-server-only` (README's test
command runs it): $EDGE_TREE_RPC_SERVER, else ~/.cache/edge-tree/llama.cpp/ggml-rpc-server.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from delayproxy import stop_listening

RPC_SERVER_ENV = "EDGE_TREE_RPC_SERVER"
BUILD_STEP = "scripts/build_llama_cpp.sh --rpc-server-only"
START_TIMEOUT_S = 20
STOP_TIMEOUT_S = 10


def rpc_server_binary() -> Path:
    """ggml-rpc-server where the build step put it; AssertionError (a failure, never a skip)
    when it is not there."""
    from edge_tree.files import cache_dir

    binary = Path(os.environ.get(RPC_SERVER_ENV) or cache_dir() / "llama.cpp" / "ggml-rpc-server")
    assert binary.is_file(), f"{binary} is missing: build it with {BUILD_STEP} (or set {RPC_SERVER_ENV})"
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

    def __init__(self, binary: Path, threads: int = 1, cache: bool = False):
        """cache: rpc-server's tensor cache (-c): big tensors it has seen come as hashes."""
        self.port = free_port()
        self._log = tempfile.TemporaryFile()
        command = [str(binary), "-H", "127.0.0.1", "-p", str(self.port), "-t", str(threads), *(["-c"] if cache else [])]
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not accepts(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"ggml-rpc-server did not start on port {self.port}: {self.log}")
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


class FakeRpcServer:
    """Answers the HELLO of every connection with protocol major.minor.patch, as an rpc-server
    of another llama.cpp revision would, then closes it. answer=False: accepts and says nothing."""

    def __init__(self, major: int, minor: int = 0, patch: int = 0, answer: bool = True):
        self.reply = struct.pack("<Q", 28) + bytes([major, minor, patch, 0]) + bytes(24)
        self.answer = answer
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:  # until stop() closes the listener
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(1 + 8 + 24)  # HELLO: command, size, the client's capabilities
                    if self.answer:
                        conn.sendall(self.reply)
                    else:
                        conn.recv(1)  # until the client gives up
                except OSError:
                    pass

    def stop(self) -> None:
        stop_listening(self._listener)

    def __enter__(self) -> "FakeRpcServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
