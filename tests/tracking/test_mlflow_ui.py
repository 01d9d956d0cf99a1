"""The MLflow UI in a real browser: ``python -m lem ui``'s server over a store holding lem runs,
driven by headless Chromium (Debian's ``chromium`` + ``chromium-driver``) through Selenium.

Checks what a user looks for, starting from the URL lem prints: the runs view (not MLflow's GenAI
overview) with J/token as a column and a sweep's jobs under its parent, a run page with its
headline metrics and a plot, and the sweep parent's HTML report sorted by J/token with the best job
named. Screenshots are kept in the test's tmp dir (and copied to $LEM_SCREENSHOT_DIR when set:
the README's images come from there).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.tiny_model import make_tiny_model_dir
from tests.tracking.test_tracking import FAST, MODEL_NAME, lem_env, run_lem

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")
BROWSER_ARGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    # no internet here: nothing may phone home and stall the page
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1920,1080",
)


def _browser_or_skip() -> tuple[str, str]:
    chromium = next((p for c in CHROMIUM_CANDIDATES if (p := shutil.which(c))), None)
    driver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromedriver (chromium-driver)", driver)) if not path]
    if missing:
        reason = f"{' and '.join(missing)} not installed: apt-get install -y chromium chromium-driver"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    try:
        import selenium  # noqa: F401
    except ImportError:
        print("SKIP: selenium not installed: pip install -e '.[dev]'")
        pytest.skip("selenium not installed: pip install -e '.[dev]'")
    return str(chromium), str(driver)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A store holding a 2-job sweep over batch size (parent + 2 children) and one run on its own,
    logged by lem processes told where the UI will be (``LEM_UI_PORT``), so the URLs they print are live."""
    _browser_or_skip()  # no point in running lem when the browser is missing
    tmp = tmp_path_factory.mktemp("ui-store")
    model = make_tiny_model_dir(tmp / MODEL_NAME)
    store_dir = tmp / "mlruns"
    port = _free_port()
    env = lem_env(MLFLOW_TRACKING_URI=f"sqlite:///{store_dir / 'mlflow.db'}", LEM_UI_PORT=str(port))
    single = run_lem(["lem", f"model.name_or_path={model}", f"hydra.run.dir={tmp / 'run'}", "batching.batch_size=4", *FAST], tmp, env)
    assert single.returncode == 0, single.stderr[-3000:]
    sweep = run_lem(["lem", "-m", f"model.name_or_path={model}", f"hydra.sweep.dir={tmp / 'multirun'}", "batching.batch_size=1,2", *FAST], tmp, env)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    return {"tmp": tmp, "dir": store_dir, "uri": f"sqlite:///{store_dir / 'mlflow.db'}", "port": port,
            "single_out": single.stdout, "sweep_out": sweep.stdout}


def _printed_url(text: str, kind: str) -> str:
    """The URL lem printed after logging: ``kind`` "run" (one run's page) or "runs" (the runs view)."""
    pattern = r"run (http://\S+/runs/[0-9a-f]{32}\?\S+)" if kind == "run" else r"all runs by J/token (http://\S+/runs\?\S+)"
    found = re.findall(pattern, text)
    assert found, f"no {kind} URL in lem's output:\n{text[-3000:]}"
    return found[-1].rstrip(";")


def test_printed_urls_open_the_runs_view_report_and_run(store: dict[str, Any], tmp_path: Path) -> None:
    chromium, driver_path = _browser_or_skip()
    from mlflow.tracking import MlflowClient
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from lem.tracking.ui import start_server, stop_server, wait_until_up

    client = MlflowClient(tracking_uri=store["uri"])
    experiment = client.get_experiment_by_name("lem")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    parent = next(r for r in runs.values() if r.data.tags.get("lem.kind") == "sweep")
    children = sorted((r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                      key=lambda r: r.data.metrics["headline/j_per_output_token"])
    single = next(r for r in runs.values() if r.data.tags.get("lem.kind") != "sweep" and "mlflow.parentRunId" not in r.data.tags)
    assert len(children) == 2 and len(runs) == 4
    assert parent.data.tags["lem.best_run_id"] == children[0].info.run_id  # the parent names its least-J/token job

    base = f"http://127.0.0.1:{store['port']}"
    runs_view_url = _printed_url(store["sweep_out"], "runs")
    run_page_url = _printed_url(store["single_out"], "run")
    assert runs_view_url.startswith(base) and run_page_url.startswith(base)
    assert single.info.run_id in run_page_url

    t0 = time.monotonic()
    server = start_server(store["dir"], port=store["port"], log_path=tmp_path / "mlflow-server.log")
    browser = None
    try:
        startup_s = wait_until_up(base, timeout_s=180, proc=server)
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for arg in (*BROWSER_ARGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
            options.add_argument(arg)
        browser = webdriver.Chrome(service=Service(driver_path), options=options)
        wait = WebDriverWait(browser, 90, poll_frequency=0.5)

        def body_text(b: Any) -> str:
            return b.find_element(By.TAG_NAME, "body").text

        def page_shows(*texts: str) -> Any:
            return lambda b: all(t in body_text(b) for t in texts)

        # 1. the runs view lem printed: not the GenAI overview; J/token a column; every run, the sweep's jobs
        #    too, in one list sorted by J/token (sorting by a metric lists children beside their parent)
        browser.get(runs_view_url)
        names = [single.info.run_name, parent.info.run_name, *(c.info.run_name for c in children)]
        wait.until(page_shows(*names, "headline/j_per_output_token", "lem.energy_source"))
        assert "/overview" not in browser.current_url and "workflowType=machine_learning" in browser.current_url
        _close_assistant(browser, By)
        shown = body_text(browser)
        by_j = sorted((single, *children), key=lambda r: r.data.metrics["headline/j_per_output_token"])
        positions = [shown.index(r.info.run_name + "\n") for r in by_j]
        assert positions == sorted(positions), shown  # least J/token first
        best_value = children[0].data.metrics["headline/j_per_output_token"]
        assert str(best_value)[:6] in shown  # the J/token column holds the values
        browser.save_screenshot(str(tmp_path / "runs-view.png"))

        # 2. the sweep parent's HTML report, inside MLflow's artifact viewer: sorted by J/token, best job named
        browser.get(f"{base}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}/artifacts/sweep/report.html"
                    "?workflowType=machine_learning")
        frame = wait.until(lambda b: next(iter(b.find_elements(By.CSS_SELECTOR, "iframe.mlflow-html-iframe")), None))
        browser.switch_to.frame(frame)
        table = wait.until(lambda b: next(iter(b.find_elements(By.CSS_SELECTOR, "table#jobs")), None))
        rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
        assert len(rows) == 2
        ids = [r.get_attribute("data-run-id") for r in rows]
        assert ids == [c.info.run_id for c in children]  # least J/token first
        assert "best" in (rows[0].get_attribute("class") or "")
        assert children[0].info.run_id in browser.find_element(By.TAG_NAME, "body").text  # the best job, with its run id
        browser.switch_to.default_content()
        browser.save_screenshot(str(tmp_path / "sweep-report.png"))

        # 3. one run's page, from the URL lem printed: the headline metrics and the headline line as description
        browser.get(run_page_url)
        wait.until(page_shows("headline/j_per_output_token", "headline/output_tokens_per_s", "J/token"))
        metric = browser.find_element(By.XPATH, "//*[normalize-space(text())='headline/j_per_output_token']")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", metric)
        time.sleep(0.5)  # let the scroll settle before the screenshot
        browser.save_screenshot(str(tmp_path / "run-page.png"))

        # a plot artifact renders as an image
        browser.get(f"{base}/#/experiments/{experiment.experiment_id}/runs/{single.info.run_id}/artifacts/plots/energy_by_phase.png")
        image = wait.until(lambda b: next((i for i in b.find_elements(By.TAG_NAME, "img")  # src is a blob: URL
                                           if (i.get_attribute("alt") or "").endswith("energy_by_phase.png")
                                           and b.execute_script("return arguments[0].naturalWidth", i) > 0), None))
        assert browser.execute_script("return arguments[0].naturalWidth", image) > 100
        print(f"MLflow UI up in {startup_s:.1f} s; browser checks done {time.monotonic() - t0:.1f} s after start; "
              f"screenshots in {tmp_path}")
        if os.environ.get("LEM_SCREENSHOT_DIR"):
            target = Path(os.environ["LEM_SCREENSHOT_DIR"])
            target.mkdir(parents=True, exist_ok=True)
            for name in ("runs-view.png", "sweep-report.png", "run-page.png"):
                shutil.copy(tmp_path / name, target / name)
    finally:
        if browser is not None:
            browser.quit()
        stop_server(server)


def _close_assistant(browser: Any, by: Any) -> None:
    """MLflow 3.17 opens its "Assistant" side panel over a third of the page: close it for the screenshots."""
    for button in browser.find_elements(by.CSS_SELECTOR, "button[data-component-id='mlflow.assistant.chat_panel.close']"):
        try:
            if button.is_displayed():
                button.click()
                time.sleep(0.5)
                return
        except Exception:  # noqa: BLE001 - a panel that is not there is fine
            continue
