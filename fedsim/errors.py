"""Errors fedsim reports to users as one line: ConfigError (exit code 2), RunAborted (exit code 1)."""


def _one_line(text: str) -> str:
    """Collapse whitespace (newlines from wrapped library messages included), so the CLI prints one line."""
    return " ".join(str(text).split())


class ConfigError(ValueError):
    """A scenario, override or input file is wrong; the message names the key path and what was expected."""

    def __init__(self, path: str, message: str):
        self.path = path
        message = _one_line(message)
        super().__init__(f"{path}: {message}" if path else message)


class RunAborted(RuntimeError):
    """A run stopped on a runtime failure (e.g. a worker process died), not on bad input.

    The message says what failed and which checkpoint `fedsim run --resume` continues from.
    """

    def __init__(self, message: str):
        super().__init__(_one_line(message))
