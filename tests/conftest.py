"""Fixtures that start real components: an OIDC provider process and the whole demo portal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests

if TYPE_CHECKING:
    from playwright.sync_api import Page

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


def sign_in(page: Page, hub_url: str, issuer: str, sub: str, next_path: str) -> None:
    """In the browser: follow the hub's sign-in to the provider's page, pick ``sub`` there
    as a person clicks it, and wait to land on ``next_path`` (a path on the hub)."""
    page.goto(f"{hub_url}/hub/oauth_login?next={next_path}")
    page.wait_for_url(f"{issuer}/**")
    page.locator(f"button[value='{sub}']").click()
    page.wait_for_url(f"**{next_path}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(
    url: str, proc: subprocess.Popen, timeout: float = 90, log: Path | None = None
) -> None:
    """Wait until ``url`` answers; fail with the process's output if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")[-3000:] if log else ""
            pytest.fail(f"process exited with {proc.returncode} before {url} answered:\n{text}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    pytest.fail(f"{url} did not answer within {timeout} s")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where browser tests leave screenshots for people to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Debian's Chromium driven by Playwright (never a downloaded browser).

    Per module: Playwright's sync API holds an event loop while it runs, which would stop the
    asyncio tests of later modules from running theirs.
    """
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is not installed (scripts/test installs it)"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real oidc-provider-mock process; yields its issuer URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("oidc") / "oidc.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "oidc_provider_mock", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    issuer = f"http://127.0.0.1:{port}"
    wait_http(f"{issuer}/.well-known/openid-configuration", proc, log=log)
    yield issuer
    proc.terminate()
    proc.wait(10)


@dataclass
class DemoPortal:
    """A running ``panosc-portal demo`` process and where to reach it."""

    proc: subprocess.Popen
    url: str
    issuer: str
    state: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def interrupt(self, timeout: float = 40) -> int:
        """Ctrl-C, as a person would press it; returns the exit code."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)


def start_demo(state: Path, log: Path, *flags: str) -> DemoPortal:
    """Run the real demo command, exactly as the README tells a user to (``flags``: more)."""
    port, oidc_port = free_port(), free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "portal.cli",
                "demo",
                "--port",
                str(port),
                "--oidc-port",
                str(oidc_port),
                "--state-dir",
                str(state),
                *flags,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    demo = DemoPortal(proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{oidc_port}", state, log)
    deadline = time.monotonic() + 180
    while "demo is running" not in demo.output():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the demo did not start:\n{demo.output()[-4000:]}")
        time.sleep(0.3)
    return demo


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoPortal]:
    """One demo portal shared by the end-to-end and browser tests."""
    base = tmp_path_factory.mktemp("demo")
    portal = start_demo(base / "state", base / "demo.log")
    yield portal
    if portal.proc.poll() is None:
        portal.interrupt()


# --- Docker ------------------------------------------------------------------------------
# Session fixtures for tests that build or run the images of images/ on a real Docker engine
# (tests/test_images.py; any test that needs an image). A missing engine fails these tests:
# scripts/test installs and starts one, so its absence is a broken machine, not a reason to
# skip.

#: The images a test session builds: all seven, since a clean build of them all takes about
#: 5 minutes on CI's 2 cores (benchmarks/images_build.py). PANOSC_TEST_IMAGES="base xrf"
#: narrows it for a quicker local run; each name still pulls in the images it is built on.
TEST_IMAGES_ENV = "PANOSC_TEST_IMAGES"


@pytest.fixture(scope="session")
def docker_engine() -> str:
    """The Docker engine's version; fails (never skips) when no engine answers."""
    from portal.images import BuildError, check_engine

    try:
        return check_engine()
    except BuildError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def built_images(docker_engine: str, artifacts: Path) -> dict[str, str]:
    """Build the test images once per session, as CI does (``--bootstrap-base``); name -> tag.

    The build tool reuses Docker's layer cache, so a session after the first takes seconds.
    Sizes and build times go to test-artifacts/images-build.txt.
    """
    from portal.images import (
        BOOTSTRAP_IMAGE,
        BuildError,
        BuildOptions,
        build,
        default_ca_dir,
        summary,
    )

    names = os.environ.get(TEST_IMAGES_ENV, "").replace(",", " ").split()
    options = BuildOptions(
        base_image=BOOTSTRAP_IMAGE, bootstrap_base=True, extra_ca_certs=default_ca_dir()
    )
    try:
        built = build(names, options)
    except BuildError as e:
        pytest.fail(f"images build failed: {e}", pytrace=False)
    (artifacts / "images-build.txt").write_text(summary(built) + "\n")
    return {b.name: b.tag for b in built}
