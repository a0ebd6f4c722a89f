"""Provenance records as a session leaves them, for the publishing tests: written by the
record program's own writer (:mod:`spawner.provenance_record`), so what publishing reads
back is exactly what a session writes."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from spawner.provenance_record import crate, folder_name, write


def write_record(
    area: Path,
    inputs: Iterable[Any],
    *,
    server: str = "lab",
    started: float = 0.0,
    image: str = "panosc/xrf:0.1.0",
    digest: str = "sha256:" + "ab" * 32,
) -> str:
    """A finished record in the processed ``area`` of a session of ``server`` that read
    ``inputs`` (datasets: their ``pid`` and ``title``) in the xrf environment; its folder
    name, which the publish form lists."""
    started = started or time.time() - 3600
    name = folder_name(started, server)
    facts = {
        "crate": f"provenance/{name}",
        "user": "alice",
        "server_name": server,
        "server_type": "lab",
        "started": started,
        "stopped": started + 600,
        "environment": "xrf",
        "image": image,
        "digest": digest,
        "datasets": [[d.pid, d.title] for d in inputs],
    }
    write(str(area), facts, crate(facts, [], ""))
    return name
