"""Makes this checkout importable as the package `atelier`, whatever the folder is called.

ComfyUI imports the repository root as a package named after its folder; tests need a stable name for it.
Importing the root package does not import ComfyUI (see __init__.py), so the core tier runs without a host.
"""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _register_checkout_as_atelier() -> None:
    existing = sys.modules.get("atelier")
    if existing is not None and Path(existing.__file__).resolve().parent == ROOT:
        return
    spec = importlib.util.spec_from_file_location(
        "atelier", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["atelier"] = module
    spec.loader.exec_module(module)


_register_checkout_as_atelier()


def pytest_report_header(config):
    """The one visible line saying whether the host tier runs, and if not, where it looked."""
    from comfy_host import find_checkout, find_python

    checkout, why_not = find_checkout()
    if checkout is None:
        return [f"atelier host tier: SKIPPED — {why_not}", f"atelier browser tier: SKIPPED — {why_not}"]
    from browser.conftest import why_not as browser_why_not

    browser = browser_why_not()
    return [f"atelier host tier: ComfyUI at {checkout} (python: {find_python(checkout)})",
            f"atelier browser tier: SKIPPED — {browser}" if browser else "atelier browser tier: headless Chromium"]
