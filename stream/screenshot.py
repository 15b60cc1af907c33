"""A picture of a page in the system's headless Chromium (``topicstream board --screenshot``).

Drives Debian's ``chromium`` through Playwright's Python package (a development
dependency); never downloads a browser.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def chromium_path() -> str:
    """``$CHROMIUM``, else ``chromium`` on the PATH; a clear error when there is none."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path or not Path(path).exists():
        raise RuntimeError("no Chromium found (Debian: apt-get install chromium; or set CHROMIUM)")
    return path


def screenshot(url: str, out: Path, wait_for: str, width: int = 1400, height: int = 1000,
               timeout_s: float = 30.0) -> None:
    """Open ``url``, wait until the CSS selector ``wait_for`` is visible, save a PNG."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise RuntimeError("--screenshot needs the playwright package (pip install playwright; "
                           "the browser is the system's Chromium)") from exc
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url)
            page.wait_for_selector(wait_for, timeout=timeout_s * 1000)
            page.wait_for_timeout(500)  # fonts and sparklines settle
            page.screenshot(path=str(out), full_page=False)
        finally:
            browser.close()
