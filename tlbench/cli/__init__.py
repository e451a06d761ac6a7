"""The `tlbench` command line.

Importing this package stays cheap (no torch, no numpy) so that `tlbench --help` is instant; every
command imports what it needs when it runs. User mistakes raise `tlbench.errors.TlbenchError`,
which `main` prints as one line with its documented exit code. Each command parses its options,
calls one function of the package and prints the result; a value out of its choices or bounds is
found where the config is built (`tlbench.options`) and named here by its flag.

The commands live by what they are for, and are registered below in the order `--help` lists them:
`data.py` (`tlbench data ...`), `train.py` (the commands that write run directories),
`evaluate.py` (`eval`), `results.py` (`report`, `bench`) and `info.py` (`recipes`, `backbones`, `layers`).
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from tlbench.cli import _schema, data, evaluate, info, results, train
from tlbench.errors import ConfigError, run_entry_point

app = typer.Typer(
    name="tlbench",
    help="Transfer-learning benchmarks on mini-ImageNet: the Keras VGG19 recipe on any timm backbone.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Create, check and fetch mini-ImageNet data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
data_app.command("synth")(data.synth)
data_app.command("check")(data.check)
data_app.command("download")(data.download)
app.command("run")(train.run)
app.command("sweep")(train.sweep)
app.command("eval")(evaluate.evaluate)
app.command("bench")(results.bench)
app.command("report")(results.report)
app.command("baseline")(train.baseline)
app.command("recipes")(info.recipes)
app.command("backbones")(info.backbones)
app.command("layers")(info.layers)
app.command("demo")(train.demo)


def _click_exceptions() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(usage errors, aborts) for the click that Typer uses: its own vendored copy or click itself."""
    usage: list[type[BaseException]] = []
    aborts: list[type[BaseException]] = [KeyboardInterrupt, typer.Abort]
    typer_base = getattr(getattr(typer, "exceptions", None), "TyperException", None)
    if typer_base is not None:
        usage.append(typer_base)
    try:
        import click

        usage.append(click.ClickException)
        aborts.append(click.exceptions.Abort)
    except ImportError:
        pass
    return tuple(usage), tuple(aborts)


def _flag_of(field: str) -> str | None:
    """The command-line flag of a config field (`image_size` -> `--image-size`), or None without one.

    A nested field (`recipe.lr`) is looked up by its last part; a recipe value that no command
    overrides (`momentum`) has no flag.
    """
    name = field.rsplit(".", 1)[-1]
    flag = _schema.flag_of(name) or "--" + name.replace("_", "-")
    return flag if flag in _flags(typer.main.get_command(app)) else None


def _flags(command: Any) -> set[str]:
    """Every option string of `command` and its subcommands."""
    found = {opt for param in command.params for opt in param.opts}
    for sub in getattr(command, "commands", {}).values():
        found |= _flags(sub)
    return found


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user errors into one line and an exit code."""
    usage_errors, aborts = _click_exceptions()

    def invoke() -> object:
        try:
            return app(args=argv, prog_name="tlbench", standalone_mode=False)
        except ConfigError as exc:
            flag = _flag_of(exc.field)
            raise (exc.as_flag(flag) if flag else exc) from None
        except usage_errors as exc:
            exc.show()  # type: ignore[attr-defined]
            return getattr(exc, "exit_code", 2)

    sys.exit(run_entry_point(invoke, aborts))
