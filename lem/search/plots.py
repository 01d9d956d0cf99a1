"""A study's plots (matplotlib, Agg): the Pareto front, the optimisation history, parameter importances.

Rows come from :func:`lem.search.report.study_rows` (measured trials only). Infeasible trials
(over a latency limit) are grey; failed trials have no values and are not drawn. A title that
shows J/token says "estimated" when that energy is a model's, not a sensor's: the caller's
``estimated``, else the rows' ``energy_source`` (``lem.energy_source`` of each trial).
Legends sit beside the axes, where they cover no point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lem.report.verdict import pareto_front
from lem.search.settings import (
    J_PER_TOKEN,
    SHORT_NAMES,
    TOKENS_PER_S,
    importances_warning,
)
from lem.tracking.plots import (
    estimate_note,
    legend_outside,
    pyplot,
    save_figure,
)

FEASIBLE, INFEASIBLE, FRONT = "#1565c0", "#b0b0b0", "#c62828"


def _energy_note(rows: Sequence[Mapping[str, Any]], estimated: bool | None) -> str:
    return estimate_note((r.get("energy_source") for r in rows if r.get(J_PER_TOKEN) is not None), estimated)


def plot_pareto_front(
    rows: Sequence[Mapping[str, Any]], best: Sequence[int], path: Path, title: str = "", estimated: bool | None = None
) -> Path | None:
    """J/token (y) against output tokens/s (x) of every completed trial; the feasible front and the best trial(s) marked."""
    points = [r for r in rows if r["state"] == "COMPLETE" and r.get(J_PER_TOKEN) is not None and r.get(TOKENS_PER_S) is not None]
    if not points:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))  # the legend beside the axes takes about 2 inches
    infeasible = [r for r in points if not r["feasible"]]
    feasible = [r for r in points if r["feasible"]]
    if infeasible:
        ax.scatter([r[TOKENS_PER_S] for r in infeasible], [r[J_PER_TOKEN] for r in infeasible], c=INFEASIBLE, marker="x", label="infeasible (over a latency limit)")
    if feasible:
        ax.scatter([r[TOKENS_PER_S] for r in feasible], [r[J_PER_TOKEN] for r in feasible], c=FEASIBLE, label="feasible trials")
        # The trials no other beats on both J/token (lower) and tokens/s (higher), by throughput.
        front = [feasible[i] for i in pareto_front([(r[TOKENS_PER_S], r[J_PER_TOKEN]) for r in feasible])]
        ax.step([r[TOKENS_PER_S] for r in front], [r[J_PER_TOKEN] for r in front], where="post", c=FRONT, lw=1.2, label="Pareto front (J/token vs tok/s)")
    chosen = [r for r in feasible if r["number"] in set(best)]
    if chosen:
        ax.scatter([r[TOKENS_PER_S] for r in chosen], [r[J_PER_TOKEN] for r in chosen], c=FRONT, marker="*", s=160, zorder=3, label="the study's best")
    for r in points:
        ax.annotate(f"#{r['number']}", (r[TOKENS_PER_S], r[J_PER_TOKEN]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    note = _energy_note(points, estimated)
    ax.set_xlabel("output tokens/s")
    ax.set_ylabel(f"J per output token{note}")
    ax.set_title(f"{title or 'J/token against throughput (lower right is better)'}{note}", fontsize=10)
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return save_figure(fig, path)


def optimization_history(
    rows: Sequence[Mapping[str, Any]], objectives: Sequence[str], directions: Sequence[str], path: Path, estimated: bool | None = None
) -> Path | None:
    """Each objective against the trial number (whole numbers on the axis), with the best feasible value so far."""
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if not done:
        return None
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(len(objectives), 1, figsize=(8.5, 3.2 * len(objectives)), squeeze=False)
    for ax, objective, direction in zip(axes[:, 0], objectives, directions):
        pts = [r for r in done if r.get(objective) is not None]
        for feasible, color, marker, label in ((True, FEASIBLE, "o", "feasible"), (False, INFEASIBLE, "x", "infeasible")):
            sel = [r for r in pts if r["feasible"] is feasible]
            if sel:
                ax.scatter([r["number"] for r in sel], [r[objective] for r in sel], c=color, marker=marker, label=label)
        best, xs, ys = None, [], []
        for r in sorted(pts, key=lambda r: r["number"]):
            if r["feasible"]:
                v = r[objective]
                best = v if best is None else (min(best, v) if direction == "minimize" else max(best, v))
            if best is not None:
                xs.append(r["number"])
                ys.append(best)
        if xs:
            ax.step(xs, ys, where="post", c=FRONT, label="best so far")
        note = _energy_note(pts, estimated) if objective.startswith("energy.") else ""
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers: never "trial 2.5"
        ax.set_xlabel("trial")
        ax.set_ylabel(SHORT_NAMES.get(objective, objective))
        ax.set_title(f"{direction} {SHORT_NAMES.get(objective, objective)}{note}", fontsize=10)
        ax.grid(alpha=0.3)
        legend_outside(ax)
    return save_figure(fig, path)


def param_importances(
    importances: Mapping[str, Mapping[str, float]], path: Path, warning: str | None = None, n_trials: int | None = None, estimated: bool = False
) -> Path | None:
    """One horizontal bar chart per objective: each parameter's share of the objective's variance, its value
    written at the bar's end. The caveat of too few trials heads the figure: ``warning``, else the one for
    ``n_trials``, else the one :func:`lem.search.report.importances` attached to ``importances``."""
    shown = {k: v for k, v in importances.items() if v}
    if not shown:
        return None
    if warning is None:
        n = n_trials if n_trials is not None else getattr(importances, "n_trials", None)
        warning = importances_warning(n) if n is not None else getattr(importances, "warning", None)
    plt = pyplot()
    n_params = max(len(v) for v in shown.values())
    fig, axes = plt.subplots(1, len(shown), figsize=(6.0 * len(shown), 0.5 * n_params + 2.0), squeeze=False)
    for ax, (objective, values) in zip(axes[0], shown.items()):
        names = list(values)[::-1]
        bars = ax.barh(names, [values[n] for n in names], color=FEASIBLE)
        ax.bar_label(bars, labels=[f"{values[n]:.2f}" for n in names], padding=2, fontsize=8)
        ax.tick_params(axis="y", labelsize=8)  # dotted parameter paths are long: a smaller font, not a squeezed plot
        ax.set_xlabel("importance")
        note = " (estimated)" if estimated and objective.startswith("energy.") else ""
        ax.set_title(f"{SHORT_NAMES.get(objective, objective)}{note}", fontsize=10)
        ax.set_xlim(0, 1.1)  # room for the value of a bar near 1
    if warning:
        fig.suptitle(f"warning: {warning}", fontsize=9, color="#b71c1c")
    return save_figure(fig, path)
