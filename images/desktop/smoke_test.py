"""Smoke test of desktop (see images/smoke.py): the session a user gets at /desktop/.

Starts the VNC server exactly as jupyter-remote-desktop-proxy does (its own command line,
with this image's session script), then opens ``silx view`` on a mounted NeXus file and the
PyMca GUI, and takes a screenshot of each into /artifacts for a person to look at. The X
server is TigerVNC's Xvnc, itself a virtual frame buffer, so no Xvfb is needed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from smoke import run

DATASETS = Path.home() / "datasets"
ARTIFACTS = Path("/artifacts")
SCREENSHOT = """
import sys
from PySide6.QtGui import QGuiApplication
app = QGuiApplication([])
sys.exit(0 if QGuiApplication.primaryScreen().grabWindow(0).save(sys.argv[1]) else 1)
"""


def wait_for(what: str, check: Callable[[], bool], log: Path, timeout: float = 60) -> None:
    """Poll ``check()`` until it is true; after ``timeout`` s, fail with ``what`` and ``log``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"{what} did not happen within {timeout} s; {log}:\n{tail}")
        time.sleep(0.5)


def start(cmd: list[str], log: Path, **popen: Any) -> subprocess.Popen[bytes]:
    """``cmd`` in the background, its output in ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **popen)


def windows(display: str) -> str:
    """The names of the X windows on ``display`` (empty while the server is not up)."""
    out = subprocess.run(
        ["xwininfo", "-root", "-tree", "-display", display], capture_output=True, text=True
    )
    return out.stdout if out.returncode == 0 else ""


def screenshot(display: str, name: str) -> None:
    """The whole screen of ``display`` as /artifacts/NAME, taken with Qt (no ImageMagick)."""
    ARTIFACTS.mkdir(exist_ok=True)
    env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    out = subprocess.run(
        [sys.executable, "-c", SCREENSHOT, str(ARTIFACTS / name)], env=env, capture_output=True
    )
    assert out.returncode == 0, f"screenshot {name} failed: {out.stderr.decode()}"


@contextmanager
def desktop_session() -> Iterator[str]:
    """The VNC server and XFCE session jupyter-remote-desktop-proxy would start; the display."""
    from jupyter_remote_desktop_proxy.setup_websockify import setup_websockify

    command = setup_websockify()["command"][-1].replace("{unix_socket}", "/tmp/smoke-vnc.sock")
    assert "/usr/local/bin/panosc-xstartup" in command, command
    log = Path("/tmp/smoke-vnc.log")
    server = start(["/bin/sh", "-c", command], log, start_new_session=True)
    display = ":1"
    try:
        wait_for("the VNC server and xfdesktop", lambda: "xfdesktop" in windows(display), log)
        yield display
    finally:
        subprocess.run(["vncserver", "-kill", display], capture_output=True)
        server.wait(20)


@contextmanager
def application(display: str, title: str, *cmd: str) -> Iterator[None]:
    """``cmd`` running on ``display`` until a window titled ``title`` shows."""
    log = Path(f"/tmp/smoke-{Path(cmd[0]).name}.log")
    proc = start(list(cmd), log, env={**os.environ, "DISPLAY": display})
    try:
        wait_for(
            f"a '{title}' window of {' '.join(cmd)}", lambda: f'"{title}' in windows(display), log
        )
        time.sleep(3)  # let it finish drawing
        yield
    finally:
        proc.terminate()
        proc.wait(20)


def test_desktop_gui_libraries() -> None:
    run(sys.executable, "-c", "import PySide6.QtWidgets, silx.gui.qt, PyMca5.PyMcaGui")
    server_extensions = run("jupyter", "server", "extension", "list")
    assert "jupyter_server_proxy" in server_extensions, server_extensions


def test_session_with_launchers_silx_view_and_pymca() -> None:
    nexus = next(DATASETS.rglob("ceo2_powder_*.nxs"))
    with desktop_session() as display:
        desktop = Path.home() / "Desktop"
        launchers = sorted(p.name for p in desktop.glob("*.desktop"))
        assert launchers == ["panosc-pymca.desktop", "panosc-silx-view.desktop"], launchers
        assert (desktop / "Datasets").resolve() == DATASETS.resolve()
        time.sleep(3)  # xfdesktop draws its icons after its window appears
        screenshot(display, "desktop-xfce.png")
        with application(display, "Silx viewer", "silx", "view", str(nexus)):
            screenshot(display, "desktop-silx-view.png")
        with application(display, "PyMca", "pymca"):
            screenshot(display, "desktop-pymca.png")
