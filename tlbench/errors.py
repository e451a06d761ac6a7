"""The tlbench exceptions and their exit codes.

A user mistake raises one of these; the CLI prints its message on one line (plus the fix) and exits
with the code below. Anything else is a bug and keeps its traceback.

| code | meaning |
| --- | --- |
| 0 | success |
| 1 | internal error (a bug: please report it with the traceback) |
| 2 | bad command-line usage (unknown option, malformed value) |
| 3 | pretrained weights unavailable (offline, no cache, bad weight file) |
| 4 | data problem (missing, malformed, unknown layout, corrupt images) |
| 5 | model problem (unknown backbone, impossible freeze depth) |
| 6 | output problem (folder not writable, refusing to overwrite results) |
| 7 | device problem (CUDA asked for but not available) |
| 8 | download failed (no network, hub unreachable) |
| 130 | interrupted (Ctrl-C / SIGTERM); partial work is kept and can be resumed |
"""

from __future__ import annotations


class TlbenchError(Exception):
    """Base class: a problem the user can fix. `hint` says how."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.one_line()

    def one_line(self) -> str:
        """The message and the fix, as the CLI prints them."""
        text = self.message.rstrip(".")
        return f"{text}. {self.hint}" if self.hint else f"{text}."


class UsageError(TlbenchError):
    exit_code = 2


class WeightsError(TlbenchError):
    exit_code = 3


class DataError(TlbenchError):
    exit_code = 4


class ModelError(TlbenchError):
    exit_code = 5


class OutputError(TlbenchError):
    exit_code = 6


class DeviceError(TlbenchError):
    exit_code = 7


class DownloadError(TlbenchError):
    exit_code = 8


EXIT_INTERRUPTED = 130


class Interrupted(TlbenchError):
    """Stopped by Ctrl-C or SIGTERM at a clean point; the hint says how to continue."""

    exit_code = EXIT_INTERRUPTED
