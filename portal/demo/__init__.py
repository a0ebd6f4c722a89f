"""The embedded demo: sample data, demo identity provider, and the one-command portal."""

import os
from pathlib import Path


def default_state_dir() -> Path:
    """Where the demo keeps its data, database and logs between runs."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local/state"
    return Path(base) / "panosc-portal/demo"
