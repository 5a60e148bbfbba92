"""Browser tier: the real ComfyUI frontend in headless Chromium (Debian's chromium driven by Playwright with
`executable_path`; nothing is downloaded) against a real server with this pack loaded. Skipped, with one line
saying why, where Chromium, Playwright or a ComfyUI checkout is missing."""

import os
import shutil
from pathlib import Path

import pytest
from comfy_host import ComfyServer, find_checkout, find_python, fixture_checkpoint

CHECKOUT, WHY_NOT_HOST = find_checkout()
CHROMIUM = os.environ.get("ATELIER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def why_not() -> str:
    """The one reason the browser tier cannot run here, or '' when it can."""
    if CHECKOUT is None:
        return WHY_NOT_HOST
    if not CHROMIUM:
        return "no Chromium found (apt-get install chromium, or set ATELIER_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[test]')"
    return ""


def pytest_collection_modifyitems(config, items):
    here, reason = str(Path(__file__).parent), why_not()
    for item in items:
        if str(item.fspath).startswith(here) and reason:
            item.add_marker(pytest.mark.skip(reason=f"browser tier: {reason}"))


@pytest.fixture
def tour_shot(page, tmp_path):
    """screenshot(name): a full-window PNG in the test's temp folder, and also in $ATELIER_TOUR_DIR when set (that is
    how the README tour's pictures are made: ATELIER_TOUR_DIR=web/tour python -m pytest tests/browser)."""
    def shot(name: str) -> Path:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path))
        if os.environ.get("ATELIER_TOUR_DIR"):
            Path(os.environ["ATELIER_TOUR_DIR"]).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(os.environ["ATELIER_TOUR_DIR"]) / f"{name}.png")
        return path
    return shot


@pytest.fixture(scope="session")
def browser_server(tmp_path_factory):
    """A real ComfyUI server of its own (the host tier's may be busy), this checkout loaded as `atelier`."""
    python = find_python(CHECKOUT)
    server = ComfyServer(CHECKOUT, python, tmp_path_factory.mktemp("comfy_browser"))
    server.prepare(fixture_checkpoint(CHECKOUT, python))
    server.client = server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def page(browser_server):
    """The ComfyUI editor, loaded and ready (its app object is up), in headless Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        tab = browser.new_page(viewport={"width": 1920, "height": 1080})
        tab.goto(browser_server.client.base_url, wait_until="domcontentloaded")
        tab.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        tab.wait_for_timeout(1000)
        tab.keyboard.press("Escape")  # the first-run template browser would cover the canvas
        tab.locator(".p-dialog-mask").first.wait_for(state="detached", timeout=10_000)
        yield tab
        browser.close()
