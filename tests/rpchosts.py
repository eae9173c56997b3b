"""A fake RPC host for the tests: answers the RPC handshake with another protocol version, as an
rpc-server of another llama.cpp revision would. (llama.cpp's own rpc-server, started on loopback,
and the delaying proxy are in edge_tree/bench/loopback.py.)"""

from __future__ import annotations

import socket
import struct
import threading

from edge_tree.bench.loopback import stop_listening


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
