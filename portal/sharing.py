"""Sharing a running session, and support staff asking to join one.

``POST /hub/sharing`` (JSON, from the home page's script) lets the owner of a running
session share it with a user or a group, revoke a share, and accept or decline a support
request. ``/hub/support`` lets members of ``sharing.support_groups`` ask to join a user's
running session.

Every share is made after the catalogue said that each grantee may read every dataset the
session mounts, and is a member of every proposal whose processed area it mounts
(:func:`spawner.shares.unreadable`). Users do not hold JupyterHub's ``shares`` scope (see
:func:`portal.render.sharing`), so this check cannot be skipped by calling the shares API
directly: the share itself is then created through JupyterHub's public REST API with a
short-lived token of the ``portal-sharing`` service.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from jupyterhub import orm
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from traitlets import List, Unicode
from traitlets.config import SingletonConfigurable

from portal.catalogue import CatalogueError
from portal.handlers import PortalPage
from portal.render import SHARING_SERVICE
from spawner.shares import (
    SUPPORT_REQUESTS,
    NoClaims,
    grantee_user,
    share_grantees,
    share_target,
    unreadable,
)

#: Seconds a service token minted for sharing lives; a new one is minted before it ends.
TOKEN_LIFETIME = 3600


class PortalSharing(SingletonConfigurable):
    """Who may ask to join other users' sessions (``c.PortalSharing.support_groups``)."""

    support_groups = List(
        Unicode(),
        config=True,
        help="""Groups (as the identity provider names them) whose members may ask to join
        a user's running session. The owner accepts or declines on their home page; an
        accepted request is a share like any other: the catalogue must allow the support
        person every dataset, and it ends when the session stops.""",
    )


class ServiceToken:
    """A token of the ``portal-sharing`` service, minted in the hub's memory and renewed
    before it expires: no secret for this service is ever written to a file or config."""

    def __init__(self) -> None:
        self.token = ""
        self.expires = datetime.min.replace(tzinfo=UTC)

    def get(self, db: Any) -> str:
        if self.token and self.expires - datetime.now(UTC) > timedelta(minutes=5):
            return self.token
        service = orm.Service.find(db, SHARING_SERVICE)
        if service is None:
            raise web.HTTPError(503, "Sharing is not configured on this hub.")
        self.token = service.new_api_token(note="portal sharing", expires_in=TOKEN_LIFETIME)
        self.expires = datetime.now(UTC) + timedelta(seconds=TOKEN_LIFETIME)
        return self.token


SERVICE_TOKEN = ServiceToken()


class Refused(Exception):
    """A sharing action refused, with the message for the person who asked and a status."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


class SharingLogic(PortalPage):
    """The checks and the REST calls, shared by the owner's and the support pages."""

    async def shares_api(self, method: str, owner: str, server: str, body: dict) -> dict:
        """Call JupyterHub's shares API for ``owner/server`` as the sharing service."""
        token = SERVICE_TOKEN.get(self.db)
        url = url_path_join(self.hub.api_url, "shares", owner, server)
        request = HTTPRequest(
            url,
            method=method,
            headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
            body=json.dumps(body),
            allow_nonstandard_methods=True,
        )
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
        if response.code >= 400:
            self.log.error("shares API %s %s: %s %s", method, url, response.code, response.body)
            raise Refused(f"The hub refused the share ({response.code}).", 502)
        return json.loads(response.body or b"{}")

    def running(self, server: str) -> Any:
        """The current user's running session ``server``, or a refusal."""
        spawner = self.current_user.spawners.get(server)
        if spawner is None or not spawner.ready:
            raise Refused(f"You have no running session {server or 'default'}.", 404)
        return spawner

    async def check_grantees(self, spawner: Any, kind: str, name: str) -> None:
        """Refuse unless every user this share lets in may read all the session mounts."""
        if kind == "user":
            grantee = self.find_user(name)
            if grantee is None:
                raise Refused(f"There is no user {name!r} on this portal.", 400)
            if grantee.name == self.current_user.name:
                raise Refused("This is your own session.", 400)
            members = [grantee.orm_user]
        else:
            group = orm.Group.find(self.db, name=name)
            if group is None:
                raise Refused(f"There is no group {name!r} on this portal.", 400)
            members = [u for u in group.users if u.name != self.current_user.name]
        pids = tuple(getattr(spawner, "mounted_pids", ()))
        processed = tuple(getattr(spawner, "member_of", ()))
        for member in members:
            hub_user = self.find_user(member.name)
            try:
                user = grantee_user(member.name, await hub_user.get_auth_state())
                lost = await asyncio.to_thread(unreadable, self.catalogue, user, pids, processed)
            except NoClaims as e:
                raise Refused(f"Not shared: {e}") from e
            except CatalogueError as e:
                raise Refused(f"Not shared: the catalogue cannot answer now ({e}).", 503) from e
            if lost:
                who = member.name if kind == "user" else f"{member.name} (in group {name})"
                raise Refused(
                    f"Not shared with {name}: {who} may not read {', '.join(lost)}, which"
                    f" this session mounts."
                )

    async def share(self, server: str, kind: str, name: str) -> str:
        spawner = self.running(server)
        await self.check_grantees(spawner, kind, name)
        await self.shares_api("POST", self.current_user.name, server, {kind: name})
        self.log.info("%s shared %s with %s %s", self.current_user.name, server, kind, name)
        return f"{server or 'default'} is shared with {name}."

    async def revoke(self, server: str, kind: str, name: str) -> str:
        if self.current_user.spawners.get(server) is None:
            raise Refused(f"You have no session {server or 'default'}.", 404)
        await self.shares_api("PATCH", self.current_user.name, server, {kind: name})
        return f"{server or 'default'} is no longer shared with {name}."


def shares_of(spawner: Any) -> list[dict[str, str]]:
    """A session's shares as the home page shows them."""
    orm_spawner = getattr(spawner, "orm_spawner", None)
    if orm_spawner is None:
        return []
    return [
        {"kind": kind, "name": name, "members": [u.name for u in share_grantees(s)]}
        for s in orm_spawner.shares
        for kind, name in [share_target(s)]
    ]


class SharingHandler(SharingLogic):
    """``/hub/sharing``: the owner's actions, as JSON for the home page's script."""

    @web.authenticated
    async def get(self) -> None:
        """The shares and support requests of each running session (the home page polls
        this to show a new request without a reload)."""
        user = self.current_user
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(
            json.dumps(
                {
                    name: {
                        "shares": shares_of(s),
                        "requests": SUPPORT_REQUESTS.of(user.name, name),
                    }
                    for name, s in user.spawners.items()
                    if s.active
                },
                sort_keys=True,
            )
        )

    @web.authenticated
    async def post(self) -> None:
        body = json.loads(self.request.body or b"{}")
        action = str(body.get("action", ""))
        server = str(body.get("server", ""))
        kind = "group" if body.get("kind") == "group" else "user"
        name = str(body.get("name", "")).strip()
        try:
            if action in ("share", "revoke") and not name:
                raise Refused(f"Give the name of a {kind} to {action} with.", 400)
            if action == "share":
                message = await self.share(server, kind, name)
            elif action == "revoke":
                message = await self.revoke(server, kind, name)
            elif action in ("accept", "decline"):
                message = await self.answer(server, name, action == "accept")
            else:
                raise Refused(f"Unknown action {action!r}.", 400)
        except Refused as e:
            self.set_status(e.status)
            message = str(e)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": message}))

    async def answer(self, server: str, requester: str, accept: bool) -> str:
        """Accept (share with the support person, after the catalogue check) or decline."""
        owner = self.current_user.name
        if requester not in SUPPORT_REQUESTS.of(owner, server):
            raise Refused(f"{requester} has not asked to join {server or 'default'}.", 404)
        if not accept:
            SUPPORT_REQUESTS.take(owner, server, requester)
            return f"Declined {requester}'s request to join {server or 'default'}."
        message = await self.share(server, "user", requester)  # refused: the request stays
        SUPPORT_REQUESTS.take(owner, server, requester)
        return message + " Their access ends when the session stops."


class SupportHandler(SharingLogic):
    """``/hub/support``: support staff find a user's running sessions and ask to join one.

    Only members of ``support_groups`` see this page: it lists other users' session names
    (never their datasets). Asking grants nothing; the owner decides.
    """

    def support_groups(self) -> set[str]:
        return set(PortalSharing.instance(config=self.settings["config"]).support_groups)

    async def allowed(self) -> bool:
        groups = (await self.catalogue_user()).groups
        if groups & self.support_groups():
            return True
        self.set_status(403)
        await self.page(error="Only support staff (local contacts) may ask to join sessions.")
        return False

    async def page(self, owner: str = "", sessions: Any = (), message: str = "", error: str = ""):
        html = await self.render_template(
            "support.html", owner=owner, sessions=list(sessions), message=message, error=error
        )
        self.finish(html)

    def sessions_of(self, owner: str) -> list[tuple[str, str]]:
        user = self.find_user(owner) if owner else None
        if user is None:
            return []
        return [
            (name, "Desktop" if (s.user_options or {}).get("type") == "desktop" else "JupyterLab")
            for name, s in sorted(user.spawners.items())
            if s.ready
        ]

    @web.authenticated
    async def get(self) -> None:
        if not await self.allowed():
            return
        owner = self.get_argument("user", "").strip()
        sessions = self.sessions_of(owner)
        error = f"{owner} has no running session." if owner and not sessions else ""
        await self.page(owner, sessions, error=error)

    @web.authenticated
    async def post(self) -> None:
        if not await self.allowed():
            return
        owner = self.get_argument("user", "").strip()
        server = self.get_argument("server", "")
        sessions = self.sessions_of(owner)
        if server not in [name for name, _ in sessions]:
            self.set_status(404)
            return await self.page(owner, sessions, error=f"{owner} has no running {server!r}.")
        requester = self.current_user.name
        if requester == owner:
            self.set_status(400)
            return await self.page(owner, sessions, error="This is your own session.")
        SUPPORT_REQUESTS.ask(owner, server, requester)
        self.log.info("%s asks to join %s/%s", requester, owner, server)
        link = url_path_join(self.base_url, "user", owner, server) + "/"
        await self.page(
            owner,
            sessions,
            message=f"Asked {owner} to let you join {server or 'default'}. Once {owner}"
            f" accepts, open it at {link}",
        )
