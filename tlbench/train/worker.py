"""A sweep cell's process: `python -m tlbench.train.worker CELL.json` runs the config in the file.

The file (written by `tlbench.sweep`) is one of

    {"kind": "run", "config": RunConfig.to_dict(), "resume": true | false}
    {"kind": "baseline", "config": BaselineConfig fields}

A run trains into `config.out` (resuming from its checkpoint when `resume` is true); a baseline
evaluates into its `out`. Output goes wherever the caller points stdout and stderr (the sweep's
`cells/<id>.log`). A user mistake ends with `tlbench: error: <one line>` and its exit code, an
interrupt with 130, exactly as the `tlbench` command does (`tlbench.errors.run_entry_point`). The
process ends without tearing its modules down (`tlbench._util.exit_now`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tlbench._util import exit_now
from tlbench.errors import UsageError, run_entry_point


def read_cell(path: Path) -> dict[str, Any]:
    """The cell file as a dict with `kind` and `config`.

    Raises:
        UsageError: The file is missing, not JSON, or not a cell config.
    """
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the cell config {path} ({exc})") from None
    if not isinstance(payload, dict) or payload.get("kind") not in ("run", "baseline"):
        raise UsageError(f"{path} is not a cell config", 'it needs "kind": "run" or "baseline"')
    if not isinstance(payload.get("config"), dict):
        raise UsageError(f"{path} has no config object")
    return payload


def run_cell(path: Path) -> Path:
    """Run the training run or the baseline that the cell file describes; return its run directory."""
    from tlbench.config import RunConfig
    from tlbench.rundir import BaselineConfig

    payload = read_cell(path)
    kind, values = payload["kind"], payload["config"]
    try:
        config = RunConfig.from_dict(values) if kind == "run" else BaselineConfig(**values)
    except (KeyError, TypeError) as exc:
        raise UsageError(f"{path} holds a {kind} config this tlbench cannot use ({exc!r})") from None
    if isinstance(config, RunConfig):
        from tlbench.train.trainer import train

        resume = Path(config.out) if payload.get("resume") and config.out else None
        return train(config, resume=resume, progress=False)

    from tlbench.train.baseline import run_baseline

    options = asdict(config)
    del options["rule"]  # the rule is what run_baseline does, not an option of it
    return run_baseline(**options, progress=False)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the cell process; returns its exit status."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m tlbench.train.worker CELL.json\n")
        return 2
    return run_entry_point(lambda: run_cell(Path(args[0])))


if __name__ == "__main__":
    exit_now(main())  # no module teardown: the end of a cell is its last batch's cost too
