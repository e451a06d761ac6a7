"""`tlbench demo`: the main job end to end on built-in synthetic data, small enough for a laptop CPU.

The reference recipe (keras-vgg19, freeze 11) on vgg19, on a 10-class synthetic mini-ImageNet at a
small image size for a few epochs. Pretrained weights are used when they can be had (HF cache or
network); otherwise the demo says so and trains from scratch, which at the recipe's lr 1e-4 learns
slowly: the point is the pipeline and the run directory, not the accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tlbench._console import say

DEMO_DATA = "synthetic:10x60@64"


def run_demo(epochs: int, image_size: int, out: Path | None) -> Path:
    import os

    # The demo never downloads (vgg19's weights are 548 MB): it uses the Hugging Face cache or
    # nothing. huggingface_hub reads this once at import, and nothing has imported it yet.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tlbench.errors import WeightsError
    from tlbench.train.api import run_config
    from tlbench.train.trainer import train

    def config(pretrained: bool, run_dir: Path | None) -> Any:
        return run_config(
            "vgg19",
            "keras-vgg19",
            freeze="11",
            data=DEMO_DATA,
            epochs=epochs,
            image_size=image_size,
            pretrained=pretrained,
            device="cpu",
            out=run_dir,
        )

    # One fixed folder: a run stopped by missing weights leaves it empty, and the retry reuses it.
    run_dir = out or config(True, None).default_out()
    say(f"demo: vgg19 / keras-vgg19 / freeze 11, {epochs} epochs at {image_size}px on {DEMO_DATA}")
    try:
        return train(config(True, run_dir))
    except WeightsError as exc:
        say(
            f"demo: no pretrained vgg19 weights in the Hugging Face cache ({exc.message}); "
            "training from scratch, so expect near-chance accuracy from the recipe's lr 1e-4. "
            "To use them: python -c \"import timm; timm.create_model('vgg19', pretrained=True)\" "
            "once with network",
            style="yellow",
        )
        return train(config(False, run_dir))
