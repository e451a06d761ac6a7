"""Where results come out: finished run directories in, one comparison table and four figures out.

    records, skipped = collect_runs([Path("results/runs")])   # never raises for a bad run dir
    df = aggregate(records)                                     # one row per configuration
    df = with_differences(df, records)                          # 95 % intervals, tests vs the best
    print(render(df, "markdown"))                               # or csv / json / html
    make_plots(records, df, Path("results/report"))
    page = render_page(records, df, skipped)                    # the whole report as one page

The steps, one module each: `collect` (run directories to `RunRecord`s), `leakage` (what the
pretraining saw, REFERENCE.md section 3), `aggregate` (one row per configuration), `stats`
(intervals and paired tests from predictions.csv), `render` and `plots` (tables and figures),
`page` (the self-contained HTML report); `bench` does the same for `tlbench bench` results.

Every run directory is read through `tlbench.rundir.RunDir`: the report shows what was written,
and a folder of another schema version is skipped with a message naming it. The whole `tlbench
report` command (find, collect, validate, aggregate, render, write) is `tlbench.report.command.report`.

Importing this package is cheap: numpy, pandas and matplotlib load inside the functions, torch never.
"""

from tlbench.report.aggregate import DEFAULT_GROUP_BY, aggregate
from tlbench.report.collect import RunRecord, Skipped, collect_runs
from tlbench.report.leakage import leakage_flag
from tlbench.report.page import render_page
from tlbench.report.plots import make_plots, pareto_front
from tlbench.report.render import FORMATS, print_table, render
from tlbench.report.stats import with_differences

__all__ = [
    "DEFAULT_GROUP_BY",
    "FORMATS",
    "RunRecord",
    "Skipped",
    "aggregate",
    "collect_runs",
    "leakage_flag",
    "make_plots",
    "pareto_front",
    "print_table",
    "render",
    "render_page",
    "with_differences",
]
