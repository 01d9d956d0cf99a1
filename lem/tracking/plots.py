"""PNG plots logged as MLflow artifacts (matplotlib, Agg backend: no display needed).

Per run: power over time with the phases shaded; energy by phase and component.
Per sweep: J/token against output tokens/s with the Pareto front marked; a J/token
heatmap over two swept parameters. Energy can be null (no sensor, e.g. a CPU VM): a plot
then shows what was measured instead and says so in its title — never a 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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


def power_timeline(rows: Sequence[Mapping[str, Any]], spans: Sequence[tuple[str, float, float]], path: Path, title: str = "") -> Path:
    """Power of every device over the run's clock, each phase shaded and labelled."""
    plt = pyplot()
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(10, 4.5))
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
    if phase_handles:  # phases in a legend outside the axes, so even a 30 ms generation window is named
        fig.legend(handles=phase_handles, loc="center right", fontsize=8, title="phase", title_fontsize=8)
    if by_device:
        ax.legend(loc="upper left", fontsize=8, title="device", title_fontsize=8)
        ax.set_title(f"Power over time{' — ' + title if title else ''}", pad=16)
    else:
        ax.set_title(f"Power over time: no power samples recorded (null){' — ' + title if title else ''}", pad=16)
    return save_figure(fig, path, right=0.85 if phase_handles else 1.0)


def energy_by_phase(summary: Mapping[str, Any], path: Path, title: str = "") -> Path:
    """Stacked bars: each phase's energy by component (estimated hatched); wall time when energy is null."""
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
    fig, ax = plt.subplots(figsize=(8, 4.5))
    suffix = f" — {title}" if title else ""
    if groups:
        bottom = [0.0] * len(names)
        for (component, kind), values in sorted(groups.items()):
            ax.bar(
                names, values, bottom=bottom, label=f"{component} ({kind})",
                color=COMPONENT_COLORS.get(component, "#9e9e9e"), hatch="//" if kind == "estimated" else None,
                edgecolor="white",
            )
            bottom = [b + v for b, v in zip(bottom, values)]
        for i, name in enumerate(names):  # phases nothing measured say so, instead of showing 0
            if not any(groups[k][i] for k in groups):
                ax.text(i, 0, "null", ha="center", va="bottom", fontsize=8, color="#b71c1c")
        ax.set_ylabel("energy (J)")
        ax.legend(fontsize=8)
        ax.set_title(f"Energy by phase and component{suffix}")
    else:
        walls = [float(phases[n].get("wall_s") or 0.0) for n in names]
        ax.bar(names, walls, color=[PHASE_COLORS.get(n, "#9e9e9e") for n in names], edgecolor="#555555")
        ax.set_ylabel("wall time (s)")
        ax.set_title(f"Energy not measured (null): phase wall time shown instead{suffix}", fontsize=10)
    return save_figure(fig, path)


# --- sweeps ---------------------------------------------------------------------------------------


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: higher x (throughput) and lower y (J/token or latency)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 >= x and y2 <= y) and (x2 > x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def choose_y(rows: Sequence[Mapping[str, Any]]) -> tuple[str, str, str]:
    """(metric, axis label, title note): J/token when any job measured it, else a latency."""
    for metric, label, note in (
        ("energy/j_per_output_token", "energy per output token (J/token)", ""),
        ("latency/tpot_ms_p50", "TPOT p50 (ms)", "J/token not measured (null): TPOT p50 shown instead"),
        ("latency/e2e_ms_p50", "E2E latency p50 (ms)", "J/token not measured (null): E2E latency p50 shown instead"),
    ):
        if any(r.get(metric) is not None for r in rows):
            return metric, label, note
    return "energy/j_per_output_token", "energy per output token (J/token)", "nothing measured"


def sweep_pareto(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Each finished job as a point (output tokens/s, J/token), the Pareto front joined and ringed."""
    plt = pyplot()
    x_metric = "throughput/output_tokens_per_s"
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
        ax.legend(fontsize=8)
    ax.margins(x=0.15, y=0.1)  # room for the point labels at the edges
    ax.set_xlabel("output tokens/s")
    ax.set_ylabel(y_label)
    title = "Energy per token vs throughput" if not note else note.replace(" shown instead", " vs throughput")
    if not note and any(r.get("energy_source") == "estimated" for r in usable):  # a model's figure, not a sensor's
        title += " (energy estimated: no sensor)"
    if left_out:
        title += f"\n({left_out} job(s) without both figures not shown: failed or not measured)"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def sweep_heatmap(rows: Sequence[Mapping[str, Any]], x_key: str, y_key: str, path: Path) -> Path:
    """J/token (or, when null everywhere, output tokens/s) over two swept parameters; failed cells marked."""
    plt = pyplot()
    metric, label, note = "energy/j_per_output_token", "J/token", ""
    if not any(r.get(metric) is not None for r in rows):
        metric, label, note = "throughput/output_tokens_per_s", "output tokens/s", "J/token not measured (null): output tokens/s shown instead"
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
    ax.set_title(note or f"{label} over {x_key} × {y_key}", fontsize=9)
    return save_figure(fig, path)


def _ordered(values: set[Any]) -> list[Any]:
    def key(v: Any) -> tuple[int, float, str]:
        try:
            return (0, float(v), "")
        except (TypeError, ValueError):
            return (1, 0.0, str(v))

    return sorted(values, key=key)
