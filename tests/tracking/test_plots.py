"""The PNG plots as figures: titles that say "estimated", legends beside the data, integer trial
ticks, value labels on bars, tick labels that fit. Each plot's figure is caught as it is saved."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every figure the plots save (the PNG is still written), drawn so extents can be measured."""
    import lem.search.plots
    import lem.tracking.plots

    caught: list[Any] = []
    original = lem.tracking.plots.save_figure

    def save(fig: Any, path: Path, right: float = 1.0) -> Path:
        out = original(fig, path, right=right)
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig).draw()  # closing the figure took its canvas: a new one lays it out as saved
        caught.append(fig)
        return out

    monkeypatch.setattr(lem.tracking.plots, "save_figure", save)
    monkeypatch.setattr(lem.search.plots, "save_figure", save)
    yield caught


def _titles(fig: Any) -> str:
    suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""
    return " | ".join([suptitle, *(ax.get_title() for ax in fig.axes)])


def _legends(fig: Any) -> list[Any]:
    return [a for ax in fig.axes for a in [*ax.get_children(), *fig.legends] if type(a).__name__ == "Legend"]


def _assert_legends_beside_the_data(fig: Any) -> None:
    """No legend overlaps the plotting area of any axes, and each lies wholly inside the saved figure."""
    renderer = fig.canvas.get_renderer()
    legends = _legends(fig)
    assert legends, "the plot has no legend to check"
    figure_box = fig.bbox
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>":
                continue
            assert not box.overlaps(ax.get_window_extent(renderer)), f"legend {box} covers axes {ax.get_window_extent(renderer)}"
        assert figure_box.x0 - 1 <= box.x0 and box.x1 <= figure_box.x1 + 1 and figure_box.y0 - 1 <= box.y0 and box.y1 <= figure_box.y1 + 1


def _timeline_rows(source: str) -> list[dict[str, Any]]:
    return [{"t_s": t / 10, "power_w": 40.0 + (t % 7), "device": device, "source": source} for t in range(60) for device in ("cpu", "dram")]


SPANS = [("idle_baseline", 0.0, 1.0), ("model_load", 1.0, 2.5), ("warmup", 2.5, 3.0), ("generation", 3.0, 6.0)]


def test_power_timeline_says_estimated_and_keeps_its_legends_off_the_curves(figures: list[Any], tmp_path: Path) -> None:
    from lem.tracking.plots import power_timeline

    power_timeline(_timeline_rows("estimated"), SPANS, tmp_path / "estimated.png", title="run")
    power_timeline(_timeline_rows("rapl"), SPANS, tmp_path / "measured.png", title="run")
    estimated, measured = figures
    assert "estimated" in _titles(estimated) and "estimated" not in _titles(measured)
    assert len(_legends(estimated)) == 2  # devices and phases, both beside the axes
    _assert_legends_beside_the_data(estimated)
    assert (tmp_path / "estimated.png").stat().st_size > 10_000


def _summary(source: str, estimated_cpu: bool = False) -> dict[str, Any]:
    phases = {}
    for i, name in enumerate(("idle_baseline", "engine_init", "model_load", "warmup", "generation", "idle_recheck")):
        groups = [{"component": "gpu", "source": source, "energy_j": 100.0 * (i + 1)}]
        if estimated_cpu:
            groups.append({"component": "cpu", "source": "estimated", "energy_j": 10.0 * (i + 1)})
        phases[name] = {"energy_by_component": groups, "wall_s": 1.0 + i}
    return {"phases": phases, "energy": {"source": source}}


def test_energy_by_phase_labels_each_bar_says_estimated_and_fits_its_labels(figures: list[Any], tmp_path: Path) -> None:
    from lem.tracking.plots import energy_by_phase

    energy_by_phase(_summary("estimated"), tmp_path / "a.png", title="run")
    energy_by_phase(_summary("counter"), tmp_path / "b.png")
    energy_by_phase(_summary("counter", estimated_cpu=True), tmp_path / "c.png")
    energy_by_phase(_summary("counter"), tmp_path / "d.png", estimated=True)  # the caller's word wins
    estimated, measured, partly, told = figures
    assert "(estimated)" in _titles(estimated) and "estimated" not in _titles(measured)
    assert "partly estimated" in _titles(partly) and "(estimated)" in _titles(told)

    ax = measured.axes[0]
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["100 J", "200 J", "300 J", "400 J", "500 J", "600 J"]  # each phase's total on its bar
    assert [t.get_text() for t in partly.axes[0].texts][-1] == "660 J"  # a stack's total, not its top segment
    _assert_legends_beside_the_data(measured)

    renderer = measured.canvas.get_renderer()
    ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
    assert len(ticks) == 6 and not any(a.overlaps(b) for i, a in enumerate(ticks) for b in ticks[i + 1 :])
    axes_box = ax.get_window_extent(renderer)
    for text in ax.texts:  # the value labels stay inside the axes (headroom above the tallest bar)
        box = text.get_window_extent(renderer)
        assert axes_box.y0 <= box.y0 and box.y1 <= axes_box.y1


def test_energy_by_phase_without_energy_labels_the_wall_times(figures: list[Any], tmp_path: Path) -> None:
    from lem.tracking.plots import energy_by_phase

    energy_by_phase({"phases": {"warmup": {"wall_s": 2.0}, "generation": {"wall_s": 5.5}}, "energy": {"source": None}}, tmp_path / "w.png")
    (fig,) = figures
    assert [t.get_text() for t in fig.axes[0].texts] == ["2 s", "5.5 s"]
    assert "estimated" not in _titles(fig)


def _sweep_rows(source: str) -> list[dict[str, Any]]:
    return [
        {"job_num": i, "label": f"#{i}", "status": "FINISHED", "energy_source": source,
         "swept": {"batching.batch_size": bs, "decoder": dec},
         "headline/output_tokens_per_s": 10.0 * bs, "headline/j_per_output_token": 1.0 / bs + (0.1 if dec == "creative" else 0.0)}
        for i, (bs, dec) in enumerate((bs, dec) for bs in (1, 2, 4) for dec in ("deterministic", "creative"))
    ]


def test_sweep_plots_say_estimated_and_keep_the_legend_off_the_points(figures: list[Any], tmp_path: Path) -> None:
    from lem.tracking.plots import sweep_heatmap, sweep_pareto

    sweep_pareto(_sweep_rows("estimated"), tmp_path / "p.png")
    sweep_heatmap(_sweep_rows("estimated"), "batching.batch_size", "decoder", tmp_path / "h.png")
    sweep_heatmap(_sweep_rows("counter"), "batching.batch_size", "decoder", tmp_path / "m.png")
    pareto, heatmap, measured = figures
    assert "estimated" in _titles(pareto) and "estimated" in _titles(heatmap) and "estimated" not in _titles(measured)
    _assert_legends_beside_the_data(pareto)


# --- a study's plots -------------------------------------------------------------------------------


def _study_rows(source: str | None = "estimated") -> list[dict[str, Any]]:
    rows = []
    for n in range(5):
        rows.append({"number": n, "state": "COMPLETE", "feasible": n != 3, "energy_source": source,
                     "energy.j_per_output_token": 1.0 / (n + 1), "throughput.output_tokens_per_s": 10.0 * (n + 1)})
    return rows


def test_optimization_history_has_whole_trial_numbers_and_a_legend_beside_it(figures: list[Any], tmp_path: Path) -> None:
    from lem.search.plots import optimization_history

    objectives = ["energy.j_per_output_token", "throughput.output_tokens_per_s"]
    optimization_history(_study_rows(), objectives, ["minimize", "maximize"], tmp_path / "h.png")
    (fig,) = figures
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        shown = [x for x in ax.get_xticks() if lo <= x <= hi]
        assert len(shown) >= 2 and all(float(x).is_integer() for x in shown), shown
    energy_ax, throughput_ax = fig.axes
    assert "estimated" in energy_ax.get_title() and "estimated" not in throughput_ax.get_title()
    _assert_legends_beside_the_data(fig)


def test_study_pareto_front_says_estimated_from_its_rows_or_its_caller(figures: list[Any], tmp_path: Path) -> None:
    from lem.search.plots import plot_pareto_front

    plot_pareto_front(_study_rows("estimated"), [4], tmp_path / "a.png", title="study s")
    plot_pareto_front(_study_rows(None), [4], tmp_path / "b.png")
    plot_pareto_front(_study_rows(None), [4], tmp_path / "c.png", estimated=True)
    from_rows, unknown, told = figures
    assert "estimated" in _titles(from_rows) and "estimated" not in _titles(unknown) and "estimated" in _titles(told)
    _assert_legends_beside_the_data(from_rows)


def test_param_importances_title_carries_the_few_trials_warning(figures: list[Any], tmp_path: Path) -> None:
    from lem.search.plots import param_importances
    from lem.search.settings import MIN_TRIALS_FOR_IMPORTANCES, Importances

    values = {"energy.j_per_output_token": {"batching.max_tokens_per_batch": 0.7, "decoder": 0.3}}
    param_importances(Importances(values, n_trials=6), tmp_path / "few.png")
    param_importances(Importances(values, n_trials=MIN_TRIALS_FOR_IMPORTANCES), tmp_path / "enough.png")
    param_importances(values, tmp_path / "told.png", n_trials=4)
    few, enough, told = figures
    assert "parameter importances from 6 trials are unreliable (fewer than 10)" in _titles(few)
    assert "unreliable" not in _titles(enough)
    assert "from 4 trials are unreliable" in _titles(told)
    assert sorted(t.get_text() for t in few.axes[0].texts) == ["0.30", "0.70"]
