"""Take the README's three MLflow screenshots from a store holding real lem runs.

    python docs/screenshots.py mlruns docs/images

Starts ``python -m lem ui``'s server over the store, opens in headless Chromium (Debian's
``chromium`` + ``chromium-driver``) the URLs lem prints — the runs view sorted by J/token, the
newest sweep parent's ``sweep/report.html``, the page of that sweep's best job — and saves
``runs-view.png``, ``sweep-report.png`` and ``run-page.png``. tests/tracking/test_mlflow_ui.py
checks the same pages on the tiny test model.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--window-size=1600,900")


def main(store_dir: Path, out_dir: Path) -> None:
    from mlflow.tracking import MlflowClient
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from lem.tracking.ui import start_server, stop_server, wait_until_up
    from lem.tracking.view import run_url, runs_url

    client = MlflowClient(tracking_uri=f"sqlite:///{store_dir.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lem")
    parents = client.search_runs([experiment.experiment_id], "tags.`lem.kind` = 'sweep'", order_by=["attributes.start_time DESC"])
    parent = parents[0]
    best_run_id = parent.data.tags["lem.best_run_id"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    server = start_server(store_dir, port=port)
    options = webdriver.ChromeOptions()
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    browser = None
    try:
        wait_until_up(base, timeout_s=180, proc=server)
        browser = webdriver.Chrome(options=options)
        wait = WebDriverWait(browser, 90, poll_frequency=0.5)
        out_dir.mkdir(parents=True, exist_ok=True)

        def settle_and_save(name: str) -> None:
            for button in browser.find_elements(By.CSS_SELECTOR, "button[data-component-id='mlflow.assistant.chat_panel.close']"):
                if button.is_displayed():
                    button.click()
            time.sleep(1.5)
            browser.save_screenshot(str(out_dir / name))
            print(f"wrote {out_dir / name}")

        browser.get(runs_url(base, experiment.experiment_id))
        wait.until(lambda b: "headline/j_per_output_token" in b.find_element(By.TAG_NAME, "body").text)
        settle_and_save("runs-view.png")

        browser.get(f"{base}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}/artifacts/sweep/report.html"
                    "?workflowType=machine_learning")
        frame = wait.until(lambda b: next(iter(b.find_elements(By.CSS_SELECTOR, "iframe.mlflow-html-iframe")), None))
        browser.switch_to.frame(frame)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "table#jobs tbody tr"))
        browser.switch_to.default_content()
        settle_and_save("sweep-report.png")

        browser.get(run_url(base, experiment.experiment_id, best_run_id))
        wait.until(lambda b: "headline/j_per_output_token" in b.find_element(By.TAG_NAME, "body").text)
        settle_and_save("run-page.png")
    finally:
        if browser is not None:
            browser.quit()
        stop_server(server)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
