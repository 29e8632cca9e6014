"""Headless Chromium for tests of the pages we ship (``viewer.html``): Debian's ``chromium`` driven
by Playwright, with software WebGL (SwiftShader), a fresh profile and no network of its own.

Playwright never downloads a browser here (no ``playwright install``): ``make test`` installs
Debian's package, and tests skip, naming what is missing, where it or Playwright is absent.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # WebGL 2 on the CPU: ANGLE over SwiftShader, which Chromium gates behind this flag since 2025.
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
)  # fmt: skip
READY_TIMEOUT_S = 60.0


@contextlib.contextmanager
def chromium_page(width: int = 960, height: int = 540) -> Iterator[Page]:
    """A fresh headless Chromium page of ``width`` x ``height`` CSS pixels; closes the browser after.

    The page's console messages and uncaught errors are collected in ``page.console_lines`` (a list
    of str) for failure messages. Skips the test when ``/usr/bin/chromium`` or Playwright is missing.
    """
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (make test installs Debian's `chromium` package)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Python Playwright is not installed (it is in the `test` extra: pip install -e '.[test]')")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS),
            viewport={"width": width, "height": height}, device_scale_factor=1,
        )  # fmt: skip
        try:
            page = context.pages[0] if context.pages else context.new_page()
            lines: list[str] = []
            page.on("console", lambda message: lines.append(f"console.{message.type}: {message.text}"))
            page.on("pageerror", lambda error: lines.append(f"pageerror: {error}"))
            page.console_lines = lines  # type: ignore[attr-defined]
            yield page
        finally:
            context.close()


def wait_ready(page: Page, timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any]:
    """Waits until the viewer page reports ``viewerState.ready`` (or an error) and returns the state.

    Raises:
        AssertionError: the page reported an error or was not ready within ``timeout_s``; the
            message holds the page's console output.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    condition = "() => window.viewerState !== undefined && (window.viewerState.ready || window.viewerState.error !== null)"
    try:
        page.wait_for_function(condition, timeout=timeout_s * 1000)
    except PlaywrightTimeoutError as error:
        state = page.evaluate("() => window.viewerState ?? null")
        raise AssertionError(f"viewer not ready within {timeout_s} s; state {state}; console:\n{_console(page)}") from error
    state = page.evaluate("() => window.viewerState")
    if state["error"] is not None:
        raise AssertionError(f"viewer reported an error: {state['error']}; console:\n{_console(page)}")
    return state


def screenshot_array(page: Page) -> np.ndarray:
    """[H, W, 3] uint8 RGB screenshot of the page's viewport."""
    return np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"))


def _console(page: Page) -> str:
    return "\n".join(getattr(page, "console_lines", [])) or "(nothing)"
