"""Errors fedsim reports to users as one line: ConfigError (exit code 2), RunAborted (exit code 1)."""


def _one_line(text: str) -> str:
    """Collapse whitespace (newlines from wrapped library messages included), so the CLI prints one line."""
    return " ".join(str(text).split())


class ConfigError(ValueError):
    """A scenario, override or input file is wrong; the message names the key path and what was expected."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = _one_line(message)
        super().__init__(f"{path}: {self.message}" if path else self.message)

    def __reduce__(self):
        """Pickle with both arguments: a worker actor's ConfigError must reach the driver as one."""
        return (type(self), (self.path, self.message))


def one_line(exc: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message` of an error (of its cause, when Ray wrapped it), for one-line reports."""
    cause = getattr(exc, "cause", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"[:limit]


class RunAborted(RuntimeError):
    """A run stopped on a runtime failure (e.g. a worker process died), not on bad input.

    The message says what failed and which checkpoint `fedsim run --resume` continues from.
    """

    def __init__(self, message: str):
        super().__init__(_one_line(message))
