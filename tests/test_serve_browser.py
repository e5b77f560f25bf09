"""The dashboard in real headless Chromium while a replay streams cycles into the service."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from bsoc.replay import ReplayConfig, load_cycles, replay
from bsoc.serve.app import create_app
from bsoc.serve.service import ServeConfig, describe_model
from test_serve_helpers import CoulombEstimator, ThreadServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
]


def test_dashboard_plots_a_replayed_cycle_live(toy_dataset, tmp_path):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    estimator = CoulombEstimator()
    app = create_app(estimator, ServeConfig(), describe_model(estimator, None))
    cycles = load_cycles(toy_dataset, "test")
    with ThreadServer(app) as server, sync_playwright() as pw:
        config = ReplayConfig(
            url=server.url, streams=2, rate_hz=40.0, max_seconds=6.0, prefix="cell"
        )
        done: dict = {}
        feeder = threading.Thread(target=lambda: done.update(replay(cycles, config)))
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 820})
        page.goto(server.url + "/#stream=cell-00000")
        feeder.start()
        plot = page.locator("#plot-soc")
        page.wait_for_function("Number(document.getElementById('plot-soc').dataset.points) > 5")
        early = int(plot.get_attribute("data-points"))
        page.wait_for_function(
            f"Number(document.getElementById('plot-soc').dataset.points) > {early + 20}"
        )  # the plot keeps growing while samples arrive
        feeder.join()
        assert done["error_count"] == 0 and done["samples_ok"] > 100
        truth = httpx.get(f"{server.url}/v1/streams/cell-00000?history=300").json()
        shown = f"{100 * truth['soc']:.1f} %"
        page.wait_for_function(
            f"document.getElementById('selected-soc').textContent === '{shown}' && "
            f"Number(document.getElementById('plot-soc').dataset.points) === {len(truth['history']['soc'])}"
        )
        assert page.locator("#selected-id").text_content() == "cell-00000"
        listed = page.locator("#streams tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.streamId)"
        )
        assert listed == ["cell-00000", "cell-00001"]
        assert (
            page.locator("#streams tbody tr.selected").get_attribute("data-stream-id")
            == "cell-00000"
        )
        assert page.locator("#stat-streams").text_content() == "2"
        assert page.locator("#model").text_content().startswith("model coulomb (test-coulomb)")
        assert float(plot.get_attribute("data-last")) == pytest.approx(100 * truth["soc"], abs=1e-9)
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        plot.screenshot(path=str(tmp_path / "soc-plot.png"))
        browser.close()
    pixels = np.asarray(Image.open(tmp_path / "soc-plot.png").convert("RGB")).astype(int)
    blue = np.abs(pixels - np.array([0x1F, 0x77, 0xB4])).sum(axis=2) < 60
    columns = np.flatnonzero(blue.any(axis=0))
    assert (
        blue.sum() > 200 and columns.max() - columns.min() > 0.6 * pixels.shape[1]
    )  # a line across
    assert shot.stat().st_size > 20_000


class UncertainCoulomb(CoulombEstimator):
    """The test estimator with a standard deviation that grows with the samples seen."""

    def soc_std(self, states: np.ndarray) -> np.ndarray:
        return 0.01 + (1e-4 * np.asarray(states)[:, 1]) % 0.02


def test_dashboard_shows_the_uncertainty_of_a_model_that_has_one(toy_dataset):
    from playwright.sync_api import sync_playwright

    estimator = UncertainCoulomb()
    app = create_app(estimator, ServeConfig(), describe_model(estimator, None))
    cycles = load_cycles(toy_dataset, "test")
    with ThreadServer(app) as server:
        replay(cycles, ReplayConfig(url=server.url, streams=1, rate_hz=0.0, batch=50,
                                    prefix="cell"))  # before playwright's event loop starts
        truth = httpx.get(f"{server.url}/v1/streams/cell-00000?history=300").json()
        assert truth["soc_std"] == truth["history"]["soc_std"][-1] > 0
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 820})
            page.goto(server.url + "/#stream=cell-00000")
            shown = f"{100 * truth['soc']:.1f} % ± {200 * truth['soc_std']:.1f} (2σ)"
            page.wait_for_function(
                f"document.getElementById('selected-soc').textContent === '{shown}'")
            band = page.locator("#plot-soc").get_attribute("data-band")
            assert int(band) == len(truth["history"]["soc"]) > 10
            browser.close()
