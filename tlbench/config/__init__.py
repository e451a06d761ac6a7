"""The configuration layer: the records that several layers share, and nothing that runs them.

- `Recipe` (`recipe`), the recipe registry and `get_recipe` (`recipes`), recipe files (`recipe_file`);
- `RunConfig` and `run_config` (`run`): one training run, as `tlbench run`, the sweep and the Python
  API build it and `config.json` stores it;
- `BenchOptions` (`bench`): one `tlbench bench` measurement;
- the run directory's records (`records`): `Resolved`, `BaselineConfig`, `RunFile`, `Summary`, ...

Every field's type, bounds, help text, flag and help panel live in its dataclass (`tlbench.options`),
so the CLI, recipe files and `--resume` read one schema. This package depends only on
`tlbench.options`, `tlbench.errors` and `tlbench._util`: the data, model, report and run-directory
layers import it, never the training package. Importing it is cheap (no torch, no numpy).
"""

from tlbench.config.bench import BenchOptions, parse_backbones
from tlbench.config.recipe import Recipe
from tlbench.config.recipe_file import recipe_yaml
from tlbench.config.recipes import RECIPES, get_recipe, register_recipe
from tlbench.config.records import BaselineConfig, Resolved, RunFile, Summary
from tlbench.config.run import (
    RECIPE_OVERRIDES,
    DataFormat,
    DistBackend,
    RunConfig,
    absolute_source,
    check_log,
    parse_duration,
    run_config,
)

__all__ = [
    "RECIPES",
    "RECIPE_OVERRIDES",
    "BaselineConfig",
    "BenchOptions",
    "DataFormat",
    "DistBackend",
    "Recipe",
    "Resolved",
    "RunConfig",
    "RunFile",
    "Summary",
    "absolute_source",
    "check_log",
    "get_recipe",
    "parse_backbones",
    "parse_duration",
    "recipe_yaml",
    "register_recipe",
    "run_config",
]
