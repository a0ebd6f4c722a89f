"""Ports, and waiting for a process to answer over HTTP."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (for a process to take)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (for a server that is not there)."""
    return free_port()


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
