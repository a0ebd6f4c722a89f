"""Smoke test of base, run inside base and every image built on it (see images/smoke.py).

Checks what every environment promises a researcher, from inside the running image: the
docker-stacks user, JupyterHub at the hub's version, silx reading the NeXus files mounted
under ~/datasets, the h5web extension enabled with news switched off, and JupyterLab
starting without errors (``jupyterlab.browser_check`` without its browser: that part needs
Playwright's downloaded Chromium, so tests/test_images.py drives the page from the host's
Chromium instead).

Environment: EXPECTED_JUPYTERHUB, the hub's JupyterHub version.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from smoke import run

DATASETS = Path.home() / "datasets"


def test_user() -> None:
    assert (os.getuid(), os.getgid()) == (1000, 100), f"runs as {os.getuid()}:{os.getgid()}"
    assert str(Path.home()) == "/home/jovyan", Path.home()
    assert os.access(Path.home(), os.W_OK), "the home is not writable"


def test_jupyterhub_version() -> None:
    import jupyterhub

    assert jupyterhub.__version__ == os.environ["EXPECTED_JUPYTERHUB"], jupyterhub.__version__
    run("jupyterhub-singleuser", "--version")


def test_silx_opens_nexus() -> None:
    import silx.io
    from silx.io.nxdata import get_default

    files = sorted(DATASETS.rglob("*.nxs"))
    assert files, f"no NeXus files under {DATASETS}"
    for path in files:
        with silx.io.open(str(path)) as h5:
            entry = next(iter(h5.values()))
            assert entry.attrs.get("NX_class") in ("NXentry", b"NXentry"), path
            nxdata = get_default(h5)
            if nxdata is not None:  # the tour file has no default plot on purpose
                assert nxdata.is_valid and nxdata.signal.size > 0, path
    print(f"silx read {len(files)} NeXus files")


def test_h5web_enabled() -> None:
    labext = run("jupyter", "labextension", "list")
    line = next((s for s in labext.splitlines() if "jupyterlab-h5web" in s), "")
    assert "enabled" in line and "OK" in line, labext
    server = run("jupyter", "server", "extension", "list")
    assert any("jupyterlab_h5web" in s and "enabled" in s for s in server.splitlines()), server


def test_no_news() -> None:
    path = Path(sys.prefix, "share/jupyter/lab/settings/overrides.json")
    settings = json.loads(path.read_text())["@jupyterlab/apputils-extension:notification"]
    assert settings == {"checkForUpdates": False, "fetchNews": "false"}, settings


def test_jupyterlab_starts() -> None:
    run(sys.executable, "-m", "jupyterlab.browser_check", "--no-browser-test", timeout=180)


def test_dependencies_consistent() -> None:
    run(sys.executable, "-m", "pip", "check")
