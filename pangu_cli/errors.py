"""The error hierarchy. Each class carries the process exit code the CLI maps it to.

Raise these anywhere; only the CLI turns them into a one-line message and an exit code.
"""

from __future__ import annotations


class PanguError(Exception):
    """Base of all expected failures: `message` says what is wrong, `hint` how to fix it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class UsageError(PanguError):
    """Bad input from the user: arguments, prompt files, output paths."""

    exit_code = 2


class ModelError(PanguError):
    """A model, config or checkpoint is missing, corrupt or does not match."""

    exit_code = 3


class CheckpointError(ModelError):
    """A checkpoint's keys or shapes do not match the network it is loaded into."""


class DeviceError(PanguError):
    """The requested device or precision is not available."""

    exit_code = 4


class Interrupted(PanguError):
    exit_code = 130


EXIT_CODES = {
    0: "success",
    1: "unexpected internal error (run with --debug for the traceback)",
    2: "usage error or bad input",
    3: "model or checkpoint problem",
    4: "device problem",
    5: "batch finished, but some items failed",
    130: "interrupted (Ctrl-C); completed images are kept",
}
