"""PNG plots logged as MLflow artifacts (matplotlib, Agg backend: no display needed).

Per run: power over time with the phases shaded; energy by phase and component.
Per sweep: J/token against output tokens/s with the Pareto front marked; a J/token
heatmap over two swept parameters. Energy can be null (no sensor, e.g. a CPU VM): a plot
then shows what was measured instead and says so in its title — never a 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lem.report.verdict import pareto_front

PHASE_COLORS = {
    "idle_baseline": "#dddddd",
    "idle_recheck": "#eeeeee",
    "engine_init": "#fde0c5",
    "model_load": "#facba6",
    "warmup": "#c8e6c9",
    "generation": "#bbdefb",
}
COMPONENT_COLORS = {"gpu": "#2e7d32", "cpu": "#1565c0", "dram": "#f9a825", "system": "#6d4c41"}


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed), its INFO logging quiet."""
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font-cache INFO lines would land in the run's output

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, right: float = 1.0) -> Path:
    """Write ``fig`` as a PNG at ``path`` and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, 0, right, 1))  # right < 1 leaves room for a legend beside the axes
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


ESTIMATED = "estimated"  # an energy or power source that is a model's figure, not a sensor's


def estimate_note(sources: Iterable[Any], estimated: bool | None = None) -> str:
    """" (estimated)" for a title when every energy figure shown is estimated, " (partly estimated)" when
    some are, "" when none; ``estimated`` (the caller's word) overrides what the sources say."""
    if estimated is not None:
        return f" ({ESTIMATED})" if estimated else ""
    known = [str(s) for s in sources if s]
    if not any(s == ESTIMATED for s in known):
        return ""
    return f" ({ESTIMATED})" if all(s == ESTIMATED for s in known) else f" (partly {ESTIMATED})"


def legend_outside(ax: Any, **kwargs: Any) -> Any:
    """A legend beside the axes (right), where it can cover no data; ``save_figure`` makes room for it."""
    kwargs.setdefault("loc", "upper left")
    kwargs.setdefault("bbox_to_anchor", (1.02, 1.0))
    return ax.legend(borderaxespad=0.0, fontsize=8, title_fontsize=8, **kwargs)


def power_timeline(
    rows: Sequence[Mapping[str, Any]], spans: Sequence[tuple[str, float, float]], path: Path, title: str = "", estimated: bool | None = None
) -> Path:
    """Power of every device over the run's clock, each phase shaded and labelled; the title says
    "estimated" when the power is a model's (``estimated``, else the rows' ``source``)."""
    plt = pyplot()
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(11, 4.5))
    times = [float(r["t_s"]) for r in rows if r.get("t_s") is not None] + [t for _, s, e in spans for t in (s, e)]
    width = (max(times) - min(times)) if times else 0.0
    phase_handles = []
    for name, start, end in spans:
        color = PHASE_COLORS.get(name, "#eeeeee")
        ax.axvspan(start, end, color=color, alpha=0.6, lw=0)
        phase_handles.append(Patch(color=color, alpha=0.6, label=name))
        if width and (end - start) > 0.08 * width:  # a short phase's label would overprint its neighbour's: legend only
            ax.text((start + end) / 2, 1.0, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
    by_device: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r.get("power_w") is not None and r.get("t_s") is not None:
            label = f"{r.get('device')} ({r['source']})" if r.get("source") else str(r.get("device"))  # estimated says so
            by_device.setdefault(label, []).append((float(r["t_s"]), float(r["power_w"])))
    for device, points in sorted(by_device.items()):
        points.sort()
        ax.plot([t for t, _ in points], [w for _, w in points], lw=1.2, label=device)
    ax.set_xlabel("time since start of run (s)")
    ax.set_ylabel("power (W)")
    suffix = f" — {title}" if title else ""
    if by_device:  # legends beside the axes (devices above, phases below): none covers a curve
        devices = legend_outside(ax, title="device")
        note = estimate_note((r.get("source") for r in rows if r.get("power_w") is not None), estimated)
        ax.set_title(f"Power over time{note}{suffix}", pad=16)
    else:
        devices = None
        ax.set_title(f"Power over time: no power samples recorded (null){suffix}", pad=16)
    if phase_handles:  # so even a 30 ms generation window is named
        if devices is not None:  # kept beside the phases' legend; add_artist clips it to the axes, which tight_layout then ignores
            ax.add_artist(devices)
            devices.set_clip_on(False)
        legend_outside(ax, handles=phase_handles, title="phase", loc="lower left", bbox_to_anchor=(1.02, 0.0))
    return save_figure(fig, path)


def energy_by_phase(summary: Mapping[str, Any], path: Path, title: str = "", estimated: bool | None = None) -> Path:
    """Stacked bars: each phase's energy by component (estimated hatched), its total written on top;
    wall time when energy is null. The title says "estimated" when the energy is (``estimated``, else
    the summary's ``energy.source`` and the components' sources)."""
    plt = pyplot()
    phases = {k: v for k, v in (summary.get("phases") or {}).items() if isinstance(v, Mapping)}
    names = list(phases)
    groups: dict[tuple[str, str], list[float]] = {}
    for i, name in enumerate(names):
        for g in phases[name].get("energy_by_component") or []:
            if g.get("energy_j") is None:
                continue
            key = (str(g.get("component")), "estimated" if g.get("source") == "estimated" else "measured")
            groups.setdefault(key, [0.0] * len(names))[i] += float(g["energy_j"])
    fig, ax = plt.subplots(figsize=(9, 4.8))
    suffix = f" — {title}" if title else ""
    if groups:
        bottom = [0.0] * len(names)
        bars = None
        for (component, kind), values in sorted(groups.items()):
            bars = ax.bar(
                names, values, bottom=bottom, label=f"{component} ({kind})",
                color=COMPONENT_COLORS.get(component, "#9e9e9e"), hatch="//" if kind == ESTIMATED else None,
                edgecolor="white",
            )
            bottom = [b + v for b, v in zip(bottom, values)]
        measured = [any(groups[k][i] for k in groups) for i in range(len(names))]
        if bars is not None:  # each phase's total on top of its stack; "null" where nothing was measured, never 0
            ax.bar_label(bars, labels=[_format_value(b, "J") if m else "null" for b, m in zip(bottom, measured)], padding=2, fontsize=8)
        ax.margins(y=0.12)  # room for the labels above the tallest bar
        ax.set_ylabel("energy (J)")
        legend_outside(ax)
        source = (summary.get("energy") or {}).get("source") if isinstance(summary.get("energy"), Mapping) else None
        if estimated is None and source == ESTIMATED:
            estimated = True
        note = estimate_note((kind for _, kind in groups), estimated)
        ax.set_title(f"Energy by phase and component{note}{suffix}", fontsize=10)
    else:
        walls = [float(phases[n].get("wall_s") or 0.0) for n in names]
        bars = ax.bar(names, walls, color=[PHASE_COLORS.get(n, "#9e9e9e") for n in names], edgecolor="#555555")
        ax.bar_label(bars, labels=[_format_value(w, "s") for w in walls], padding=2, fontsize=8)
        ax.margins(y=0.12)
        ax.set_ylabel("wall time (s)")
        ax.set_title(f"Energy not measured (null): phase wall time shown instead{suffix}", fontsize=10)
    _fit_tick_labels(ax, names)
    return save_figure(fig, path)


def _format_value(value: float, unit: str) -> str:
    """A bar's label: 3 significant digits and its unit (``1.23e+03 J`` is written ``1230 J``)."""
    return f"{value:.0f} {unit}" if abs(value) >= 1000 else f"{value:.3g} {unit}"


def _fit_tick_labels(ax: Any, labels: Sequence[str], max_chars: int = 10) -> None:
    """Category labels that fit under their bars: long ones (or many) rotated, anchored at their bar."""
    if len(labels) > 4 or any(len(str(label)) > max_chars for label in labels):
        ax.tick_params(axis="x", labelrotation=25, labelsize=8)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")


# --- sweeps ---------------------------------------------------------------------------------------


def choose_y(rows: Sequence[Mapping[str, Any]]) -> tuple[str, str, str]:
    """(metric, axis label, title note): J/token when any job measured it, else a latency."""
    for metric, label, note in (
        ("headline/j_per_output_token", "energy per output token (J/token)", ""),
        ("headline/tpot_ms_p50", "TPOT p50 (ms)", "J/token not measured (null): TPOT p50 shown instead"),
        ("latency/e2e_ms_p50", "E2E latency p50 (ms)", "J/token not measured (null): E2E latency p50 shown instead"),
    ):
        if any(r.get(metric) is not None for r in rows):
            return metric, label, note
    return "headline/j_per_output_token", "energy per output token (J/token)", "nothing measured"


def sweep_pareto(rows: Sequence[Mapping[str, Any]], path: Path, estimated: bool | None = None) -> Path:
    """Each finished job as a point (output tokens/s, J/token), the Pareto front joined and ringed; the
    title says when J/token is estimated (``estimated``, else the rows' ``energy_source``)."""
    plt = pyplot()
    x_metric = "headline/output_tokens_per_s"
    y_metric, y_label, note = choose_y(rows)
    usable = [r for r in rows if r.get(x_metric) is not None and r.get(y_metric) is not None]
    left_out = len(rows) - len(usable)
    points = [(float(r[x_metric]), float(r[y_metric])) for r in usable]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    if points:
        ax.scatter([p[0] for p in points], [p[1] for p in points], color="#90a4ae", zorder=2, label="job")
        front = pareto_front(points)
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "-o", color="#d32f2f",
                mfc="none", ms=11, mew=2, zorder=3, label="Pareto front")
        for r, (x, y) in zip(usable, points):
            ax.annotate(str(r.get("label") or r.get("job_num") or ""), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
        legend_outside(ax)
    ax.margins(x=0.15, y=0.1)  # room for the point labels at the edges
    ax.set_xlabel("output tokens/s")
    ax.set_ylabel(y_label)
    title = "Energy per token vs throughput" if not note else note.replace(" shown instead", " vs throughput")
    energy_note = estimate_note((r.get("energy_source") for r in usable), estimated)
    if not note and energy_note:  # a model's figure, not a sensor's
        title += " (energy estimated: no sensor)" if energy_note == f" ({ESTIMATED})" else f" (energy {energy_note.strip(' ()')})"
    if left_out:
        title += f"\n({left_out} job(s) without both figures not shown: failed or not measured)"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def sweep_heatmap(rows: Sequence[Mapping[str, Any]], x_key: str, y_key: str, path: Path, estimated: bool | None = None) -> Path:
    """J/token (or, when null everywhere, output tokens/s) over two swept parameters; failed cells marked;
    the title says when J/token is estimated (``estimated``, else the rows' ``energy_source``)."""
    plt = pyplot()
    metric, label, note = "headline/j_per_output_token", "J/token", ""
    if not any(r.get(metric) is not None for r in rows):
        metric, label, note = "headline/output_tokens_per_s", "output tokens/s", "J/token not measured (null): output tokens/s shown instead"
    xs = _ordered({r["swept"].get(x_key) for r in rows})
    ys = _ordered({r["swept"].get(y_key) for r in rows})
    grid = [[float("nan")] * len(xs) for _ in ys]
    text = [[""] * len(xs) for _ in ys]
    for r in rows:
        i, j = ys.index(r["swept"].get(y_key)), xs.index(r["swept"].get(x_key))
        value = r.get(metric)
        if value is not None:
            grid[i][j] = float(value)
            text[i][j] = f"{value:.3g}"
        else:
            text[i][j] = "failed" if r.get("status") == "FAILED" else "null"
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(xs), 1.4 + 0.8 * len(ys)))
    import numpy as np

    masked = np.ma.masked_invalid(np.array(grid, dtype=float))
    image = ax.imshow(masked, cmap="viridis_r" if metric.startswith("energy") else "viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label=label)
    ax.set_xticks(range(len(xs)), [str(x) for x in xs], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(ys)), [str(y) for y in ys], fontsize=8)
    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)
    for i in range(len(ys)):
        for j in range(len(xs)):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8, color="#212121",
                    bbox={"facecolor": "white", "alpha": 0.6, "lw": 0, "pad": 1})
    energy_note = "" if note else estimate_note((r.get("energy_source") for r in rows if r.get(metric) is not None), estimated)
    ax.set_title(note or f"{label}{energy_note} over {x_key} × {y_key}", fontsize=9)
    return save_figure(fig, path)


def _ordered(values: set[Any]) -> list[Any]:
    def key(v: Any) -> tuple[int, float, str]:
        try:
            return (0, float(v), "")
        except (TypeError, ValueError):
            return (1, 0.0, str(v))

    return sorted(values, key=key)
