"""``panosc-portal serve -c portal.yaml``: run the hub a ``portal.yaml`` describes.

It renders the JupyterHub config into ``hub.state_dir``, makes sure the secrets exist
(generated once, kept, mode 600) and replaces itself with JupyterHub, so a process manager
(systemd, a container runtime) signals JupyterHub directly. The demo uses the same steps.
"""

from __future__ import annotations

import os
import resource
import secrets
import sys
from pathlib import Path

from portal import render
from portal.catalogue.local import index_tree
from portal.settings import PortalSettings, SettingsError, load
from spawner.sandbox import host_check


def secret_file(path: Path) -> str:
    """A 32-byte hex secret generated on first use and kept for the next runs."""
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    return path.read_text().strip()


def index_local_catalogue(settings: PortalSettings) -> None:
    """Bring a local catalogue's index up to date (incremental: unchanged files are skipped).

    Run at every start; while the portal runs, ``panosc-portal catalogue index`` (e.g. from
    cron) picks up new data.
    """
    local = settings.catalogue.local
    if settings.catalogue.backend != "local" or local is None:
        return
    index = local.index_path or Path(settings.hub.state_dir) / "catalogue.sqlite"
    report = index_tree(local.data_root, index)
    print(
        f"Catalogue: {report.added + report.updated + report.unchanged} datasets indexed"
        f" ({report.added} new, {report.updated} changed, {report.removed} removed)",
        flush=True,
    )


def prepare_hub(settings: PortalSettings) -> tuple[list[str], dict[str, str]]:
    """The JupyterHub command line and environment for ``settings``.

    ``JUPYTERHUB_CRYPT_KEY`` (encrypts auth_state, where the users' tokens live) is taken
    from the environment if set, else from ``<state_dir>/crypt_key``. The virtualenv's
    ``bin`` goes first on ``PATH`` so the hub finds its proxy and single-user command.
    """
    if settings.spawner.backend == "local":
        problem = host_check()
        if problem:
            raise SettingsError([f"spawner.backend: local: {problem}"])
    # Every proxied connection, and on the local backend every bridged one, holds descriptors
    # in the hub: take all the system allows (often 1024 of 524288 by default). Servers get
    # an ordinary limit back (spawner.sandbox.Limits).
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    state = Path(settings.hub.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    index_local_catalogue(settings)
    config_py = state / "jupyterhub_config.py"
    config_py.write_text(render.render_python(settings))
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("JUPYTERHUB_CRYPT_KEY", secret_file(state / "crypt_key"))
    return [sys.executable, "-m", "jupyterhub", "-f", str(config_py)], env


def serve(path: Path) -> None:
    """Validate ``path``, prepare the hub, and exec JupyterHub (never returns)."""
    settings = load(path)
    command, env = prepare_hub(settings)
    print(f"Starting JupyterHub at {render.hub_url(settings)} (state in {settings.hub.state_dir})")
    sys.stdout.flush()
    os.chdir(settings.hub.state_dir)
    os.execvpe(command[0], command, env)
