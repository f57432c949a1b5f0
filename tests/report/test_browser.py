"""The report in a real headless browser (Debian's Chromium and chromedriver, driven by selenium): it loads
with no console error, every plot renders with a size, the page's numbers are the engine's, and a full-page
screenshot is not blank. The screenshot goes to the test's tmp_path; with SEGSRV_UPDATE_REPORT_PNG=1 it also
replaces docs/report.png (the one in the docs), so an ordinary test run leaves the checkout clean.

scripts/test.sh installs chromium and chromium-driver when missing, so this runs in CI (never skipped)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from support import CHURN_MODEL
from segsrv.ops import EvaluateQuery, ProfileQuery, SegmentsQuery
from segsrv.report.gather import ReportOptions, gather_report
from segsrv.report.render import DATA_ELEMENT_ID, write_report
from segsrv.service import local_service

DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "report.png"
WIDTH = 1200


def _executable(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"none of {names} on PATH: install Debian's chromium and chromium-driver (scripts/test.sh does)")


@pytest.fixture(scope="module")
def browser():
    options = Options()
    options.binary_location = _executable("chromium", "chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={WIDTH},900", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(_executable("chromedriver")), options=options)
    yield driver
    driver.quit()


def test_report_in_a_browser(report_root, browser, tmp_path):
    root, version_a, _ = report_root
    service = local_service(root)
    options = ReportOptions(compare=version_a, max_fields=3, values_per_field=3)
    out = write_report(gather_report(service, options, location=root / "petnord"), tmp_path / "report.html")
    browser.get(out.as_uri())

    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []

    plots = browser.execute_script("""
        return [...document.querySelectorAll('figure.plot')].map(f => {
            const svg = f.querySelector('svg'); const box = svg ? svg.getBoundingClientRect() : null;
            return {plot: f.dataset.plot, width: box ? box.width : 0, height: box ? box.height : 0,
                    shapes: svg ? svg.querySelectorAll('path, rect, use').length : 0};
        });""")
    names = {p["plot"] for p in plots}
    assert {"segment-sizes", "drift", "calibration-0", "lifts-0", "compactness-0"} <= names
    for p in plots:
        assert p["width"] > 100 and p["height"] > 50 and p["shapes"] > 5, p

    # the numbers the page holds, read by the browser, against the engine called directly
    data = browser.execute_script(f"return JSON.parse(document.getElementById('{DATA_ELEMENT_ID}').textContent)")
    listed = service.call(SegmentsQuery()).to_json()
    assert [(s["name"], s["size"], s["share"]) for s in data["segments"]] == \
        [(s["name"], s["size"], s["share"]) for s in listed]
    shown_sizes = browser.execute_script(
        "return [...document.querySelectorAll('td[data-stat=size]')].map(td => td.textContent)")
    assert shown_sizes == [f"{s['size']:,}" for s in listed]
    for seg in data["segments"]:
        profile = service.call(ProfileQuery.from_json({"from": seg["universe"], "segment": seg["where"],
                                                       "values_per_field": 3})).to_json()
        assert [f["field"] for f in seg["profile"]["fields"]] == [f["field"] for f in profile["fields"][:3]]
        assert [v["lift"] for f in seg["profile"]["fields"] for v in f["over"] + f["under"]] == \
            [v["lift"] for f in profile["fields"][:3] for v in f["over"] + f["under"]]
    evaluation = service.call(EvaluateQuery.from_json(CHURN_MODEL)).to_json()
    assert data["models"][0]["evaluation"]["auc"] == evaluation["auc"]
    assert [b["observed_rate"] for b in data["models"][0]["evaluation"]["calibration"]] == \
        [b["observed_rate"] for b in evaluation["calibration"]]

    # a full-page screenshot: the window as tall as the page
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(WIDTH, height)
    png = browser.get_screenshot_as_png()
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size[1] >= min(height, 4000)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200  # text, bars in several colours, axes: not blank
    (tmp_path / "report.png").write_bytes(png)
    if os.environ.get("SEGSRV_UPDATE_REPORT_PNG") == "1":
        DOCS_SCREENSHOT.write_bytes(png)
