"""The one exception type users meet: its message is written for them, a face prints it as one line."""

import sys
from contextlib import contextmanager


class EdgeTreeError(Exception):
    """Something the user can fix: a bad path, a bad option value, an incompatible model pair."""

    exit_code = 1


class UsageError(EdgeTreeError):
    """An option value that can never work (a zero budget, an unknown format): exit code 2."""

    exit_code = 2

    def __init__(self, option: str, message: str, field: str | None = None):
        super().__init__(f"{option}: {message}")
        self.option = option  # the command-line flag, as the message names it
        self.field = field or option.lstrip("-").replace("-", "_")  # the option's name in code and JSON


class InputError(EdgeTreeError):
    """One generation's input cannot be served (a prompt longer than the context, messages the
    chat template refuses): the caller's to fix, so a server answers 400 naming `field`."""

    def __init__(self, field: str, message: str, code: str | None = None):
        super().__init__(message)
        self.field = field  # the request field at fault: prompt, max_tokens, messages
        self.code = code  # a machine-readable reason, e.g. context_length_exceeded


class TargetLost(EdgeTreeError):
    """A host that holds the target's layers (an RPC host) stopped answering mid-run. The engine
    cannot go on: llama.cpp's calls that wait on the host never return."""

    def __init__(self, message: str, hosts: tuple[str, ...] = ()):
        super().__init__(message)
        self.hosts = hosts  # the hosts that failed


class HostStalled(EdgeTreeError):
    """A target pass on RPC hosts ran past its deadline (serve --rpc-timeout): the requests in it
    fail, and the server waits for the host to answer again."""


def error_line(error: EdgeTreeError) -> str:
    return f"edge-tree: error: {error}"


@contextmanager
def user_errors():
    """For command-line faces: the one exception type users meet becomes one line on stderr and
    its exit code."""
    try:
        yield
    except EdgeTreeError as e:
        print(error_line(e), file=sys.stderr)
        sys.exit(e.exit_code)
