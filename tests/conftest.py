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

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


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


def start_demo(state: Path, log: Path) -> DemoPortal:
    """Run the real demo command, exactly as the README tells a user to."""
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
