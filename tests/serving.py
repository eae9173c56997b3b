"""`edge-tree serve` as a real process on a free loopback port, for tests: started, waited for
(/health), and always stopped (SIGTERM, then SIGKILL if it hangs)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

def edge_tree_exe() -> str:
    """The console script of the environment running the tests (a venv's bin need not be on PATH)."""
    beside = Path(sys.executable).parent / "edge-tree"
    exe = str(beside) if beside.exists() else shutil.which("edge-tree")
    assert exe, "the edge-tree console script is not installed: pip install -e . first"
    return exe


def server_env(tmp_path_factory) -> dict:
    """The tests' own cache (cost measurements), so the user's stays untouched."""
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("serve-cache"))}


def post(server, path, body, raw: bytes | None = None, headers: dict | None = None) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(server.base_url + path, content=content, timeout=60,
                      headers={"Content-Type": "application/json", **(headers or {})})


def assert_error(response, status, param=None):
    """An OpenAI-shaped error with this status (and param), no traceback; returns the error."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "Traceback" not in response.text
    if param:
        assert error["param"] == param, error
    return error


def raw_request(server, body: dict, headers: bytes = b"") -> socket.socket:
    """A request sent on a socket that is never read: closing it is a client leaving."""
    url = urlsplit(server.url)
    data = json.dumps(body).encode()
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                 b"%sContent-Length: %d\r\n\r\n%s" % (url.netloc.encode(), headers, len(data), data))
    return sock


START_TIMEOUT_S = 300  # the models load first; a fresh cache derives the reduced draft (30 s alone)
URL_LINE = re.compile(r"serving \S+ at (http://\S+)/v1")


class ServerProcess:
    def __init__(self, exe: str, *args, env: dict | None = None):
        self.args = [exe, "serve", "--port", "0", *map(str, args)]
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=env if env is not None else os.environ.copy(), text=True)
        self.lines: list[str] = []
        self._url_found = threading.Event()
        self.url = ""
        threading.Thread(target=self._read_stderr, daemon=True).start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:  # drained to the end, so the pipe never fills
            self.lines.append(line)
            found = URL_LINE.search(line)
            if found and not self.url:
                self.url = found.group(1)
                self._url_found.set()

    def _wait_ready(self) -> None:
        if not self._url_found.wait(START_TIMEOUT_S):
            raise AssertionError(f"edge-tree serve did not start: {self.stderr}")
        health = self.wait_health(lambda health: health.get("status") == "ok")
        assert health.get("status") == "ok", f"/health never answered ok: {health} {self.stderr}"

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def wait_health(self, predicate, timeout: float = 30) -> dict:
        """Poll /health until predicate(health) holds (bounded in time). A poll whose connection
        drops while the process lives is made again: a server that starts over in place (a lost
        RPC host came back) execs, and a request in flight at that moment loses its connection."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                health = self.health()
            except httpx.TransportError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise
            else:
                if predicate(health) or time.monotonic() > deadline:
                    return health
            time.sleep(0.05)

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """A signal (SIGTERM, SIGINT as Ctrl-C sends), and the exit status once it exits."""
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
