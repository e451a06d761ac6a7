"""The records of a run directory: what `config.json`, `summary.json` and the CSV files hold.

Plain frozen dataclasses, shared by the layers that write run directories (training, baselines)
and those that read them (report, sweep status); `tlbench.rundir` turns them into files and back.
`SCHEMA_VERSION` changes whenever a field changes meaning or goes away.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SCHEMA_VERSION = 2
"""2: config.json is `{schema_version, kind, config, resolved}`; one summary for runs and baselines;
predictions.csv (the final validation predictions, per image)."""

Kind = Literal["run", "baseline"]
Status = Literal["finished", "max_time", "diverged", "stopped_early"]
"""A summary's status: `max_time` stopped early within `--max-time` (at an epoch boundary, the model
as after its last whole epoch); `diverged` stopped when the training loss became NaN or infinite;
`stopped_early` stopped, at an epoch boundary too, because its sweep asked it to (a race it lost, a
pruned tuning trial: `stop_reason` says why)."""


BestChosenOn = Literal["select", "val"]
"""What a run's best epoch was chosen on: its selection split (`--select`), or validation."""


@dataclass(frozen=True)
class Resolved:
    """What a run found out when it started, beside the config it was asked for.

    Attributes:
        data_info: The data set's description (`tlbench.data.dataset`): format, root, class-list
            hash, counts, split rule, whether it is the standard mini-ImageNet 100 or synthetic.
        classes: The class names (wnids), in label order.
        weights_source: Where the weights came from (`timm/vgg19.tv_in1k`, `file: ...`, `none (random init)`).
        device: The device used (`cpu`, `cuda:0`).
        amp: The autocast precision used: `bf16`, `fp16` or `off`.
        params: Parameter counts: total, trainable, frozen (and backbone, head for runs).
        preprocessing: How images became model input (runs: normalization mode, mean, std;
            baselines: resize, centre crop, interpolation, mean, std).
        freeze_index: Leading layer entries frozen (runs).
        model: `TransferModel.model_config()` (runs).
        imagenet1k_indices: Each class's ImageNet-1k logit (baselines).
        distributed: The job (runs): world size, backend, per-rank batch (a job of one: world 1).
        speed: Memory layout, compile and CPU threads the run used, with why (`tlbench.speed`).
        selection: The selection split held out of the training split (runs with `--select`; None
            without one): spec, split seed, rule, images held out (total and per class), the
            training images left, and a fingerprint of which images (`hold_out_selection`).
    """

    data_info: dict[str, Any]
    classes: list[str]
    weights_source: str
    device: str
    amp: str
    params: dict[str, int]
    preprocessing: dict[str, Any]
    freeze_index: int | None = None
    model: dict[str, Any] | None = None
    imagenet1k_indices: list[int] | None = None
    distributed: dict[str, Any] | None = None
    speed: dict[str, Any] | None = None
    selection: dict[str, Any] | None = None


@dataclass(frozen=True)
class BaselineConfig:
    """What `tlbench baseline` was asked for."""

    backbone: str
    data: str | None = None
    data_format: str | None = None
    split_seed: int = 0
    skip_corrupt: bool = False
    image_size: int | None = None
    batch_size: int = 64
    weights: str | None = None
    device: str = "auto"
    out: str | None = None
    rule: str = "pretrained ImageNet-1k logits restricted to the data set's classes; argmax over those"


@dataclass(frozen=True)
class RunFile:
    """config.json: the schema version, the kind, the config as asked, and what it resolved to.

    `config` is a `RunConfig` (kind `run`) or a `BaselineConfig` (kind `baseline`).
    """

    kind: Kind
    config: Any
    resolved: Resolved
    schema_version: int = SCHEMA_VERSION

    @property
    def backbone(self) -> str:
        return str(self.config.backbone)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "kind": self.kind,
            "config": self.config.to_dict() if hasattr(self.config, "to_dict") else asdict(self.config),
            "resolved": asdict(self.resolved),
        }


@dataclass(frozen=True)
class EpochMetrics:
    """One row of metrics.csv: an epoch's training and validation numbers (accuracies as fractions).

    `select_loss` and `select_top1` are the selection split's, evaluated as validation is (no
    augmentation); None (an empty cell) without a selection split, and absent from the metrics.csv
    of runs written before it existed.
    """

    epoch: int
    train_loss: float
    train_top1: float
    val_loss: float
    val_top1: float
    val_top5: float
    lr: float
    epoch_seconds: float
    train_seconds: float
    data_seconds: float
    train_images_per_sec: float | None
    select_loss: float | None = None
    select_top1: float | None = None


@dataclass(frozen=True)
class ClassRow:
    """One row of per_class.csv: the final validation accuracy of one class."""

    class_index: int
    wnid: str
    correct: int
    total: int
    top1: float | None
    imagenet1k_index: int | None = None


@dataclass(frozen=True)
class Prediction:
    """One row of predictions.csv: a validation image (its position in the validation split, the
    same for every run on the same data), its label and the final model's top-1 class."""

    index: int
    label: int
    predicted: int


@dataclass(frozen=True)
class Summary:
    """summary.json, the same for runs and baselines; written last (accuracies as fractions).

    What a run costs: `device_seconds` is the wall time times the devices held (the processes of
    the job); `energy_joules` what the GPUs drew (NVML's counter; None on the CPU);
    `projected_full_seconds` the wall time the recipe's full schedule (`full_epochs`, e.g. the
    reference recipe's 1,000) would take on this device: the set-up plus that many mean epochs.

    A baseline evaluates once: its best and final numbers are that evaluation, `epochs` is 0,
    `best_epoch` and `train_images_per_sec` are None.

    The best epoch is chosen on the selection split where the run has one (`best_chosen_on`
    "select": the highest `select_top1`, ties to the lower selection loss, then the earlier epoch),
    else on validation ("val", as every run before the selection split). `best_val_top1` is the
    validation top-1 *at* that epoch; `best_select_top1` the selection top-1 there, and
    `select_images` the size of the selection split (0 without one).

    A run its sweep stopped (status `stopped_early`) says why in `stop_reason`.

    A diverged run has no final evaluation (its final numbers are None) and no exported model;
    `epochs` counts the whole epochs before it.
    """

    kind: Kind
    status: Status
    best_val_top1: float | None
    best_epoch: int | None
    final_val_top1: float | None
    final_val_top5: float | None
    final_val_loss: float | None
    val_images: int
    epochs: int
    params_total: int
    params_trainable: int
    params_frozen: int
    wall_seconds: float
    train_images_per_sec: float | None
    infer_images_per_sec: float | None
    peak_memory_bytes: int | None
    device: str
    amp: str
    weights_source: str
    feature_cache: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1
    device_seconds: float | None = None
    energy_joules: float | None = None
    projected_full_seconds: float | None = None
    full_epochs: int | None = None
    best_chosen_on: BestChosenOn = "val"
    best_select_top1: float | None = None
    select_images: int = 0
    stop_reason: str | None = None
    schema_version: int = SCHEMA_VERSION
