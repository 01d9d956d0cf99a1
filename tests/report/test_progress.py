"""The live progress display: quiet off a terminal and under report.format=json, shown on one, never breaking a run."""

from __future__ import annotations

import io
import sys

import pytest
from omegaconf import OmegaConf

from lem.config.schema import ReportConfig
from lem.config.types import ReportFormat, ReportProgress
from lem.report import progress as progress_mod
from lem.report.progress import LiveProgress, Progress, reporter, status
from lem.report.sweep_label import (
    ENV_SWEEP_SIZE,
    ENV_SWEEP_UNIT,
    sweep_label,
    sweep_size,
)
from lem.study.plan import expand


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def drive(p: Progress) -> None:
    """What the pipeline does with a reporter during one run."""
    p.phase("engine init", "pytorch")
    p.phase("warmup")
    p.note("pass 1")
    p.generation(4)
    p.served(2, 12)
    p.served(2, 10)
    p.close()


def install_terminal(monkeypatch: pytest.MonkeyPatch) -> FakeTerminal:
    """A terminal as stderr: installed in the test itself (pytest's capture replaces sys.stderr after fixtures)."""
    fake = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", fake)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "200")
    for key in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(key, raising=False)
    return fake


def test_a_terminal_shows_the_phases_and_the_generation_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = install_terminal(monkeypatch)
    p = reporter(ReportConfig(), label="job 2 of 6")
    assert isinstance(p, LiveProgress)
    drive(p)
    out = terminal.getvalue()
    for text in ("job 2 of 6 · engine init", "warmup", "generation", "4/4 requests", "22 output tokens", "tok/s"):
        assert text in out, text
    assert out.rstrip().endswith("\x1b[?25h") or "\x1b[?25h" in out[-200:]  # the cursor is shown again at the end


def test_json_format_on_a_terminal_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = install_terminal(monkeypatch)
    p = reporter(ReportConfig(format=ReportFormat.json))
    drive(p)
    with status("logging to MLflow…", ReportConfig(format=ReportFormat.json)):
        pass
    assert terminal.getvalue() == ""


def test_off_and_rank_other_than_0_write_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = install_terminal(monkeypatch)
    drive(reporter(ReportConfig(progress=ReportProgress.off)))
    drive(reporter(ReportConfig(), show=False))
    assert terminal.getvalue() == ""


def test_not_a_terminal_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = io.StringIO()  # isatty() is False, like a redirected stderr
    monkeypatch.setattr(sys, "stderr", pipe)
    p = reporter(ReportConfig())
    assert type(p) is Progress
    drive(p)
    with status("logging to MLflow…", ReportConfig()):
        pass
    assert pipe.getvalue() == ""


def test_the_composed_config_node_is_read_too(monkeypatch: pytest.MonkeyPatch) -> None:
    install_terminal(monkeypatch)
    node = OmegaConf.create({"format": "json", "progress": "auto"})
    assert not progress_mod.enabled(node)
    assert progress_mod.enabled(OmegaConf.create({"format": "table", "progress": "auto"}))
    assert not progress_mod.enabled(OmegaConf.create({"format": "table", "progress": "off"}))


def test_an_error_inside_the_display_is_swallowed_and_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = install_terminal(monkeypatch)
    p = reporter(ReportConfig())
    assert isinstance(p, LiveProgress)
    p.generation(4)

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("rendering failed")

    monkeypatch.setattr(p._live, "update", boom)
    p.served(1, 5)  # does not raise
    assert p._broken and p._live is None  # stopped for good
    assert terminal.getvalue().endswith("\x1b[?25h")  # the cursor is shown again
    p.phase("counting FLOPs")
    p.close()


def test_an_interrupted_phase_is_marked_stopped_not_done(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = install_terminal(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        with reporter(ReportConfig()) as p:
            p.generation(10)
            p.served(3, 9)
            raise KeyboardInterrupt
    out = terminal.getvalue()
    assert "stopped" in out and "3/10 requests" in out
    assert "\x1b[?25h" in out  # cursor visible again


def test_a_bad_progress_value_is_refused_like_other_enums() -> None:
    from lem.config.compose import compose_config
    from lem.errors import LemError

    with pytest.raises(LemError, match="report.progress=sometimes: expected one of auto, on, off"):
        compose_config(["report.progress=sometimes"])


def test_a_sweep_expands_to_the_cartesian_product() -> None:
    assert len(expand(["batching.batch_size=1,2,4", "dataset.n_prompts=8,16", "cycles=2"])) == 6
    assert len(expand(["cycles=2"], {"dataset.n_prompts": "8,16"})) == 2


def test_sweep_label_names_the_job_and_the_total(monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    assert sweep_label() is None or not HydraConfig.initialized()  # outside a multirun: no label
    cfg = OmegaConf.create({"hydra": {"mode": RunMode.MULTIRUN, "job": {"num": 1}}})
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: cfg.hydra))
    monkeypatch.delenv(ENV_SWEEP_SIZE, raising=False)
    monkeypatch.delenv(ENV_SWEEP_UNIT, raising=False)
    with sweep_size("job", len(expand(["batching.batch_size=1,2,4", "dataset.n_prompts=8,16"]))):  # as the study sweeper launches
        assert sweep_label() == "job 2 of 6"
    assert sweep_label() == "job 2"  # the sweep's size is gone with it
    monkeypatch.setenv(ENV_SWEEP_UNIT, "trial")
    monkeypatch.setenv(ENV_SWEEP_SIZE, "1")
    assert sweep_label() == "trial 2 (n_trials=1)"
