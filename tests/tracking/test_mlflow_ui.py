"""The MLflow UI in a real browser: ``python -m lem ui``'s server over a store holding lem runs,
driven by headless Chromium (Debian's ``chromium`` + ``chromium-driver``) through Selenium.

Checks what a user looks for: the run list shows lem's runs by name, a run page shows its
energy metrics, and a plot artifact renders. Screenshots are kept in the test's tmp dir.
"""

from __future__ import annotations

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
    """A store holding a 2-job sweep over batch size (parent + 2 children) and one run on its own."""
    _browser_or_skip()  # no point in running lem when the browser is missing
    tmp = tmp_path_factory.mktemp("ui-store")
    model = make_tiny_model_dir(tmp / MODEL_NAME)
    store_dir = tmp / "mlruns"
    env = lem_env(MLFLOW_TRACKING_URI=f"sqlite:///{store_dir / 'mlflow.db'}")
    single = run_lem(["lem", f"model.name_or_path={model}", f"hydra.run.dir={tmp / 'run'}", "batching.batch_size=4", *FAST], tmp, env)
    assert single.returncode == 0, single.stderr[-3000:]
    sweep = run_lem(["lem", "-m", f"model.name_or_path={model}", f"hydra.sweep.dir={tmp / 'multirun'}", "batching.batch_size=1,2", *FAST], tmp, env)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    return {"tmp": tmp, "dir": store_dir, "uri": f"sqlite:///{store_dir / 'mlflow.db'}"}


def test_run_list_and_run_page_in_headless_chromium(store: dict[str, Any], tmp_path: Path) -> None:
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
    single_name = f"pytorch-static-bs4 {MODEL_NAME}"
    parent_name = "sweep batching.batch_size=1,2"
    assert {single_name, parent_name, f"pytorch-static-bs1 {MODEL_NAME} #0", f"pytorch-static-bs2 {MODEL_NAME} #1"} == set(runs)

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    server = start_server(store["dir"], port=port, log_path=tmp_path / "mlflow-server.log")
    browser = None
    try:
        startup_s = wait_until_up(base, timeout_s=180, proc=server)
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for arg in (*BROWSER_ARGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
            options.add_argument(arg)
        browser = webdriver.Chrome(service=Service(driver_path), options=options)
        wait = WebDriverWait(browser, 90, poll_frequency=0.5)

        def page_shows(*texts: str) -> Any:
            return lambda b: all(t in b.find_element(By.TAG_NAME, "body").text for t in texts)

        # the run list: lem's runs by name; the sweep's children unfold under its parent
        browser.get(f"{base}/#/experiments/{experiment.experiment_id}/runs")
        wait.until(page_shows(single_name, parent_name))
        browser.find_element(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']").click()
        wait.until(page_shows(f"pytorch-static-bs1 {MODEL_NAME} #0", f"pytorch-static-bs2 {MODEL_NAME} #1"))
        browser.save_screenshot(str(tmp_path / "run-list.png"))

        # a run page: its energy metrics by name
        browser.find_element(By.PARTIAL_LINK_TEXT, "pytorch-static-bs4").click()
        wait.until(page_shows("energy/j_per_output_token", "energy/phase/generation_j", "throughput/output_tokens_per_s"))
        assert runs[single_name].info.run_id in browser.current_url
        metric = browser.find_element(By.XPATH, "//*[normalize-space(text())='energy/j_per_output_token']")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", metric)
        time.sleep(0.5)  # let the scroll settle before the screenshot
        browser.save_screenshot(str(tmp_path / "run-page.png"))

        # a plot artifact renders as an image
        browser.get(f"{base}/#/experiments/{experiment.experiment_id}/runs/{runs[single_name].info.run_id}/artifacts/plots/energy_by_phase.png")
        image = wait.until(lambda b: next((i for i in b.find_elements(By.TAG_NAME, "img")  # src is a blob: URL
                                           if (i.get_attribute("alt") or "").endswith("energy_by_phase.png")
                                           and b.execute_script("return arguments[0].naturalWidth", i) > 0), None))
        assert browser.execute_script("return arguments[0].naturalWidth", image) > 100
        browser.save_screenshot(str(tmp_path / "run-plot.png"))
        print(f"MLflow UI up in {startup_s:.1f} s; browser checks done {time.monotonic() - t0:.1f} s after start; "
              f"screenshots in {tmp_path}")
    finally:
        if browser is not None:
            browser.quit()
        stop_server(server)
