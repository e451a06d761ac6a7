"""`BenchOptions`: every setting of a `tlbench bench` measurement, checked when built.

Shared by the CLI, the measuring child processes (which receive it as JSON) and the result rows;
`parse_backbones` reads the command's comma-separated backbone list.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from tlbench import options
from tlbench.errors import ConfigError, UsageError
from tlbench.options import AmpMode, BenchMode, Switch, as_switch, bounded


@dataclass(frozen=True)
class BenchOptions:
    """Every setting of a benchmark run; each one can change the numbers, so each is recorded.

    Checked when built (`tlbench.options.check`, then `validate`): a `BenchOptions` that exists is valid.

    Attributes:
        freeze: Freeze spec of the recipe's model (`N`, `P%`, `none`, `all`), as `tlbench run`.
        batch_size: Batch to try first; an out-of-memory halves it (the batch used is reported).
        image_size: Square input side in pixels.
        device: `auto`, `cpu`, `cuda` or `cuda:N`.
        amp: `auto` (as `tlbench run`: bf16 on CUDA and on CPUs with AMX or AVX512-BF16), `bf16`,
            `fp16` (CUDA only) or `off`.
        channels_last: NHWC memory layout for the model and the input: `auto` (as `tlbench run`
            decides it, `tlbench.speed`), `on` or `off`; `True`/`False` mean on/off.
        compile: `torch.compile` the model (falls back to eager with a warning where it cannot):
            `auto` (as `tlbench run` decides it for a long run), `on` or `off`.
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
        nproc: Also time the train step under DistributedDataParallel on this many ranks (one
            process each; rank r on `cuda:r`, or the CPU with gloo), `batch_size` images per rank,
            against one rank in the same call: `scaling_efficiency`. 1: no DDP measurement.
        ddp_timeout: Seconds a rank waits in a collective (and the ranks to meet) before it fails;
            a rank that dies or hangs ends the measurement with an error, never a hang.
    """

    freeze: str = "none"
    batch_size: int = bounded(64, 1)
    image_size: int = bounded(224, *options.IMAGE_SIZE)
    device: str = "auto"
    amp: AmpMode = "auto"
    channels_last: Switch = "auto"
    compile: Switch = "auto"
    mode: BenchMode = "both"
    warmup: int = bounded(3, 0)
    steps: int = bounded(10, 1)
    repeats: int = bounded(3, 1)
    data: str | None = None
    recipe: str = options.DEFAULT_RECIPE
    baseline_loop: bool = True
    out: str | None = None
    nproc: int = bounded(1, 1)
    ddp_timeout: float = bounded(300.0, 0, lo_open=True)

    def __post_init__(self) -> None:
        # Paths given as Path objects are kept as strings, so the options stay JSON-serialisable.
        for name in ("data", "out"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, name, str(value))
        object.__setattr__(self, "freeze", str(self.freeze))
        for name in ("channels_last", "compile"):  # a bool means on/off
            object.__setattr__(self, name, as_switch(getattr(self, name)))
        options.check(self)
        self.validate()

    def validate(self) -> BenchOptions:
        """Check the rule between fields (each field is checked by `options.check`); return self.

        Raises:
            ConfigError: `data` or `nproc` > 1 given with `mode` infer (both time training), or
                `nproc` > 1 with a device index (rank r always runs on `cuda:r`).
        """
        if self.mode == "infer" and self.data is not None:
            raise ConfigError(
                "data", "times the training pipeline, not inference", "set mode to train or both"
            )
        if self.mode == "infer" and self.nproc > 1:
            raise ConfigError(
                "nproc", "times the train step under DDP, not inference", "set mode to train or both"
            )
        if self.nproc > 1 and ":" in self.device:
            raise ConfigError(
                "device", f"--nproc {self.nproc} runs rank r on cuda:r", "use --device cuda (or auto, cpu)"
            )
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
