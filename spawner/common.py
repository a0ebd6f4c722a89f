"""What every portal spawner shares: asking the catalogue at spawn time and planning mounts.

The backends (local, Docker, Kubernetes) differ only in how they realise a
:class:`~spawner.mounts.MountPlan`; authorisation lives here once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from jupyterhub.spawner import SpawnException
from traitlets import Dict, Enum, Unicode
from traitlets.config import Configurable

from portal.catalogue import Catalogue, CatalogueError, CatalogueUser, PortalCatalogue
from spawner.mounts import MountError, MountPlan, StorageRoot, plan_mounts

ALLOWED_OPTIONS = frozenset({"datasets"})


class SpawnRefused(SpawnException):
    """A spawn the user asked for is not allowed (JupyterHub's policy-failure exception).

    The REST API answers with its status and message instead of a 500, the spawn page
    shows the message, and the hub logs it without a traceback.
    """

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message, reason="refused", status_code=status)


def user_from_auth_state(username: str, auth_state: dict | None) -> CatalogueUser:
    """The catalogue's view of a user, from what the authenticator kept in auth_state."""
    state = auth_state or {}
    return CatalogueUser(
        username=username,
        sub=str(state.get("sub", "")),
        groups=frozenset(state.get("groups") or ()),
        proposals=frozenset(state.get("proposals") or ()),
        access_token=state.get("access_token"),
    )


def check_user_options(options: dict[str, Any]) -> list[str] | None:
    """The dataset pids asked for, after checking the options against the allow-list.

    ``None`` means "not chosen" (a plain spawn); a list means exactly those datasets.
    """
    unknown = sorted(set(options) - ALLOWED_OPTIONS)
    if unknown:
        raise SpawnRefused(
            f"unknown server option(s) {', '.join(unknown)}; allowed: {', '.join(ALLOWED_OPTIONS)}",
            400,
        )
    pids = options.get("datasets")
    if pids is None:
        return None
    if isinstance(pids, str):
        pids = [pids]
    if not isinstance(pids, list) or not all(isinstance(p, str) and p for p in pids):
        raise SpawnRefused("server option 'datasets' must be a list of dataset pids", 400)
    return list(dict.fromkeys(pids))


class PortalSpawner(Configurable):
    """Traits and spawn-time authorisation shared by the portal's spawners.

    A mixin: ``PortalLocalSpawner(PortalSpawner, SimpleLocalProcessSpawner)`` and so on, so
    ``c.PortalSpawner.storage_roots`` configures every backend at once.
    """

    storage_roots = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        config=True,
        help="""Catalogue location prefix -> host path, e.g. {"/data/visitor": "/srv/gpfs/visitor"}.

        A dataset is mounted only if its location lies under one of these prefixes and,
        once ``..`` and symlinks are resolved on the host, still inside the host path.
        """,
    )
    processed_root = Unicode(
        "",
        config=True,
        help="Host folder for writable per-proposal processed areas; empty for none.",
    )
    default_datasets = Enum(
        ["all", "none"],
        default_value="all",
        config=True,
        help="What a spawn with no 'datasets' option mounts: all the user's datasets, or none.",
    )

    @property
    def catalogue(self) -> Catalogue:
        """The hub's one catalogue (``c.PortalCatalogue.backend``)."""
        return PortalCatalogue.instance(config=self.config, log=self.log).catalogue

    async def authorised_plan(self) -> MountPlan:
        """Ask the catalogue, now, for each requested dataset; plan their mounts.

        Nothing the browser sent is trusted: a pid is mounted only if the catalogue returns
        it for this user at this moment, and only through a configured storage root.
        """
        pids = check_user_options(self.user_options or {})
        user = user_from_auth_state(self.user.name, await self.user.get_auth_state())
        catalogue = self.catalogue
        try:
            if pids is None:
                wanted = "all" if self.default_datasets == "all" else "none"
                datasets = (
                    await asyncio.to_thread(catalogue.datasets_for, user) if wanted == "all" else []
                )
            else:
                datasets = [await asyncio.to_thread(catalogue.get, p, user) for p in pids]
            roots = [StorageRoot(k, v) for k, v in self.storage_roots.items()]
            return plan_mounts(datasets, roots, self.processed_root or None)
        except (CatalogueError, MountError) as e:
            self.log.warning("refusing spawn for %s: %s", self.user.name, e)
            raise SpawnRefused(str(e)) from e
