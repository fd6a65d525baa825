"""The web page in a real browser: Debian's headless Chromium, driven by Playwright.

`splatops local` (embedded API, operator, local executor, CPU trainer) trains the synthetic scene
while the browser watches the trainings list update, then opens the training's page: no console
errors, the curves and preview are there, and the 3D viewer's canvas draws the model (pixels other
than the background). The screenshots go to docs/images/ (docs/usage.md shows them).
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest
from playwright.sync_api import sync_playwright

REPO = pathlib.Path(__file__).resolve().parents[2]
CHROMIUM = pathlib.Path("/usr/bin/chromium")
BUNDLE = REPO / "operator/splatops/gateway/static/dist/viewer.js"
SCREENSHOTS = REPO / "docs/images"
SPLATOPS = pathlib.Path(sys.executable).with_name("splatops")
STEPS = 60
TIMEOUT = 240
BACKGROUND = (32, 32, 32)  # viewer.js BACKGROUND, 0x202020
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
]


def _missing() -> str | None:
    """What scripts/setup may leave out by design (it says so when it does): Chromium without root
    or apt-get, the bundle without npm. Playwright is a test dependency: missing, it fails the import."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is not installed (scripts/setup: apt-get install chromium chromium-driver)"
    if not BUNDLE.exists():
        return f"{BUNDLE} is not built (scripts/setup: npm ci && npm run build in web/)"
    return None


@pytest.fixture
def browser_page(tmp_path: pathlib.Path):
    missing = _missing()
    if missing:
        if os.environ.get("CI"):  # CI installs all of it: a missing piece is a failure there
            pytest.fail(missing)
        pytest.skip(missing)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1400},
        )
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
        try:
            yield page, errors
        finally:
            context.close()


@pytest.fixture
def local_run(tmp_path: pathlib.Path):
    """`splatops local --keep-running` in the background; yields (its process, the page URL)."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    proc = subprocess.Popen(
        [str(SPLATOPS), "local", "--max-steps", str(STEPS), "--device", "cpu", "--keep-running", "--web-port", "0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        url = None
        assert proc.stdout is not None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"web page \(live while this runs\): (http://\S+)", line)
            url = found.group(1) if found else None
        assert url, "splatops local printed no web page URL:\n" + "".join(lines)
        yield proc, url, lines
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _not_background(png: bytes) -> int:
    import io

    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int((np.abs(pixels - np.array(BACKGROUND)).sum(axis=2) > 30).sum())


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT + 60)
def test_page_shows_live_progress_and_draws_the_model(browser_page, local_run) -> None:
    page, errors = browser_page
    proc, url, lines = local_run
    base = url.split("trainings/")[0]

    # The list, live: the row's step moves on without a reload, then it succeeds.
    page.goto(base)
    row = page.locator("tr[data-name=synthetic]")
    row.wait_for(timeout=60_000)
    seen: set[str] = set()
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        seen.add(row.get_attribute("data-step") or "")
        if row.get_attribute("data-phase") == "Succeeded":
            break
        page.wait_for_timeout(300)
    assert row.get_attribute("data-phase") == "Succeeded", "".join(lines[-20:])
    steps = sorted(int(s) for s in seen if s)
    assert len(steps) >= 2 and steps[0] < steps[-1] == STEPS, f"the list showed steps {steps}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "web-list.png"), clip={"x": 0, "y": 0, "width": 1280, "height": 200})

    # The training's page: summary, curves, preview, downloads, events, and the model in 3D.
    page.locator("tr[data-name=synthetic] a").click()
    page.wait_for_url("**/trainings/default/synthetic")
    page.locator("#viewer[data-loaded=true] canvas").wait_for(timeout=60_000)
    page.locator("#preview:not([hidden])").wait_for(timeout=20_000)
    assert page.locator("#phase").inner_text() == "Succeeded"
    assert page.locator("#loss .u-over").count() == 1 and page.locator("#psnr .u-over").count() == 1
    downloads = page.locator("#downloads a").all_inner_texts()
    assert "synthetic.spz" in downloads and "synthetic.ply" in downloads
    assert page.locator("#preview").evaluate("img => img.naturalWidth") > 0
    page.wait_for_timeout(1500)  # a few frames of the viewer's loop
    # A clip of the page, not an element screenshot: that waits for two equal animation frames,
    # which a software-rendered viewer on a busy CPU may not give in time.
    box = page.locator("#viewer canvas").bounding_box()
    canvas = page.screenshot(path=str(SCREENSHOTS / "web-viewer.png"), clip=box)
    drawn = _not_background(canvas)
    assert drawn > 500, f"the viewer drew {drawn} pixels other than the background"
    page.screenshot(path=str(SCREENSHOTS / "web-training.png"), full_page=True)
    assert errors == [], errors
