"""Errors fedsim reports to users as one line (exit code 2 from the CLI)."""


class ConfigError(ValueError):
    """A scenario, override or input file is wrong; the message names the key path and what was expected."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)
