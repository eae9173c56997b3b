"""The server's listening socket: bound before the models load (a taken port fails at once), and
handed over when the server starts over in place (serve.py: a lost RPC host came back).

Starting over is an exec of the same command line in the same process: the listening socket
stays open across it (its descriptor is named in $EDGE_TREE_LISTEN_FD), so clients that connect
meanwhile wait in its backlog, and the process id a supervisor watches does not change. Every
other descriptor closes at the exec, llama.cpp's connections to the RPC hosts included (its
sockets are not close-on-exec; rpc-server serves one client at a time).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys

from ..errors import EdgeTreeError, UsageError

LISTEN_FD_ENV = "EDGE_TREE_LISTEN_FD"


def listen(host: str, port: int) -> socket.socket:
    """The socket handed over by the process this one started over from, else a new one."""
    handed = os.environ.pop(LISTEN_FD_ENV, None)
    if handed:
        listener = socket.socket(fileno=int(handed))
        os.set_inheritable(listener.fileno(), False)
        return listener
    if not 0 <= port < 65536:
        raise UsageError("--port", f"must be in 0..65535, got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise EdgeTreeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def is_loopback(listener: socket.socket) -> bool:
    return ipaddress.ip_address(listener.getsockname()[0]).is_loopback


def start_over(listener: socket.socket) -> None:
    """Run this command again in this process, handing it the listening socket. Never returns."""
    fd = listener.fileno()
    fd_dir = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    for name in os.listdir(fd_dir):
        if int(name) > 2 and int(name) != fd:
            try:
                os.set_inheritable(int(name), False)  # close-on-exec
            except OSError:
                pass  # the listing's own descriptor, closed by now
    os.set_inheritable(fd, True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, {**os.environ, LISTEN_FD_ENV: str(fd)})
