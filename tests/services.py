"""The outside services some tests need, and how the suite finds them (conftest.py applies the rule).

A test marked ``postgres`` needs PostgreSQL at ``PG_URL``; one marked ``browser`` needs headless
Chromium; one marked ``cluster`` needs root and ``ip netns`` (tests/cluster.py builds Ray nodes in
network namespaces); one marked ``fashion_mnist`` needs Debian's dataset-fashion-mnist package's
files. Without them such a test is skipped with the reason, except under CI (``CI`` set), where a
missing service fails it: CI (.ci/run) provides them, so a skip there would hide a broken setup.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
from urllib.parse import urlsplit

# The database the PostgreSQL tests use. Point it elsewhere (e.g. at a closed port, to check that
# CI fails rather than skips) with SWEEP_TEST_PG_URL.
PG_URL = os.environ.get("SWEEP_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pg_url(database: str) -> str:
    """PG_URL's server with another database name."""
    return PG_URL.rsplit("/", 1)[0] + "/" + database


def pg_address() -> str:
    parts = urlsplit(PG_URL)
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 5432}"


@functools.cache
def pg_answers() -> bool:
    """Whether anything accepts a TCP connection at PG_URL's host and port (checked once)."""
    host, port = pg_address().rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return False
    return True


def chromium() -> str | None:
    """The headless browser the ``browser`` tests drive, if one is on PATH."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def chromedriver() -> str | None:
    """The WebDriver that lets Selenium drive it (Debian's ``chromium-driver``)."""
    return shutil.which("chromedriver")


def browser():
    """A headless Chromium under Selenium, with the flags this machine needs; the caller quits it.
    Selenium is told where the driver is and to stay offline (it would otherwise try to fetch one)."""
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium()
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=chromedriver()), options=options)


@functools.cache
def netns_missing() -> str | None:
    """Why network namespaces cannot be made here (None: they can), tried for real once."""
    if os.geteuid() != 0:
        return "the cluster tests need root to create network namespaces"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) for the cluster tests' network namespaces"
    name = f"sweep-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def fashion_mnist_missing() -> str | None:
    """Why the Debian package's Fashion-MNIST files are not here (None: they are)."""
    from sweep.core.datasets import FASHION_MNIST_FILES, FASHION_MNIST_PACKAGE, FASHION_MNIST_SYSTEM_DIR

    absent = [
        f"{stem}.gz" for stem in FASHION_MNIST_FILES.values() if not (FASHION_MNIST_SYSTEM_DIR / f"{stem}.gz").is_file()
    ]
    return (
        f"no {', '.join(absent)} in {FASHION_MNIST_SYSTEM_DIR} (apt-get install {FASHION_MNIST_PACKAGE})"
        if absent
        else None
    )


def missing(marker: str) -> str | None:
    """Why the service a ``marker`` test needs is not here; None when it is."""
    if marker == "postgres":
        return None if pg_answers() else f"no PostgreSQL answers at {pg_address()}"
    if marker == "browser":
        if chromium() is None:
            return "no Chromium on PATH (chromium, chromium-browser, google-chrome)"
        return None if chromedriver() else "no chromedriver on PATH (Debian: apt-get install chromium-driver)"
    if marker == "cluster":
        return netns_missing()
    if marker == "fashion_mnist":
        return fashion_mnist_missing()
    return None
