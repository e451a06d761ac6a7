"""How one value of the aggregated table reads in a human table: accuracies in % with their spread
("76.12 ± 0.53 (3)"), p-values, counts (25.6M), rates, sizes (1.50 GiB), durations (2m05s), "-"
for a missing value; and the value a sortable page orders a cell by.

Pure formatting of single values, shared by the tables of `render`, the column specs of `columns`
and the page; nothing here knows about rows or columns.
"""

from __future__ import annotations

import numbers
from typing import Any

from tlbench._util import is_missing


def pct_cell(mean: Any, std: Any, n: Any = None) -> str:
    """A fraction as "76.12 ± 0.53 (3)" in %: mean ± sample sd ("-" when undefined) (n)."""
    if is_missing(mean):
        return "-"
    spread = "-" if is_missing(std) else f"{100 * float(std):.2f}"
    count = "" if is_missing(n) else f" ({int(n)})"
    return f"{100 * float(mean):.2f} ± {spread}{count}"


def format_p(p: Any) -> str:
    """A p-value in two significant digits, "<0.001" below that; "-" for none."""
    if is_missing(p):
        return "-"
    return "<0.001" if float(p) < 0.001 else f"{float(p):.2g}"


def text(value: Any) -> str:
    """The value as text, "-" when missing."""
    return "-" if is_missing(value) else str(value)


def sortable(value: Any) -> float | str | None:
    """A cell's raw value as the page sorts it: a number, text, or None (missing: sorted last)."""
    if is_missing(value):
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return str(value)


def epochs_cell(done: Any, planned: Any) -> str:
    """The planned epochs, or "a/b" when the shortest seed ran a of the b planned."""
    if is_missing(planned):
        return text(done)
    if is_missing(done) or not isinstance(done, numbers.Real):
        return str(planned)
    ran = int(done)  # type: ignore[call-overload]  # typeshed's Real lacks the int() every real number has
    return f"{ran}/{int(planned)}" if ran < int(planned) else str(planned)


def image_size(value: Any) -> str:
    """An image side in pixels ("224 px")."""
    return "-" if is_missing(value) else f"{value} px"


def count(value: Any) -> str:
    """A count with a K, M or B suffix and one decimal ("25.6M"); small counts as they are."""
    if is_missing(value) or not isinstance(value, numbers.Real):
        return text(value)
    n = float(value)
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{int(n)}"


def mean_sd(mean: Any, std: Any, digits: int) -> str:
    """Mean and sd with `digits` decimals, as "0.812 ± 0.031" ("-" for a missing sd)."""
    if is_missing(mean):
        return "-"
    return f"{float(mean):.{digits}f} ± " + ("-" if is_missing(std) else f"{float(std):.{digits}f}")


def rate(value: Any) -> str:
    """Images per second, whole, with thousands separators."""
    return "-" if is_missing(value) else f"{float(value):,.0f}"


def memory(value: Any) -> str:
    """Bytes in GiB (two decimals) from 1 GiB up, else in whole MiB."""
    if is_missing(value):
        return "-"
    n = float(value)
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.0f} MiB"


def per_hour(value: Any) -> str:
    """A fraction per device-hour, in % points with one decimal."""
    return "-" if is_missing(value) else f"{100 * float(value):,.1f}"


def duration(seconds: Any) -> str:
    """Seconds as "7.5s", "42s", "2m05s" or "3h07m"."""
    if is_missing(seconds):
        return "-"
    s = round(float(seconds))
    if s < 60:
        return f"{float(seconds):.1f}s" if seconds < 10 else f"{s}s"
    minutes, s = divmod(s, 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
