"""Smoke test of hub (see images/smoke.py): the installed portal and kubespawner.

The hub image installs the portal as a wheel would be installed, so this is also where the
environments table is checked to ship inside the package (``spawner/environments.yaml``).
The hub starting as the chart starts it, behind the proxy image, is checked from outside by
tests/test_images.py: it needs the proxy, which this image does not carry.
"""

from __future__ import annotations

from pathlib import Path

from smoke import run

HERE = Path(__file__).resolve().parent


def test_portal_installed_with_its_environments_table() -> None:
    import portal
    from spawner.environments import DATA_FILE, load_environments

    assert "site-packages" in portal.__file__, portal.__file__
    assert not DATA_FILE.is_symlink(), f"{DATA_FILE} should be a copy in an installed package"
    assert load_environments() == load_environments(HERE.parent / "environments.yaml")
    run("panosc-portal", "--version")


def test_kubespawner_and_our_entry_points() -> None:
    from importlib.metadata import entry_points, version

    from kubespawner import KubeSpawner  # kubespawner 7 registers no entry point

    assert version("jupyterhub-kubespawner").startswith("7.1."), version("jupyterhub-kubespawner")
    assert KubeSpawner.start
    spawners = {e.name for e in entry_points(group="jupyterhub.spawners")}
    authenticators = {e.name for e in entry_points(group="jupyterhub.authenticators")}
    assert "portal-local" in spawners, spawners
    assert "umbrella" in authenticators, authenticators


def test_git_for_courses_from_a_repository() -> None:
    """The hub clones and fetches courses given as git repositories (spawner/course_library.py)."""
    assert run("git", "--version").startswith("git version")
