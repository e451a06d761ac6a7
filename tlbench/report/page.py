"""The report as one self-contained HTML page (`tlbench report --format html`).

    page = render_page(records, df, skipped)      # df from aggregate + stats.with_differences

One file that works offline: no external asset (a Content-Security-Policy forbids any), figures as
PNG data URIs, a few lines of inline script. It holds:

- the summary table (the human table of `render`, best first), sortable by a click on any header
  and filterable by backbone, recipe and freeze; a URL fragment does the same on load
  (`report.html#sort=top1`, `#sort=-wall`, `#backbone=vgg19`), so a link can show a view;
- the comparison figures of `plots`;
- for a tuned sweep, a tuning section: per tuned configuration the chosen values, the trials (pruned,
  failed), their device-seconds and the default-versus-tuned difference, and the tuning history;
- a section per configuration: its curves per seed, its runs (seed, numbers, run directory) and
  its per-class accuracy (per_class.csv);
- the environment (env.json of every run: versions, device, commit) and every note (what the
  numbers mean, the baselines, the leakage, the skipped folders with why);
- with bench results, their table; with `tlbench eval` folders, the protocols table and under it a
  figure of every backbone under every protocol, with the intervals (`protocol_plot`).

Every value from the user's disk (class names, paths, backbone and recipe names) is HTML-escaped;
the script reads only the page's own attributes.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from tlbench._util import is_missing
from tlbench.report import stats
from tlbench.report.aggregate import row_runs
from tlbench.report.cells import format_p, pct_cell
from tlbench.report.collect import RunRecord, Skipped
from tlbench.report.labels import row_labels
from tlbench.report.render import HumanTable, human_table
from tlbench.rundir import RunDir, SchemaError

if TYPE_CHECKING:
    import pandas as pd

FILTERS = ("backbone", "recipe", "freeze")
"""The summary table's filters: columns of `aggregate`, one drop-down each."""

ENV_FIELDS = ("tlbench", "tlbench_commit", "python", "torch", "torchvision", "timm", "cuda", "cudnn")
"""env.json fields shown first in the environment table (any others follow)."""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.5em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}h3{margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
td{font-variant-numeric:tabular-nums}
.wide{overflow-x:auto}#summary td{white-space:nowrap}
#summary th{cursor:pointer;background:#f3f3f3;user-select:none}
#summary th[aria-sort=ascending]::after{content:" \\25B2"}
#summary th[aria-sort=descending]::after{content:" \\25BC"}
#summary tr.mark td{font-weight:bold}
.filters label{margin-right:1em}
.caption,.note{color:#444;font-size:.9em}
img{max-width:100%;border:1px solid #eee}
code{font-size:.9em;word-break:break-all}
section.config{border-top:1px solid #eee;padding-top:.5em}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 1em}dt{color:#555}dd{margin:0}
"""

# Sorting on a header click (ascending, then descending), filtering by the drop-downs, and the
# same from the URL fragment on load. Numbers sort as numbers, text as text, empty cells last.
_SCRIPT = """
(function () {
  var table = document.getElementById("summary");
  if (!table) { return; }
  var body = table.tBodies[0], heads = table.tHead.rows[0].cells;
  function value(row, i) {
    var cell = row.cells[i];
    if (cell.hasAttribute("data-n")) { return parseFloat(cell.getAttribute("data-n")); }
    return cell.hasAttribute("data-s") ? cell.getAttribute("data-s") : null;
  }
  function sortBy(i, descending) {
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, i), y = value(b, i);
      if (x === null || y === null) { return (x === null) - (y === null); }
      var order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return descending ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    for (var j = 0; j < heads.length; j++) { heads[j].removeAttribute("aria-sort"); }
    heads[i].setAttribute("aria-sort", descending ? "descending" : "ascending");
  }
  Array.prototype.forEach.call(heads, function (head, i) {
    head.addEventListener("click", function () {
      sortBy(i, head.getAttribute("aria-sort") === "ascending");
    });
  });
  var selects = document.querySelectorAll("select[data-filter]");
  function filter() {
    Array.prototype.forEach.call(body.rows, function (row) {
      var shown = Array.prototype.every.call(selects, function (s) {
        return s.value === "" || row.getAttribute("data-" + s.getAttribute("data-filter")) === s.value;
      });
      row.hidden = !shown;
    });
  }
  Array.prototype.forEach.call(selects, function (s) { s.addEventListener("change", filter); });
  location.hash.replace(/^#/, "").split("&").forEach(function (part) {
    var pair = part.split("="), name = decodeURIComponent(pair[0]);
    var wanted = decodeURIComponent((pair[1] || "").replace(/\\+/g, " "));
    if (name === "sort") {
      var key = wanted.replace(/^-/, "");
      for (var i = 0; i < heads.length; i++) {
        if (heads[i].getAttribute("data-key") === key) {
          heads[i].click();
          if (wanted.charAt(0) === "-") { heads[i].click(); }
        }
      }
    }
    Array.prototype.forEach.call(selects, function (s) {
      if (s.getAttribute("data-filter") === name) { s.value = wanted; }
    });
  });
  filter();
})();
"""


def render_page(
    records: Sequence[RunRecord],
    df: pd.DataFrame,
    skipped: Sequence[Skipped] = (),
    bench: str = "",
    protocols: str = "",
    protocol_rows: Sequence[dict[str, Any]] = (),
) -> str:
    """The whole report as one HTML page.

    Args:
        records: From `collect_runs` (runs and baselines).
        df: From `aggregate` over them (and `stats.with_differences`, for the interval and test).
        skipped: The folders left out, each with why.
        bench: An html table of bench results (`render_bench`) to show, or "".
        protocols: An html table of `tlbench eval` results (`render_protocols`), or "".
        protocol_rows: The rows of that table, for the figure under it (`protocols_figure`).

    Returns:
        The page, ending with a newline.
    """
    from tlbench.report.plots import comparison_figures, plain_text, png_bytes, seed_curves, tuning_figure

    table = human_table(df)
    labels = row_labels(df) if len(df) else []
    groups = row_runs(df, records)
    runs = sum(len(g) for g in groups)
    baselines = [r for r in records if r.kind == "baseline"]
    parts = [
        "<h1>tlbench report</h1>",
        _p(
            f"{len(df)} configuration(s), {runs} run(s), {len(baselines)} baseline(s), {len(skipped)} skipped"
        ),
        "<h2 id='summary-table'>Summary</h2>",
        _filters(df),
        _summary(table, df),
        *(f"<p class='caption'>{_e(line)}</p>" for line in table.caption),
    ]
    with plain_text():  # every label as written; the figures drawn one at a time, then closed
        figures = [_figure(png_bytes(fig), name) for name, fig in comparison_figures(records, df)]
        if figures:
            parts += ["<h2 id='figures'>Figures</h2>", *figures]
        if (history := tuning_figure(df)) is not None:
            caption = "tuning history: the best selection top-1 so far against the trial, per configuration"
            parts += [
                "<h2 id='tuning'>Tuning</h2>",
                _tuning(df, labels),
                _figure(png_bytes(history), caption),
            ]
        parts.append("<h2 id='configurations'>Configurations</h2>")
        for position in table.order:
            curves = seed_curves(groups[position], labels[position])
            image = _figure(png_bytes(curves), f"curves per seed: {labels[position]}") if curves else ""
            parts.append(
                _config_section(position, labels[position], df.iloc[position], groups[position], image)
            )
    parts += [
        "<h2 id='environment'>Environment</h2>",
        _environment(records),
        "<h2 id='notes'>Notes</h2>",
        _notes(table, baselines, skipped),
    ]
    if bench:
        parts += ["<h2 id='bench'>Throughput (tlbench bench)</h2>", bench]
    if protocols:
        parts += [
            "<h2 id='protocols'>Frozen-feature protocols (tlbench eval)</h2>",
            protocols,
            _protocols_figure(protocol_rows),
        ]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>\n"
        f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">\n"
        "<title>tlbench report</title>\n"
        f"<style>{_STYLE}</style></head><body>\n" + "\n".join(parts) + f"\n<script>{_SCRIPT}</script>\n"
        "</body></html>\n"
    )


def _e(value: Any) -> str:
    """Any value as escaped HTML text ("-" for a missing one)."""
    return html.escape("-" if is_missing(value) else str(value), quote=True)


def _p(text: str) -> str:
    return f"<p>{_e(text)}</p>"


def _filters(df: pd.DataFrame) -> str:
    out = []
    for name in FILTERS:
        values = sorted({str(v) for v in df[name] if not is_missing(v)}) if name in df else []
        options = "".join(f"<option value='{_e(v)}'>{_e(v)}</option>" for v in values)
        select = f"<select data-filter='{name}'><option value=''>all</option>{options}</select>"
        out.append(f"<label>{name} {select}</label>")
    return "<p class='filters'>" + "".join(out) + "</p>"


def _summary(table: HumanTable, df: pd.DataFrame) -> str:
    head = "".join(
        f"<th data-key='{_e(c.key)}' title='click to sort'>{_e(c.header)}</th>" for c in table.columns
    )
    rows = []
    for position, cells, values in zip(table.order, table.rows, table.values, strict=True):
        r = df.iloc[position]
        attrs = "".join(f" data-{name}='{_e(r[name])}'" for name in FILTERS if name in df)
        marked = " class='mark'" if "*" in cells[[c.key for c in table.columns].index("mark")] else ""
        tds = "".join(
            _cell(cell, value, c.key, position)
            for cell, value, c in zip(cells, values, table.columns, strict=True)
        )
        rows.append(f"<tr id='row-{position}'{attrs}{marked}>{tds}</tr>")
    body = "\n".join(rows)
    table_html = f"<table id='summary'>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    return f"<div class='wide'>{table_html}</div>"


def _cell(text: str, value: float | str | None, key: str, position: int) -> str:
    sort = (
        ""
        if value is None
        else f" data-n='{value!r}'"
        if isinstance(value, float)
        else f" data-s='{_e(value)}'"
    )
    if key == "backbone":  # the backbone links to the configuration's section
        return f"<td{sort}><a href='#config-{position}'>{_e(text)}</a></td>"
    return f"<td{sort}>{_e(text)}</td>"


def _figure(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f"<figure><img alt='{_e(caption)}' src='data:image/png;base64,{data}'>"
        f"<figcaption class='caption'>{_e(caption)}</figcaption></figure>"
    )


def _protocols_figure(rows: Sequence[dict[str, Any]]) -> str:
    """The protocols figure, embedded ("" when no row has a protocol's value)."""
    from tlbench.report.plots import plain_text, png_bytes
    from tlbench.report.protocol_plot import protocols_figure

    with plain_text():
        fig = protocols_figure(list(rows))
        if fig is None:
            return ""
        caption = "each backbone's accuracy per protocol; error bars: the 95 % intervals of the table above"
        return _figure(png_bytes(fig), caption)


def _config_section(position: int, label: str, row: Any, runs: list[RunRecord], image: str) -> str:
    facts = {
        "backbone": row["backbone"],
        "recipe": row["recipe"] + (f" with {row['recipe_overrides']}" if row.get("recipe_overrides") else ""),
        "freeze": row["freeze"],
        "val top-1 % best (n)": pct_cell(row["best_val_top1_mean"], row["best_val_top1_std"], row["n"]),
        "weights": row["weights_source"],
        "data": f"{_text(row['dataset'])}, class list {_text(row['class_list_hash'])}",
        "pretraining saw": row["leakage"],
        "device": row["device"],
    }
    facts |= _honest_facts(row)
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts.items())
    return (
        f"<section class='config' id='config-{position}'><h3>{_e(label)}</h3>\n<dl>{dl}</dl>\n{image}\n"
        f"{_runs_table(runs)}\n{_per_class(runs)}\n</section>"
    )


def _honest_facts(row: Any) -> dict[str, str]:
    """The interval and the comparison with the best, spelled out."""
    if is_missing(row.get("final_top1_ci_low")):
        return {"final 95% interval": _text(row.get("stats_note"))} if "stats_note" in row else {}
    low, high = 100 * float(row["final_top1_ci_low"]), 100 * float(row["final_top1_ci_high"])
    facts = {"val top-1 % final, 95% interval": f"{_pct(row['final_val_top1_mean'])} ({low:.2f}–{high:.2f})"}
    verdict = row.get("vs_best")
    if verdict == stats.BEST:
        facts["final vs best"] = "the best on these images"
    elif not is_missing(verdict):
        facts["final vs best"] = (
            f"{verdict}: {100 * float(row['vs_best_diff']):+.2f} points against {row['vs_best_config']}, "
            f"p {format_p(row['vs_best_p'])} ({row['vs_best_test']})"
        )
    return facts


def _tuning(df: pd.DataFrame, labels: list[str]) -> str:
    """One line per tuned configuration: what its study chose and what that cost."""
    from tlbench.report.tuning import values_text

    headers = [
        "configuration",
        "chosen values",
        "trials (complete, pruned, failed)",
        "epochs per trial",
        "tuning device-s",
        "best selection top-1 %",
        "vs default (val top-1, pts)",
    ]
    rows = []
    for position, (tuned, t) in enumerate(zip(df["tuned"], df["tuning"], strict=True)):
        if not isinstance(t, dict):
            continue
        diff = t.get("vs_default")
        versus = f"{100 * diff:+.2f} (default {_pct(t.get('default_top1'))})" if diff is not None else "-"
        config = f"<a href='#config-{position}'>{_e(labels[position])}</a>"
        cells = [
            values_text(tuned) + f" ({t.get('trials')} trials)"
            if isinstance(tuned, dict)
            else "none finished",
            f"{t.get('trials')} ({t.get('complete')}, {t.get('pruned')}, {t.get('failed')})",
            _text(t.get("tune_epochs") or "the run's"),
            _text(t.get("device_seconds")),
            _pct(t.get("best_select_top1")),
            versus,
        ]
        rows.append(f"<tr><td>{config}</td>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    note = _p(
        "Every configuration had the same budget; its values were chosen on the selection split, never on "
        "validation. vs default: the tuned row's headline top-1 minus its recipe's own values' (same report)."
    )
    return (
        f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
        + "\n".join(rows)
        + f"\n</tbody>\n</table>{note}"
    )


def _runs_table(runs: list[RunRecord]) -> str:
    headers = [
        "seed",
        "status",
        "val top-1 % best (epoch)",
        "val top-1 % final",
        "epochs",
        "wall s",
        "run directory",
    ]
    rows = [
        [
            _text(r.seed),
            r.status,
            f"{_pct(r.best_val_top1)} ({_text(r.best_epoch)})",
            _pct(r.final_val_top1),
            _text(r.epochs_done),
            f"{r.wall_seconds:.1f}",
            str(r.path),
        ]
        for r in runs
    ]
    return _table(headers, rows, code_column=6)


def _per_class(runs: list[RunRecord]) -> str:
    """Each class's final top-1 per seed and its mean, worst first, in a fold-out."""
    per_run, problems = [], []
    for run in runs:
        try:
            per_run.append({row.class_index: row for row in RunDir(run.path).read_per_class()})
        except SchemaError as exc:
            problems.append(exc.one_line())
    if not per_run:
        return _p("per-class accuracy: " + ("; ".join(problems) or "none recorded"))
    classes = sorted(set().union(*per_run))
    rows = []
    for index in classes:
        found = [r[index] for r in per_run if index in r]
        tops = [r.top1 for r in found if r.top1 is not None]
        mean = sum(tops) / len(tops) if tops else float("nan")
        cells = [str(index), found[0].wnid, _pct(mean)] + [
            _pct(r[index].top1) if index in r else "-" for r in per_run
        ]
        rows.append((mean if tops else 2.0, index, cells))
    rows.sort(key=lambda item: item[:2])
    seeds = [f"seed {_text(r.seed)}" for r in runs][: len(per_run)]
    headers = ["class", "name", "top-1 % mean", *seeds]
    worst = ", ".join(f"{cells[1]} {cells[2]}" for _, _, cells in rows[:3])
    note = "".join(f"<p class='note'>{_e(p)}</p>" for p in problems)
    return (
        f"<details><summary>per-class accuracy ({len(rows)} classes; worst: {_e(worst)})</summary>\n"
        f"{_table(headers, [cells for _, _, cells in rows])}</details>{note}"
    )


def _environment(records: Sequence[RunRecord]) -> str:
    """One column per distinct env.json (versions, device, commit), with the runs that share it."""
    envs: dict[str, tuple[dict[str, Any], list[str]]] = {}
    problems = []
    for record in records:
        try:
            env = RunDir(record.path).read_env()
        except SchemaError as exc:
            problems.append(exc.one_line())
            continue
        key = json.dumps(env, sort_keys=True, default=str)
        envs.setdefault(key, (env, []))[1].append(str(record.path))
    if not envs:
        return _p("no env.json could be read")
    fields = list(ENV_FIELDS) + sorted({k for env, _ in envs.values() for k in env} - set(ENV_FIELDS))
    headers = ["field", *(f"environment {i + 1}" for i in range(len(envs)))]
    rows = [[name, *(_text(env.get(name)) for env, _ in envs.values())] for name in fields]
    rows.append(["runs", *(f"{len(paths)}: " + "; ".join(paths) for _, paths in envs.values())])
    note = "".join(f"<p class='note'>{_e(p)}</p>" for p in problems)
    return _table(headers, rows) + note


def _notes(table: HumanTable, baselines: list[RunRecord], skipped: Sequence[Skipped]) -> str:
    items = [f"<li>{_e(note)}</li>" for note in table.notes]
    for b in baselines:
        items.append(
            f"<li>baseline {_e(b.backbone)} on {_e(b.dataset)}: top-1 {_e(_pct(b.best_val_top1))} % with no "
            f"training (pretraining saw: {_e(b.leakage)}); <code>{_e(b.path)}</code></li>"
        )
    for s in skipped:
        items.append(f"<li>skipped <code>{_e(s.path)}</code>: {_e(s.reason)}</li>")
    return "<ul>\n" + "\n".join(items) + "\n</ul>"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], code_column: int | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)

    def cell(i: int, text: str) -> str:
        return f"<td><code>{_e(text)}</code></td>" if i == code_column else f"<td>{_e(text)}</td>"

    body = "\n".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _pct(value: Any) -> str:
    return "-" if is_missing(value) else f"{100 * float(value):.2f}"


def _text(value: Any) -> str:
    return "-" if is_missing(value) else str(value)
