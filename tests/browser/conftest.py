"""A real browser on the real page: headless Debian chromium driven by Selenium,
against one deployment (two gateway processes, a real redis-server) per module.

A test that needs a browser is skipped, with the reason, when /usr/bin/chromium,
/usr/bin/chromedriver or the selenium module is missing (``.ci/run`` installs the
Debian packages when it can); the page's HTTP checks run either way. Selenium never
downloads a driver: ``SE_OFFLINE`` and an explicit ``Service``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Deployment, RedisServer

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def missing() -> str | None:
    """Why no browser can run here, or None."""
    gone = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if gone:
        return (
            f"browser tests need Debian's chromium and chromium-driver; missing {', '.join(gone)}"
            " (apt-get install chromium chromium-driver)"
        )
    if importlib.util.find_spec("selenium") is None:
        return "browser tests need the selenium module (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def web(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """One deployment for the module: two gateways sharing one port."""
    dep = Deployment(redis_server, tmp_path_factory.mktemp("web")).start()
    try:
        yield dep
    finally:
        try:
            dep.stop()
        finally:
            print(dep.logs()[-6000:])


Browser = Any  # selenium's WebDriver, kept loose: this file imports without selenium


@pytest.fixture
def browsers(tmp_path: Path) -> Iterator[Callable[..., Browser]]:
    """Starts headless chromium windows, each with its own profile (so its own
    sessionStorage) and download folder (``driver.downloads``); quits them at the end."""
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch a driver or browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    started: list[Browser] = []

    def start(width: int = 1200, height: int = 900) -> Browser:
        n = len(started)
        downloads = tmp_path / f"downloads-{n}"
        downloads.mkdir()
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in (
            "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
            "--no-first-run", "--disable-extensions", "--disable-background-networking",
            "--disable-renderer-backgrounding", "--disable-background-timer-throttling",
            f"--window-size={width},{height}", f"--user-data-dir={tmp_path / f'profile-{n}'}",
        ):  # fmt: skip
            opts.add_argument(arg)
        opts.add_experimental_option(
            "prefs",
            {"download.default_directory": str(downloads), "download.prompt_for_download": False},
        )
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
        driver.execute_cdp_cmd(
            "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        driver.downloads = downloads
        started.append(driver)
        return driver

    yield start
    for driver in started:
        with contextlib.suppress(Exception):  # a browser that died is gone already
            driver.quit()
