"""llama.cpp's RPC backend, the parts that need no ctypes: endpoints, the handshake check, and
what happens when a host stops answering.

llama.cpp's RPC client aborts the whole process (GGML_ABORT) when it cannot connect, when the
server speaks another protocol version, and when a server dies mid-run. So before llama.cpp
touches an endpoint, `check_host` connects from Python and runs the same HELLO exchange
(ggml-rpc.cpp, negotiate_hello): an unreachable host or a version mismatch is one line. A host
that dies later reaches `host_failed` through the abort callback llama.py installs; that thread
never returns to llama.cpp (which would call abort()).
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import threading
import time
from typing import Callable

from ..endpoints import split_endpoint
from ..errors import EdgeTreeError, TargetLost, error_line

# ggml-rpc.h of the llama.cpp revision llama-cpp-python 0.3.36 vendors; its client refuses a
# server of another major version or of a newer minor one (tests/test_rpc.py runs the check
# against an rpc-server built from the same source)
PROTOCOL_MAJOR, PROTOCOL_MINOR = 7, 0
HELLO_CMD = 14  # RPC_CMD_HELLO, fixed across versions so that a mismatch can be told
CONN_CAPS_SIZE = 24  # rpc_msg_hello_req: the client's transport capabilities (none: plain TCP)
HELLO_REPLY_SIZE = 4 + CONN_CAPS_SIZE  # rpc_msg_hello_rsp: major, minor, patch, padding, caps
CONNECT_TIMEOUT_S = 3.0
HANDSHAKE_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 0.5  # after a failure: which host refuses connections now

INSTALL_STEP = ('CMAKE_ARGS="-DGGML_RPC=ON" pip install --force-reinstall --no-cache-dir '
                'llama-cpp-python')
NO_BACKEND = f"--rpc: this llama.cpp build has no RPC backend; reinstall it with {INSTALL_STEP}"
SERVER_BUILD = "scripts/build_llama_cpp.sh --rpc-server-only"


# -- the handshake, from Python ----------------------------------------------------------------

def check_host(endpoint: str, timeout: float = HANDSHAKE_TIMEOUT_S) -> None:
    """Connect and run the HELLO exchange as llama.cpp's client would; EdgeTreeError (one line)
    where llama.cpp would abort. The connection is closed again: rpc-server serves one client
    at a time, and llama.cpp connects next."""
    with _connect(endpoint) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendall(struct.pack("<BQ", HELLO_CMD, CONN_CAPS_SIZE) + bytes(CONN_CAPS_SIZE))
            size = _receive(sock, 8)  # the reply's size, then the reply
            reply = _receive(sock, min(struct.unpack("<Q", size)[0], 64)) if len(size) == 8 else b""
        except socket.timeout:
            raise EdgeTreeError(f"RPC host {endpoint} did not answer the RPC handshake within "
                                f"{timeout:g} s (rpc-server serves one client at a time: is another "
                                "program using it?)") from None
        except ConnectionError:
            reply = b""
        except OSError as e:
            raise EdgeTreeError(f"RPC host {endpoint}: the handshake failed: {e.strerror or e}") from None
    if len(reply) < 3:
        raise EdgeTreeError(f"RPC host {endpoint} closed the connection during the RPC handshake: "
                            f"it is not an rpc-server of protocol {PROTOCOL_MAJOR}.x (build one from "
                            f"this llama.cpp: {SERVER_BUILD})")
    major, minor, patch = reply[:3]
    if len(reply) != HELLO_REPLY_SIZE or major != PROTOCOL_MAJOR or minor > PROTOCOL_MINOR:
        raise EdgeTreeError(f"RPC host {endpoint} runs RPC protocol {major}.{minor}.{patch}; this "
                            f"llama.cpp speaks {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}: run an rpc-server "
                            f"built from the same llama.cpp revision ({SERVER_BUILD})")


def _connect(endpoint: str) -> socket.socket:
    host, port = split_endpoint(endpoint)
    try:  # IPv4 only, as llama.cpp's client resolves (gethostbyname)
        address = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4]
    except OSError:
        raise EdgeTreeError(f"RPC host {endpoint}: cannot resolve {host!r} to an IPv4 address") from None
    try:
        return socket.create_connection(address, timeout=CONNECT_TIMEOUT_S)
    except OSError as e:
        why = "timed out" if isinstance(e, socket.timeout) else (e.strerror or str(e)).lower()
        raise EdgeTreeError(f"RPC host {endpoint} is unreachable: {why} (is rpc-server running "
                            "there, listening on that address and port?)") from None


def _receive(sock: socket.socket, size: int) -> bytes:
    """Up to size bytes: fewer only where the peer closed the connection."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def refusing(endpoints, timeout: float = PROBE_TIMEOUT_S) -> list[str]:
    """The endpoints that no longer accept a TCP connection (a dead rpc-server refuses at once;
    a live one, busy with our own connection, accepts into its backlog)."""
    dead = []
    for endpoint in endpoints:
        try:
            socket.create_connection(split_endpoint(endpoint), timeout=timeout).close()
        except OSError:
            dead.append(endpoint)
    return dead


# -- a host that stops answering mid-run -------------------------------------------------------

class _State:
    registered: list[str] = []  # every endpoint llama.cpp was given, in this process
    failure: TargetLost | None = None
    handler: Callable[[TargetLost], None] | None = None


def registered(endpoint: str) -> None:
    if endpoint not in _State.registered:
        _State.registered.append(endpoint)


def failure() -> TargetLost | None:
    """The host failure this process met, if any: models on RPC hosts can no longer run."""
    return _State.failure


def on_host_failure(handler: Callable[[TargetLost], None] | None) -> None:
    """Who hears that a host stopped answering (called on llama.cpp's thread). None: the default,
    one line on stderr and exit status 1, as a command-line tool ends on an error."""
    _State.handler = handler


def is_rpc_abort(message: str) -> bool:
    """Whether a GGML_ABORT message comes from the RPC client (its source file is in it)."""
    return "ggml-rpc" in message


def host_failed(message: str) -> None:
    """From the abort callback: name the host, tell the handler, and never return (returning
    lets llama.cpp call abort()). The thread waits forever: llama.cpp's calls that wait on it
    never finish, so a model on a failed host is never used or freed again (llama.py)."""
    reason = message.rsplit(": ", 1)[-1].strip()
    dead = _dead_hosts(_State.registered)
    hosts = ", ".join(dead)
    where = f"RPC host {hosts}" if len(dead) == 1 else f"one of the RPC hosts {hosts}"
    _State.failure = TargetLost(f"{where} stopped answering (llama.cpp: {reason})", tuple(dead))
    try:
        (_State.handler or _exit_now)(_State.failure)
    finally:  # even if the handler fails: returning would abort the process
        threading.Event().wait()


def _dead_hosts(endpoints: list[str], settle_s: float = 1.0) -> list[str]:
    """The hosts that refuse connections, asked again for up to settle_s while none does: a killed
    rpc-server's connection to us may close before its listening socket does (measured: a test
    named every host, 1 run in about 15). Every host if none ever refuses."""
    deadline = time.monotonic() + settle_s
    while not (dead := refusing(endpoints)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return dead or list(endpoints)


def _exit_now(error: EdgeTreeError) -> None:
    """The default: the text streamed so far and every trace line are already flushed; nothing
    else is written (--stats-json and report.html are written only at the end)."""
    sys.stdout.flush()
    sys.stderr.write(error_line(error) + "\n")
    sys.stderr.flush()
    os._exit(error.exit_code)
