"""Slurm's own commands as a cluster sweep calls them, each under a time limit of tlbench's own.

- `submit`: the cells' job array through submitit, whose `sbatch` call has no time limit: an alarm
  (`SBATCH_TIMEOUT_S`) ends a hanging one; an answer without a job id, a refusal, a time-out or a
  Ctrl-C become one `tlbench: error:` line that says what may have been submitted.
- `sacct_states`: the state of every job of the sweep from one `sacct` call (submitit would ask once
  per job, every few seconds), for the polls that `poll_intervals` spaces out more and more.

Importing this module is cheap; submitit is imported when a job is submitted or its states read.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tlbench._util import first_line
from tlbench.errors import Interrupted, OutputError

SBATCH_TIMEOUT_S = 120.0
"""How long `sbatch` may take to answer (a busy controller answers within seconds)."""
SACCT_TIMEOUT_S = 60.0
"""How long one `sacct` call may take."""
SACCT_POLL_S = (10.0, 1.5, 300.0)
"""`--wait`'s polls: the first after 10 s, each next one 1.5 x later, at most every 5 minutes."""


class SlurmUnavailable(Exception):
    """sacct is missing, failed or did not answer in time; the message says which."""


class _TimedOut(Exception):
    """Raised by the alarm inside submitit's wait for sbatch."""


def poll_intervals() -> Iterator[float]:
    """The seconds before each of `--wait`'s polls: growing from the first to the longest."""
    first, growth, longest = SACCT_POLL_S
    delay = first
    while True:
        yield delay
        delay = min(delay * growth, longest)


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise `_TimedOut` in this thread after `seconds` (the main thread only; elsewhere no limit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ring(signum: int, frame: Any) -> None:
        raise _TimedOut

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def submit(executor: Any, jobs: list[Any], name: str) -> list[Any]:
    """`executor.submit_array(jobs)`, with `sbatch`'s faults as tlbench errors.

    Args:
        executor: A submitit executor, its parameters set.
        jobs: The callables, one per array task.
        name: The jobs' name on the cluster (what `squeue --name` finds).

    Raises:
        OutputError: sbatch refused the jobs, answered without a job id, or did not answer in time.
        Interrupted: Ctrl-C while sbatch ran.
    """
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    check = f"check `squeue --me --name {name}` and cancel what it lists before you run the sweep again"
    try:
        with _time_limit(SBATCH_TIMEOUT_S):
            return list(executor.submit_array(jobs))
    except (FailedJobError, _TimedOut) as exc:
        if isinstance(exc, _TimedOut) or isinstance(exc.__cause__, _TimedOut):
            raise OutputError(
                f"sbatch did not answer within {SBATCH_TIMEOUT_S:.0f} s (the Slurm controller may be busy "
                "or down); the jobs may have been submitted",
                check,
            ) from None
        raise OutputError(
            f"the cluster refused the sweep's jobs: {first_line(str(exc), with_type=False)}",
            "check --slurm-partition, --slurm-account, --slurm-qos and the resources",
        ) from None
    except FailedSubmissionError as exc:
        said = str(exc).split('"')[1] if str(exc).count('"') >= 2 else str(exc)
        raise OutputError(
            f"sbatch answered without a job id ({first_line(said, 160, with_type=False) or 'no output'}); "
            "tlbench cannot follow jobs it has no id for",
            check,
        ) from None
    except KeyboardInterrupt:
        raise Interrupted(
            "interrupted while sbatch submitted the sweep's jobs; they may have been submitted", check
        ) from None


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    """The state of each job (`1234_0` -> `RUNNING`) from one `sacct` call for all their arrays.

    A job sacct does not list (not yet, or no longer) is missing from the answer.

    Raises:
        SlurmUnavailable: sacct is not on PATH, failed, or did not answer within `SACCT_TIMEOUT_S`.
    """
    from submitit.slurm.slurm import SlurmInfoWatcher

    arrays = sorted({j.split("_")[0] for j in job_ids})
    cmd = ["sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", ",".join(arrays)]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=SACCT_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        raise SlurmUnavailable("sacct is not on PATH") from None
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable(f"sacct did not answer within {SACCT_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        why = first_line(done.stderr or done.stdout, 160, with_type=False) or f"exit status {done.returncode}"
        raise SlurmUnavailable(f"sacct failed ({why})")
    info = SlurmInfoWatcher().read_info(done.stdout)
    return {jid: str(values.get("State") or "UNKNOWN") for jid, values in info.items()}
