"""The per-backbone child process: `python -m tlbench.bench.worker '<json>'` prints one JSON line.

The argument is a JSON object, `{"backbone": NAME, **BenchOptions fields}`. The last line on stdout
is the result row (anything else the libraries print goes to stderr): `status` is `ok`, or
`failed` with `error` (one line), `error_type` and `exit_code`. Warnings raised while measuring
(an out-of-memory retry, a compile fallback) are in the row's `warnings`. The exit status is 0
for a measured backbone, else the failure's exit code (see `tlbench.errors`).
"""

from __future__ import annotations

import json
import sys
import traceback
import warnings
from contextlib import redirect_stdout
from typing import Any

from tlbench._util import first_line
from tlbench.config.bench import BenchOptions
from tlbench.errors import TlbenchError, UsageError


def failed_row(backbone: str, error: str, error_type: str, exit_code: int, **extra: Any) -> dict[str, Any]:
    """The row of a backbone that could not be measured."""
    return {
        "model": backbone,
        "status": "failed",
        "error": error,
        "error_type": error_type,
        "exit_code": exit_code,
        **extra,
    }


def measure_backbone(backbone: str, options: BenchOptions) -> dict[str, Any]:
    """Measure one backbone in this process and return its result row (`--nproc` > 1: with the
    DDP scaling columns of `tlbench.bench.ddp`).

    Args:
        backbone: timm model name (`vgg19`, `resnet50`, ...).
        options: The benchmark settings.

    Returns:
        A flat dict: settings, `train_*` / `infer_*` / `baseline_*` / `data_*` / `ddp_*`
        measurements (None for modes not run), FLOPs, MFU (None off the peak table, e.g. on CPU),
        memory, versions.

    Raises:
        TlbenchError: Unknown backbone, impossible freeze spec, unavailable device, bad data, a
            DDP rank that failed.
        torch.OutOfMemoryError: Not even a batch of 1 fits.
    """
    from tlbench.bench.ddp import measure_scaling
    from tlbench.bench.measure import BackboneBench, clean_row

    scaling: dict[str, Any] = {}
    if options.nproc > 1:
        # First, while this process holds no device memory: the ranks have the GPUs to themselves.
        scaling = measure_scaling(backbone, options)
    return clean_row(BackboneBench(backbone, options).run() | scaling)


def run_one(payload: dict[str, Any]) -> dict[str, Any]:
    """Measure the backbone named in `payload` and return its row; never raises for a failure."""
    payload = dict(payload)
    backbone = str(payload.pop("backbone", ""))
    caught: list[warnings.WarningMessage] = []
    try:
        if not backbone:
            raise UsageError("the worker needs a 'backbone'")
        options = BenchOptions.from_dict(payload)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            row = measure_backbone(backbone, options)
    except TlbenchError as exc:
        row = failed_row(backbone, exc.one_line(), type(exc).__name__, exc.exit_code)
    except Exception as exc:  # a crash of this backbone only: report it, keep the traceback on stderr
        traceback.print_exc(file=sys.stderr)
        row = failed_row(backbone, first_line(exc), type(exc).__name__, 1)
    seen: list[str] = []
    for w in caught:
        text = f"{w.category.__name__}: {w.message}"
        if text not in seen and not issubclass(w.category, DeprecationWarning):
            seen.append(text)
    row["warnings"] = seen
    return row


def main(argv: list[str] | None = None) -> int:
    """Entry point of the child process; returns its exit status."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m tlbench.bench.worker '<json options>'\n")
        return 2
    try:
        payload = json.loads(args[0])
        if not isinstance(payload, dict):
            raise ValueError("expected a JSON object")
    except ValueError as exc:
        sys.stderr.write(f"tlbench.bench.worker: bad JSON argument: {exc}\n")
        return 2
    with redirect_stdout(sys.stderr):  # keep stdout for the one result line
        row = run_one(payload)
    sys.stdout.write(json.dumps(row, default=str) + "\n")
    sys.stdout.flush()
    return 0 if row["status"] == "ok" else int(row.get("exit_code") or 1)


if __name__ == "__main__":
    sys.exit(main())
