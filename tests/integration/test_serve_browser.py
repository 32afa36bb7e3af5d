"""The viewer in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium): load /,
upload a synthetic X-ray, see 14 probabilities, click a finding, see its heatmap. The screenshot is kept in
``$CHEXNET_TEST_ARTIFACTS`` (default ./test-artifacts/serve-viewer.png)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.integration.serving import LiveServer, good_images

pytest.importorskip("fastapi", reason="chexnet serve needs chexnet[serve]")
pytest.importorskip("captum", reason="heatmaps need chexnet[cam]")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (chexnet[dev])")

ARTIFACTS = Path(os.environ.get("CHEXNET_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))


def _browser_paths() -> tuple[str, str]:
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver (.ci/run does, as root)")
    return browser, driver


@pytest.fixture
def chromium(tmp_path):
    from selenium.webdriver.chrome.service import Service

    browser, driver = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900",
                f"--user-data-dir={tmp_path / 'profile'}", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for downloads
    d = webdriver.Chrome(service=Service(driver), options=options)
    d.set_page_load_timeout(60)
    try:
        yield d
    finally:
        d.quit()


def test_viewer_uploads_an_xray_and_shows_bars_and_a_heatmap(trained_run, tiny_cache, tmp_path, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = good_images(tiny_cache, 1)[0]
    with LiveServer(trained_run, log=tmp_path / "serve.log") as server:
        server.wait_ready()
        chromium.get(server.url + "/")
        wait = WebDriverWait(chromium, 60)
        wait.until(lambda d: "best.pt" in d.find_element(By.ID, "model-name").text)  # run · checkpoint · engine
        chromium.find_element(By.ID, "file").send_keys(str(image))
        wait.until(lambda d: d.execute_script("return document.body.dataset.predicted") == image.name)
        rows = chromium.find_elements(By.CSS_SELECTOR, "tr.finding")
        assert [r.get_attribute("data-finding") for r in rows] == [
            "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
            "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]
        values = [float(r.find_element(By.CSS_SELECTOR, "td.value").text) for r in rows]
        assert all(0.0 <= v <= 1.0 for v in values)
        rows[2].click()  # Effusion
        wait.until(lambda d: d.execute_script("return document.body.dataset.heatmap") == "Effusion")
        wait.until(lambda d: d.execute_script(
            "const i = document.getElementById('xray'); return i.complete && i.naturalWidth > 0"))
        size = chromium.execute_script("const i = document.getElementById('xray'); return [i.naturalWidth, i.naturalHeight]")
        assert "heatmap" in chromium.find_element(By.ID, "caption").text
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "serve-viewer.png"
        chromium.save_screenshot(str(shot))
        errors = [e for e in chromium.get_log("browser") if e["level"] == "SEVERE"]
        log = server.text()
    from PIL import Image

    assert tuple(size) == Image.open(image).size  # the overlay is at the original's size
    assert shot.stat().st_size > 10_000
    assert not errors, errors  # no CSP violation, no failed fetch, no script error
    assert log.count("status=200") >= 4  # /v1/model, /v1/image, /v1/predict, /v1/heatmap
