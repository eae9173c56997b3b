"""The one exception type users meet: its message is written for them, the CLI prints it as one line."""


class EdgeTreeError(Exception):
    """Something the user can fix: a bad path, a bad option value, an incompatible model pair."""

    exit_code = 1


class UsageError(EdgeTreeError):
    """An option value that can never work (a zero budget, an unknown format): exit code 2."""

    exit_code = 2

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")
        self.option = option
