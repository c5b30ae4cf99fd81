"""Headless Chromium (Debian's package) through selenium for the tests that open pages."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900")
A4_INCHES = {"paperWidth": 8.27, "paperHeight": 11.69}


def missing_browser() -> str | None:
    """Why the browser cannot start (a missing binary), or None when it can."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing: run `make browser` (installs chromium and chromium-driver)"
    return None


def start_chromium() -> Iterator[WebDriver]:
    """A headless Chromium driver, quit afterwards; fails (never skips) when it is missing."""
    problem = missing_browser()
    if problem is not None:
        pytest.fail(problem)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ARGS:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def set_viewport_width(driver: WebDriver, width: int, height: int = 900) -> int:
    """Resize the window so the page's layout viewport is `width` CSS px; returns it."""
    driver.set_window_size(width, height)
    inner = int(driver.execute_script("return window.innerWidth"))
    if inner != width:  # window decorations: grow the window by the difference
        driver.set_window_size(2 * width - inner, height)
        inner = int(driver.execute_script("return window.innerWidth"))
    return inner


def print_pdf(driver: WebDriver) -> bytes:
    """The open page printed to an A4 PDF by Chromium (print stylesheet applied)."""
    answer = driver.execute_cdp_cmd(
        "Page.printToPDF", {"printBackground": True, "preferCSSPageSize": True, **A4_INCHES}
    )
    return base64.b64decode(answer["data"])
