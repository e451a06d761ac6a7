"""Where throughput is measured: `tlbench bench`, one process per backbone.

    run_bench(backbones, options)            runner.py: one `python -m tlbench.bench.worker` per backbone,
      -> worker (a child process)            worker.py: options in as JSON, one JSON line out
           -> measure_backbone(name, opts)   measure.py: synthetic input on the device, warm-up, timed
                                             steps (CUDA events or a synchronised clock), median of
                                             repeats, FLOPs, MFU (peaks.py), memory, OOM halving
      <- rows, written as CSV + JSON under results/bench/ (or --out)

Importing this package is cheap (no torch): `BenchOptions` and `bench_cli` live here, the
measuring modules are imported when used.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, fields
from typing import Any

from tlbench.errors import UsageError

__all__ = ["MODES", "BenchOptions", "bench_cli", "parse_backbones"]

MODES = ("train", "infer", "both")
AMP_CHOICES = ("auto", "bf16", "fp16", "off")


@dataclass(frozen=True)
class BenchOptions:
    """Every setting of a benchmark run; each one can change the numbers, so each is recorded.

    Attributes:
        freeze: Freeze spec of the recipe's model (`N`, `P%`, `none`, `all`), as `tlbench run`.
        batch_size: Batch to try first; an out-of-memory halves it (the batch used is reported).
        image_size: Square input side in pixels.
        device: `auto`, `cpu`, `cuda` or `cuda:N`.
        amp: `auto` (bf16 on CUDA, off on CPU), `bf16`, `fp16` (CUDA only) or `off`.
        channels_last: NHWC memory layout for the model and the input.
        compile: `torch.compile` the model; falls back to eager with a warning where it cannot.
        mode: `train`, `infer` or `both`.
        warmup: Untimed steps before timing (compilation and autotuning happen here).
        steps: Timed steps per repeat.
        repeats: Timed repeats; the median step time is reported.
        data: A data folder (or `synthetic[...]`): also time the real input pipeline (packed loader
            + Keras augmentation) alone and together with the train step.
        recipe: Named recipe giving the head, loss, optimizer and its hyperparameters.
        baseline_loop: Also time a plain hand-written PyTorch train step on the same model and
            report tlbench's speed relative to it.
        out: Output file (`.csv` / `.json`: both are written beside each other) or folder;
            None writes under `results/bench/`.
    """

    freeze: str = "none"
    batch_size: int = 64
    image_size: int = 224
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = False
    compile: bool = False
    mode: str = "both"
    warmup: int = 3
    steps: int = 10
    repeats: int = 3
    data: str | None = None
    recipe: str = "keras-vgg19"
    baseline_loop: bool = True
    out: str | None = None

    def __post_init__(self) -> None:
        # Paths given as Path objects are kept as strings, so the options stay JSON-serialisable.
        for name in ("data", "out"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, name, str(value))
        object.__setattr__(self, "freeze", str(self.freeze))

    def validate(self) -> BenchOptions:
        """Check every value; return self.

        Raises:
            UsageError: A value out of range or not one of the choices.
        """
        if self.mode not in MODES:
            raise UsageError(f"--mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.amp not in AMP_CHOICES:
            raise UsageError(f"--amp {self.amp!r} is not one of {', '.join(AMP_CHOICES)}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size {self.batch_size} must be at least 1")
        if not 16 <= self.image_size <= 1024:
            raise UsageError(f"--image-size {self.image_size} is out of range", "use 16 to 1024 pixels")
        if self.warmup < 0 or self.steps < 1 or self.repeats < 1:
            raise UsageError("warm-up must be >= 0, steps and repeats >= 1")
        if self.data is not None and self.mode == "infer":
            raise UsageError("--data times the training pipeline", "use --mode train or --mode both")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BenchOptions:
        """Options from a dict (e.g. the worker's JSON); unknown keys are a UsageError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"unknown bench option(s): {', '.join(unknown)}")
        return cls(**values)


def parse_backbones(backbones: str | list[str]) -> list[str]:
    """`"vgg19, resnet50"` -> `["vgg19", "resnet50"]`; empty names are dropped, order kept."""
    items = backbones.split(",") if isinstance(backbones, str) else list(backbones)
    names = [b.strip() for b in items if b.strip()]
    if not names:
        raise UsageError("no backbone given", "e.g. tlbench bench vgg19,resnet50")
    return names


def bench_cli(backbones: str, **options: Any) -> int:
    """What `tlbench bench BACKBONE[,BACKBONE...] [options]` does.

    Runs every backbone in its own process, writes CSV + JSON, and shows a table on stderr (or
    prints the rows as JSON on stdout with `json=True`).

    Args:
        backbones: Comma-separated timm names, e.g. `"vgg19,resnet50"`.
        **options: `BenchOptions` fields, plus `json` (rows as JSON on stdout instead of the
            table) and `quiet` (no progress display).

    Returns:
        0 when every backbone was measured; otherwise the exit code of the first failure (e.g. 5
        for a model problem, see `tlbench.errors`), or 1 when it was not a tlbench error.

    Raises:
        TlbenchError: A user mistake found before anything runs (unknown backbone or option,
            value out of range, CUDA asked for but absent, unwritable output).
    """
    from tlbench.bench.runner import print_table, run_bench

    as_json = bool(options.pop("json", False))
    quiet = bool(options.pop("quiet", False))
    opts = BenchOptions.from_dict(options)
    rows = run_bench(parse_backbones(backbones), opts, progress=not quiet)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
    else:
        print_table(rows)
    failed = [r for r in rows if r.get("status") != "ok"]
    if not failed:
        return 0
    code = failed[0].get("exit_code")
    return int(code) if isinstance(code, int) and code > 0 else 1
