"""Jupyter server extension for the desktop image: a desktop is in use while a tab is connected.

jupyter-remote-desktop-proxy bridges each browser tab's websocket to Xvnc's unix socket,
and jupyter-server-proxy records activity only when bytes flow. A tab left open on an
unchanging screen would then look idle and be culled under the user's eyes. This
extension checks regularly whether any connection to Xvnc's socket is open, and if so
records activity, so the rule is simply: connected means in use, disconnected means idle.
It checks as often as the server reports activity to the hub (JUPYTERHUB_ACTIVITY_INTERVAL,
which the portal shortens for short idle timeouts), at most every minute.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from tornado.ioloop import PeriodicCallback

CONNECTED = "03"  # SS_CONNECTED in /proc/net/unix


def vnc_socket() -> str | None:
    """The unix socket the VNC server serves (its ``-rfbunixpath``), if a desktop runs."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-rfbunixpath" in args[:-1]:  # Xtigervnc, or the vncserver script starting it
            return args[args.index(b"-rfbunixpath") + 1].decode()
    return None


def connections(path: str) -> int:
    """Open connections to the unix socket ``path`` (the listening socket not counted)."""
    count = 0
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) == 8 and fields[7] == path and fields[5] == CONNECTED:
            count += 1
    return count


def _load_jupyter_server_extension(serverapp: object) -> None:
    settings = serverapp.web_app.settings  # type: ignore[attr-defined]

    def check() -> None:
        path = vnc_socket()
        if path and connections(path):
            settings.setdefault("last_activity_times", {})["panosc-desktop"] = datetime.now(UTC)

    every = min(60, int(os.environ.get("JUPYTERHUB_ACTIVITY_INTERVAL", "60")))
    PeriodicCallback(check, every * 1000).start()
