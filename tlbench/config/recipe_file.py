"""Recipes as YAML files: `tlbench recipes --show NAME` writes one, `--recipe FILE.yaml` reads one.

A recipe file holds the fields of `Recipe` (all of them, as `--show` prints, or only some: the rest
take `Recipe`'s defaults; `optimizer` is required), checked by the same schema as the built-in
recipes, so a value out of its choices or bounds is the same error, naming the field and the file.
`name` defaults to the file's stem and names run folders, sweep cells and report rows; `summary`
defaults to the file's path. A run records the whole recipe in its config.json, so `--resume` and
`tlbench report` never read the file again.

Only a small regular file is read (a named pipe or a device is refused before it is opened for
reading, so it cannot hang the command), and YAML anchors and aliases are refused while the file is
parsed, before any value is built: a few hundred bytes of nested aliases would otherwise expand to
gigabytes (a "billion laughs" document). A recipe never needs them.

    name: my-recipe
    optimizer: sgd
    lr: 1e-3          # YAML 1.2 numbers: 1e-3 is a float here (PyYAML alone would read a string)
    epochs: 30
    search:           # optional: where `tlbench sweep --tune` looks (`--space` wins), LO:HI[:log|linear]
      lr: "1e-5:1e-2:log"
      weight_decay: "1e-6:1e-2:log"

The `search:` section is checked by the same schema as `--space` (`tlbench.config.tuning`).
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import typing
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any, Literal, get_origin

from tlbench.config.recipe import Recipe
from tlbench.config.tuning import parse_space
from tlbench.errors import ConfigError, UsageError

SUFFIXES = (".yaml", ".yml")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""A recipe's name goes into folder names: letters, digits and `._-`, at most 64 (`re.fullmatch`:
`$` would let a trailing newline through)."""

MAX_BYTES = 64 * 1024
"""A recipe file is a few hundred bytes; anything past 64 KiB is not one."""

_MAX_TEXT = {"summary": 1000, "freeze": 32}
"""The longest text a field may hold (`name` is bounded by `_NAME`)."""

_FLOAT_12 = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
"""YAML 1.1's float pattern plus exponents without a dot (`1e-4`), as YAML 1.2 and every user reads them."""


class RecipeFileError(ConfigError):
    """A recipe file that does not fit the schema: names the file and the field.

    The value came from the file, not from a flag, so the CLI keeps this message as it is.
    """

    def __init__(self, path: Path, field: str, problem: str, hint: str | None = None) -> None:
        super().__init__(field, problem, hint)
        self.path = path
        self.message = f"recipe file {path}: {field} {problem}"

    def as_flag(self, flag: str) -> ConfigError:
        return self


def is_recipe_file(name: str) -> bool:
    """`name` means a file: it ends in .yaml/.yml, or is the path of an existing file."""
    return name.lower().endswith(SUFFIXES) or Path(name).is_file()


def _loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        """PyYAML's safe loader, reading `1e-4` as a number and refusing anchors and aliases."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise yaml.composer.ComposerError(
                    None, None, "anchors and aliases (&name, *name) are not allowed", event.start_mark
                )
            return super().compose_node(parent, index)

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))
    return Loader


def load_recipe(path: str | Path) -> Recipe:
    """The recipe in a YAML file, checked like a built-in one.

    Raises:
        UsageError: The file is missing, unreadable or not YAML.
        RecipeFileError: Not a mapping of recipe fields: an unknown field (named, with the closest
            known one), a missing `optimizer`, a value of the wrong type or out of its choices or
            bounds (a `ConfigError` naming the field and the file).
    """
    import yaml

    path = Path(path)
    text = _read_text(path)
    try:
        values = yaml.load(text, Loader=_loader())  # a SafeLoader subclass: no object construction
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise UsageError(
            f"recipe file {path} is not valid YAML{line}: {getattr(exc, 'problem', exc)}"
        ) from None
    if not isinstance(values, dict):
        raise UsageError(
            f"recipe file {path} must hold a mapping of recipe fields, not {type(values).__name__}",
            "see `tlbench recipes --show keras-vgg19`",
        )
    return recipe_from_dict(values, path)


def _read_text(path: Path) -> str:
    """The file's text: a regular file of at most `MAX_BYTES`, in UTF-8.

    Opened without blocking and checked with `fstat` before a byte is read, so a named pipe (which
    would wait for a writer forever) or a device is refused, and the check is of the file read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UsageError(
            f"recipe file {path} not found", "see `tlbench recipes` for the named ones"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot read recipe file {path} ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = (
                "a named pipe" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "not a file"
            )
            raise UsageError(f"recipe file {path} is {kind}", "give a regular .yaml file")
        try:
            data = f.read(MAX_BYTES + 1)
        except OSError as exc:
            raise UsageError(f"cannot read recipe file {path} ({exc.strerror or exc})") from None
    if len(data) > MAX_BYTES:
        raise UsageError(
            f"recipe file {path} is over {MAX_BYTES // 1024} KiB", "a recipe is a short mapping of fields"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"recipe file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def recipe_from_dict(values: dict[str, Any], path: Path) -> Recipe:
    """A `Recipe` from a file's mapping (see `load_recipe`); `path` names the file in errors."""
    known = [f.name for f in fields(Recipe)]
    unknown = [str(k)[:40] for k in values if k not in known][:5]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f"did you mean {close[0]}?" if close else f"known fields: {', '.join(known)}"
        problem = "is not a recipe field" if len(unknown) == 1 else "are not recipe fields"
        raise RecipeFileError(path, ", ".join(unknown), problem, hint)
    given = set(values)
    values = {"name": path.stem, "summary": f"recipe file {path.absolute()}"} | values
    hints = typing.get_type_hints(Recipe)
    values["search"] = _search(path, values.get("search", {}))
    for f in fields(Recipe):
        if f.name not in values:
            if f.default is MISSING:
                raise RecipeFileError(path, f.name, "is missing")
            continue
        if f.name == "search":
            continue
        values[f.name] = _typed(path, f.name, values[f.name], hints[f.name])
    if not _NAME.fullmatch(values["name"]):
        raise RecipeFileError(
            path, "name", f"{_short(values['name'])} may hold only letters, digits and ._- (at most 64)"
        )
    for name, most in _MAX_TEXT.items():
        if name in given and len(values[name]) > most:
            raise RecipeFileError(path, name, f"is longer than {most} characters")
    try:
        return Recipe(**values)
    except RecipeFileError:
        raise
    except ConfigError as exc:
        raise RecipeFileError(path, exc.field, exc.problem, exc.hint) from None


def _search(path: Path, section: Any) -> tuple[str, ...]:
    """The `search:` section (`{lr: "1e-5:1e-2:log"}`) as checked `--space` texts, in its order.

    Raises:
        RecipeFileError: Not a mapping, or an entry `--space` would refuse (field `search.NAME`).
    """
    hint = 'e.g. search: {lr: "1e-5:1e-2:log", dropout: "0:0.5:linear"}'
    if section is None or section == {}:
        return ()
    if not isinstance(section, dict):
        raise RecipeFileError(path, "search", f"{section!r} is not a mapping of NAME: LO:HI[:SCALE]", hint)
    spaces = []
    for name, text in section.items():
        if not isinstance(text, str):
            raise RecipeFileError(path, f"search.{name}", f"{text!r} is not text LO:HI[:log|linear]", hint)
        try:
            spaces.append(parse_space(f"{name}={text}").text())
        except ConfigError as exc:
            flag_hint = (exc.hint or "").startswith("e.g. --space")  # the file's syntax instead
            why = hint if flag_hint else exc.hint
            raise RecipeFileError(path, f"search.{name}", exc.problem, why) from None
    return tuple(spaces)


def _typed(path: Path, name: str, value: Any, tp: Any) -> Any:
    """`value` as the field's type: an int where an int goes (30.0 is 30), a float where a float goes
    (an int is fine), a bool only where a bool goes, text for text (`freeze: 11` is "11")."""
    if value is None:
        raise RecipeFileError(path, name, "has no value")
    if get_origin(tp) is Literal:
        if isinstance(value, str | int | float):
            return value  # the schema check names the choices
        raise RecipeFileError(path, name, f"{_short(value)} is not one of {', '.join(map(str, tp.__args__))}")
    ok: Any = None
    if tp is bool:
        ok = value if isinstance(value, bool) else None
    elif isinstance(value, bool):
        ok = None
    elif tp is int:
        ok = (
            int(value)
            if isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            else None
        )
    elif tp is float:
        ok = float(value) if isinstance(value, int | float) else None
    elif tp is str:
        ok = str(value) if isinstance(value, str | int | float) else None
    if ok is None:
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(tp, str(tp))
        raise RecipeFileError(path, name, f"{_short(value)} is not {kind}")
    return ok


def _short(value: Any, most: int = 40) -> str:
    """`repr(value)`, cut to `most` characters: an error line names the value, never a page of it."""
    import reprlib

    text = reprlib.repr(value)  # bounded: the first few items of each level, never the whole value
    return text if len(text) <= most else text[: most - 3] + "..."


def recipe_yaml(recipe: Recipe) -> str:
    """The recipe as a YAML file that `load_recipe` reads back to the same recipe."""
    import yaml

    head = (
        f"# tlbench recipe {recipe.name}: every field (see `tlbench recipes`). Save it as NAME.yaml,\n"
        "# edit it, and use it with --recipe NAME.yaml; change `name` (or delete it: the file's stem).\n"
    )
    values: dict[str, Any] = asdict(recipe)
    values["search"] = {s.partition("=")[0]: s.partition("=")[2] for s in recipe.search}
    return head + yaml.safe_dump(values, sort_keys=False, allow_unicode=True, width=1000)
