"""``sweep/report.html``: a sweep's verdict as one self-contained page in its MLflow parent run.

MLflow's artifact viewer shows an ``.html`` artifact in an iframe, so the page carries everything
itself: inline CSS, a few lines of inline JavaScript (click a column header to sort), and the plots
as base64 ``data:`` URIs. No external script, stylesheet, font or image: it renders offline and
behind any proxy. Pure: verdict rows (:mod:`lem.report.verdict`) in, an HTML string out.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from lem.report.numbers import DASH, fmt_num
from lem.report.verdict import (
    AUTO,
    best_line,
    best_of,
    energy_sources,
    noise_warnings,
    pareto_flags,
    ranked,
    status_text,
)

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:16px;color:#212121}
h1{font-size:18px;margin:0 0 8px} h2{font-size:15px;margin:20px 0 6px}
p{margin:4px 0} .warn{color:#b71c1c} .muted{color:#616161}
table{border-collapse:collapse;margin:8px 0} th,td{border:1px solid #ddd;padding:3px 8px;white-space:nowrap}
th{background:#f5f5f5;cursor:pointer;user-select:none} th:hover{background:#e8eaf6}
th.asc::after{content:" \\25B2"} th.desc::after{content:" \\25BC"}
td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.best td{background:#e8f5e9;font-weight:600} tr.failed td{color:#9e9e9e} tr.infeasible td{color:#8d6e63}
.mark{color:#d32f2f;font-weight:700} img{max-width:100%;border:1px solid #eee;margin:4px 0}
"""

# Sort by a clicked header: numbers by their data-v value (blank last), text by its characters.
_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var asc = !th.classList.contains('asc');
    table.querySelectorAll('th').forEach(function (h) { h.classList.remove('asc', 'desc'); });
    th.classList.add(asc ? 'asc' : 'desc');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].getAttribute('data-v'), y = b.cells[col].getAttribute('data-v');
      if (x !== null || y !== null) {
        if (x === null || x === '') return 1;
        if (y === null || y === '') return -1;
        return asc ? parseFloat(x) - parseFloat(y) : parseFloat(y) - parseFloat(x);
      }
      var s = a.cells[col].textContent, t = b.cells[col].textContent;
      return asc ? s.localeCompare(t, undefined, {numeric: true}) : t.localeCompare(s, undefined, {numeric: true});
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _num_cell(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return f'<td class="n" data-v="">{DASH}</td>'
    return f'<td class="n" data-v="{float(value)!r}">{escape(fmt_num(value))}</td>'


def j_column_name(rows: Sequence[Mapping[str, Any]]) -> str:
    sources = energy_sources(rows)
    if sources == ["estimated"]:
        return "J/token gross (estimated)"
    if "estimated" in sources:
        return "J/token gross (est. = estimated)"
    return "J/token gross"


def jobs_table(rows: Sequence[Mapping[str, Any]], best: Mapping[str, Any] | None, what: str = "job") -> str:
    """The sortable table: one row per job, sorted by J/token, the best row highlighted, Pareto rows marked."""
    ordered = ranked(rows)
    flags = pareto_flags(ordered)
    keys = list(dict.fromkeys(k for r in ordered for k in (r.get("swept") or {})))
    mixed = len(energy_sources(ordered)) > 1
    head = [what, *keys, j_column_name(ordered), "net J/token", "output tok/s", "TTFT p99 ms", "status", "Pareto", "MLflow run", "folder"]
    lines = ['<table id="jobs" class="sortable"><thead><tr>' + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for r, flag in zip(ordered, flags):
        is_best = best is not None and (r.get("num"), r.get("label")) == (best.get("num"), best.get("label"))
        classes = [str(r.get("status"))] + (["best"] if is_best else [])
        num = r.get("num")
        cells = [f'<td data-v="{num if num is not None else ""}">{escape(str(r.get("label") or "?"))}'
                 + (' <span class="mark">best</span>' if "best" in classes else "") + "</td>"]
        cells += [f"<td>{escape(str((r.get('swept') or {}).get(k, DASH)))}</td>" for k in keys]
        j_cell = _num_cell(r.get("j_per_token"))
        if mixed and r.get("energy_source") == "estimated" and r.get("j_per_token") is not None:
            j_cell = j_cell.replace("</td>", " est.</td>")
        cells += [j_cell, _num_cell(r.get("net_j_per_token")), _num_cell(r.get("tokens_per_s")), _num_cell(r.get("ttft_p99_ms"))]
        cells.append(f"<td>{escape(status_text(r))}</td>")
        cells.append(f'<td class="mark">{"&#9733;" if flag else ""}</td>')
        cells.append(f"<td><code>{escape(str(r.get('run_id') or ''))}</code></td>")
        cells.append(f"<td>{escape(str(r.get('run_dir') or ''))}</td>")
        run_id = escape(str(r.get("run_id") or ""))
        lines.append(f'<tr class="{" ".join(escape(c) for c in classes)}" data-run-id="{run_id}">' + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def sweep_report_html(rows: Sequence[Mapping[str, Any]], *, title: str, best: Mapping[str, Any] | str | None = AUTO,
                      what: str = "job", why: str = "least J/token", notes: Sequence[str] = (),
                      pareto_png: bytes | None = None, heatmap_png: bytes | None = None) -> str:
    """The whole page: title, the best line, the sortable table, its caption, warnings, then the plots.
    ``best``: the row to highlight (default :func:`lem.report.verdict.best_of`; None: none)."""
    best = best_of(rows) if best == AUTO else best
    sources = energy_sources(rows)
    energy = ", ".join(sources) if sources else "not measured"
    if "estimated" in sources:
        energy += " (a model's figure from device specs, not a sensor reading)"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p><b>{escape(best_line(best, what=what, why=why))}</b></p>",
        *[f'<p class="muted">{escape(n)}</p>' for n in notes],
        f"<h2>{escape(what.capitalize())}s</h2>",
        f'<p class="muted">Sorted by J/token (least first); click a header to sort. &#9733; = Pareto-optimal: no other '
        f"completed {escape(what)} has both less J/token and more output tok/s. Energy: {escape(energy)}.</p>",
        jobs_table(rows, best, what),
        *[f'<p class="warn">warning: {escape(w)}</p>' for w in noise_warnings(rows)],
    ]
    if pareto_png:
        parts += ["<h2>J/token against output tok/s</h2>", f'<img alt="Pareto plot" src="{png_data_uri(pareto_png)}">']
    if heatmap_png:
        parts += ["<h2>J/token over the two swept parameters</h2>", f'<img alt="heatmap" src="{png_data_uri(heatmap_png)}">']
    parts += [f"<script>{_JS}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"
