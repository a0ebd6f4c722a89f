"""Fixtures that start real components: an OIDC provider process and the whole demo portal.

Only fixtures live here; what tests share besides fixtures is in :mod:`tests.support`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.demo import DemoPortal, start_demo
from tests.support.docker_support import TEST_IMAGES_ENV
from tests.support.net import free_port, wait_http
from tests.support.paths import ARTIFACTS


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where browser tests leave screenshots for people to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


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
