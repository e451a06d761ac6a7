"""Named, frozen training recipes: every hyperparameter of a recipe in one place.

`keras-vgg19` is the reference recipe of the original Keras experiment, to the parameter (see
docs/training.md, "The reference recipe"); `timm-ft` is a small modern fine-tuning recipe to compare
it with. A recipe can also be a YAML file (`tlbench.config.recipe_file`), checked by the same schema.
A recipe value can be overridden on the command line; the resolved values go to config.json.
"""

from __future__ import annotations

from collections.abc import Callable

from tlbench.config.recipe import Recipe
from tlbench.config.recipe_file import is_recipe_file, load_recipe
from tlbench.errors import UsageError

RECIPES: dict[str, Recipe] = {}


def register_recipe(factory: Callable[[], Recipe]) -> Callable[[], Recipe]:
    """Register the recipe `factory()` returns under its name (`tlbench recipes` lists them)."""
    recipe = factory()
    RECIPES[recipe.name] = recipe
    return factory


def get_recipe(name: str) -> Recipe:
    """The registered recipe `name`, or the recipe in the file `name` (`.yaml`/`.yml`, or any
    existing file: `tlbench.config.recipe_file`).

    Raises:
        UsageError: Neither a registered recipe nor a file (lists the known ones); a file that is
            missing or not YAML.
        ConfigError: A recipe file that does not fit the schema (names the field and the file).
    """
    if name in RECIPES:
        return RECIPES[name]
    if is_recipe_file(name):
        return load_recipe(name)
    raise UsageError(
        f"unknown recipe {name!r}",
        f"use one of {', '.join(RECIPES)} (see `tlbench recipes`), or a recipe file NAME.yaml",
    )


@register_recipe
def keras_vgg19() -> Recipe:
    return Recipe(
        name="keras-vgg19",
        summary=(
            "The reference Keras recipe: SGD lr 1e-4 momentum 0.9, batch 32, 1000 epochs, "
            "224 px nearest resize, Keras augmentation, "
            "input rescaled to [0, 1] (no mean/std, as the original), "
            "GAP -> Dense(512, relu, l2 1e-4) -> Dropout(0.3) -> Dense(classes)"
        ),
        optimizer="sgd",
        lr=1e-4,
        momentum=0.9,
        batch_size=32,
        epochs=1000,
        image_size=224,
        interpolation="nearest",
        augment="keras",
        normalize="rescale",
        pool="avg",
        freeze="11",
    )


@register_recipe
def timm_ft() -> Recipe:
    return Recipe(
        name="timm-ft",
        summary=(
            "A small modern fine-tune: AdamW lr 5e-4 wd 0.05, cosine to 0 with 1 warm-up epoch, "
            "label smoothing 0.1, batch 64, 30 epochs, bilinear resize, Keras augmentation, the "
            "backbone's own mean/std, same head (no L2; AdamW's decoupled weight decay instead)"
        ),
        optimizer="adamw",
        lr=5e-4,
        weight_decay=0.05,
        schedule="cosine",
        warmup_epochs=1.0,
        batch_size=64,
        epochs=30,
        image_size=224,
        interpolation="bilinear",
        augment="keras",
        normalize="backbone",
        pool="avg",
        head_l2=0.0,
        label_smoothing=0.1,
        freeze="none",
    )
