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


@contextmanager
def user_errors():
    """For command-line faces: the one exception type users meet becomes one line on stderr and
    its exit code."""
    try:
        yield
    except EdgeTreeError as e:
        print(f"edge-tree: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
