"""The one stderr console and progress bar every command shares (stdout stays machine-readable)."""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def progress_bar(enabled: bool = True) -> Any:
    """A transient rich progress bar on stderr; a no-op when disabled."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console(),
        disable=not enabled,
        transient=True,
    )
