"""Who a running session may be shared with, and ending shares that no longer hold.

A JupyterHub share (``orm.Share``) lets another user, or every member of a group, enter a
server: they see everything it mounts, and write to its processed areas. The portal's
promise is that nobody sees data they may not read, so a grantee must be able to read
every mounted dataset and be a member of every proposal whose processed area is mounted,
as the catalogue says: when the share is made (:mod:`portal.sharing`), at every access
audit while the server runs (:func:`audit_shares`), and never across a restart, since a
restarted session may mount other data (:func:`end_shares`, at every stop).

This module is on the spawner's side of the layering (it imports nothing of the hub's
pages); it knows JupyterHub only through the ORM objects the spawner already holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import object_session

from portal.catalogue import Catalogue, CatalogueError, CatalogueUser, DatasetNotFound

log = logging.getLogger(__name__)


class NoClaims(Exception):
    """A grantee the hub knows nothing about: never signed in, so no proposals to check."""


def grantee_user(name: str, auth_state: dict | None) -> CatalogueUser:
    """The catalogue's view of a grantee; refuses one who has never signed in.

    Without auth_state the portal has no claims (proposals, groups) to ask the catalogue
    with; guessing "open data only" would still let the grantee see the owner's processed
    area, so such a share is refused outright.
    """
    from spawner.common import user_from_auth_state  # common imports this module

    if not auth_state:
        raise NoClaims(
            f"{name} has never signed in to this portal, so the catalogue cannot be asked what"
            f" {name} may read; ask {name} to sign in once, then share again."
        )
    return user_from_auth_state(name, auth_state)


def unreadable(
    catalogue: Catalogue, user: CatalogueUser, pids: Iterable[str], processed: Iterable[str]
) -> list[str]:
    """What of a session ``user`` may not read: dataset pids, and "the processed area of P".

    A blocking call (the catalogue may be remote): run it in a worker thread. A catalogue
    that cannot answer raises :class:`CatalogueError`; the caller decides what an outage
    means (refuse a new share, keep an existing one).
    """
    lost = []
    for pid in pids:
        try:
            catalogue.get(pid, user)
        except DatasetNotFound:
            lost.append(pid)
    processed = sorted(processed)
    if processed:
        member_of = catalogue.member_proposals(user)
        lost += [f"the processed area of {p}" for p in processed if p not in member_of]
    return lost


def share_grantees(share: Any) -> list[Any]:
    """The hub users a share lets in: its user, or every current member of its group."""
    if share.user is not None:
        return [share.user]
    return list(share.group.users) if share.group is not None else []


def share_target(share: Any) -> tuple[str, str]:
    """``("user", name)`` or ``("group", name)``, as the shares API names them."""
    if share.user is not None:
        return "user", share.user.name
    return "group", share.group.name if share.group is not None else ""


def delete_shares(orm_spawner: Any, shares: Iterable[Any]) -> None:
    """Remove these shares from the hub's database.

    Done on the ORM directly, in the hub's own process: taking access away cannot widen
    anyone's rights, and it must work at a stop, which JupyterHub runs synchronously
    (``clear_state``). The grantee's open tabs lose access at the server's next check with
    the hub (``HubOAuth.cache_max_age``, ``sharing.auth_cache``).
    """
    db = object_session(orm_spawner) if orm_spawner is not None else None
    if db is None:
        return
    for share in list(shares):
        log.info("ending share %r", share)
        db.delete(share)
    db.commit()


def end_shares(orm_spawner: Any) -> None:
    """End every share of a session: at its stop, so a restart (with other data) starts
    unshared, and accepted support access ends with the session."""
    if orm_spawner is None:
        return
    if orm_spawner.shares:
        delete_shares(orm_spawner, orm_spawner.shares)
    SUPPORT_REQUESTS.clear_server(
        orm_spawner.user.name if orm_spawner.user else "", orm_spawner.name
    )


async def audit_shares(
    orm_spawner: Any, catalogue: Catalogue, pids: Iterable[str], processed: Iterable[str]
) -> list[str]:
    """Remove the shares whose grantee (or any member of whose group) may no longer read
    everything the session mounts; returns what was removed, as ``"user bob"`` etc.

    Only a clear "no" removes a share: a catalogue outage keeps it (as for the owner).
    """
    if orm_spawner is None or not orm_spawner.shares:
        return []
    pids, processed = tuple(pids), tuple(processed)
    doomed, removed = [], []
    for share in list(orm_spawner.shares):
        for member in share_grantees(share):
            try:
                user = grantee_user(member.name, await _auth_state(member))
                lost = await asyncio.to_thread(unreadable, catalogue, user, pids, processed)
            except NoClaims:
                lost = ["(no claims)"]
            except CatalogueError as e:
                log.warning("share audit of %r skipped: %s", share, e)
                continue
            if lost:
                kind, name = share_target(share)
                log.warning("%s may no longer read %s: ending %r", member.name, lost, share)
                doomed.append(share)
                removed.append(f"{kind} {name}")
                break
    delete_shares(orm_spawner, doomed)
    return removed


async def _auth_state(orm_user: Any) -> dict | None:
    """The grantee's stored auth_state (claims of their last sign-in or refresh)."""
    from jupyterhub.crypto import decrypt

    encrypted = orm_user.encrypted_auth_state
    if encrypted is None:
        return None
    return await decrypt(encrypted)


@dataclass
class SupportRequests:
    """Pending requests of support staff to join a session: (owner, server) -> requester ->
    when asked. In the hub's memory only: a request is short-lived (the owner is usually on
    the phone with the support person), and after a hub restart it is simply asked again."""

    pending: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)

    def ask(self, owner: str, server: str, requester: str) -> None:
        self.pending.setdefault((owner, server), {})[requester] = time.time()

    def of(self, owner: str, server: str) -> list[str]:
        return sorted(self.pending.get((owner, server), {}))

    def take(self, owner: str, server: str, requester: str) -> bool:
        """Remove one request; whether it was pending."""
        return self.pending.get((owner, server), {}).pop(requester, None) is not None

    def clear_server(self, owner: str, server: str) -> None:
        self.pending.pop((owner, server), None)


#: The hub's one registry of support requests.
SUPPORT_REQUESTS = SupportRequests()
