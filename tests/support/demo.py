"""The ``panosc-portal demo`` command, run exactly as the README tells a user to."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.net import free_port


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
