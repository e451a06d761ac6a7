"""`tlbench demo`: a small comparison end to end, offline, in about a minute on 2 CPU cores.

Two runs of timm's `test_resnet` (0.47 M parameters) on a built-in 10-class synthetic mini-ImageNet,
the same in everything but the recipe: the reference `keras-vgg19` (SGD lr 1e-4, momentum 0.9) and
the modern `timm-ft` (AdamW lr 5e-4, one warm-up epoch, cosine, label smoothing). Both train the
whole backbone (freeze none) for 8 epochs at 48 px on the CPU. Then the compact report table, one
line on why the accuracies differ, and the path of the report page. From scratch, on a 2-core CPU
busy with a test suite: keras-vgg19 15 %, timm-ft 55 % best validation top-1 (chance 10 %), about
16 s per run.

Weights: the backbone's pretrained weights are used when the Hugging Face cache has them; otherwise
the hub is probed once (3 s, `tlbench.models.weights`) and, when it answers, the 2 MB of weights
are fetched with huggingface_hub's progress bar. Offline (or with `HF_HUB_OFFLINE=1`), one line
says so and both runs train from scratch.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from tlbench._console import say
from tlbench.errors import OutputError
from tlbench.options import RESULTS_DIR

DEMO_BACKBONE = "test_resnet"
DEMO_RECIPES = ("keras-vgg19", "timm-ft")
"""The reference recipe, then the modern one; each run's folder is named after its recipe."""
DEMO_EPOCHS = 8
DEMO_IMAGE_SIZE = 48
DEMO_DIR = RESULTS_DIR / "demo"
"""Each demo writes a new `<time>/` folder here: both run directories and `report.html`."""


def demo_data(image_size: int) -> str:
    """The demo's data: 10 classes x 60 images (50 train, 10 validation each), rendered at the
    training size so nothing is resized."""
    return f"synthetic:10x60@{image_size}"


def run_demo(
    epochs: int = DEMO_EPOCHS,
    image_size: int = DEMO_IMAGE_SIZE,
    out: Path | None = None,
    *,
    data: str | None = None,
    backbone: str = DEMO_BACKBONE,
    progress: bool = True,
) -> Path:
    """Train `backbone` with each of `DEMO_RECIPES`, then print the compact table and write the page.

    Args:
        epochs: Epochs of each run.
        image_size: Training image size in pixels.
        out: A new or empty folder for the runs and the page; None: `DEMO_DIR/<time>`.
        data: A data folder or synthetic spec; None: `demo_data(image_size)`.
        backbone: A timm model name.
        progress: Show the training progress bars.

    Returns:
        The report page, `<out>/report.html`.

    Raises:
        OutputError: `out` already holds files (results are never overwritten).
        TlbenchError: What a run or the report raises (bad data, interrupted, ...).
    """

    from tlbench.report.command import report
    from tlbench.train.api import run_config, train

    folder = out or DEMO_DIR / datetime.now().strftime("%Y%m%d-%H%M%S")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise OutputError(f"{folder} already exists and is not an empty folder", "choose another --out")
    data = data or demo_data(image_size)
    pretrained = _pretrained(backbone)
    say(
        f"demo: {backbone}, freeze none, {epochs} epochs at {image_size} px on {data} (CPU), "
        f"once per recipe: {', '.join(DEMO_RECIPES)}",
        soft_wrap=True,
    )
    runs = []
    for recipe in DEMO_RECIPES:
        # One intra-op thread: a model this small gains little from a second one, and when anything
        # else runs on the cores, PyTorch's spinning OpenMP threads cost ten times that (keras-vgg19,
        # 6 epochs at 32 px, on a 2-core CPU busy with a test suite: 9 s with one thread, 65-118 s
        # with two).
        cfg = run_config(
            backbone,
            recipe,
            freeze="none",
            data=data,
            epochs=epochs,
            image_size=image_size,
            pretrained=pretrained,
            device="cpu",
            threads=1,
            out=folder / recipe,
        )
        runs.append(train(cfg, progress=progress))
    page = folder / "report.html"
    report([folder], "html", out=page)
    report([folder], "table")
    say(_why(runs, pretrained, epochs), soft_wrap=True)
    say(f"report page: {page}", style="bold", soft_wrap=True)  # the last line: a path to open
    return page


def _pretrained(backbone: str) -> bool:
    """Whether the runs can start from pretrained weights: from the cache, or fetched now (the hub
    probed once first); if not, say why in one line."""
    from tlbench.errors import WeightsError
    from tlbench.models.weights import create_pretrained

    try:
        _, source = create_pretrained(backbone, num_classes=0)
    except WeightsError as exc:
        say(f"demo: {exc.message}; both runs train from scratch", style="yellow", soft_wrap=True)
        return False
    say(f"demo: pretrained weights ({source})")
    return True


def _why(runs: list[Path], pretrained: bool, epochs: int) -> str:
    """The one line that says why the two recipes' accuracies differ."""
    from tlbench.rundir import RunDir

    ref, modern = (RunDir(run) for run in runs)
    ref_cfg, modern_cfg = ref.read_config(), modern.read_config()
    ref_lr, modern_lr = ref_cfg.config.recipe.lr, modern_cfg.config.recipe.lr
    if pretrained:
        return (
            f"why: both start from pretrained weights; {DEMO_RECIPES[0]} takes SGD steps at lr "
            f"{_lr(ref_lr)} on x/255 input, {DEMO_RECIPES[1]} AdamW steps at lr {_lr(modern_lr)} "
            "(warm-up, cosine) on input normalized by the mean/std those weights were trained with"
        )
    chance = 1 / len(ref_cfg.resolved.classes)
    ref_top1, modern_top1 = ref.read_summary().best_val_top1, modern.read_summary().best_val_top1
    return (
        f"why: from random weights the step size decides: {DEMO_RECIPES[0]}'s SGD at lr {_lr(ref_lr)} "
        f"barely moves them in {epochs} epochs ({ref_top1:.0%}), {DEMO_RECIPES[1]}'s AdamW at lr "
        f"{_lr(modern_lr)} with warm-up and cosine does ({modern_top1:.0%}; chance {chance:.0%})"
    )


def _lr(value: float) -> str:
    """A learning rate as recipes are written: 1e-4, 2.5e-4, 0.01."""
    if value >= 1e-3:
        return f"{value:g}"
    mantissa, exponent = f"{value:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
