"""The one stderr console and progress bar every command shares (stdout stays machine-readable).

Paths, backbone names, class names and error messages are user text: they can hold `[/]` or
`[bold]`, which rich would read as markup (and fail on, after the work is done). So user text is
printed as `rich.text.Text`, never as a markup string: `say` for a line, `plain` for a table cell
or title.
"""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def plain(text: object, style: str = "") -> Any:
    """`str(text)` as a `rich.text.Text`: shown literally, in an optional style."""
    from rich.text import Text

    return Text(str(text), style=style)


def say(*parts: object | tuple[object, str], style: str = "", **print_kwargs: Any) -> None:
    """Print one line of literal text on the stderr console (no markup, no highlighting).

        say(("skipped", "yellow"), f" {path}: {reason}", soft_wrap=True)

    Args:
        *parts: Pieces joined as they are; a `(text, style)` pair shows its text in that style.
        style: The style of the whole line.
        **print_kwargs: Passed to `Console.print` (e.g. `soft_wrap=True`).
    """
    from rich.text import Text

    pieces = [(str(p[0]), p[1]) if isinstance(p, tuple) else str(p) for p in parts]
    console().print(Text.assemble(*pieces, style=style), **print_kwargs)


def progress_bar(enabled: bool = True) -> Any:
    """A transient rich progress bar on stderr (task descriptions shown literally); a no-op when disabled."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console(),
        disable=not enabled,
        transient=True,
    )
