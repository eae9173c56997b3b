"""A TCP proxy on loopback that delays every byte by a fixed time in each direction: added
network latency for the RPC tests and scripts/bench_rpc.py (this kernel has no netem qdisc).

    with DelayProxy(("127.0.0.1", 50052), delay_s=0.005) as proxy:
        ...  # connect to proxy.endpoint instead of 127.0.0.1:50052

Bytes read at time t are sent on at t + delay_s, in order, so a request and its answer gain
2 x delay_s, as over a link of that one-way latency; bandwidth is not limited. Every connection
gets its own upstream connection. close() (or leaving the with block) ends every thread.
"""

from __future__ import annotations

import queue
import socket
import threading
import time

CHUNK = 1 << 16


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
                try:
                    if not data:
                        dst.shutdown(socket.SHUT_WR)
                        return
                    dst.sendall(data)
                except OSError:
                    return

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()

    def close(self) -> None:
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
