"""A hub on the Docker backend, started for the tests of one module and cleaned up after.

The end-to-end Docker tests all need the same thing: the images their datasets pick, a hub
from portal.yaml with the local catalogue and the Docker spawner (reaching the hub through
the bridge's gateway), and at the end the hub stopped and its users' containers removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from spawner.docker import bridge_gateway
from tests.support.docker_support import engine, ensure_images, remove_user_servers
from tests.support.net import free_port
from tests.support.umbrella import Hub, Provider, hub_config


@contextmanager
def docker_hub(
    provider: Provider,
    folder: Path,
    data: Path,
    *,
    images: Iterable[str],
    users: Iterable[str],
    **sections: dict,
) -> Iterator[Hub]:
    """Build ``images`` if missing, then run a Docker-backend hub in ``folder`` signing in at
    ``provider`` with the local catalogue over ``data``; ``sections`` of portal.yaml are
    merged over the defaults (``auth`` and ``spawner`` key by key). On leaving, the hub stops
    and the containers of ``users`` are removed."""
    ensure_images(*images)
    spawner = {
        "backend": "docker",
        "docker": {"hub_connect_ip": bridge_gateway(), "hub_api_port": free_port()},
        **sections.pop("spawner", {}),
    }
    hub = Hub(hub_config(provider, folder, data, spawner, **sections), folder)
    try:
        hub.start()
        yield hub
    finally:
        hub.stop()
        remove_user_servers(engine(), *users)
