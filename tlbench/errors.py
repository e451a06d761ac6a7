"""The tlbench exceptions and their exit codes.

A user mistake raises one of these; every tlbench process (the CLI, a sweep cell's worker) prints
its message on one line (plus the fix) and exits with the code below (`run_entry_point`). Anything
else is a bug and keeps its traceback.

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
| 9 | diverged: the training loss became NaN or infinite; the run stopped (status `diverged`) |
| 10 | a process of a torchrun job was lost (killed, stopped, unreachable); resumable with --resume |
| 130 | interrupted (Ctrl-C / SIGTERM); partial work is kept and can be resumed |

Under torchrun every rank runs this, and the final line is printed once, by rank 0: a failure of
the job is met by every rank (rank 0 hears of another's through `Group.together`). A rank > 0 with
an error waits `RANK_GRACE` seconds first, so that rank 0 prints and ends the job (torchrun then
stops the others); only if the job is still alive after that does it print its own line. An error
that is this rank's own to tell (`every_rank`) is printed at once.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable


class TlbenchError(Exception):
    """Base class: a problem the user can fix. `hint` says how.

    Attributes:
        every_rank: Print it on any rank of a torchrun job, not only on rank 0 (a problem of this
            rank alone, or rank 0 is the one that was lost).
    """

    exit_code = 1
    every_rank = False

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


class ConfigError(UsageError):
    """A configuration value outside its choices or bounds.

    Phrased for the Python API (`lr -1.0 must be positive`); the CLI names the flag instead
    (`--lr -1.0 must be positive`) through `as_flag`.

    Attributes:
        field: The config field at fault (`lr`, `recipe.lr`, `amp`, ...).
        problem: What is wrong with its value, without the field's name.
    """

    def __init__(self, field: str, problem: str, hint: str | None = None) -> None:
        super().__init__(f"{field} {problem}", hint)
        self.field = field
        self.problem = problem

    def as_flag(self, flag: str) -> ConfigError:
        """The same error naming a command-line flag (e.g. `--image-size`) instead of the field."""
        out = ConfigError(self.field, self.problem, self.hint)
        out.message = f"{flag} {self.problem}"
        return out


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


class Diverged(TlbenchError):
    """The training loss became NaN or infinite: the run stopped and says so (status `diverged`)."""

    exit_code = 9


class PeerLost(TlbenchError):
    """A process of a torchrun job was lost (killed, stopped, unreachable); the run stopped and its
    last checkpoint stays, so `--resume` continues it."""

    exit_code = 10


RANK_GRACE = 10.0
"""Seconds a rank > 0 leaves rank 0 to print a failure of the job and end it (see above)."""


def job_rank() -> int:
    """This process's rank in a torchrun (or multi-task Slurm) job; 0 outside one.

    Read from the environment as `tlbench.train.distributed.from_environment` reads it, without
    importing torch; a value that is not a number is rank 0 (that module reports it).
    """
    env = os.environ
    try:
        if "RANK" in env and "WORLD_SIZE" in env:
            return int(env["RANK"])
        if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
            return int(env["SLURM_PROCID"])
    except ValueError:
        pass
    return 0


def _format_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    return f"tlbench: warning: {message}\n"


def run_entry_point(
    run: Callable[[], object], aborts: tuple[type[BaseException], ...] = (KeyboardInterrupt,)
) -> int:
    """What every tlbench process does around its work (the CLI, a sweep cell's worker).

    Warnings print as `tlbench: warning: ...`; a `TlbenchError` prints `tlbench: error: <one line>`
    on stderr and gives its exit code (`Interrupted`: 130); an abort (Ctrl-C before a clean stop
    point) prints `tlbench: interrupted` and gives 130. Anything else is a bug and keeps its traceback.

    Args:
        run: The work; an int it returns is the exit status, anything else means 0.
        aborts: The exceptions that mean the user interrupted.

    Returns:
        The process's exit status.
    """
    warnings.formatwarning = _format_warning
    main = job_rank() == 0
    try:
        rv = run()
    except TlbenchError as exc:
        if not (main or exc.every_rank):
            _leave_it_to_rank0()
        sys.stderr.write(f"tlbench: error: {exc.one_line()}\n")
        return exc.exit_code
    except aborts as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, EOFError) and not isinstance(exc, KeyboardInterrupt):
            # click turns an EOFError into an Abort; a file that ended early is a fault, not Ctrl-C
            raise cause from None
        if not main:
            _leave_it_to_rank0()
        sys.stderr.write("tlbench: interrupted\n")
        return EXIT_INTERRUPTED
    return rv if isinstance(rv, int) else 0


def _leave_it_to_rank0() -> None:
    """On a rank > 0 of a failed job: wait for rank 0 to print the job's error and end it, which
    ends this process too (torchrun's SIGTERM, default action: no second line)."""
    import contextlib
    import signal
    import time

    with contextlib.suppress(ValueError):  # only the main thread may set a handler
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(KeyboardInterrupt):
        time.sleep(RANK_GRACE)
