"""What every portal spawner shares: asking the catalogue at spawn time and planning mounts.

The backends (local, Docker, Kubernetes) differ only in how they realise a
:class:`~spawner.mounts.MountPlan`; authorisation lives here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from traitlets import Dict, Enum, Float, Unicode, default
from traitlets.config import Configurable

from portal.catalogue import (
    Catalogue,
    CatalogueError,
    CatalogueUnavailable,
    CatalogueUser,
    Dataset,
    DatasetNotFound,
    PortalCatalogue,
)
from portal.upstream import log_name, stopping
from spawner.course_library import CourseLibrary
from spawner.environments import Environment, load_environments
from spawner.form import options_form
from spawner.mounts import MountError, MountPlan, StorageRoot, mountable, plan_mounts
from spawner.options import Resources, ServerOptions, SpawnRefused, parse_options, pick_environment
from spawner.shares import SUPPORT_REQUESTS, audit_shares, end_shares


def user_from_auth_state(username: str, auth_state: dict | None) -> CatalogueUser:
    """The catalogue's view of a user, from what the authenticator kept in auth_state."""
    state = auth_state or {}
    return CatalogueUser(
        username=username,
        sub=str(state.get("sub", "")),
        groups=frozenset(state.get("groups") or ()),
        proposals=frozenset(state.get("proposals") or ()),
        access_token=state.get("access_token"),
        email=str(state.get("email") or ""),
        id_token=state.get("id_token"),
    )


#: The single-user images' user and home, as jupyter docker-stacks have them.
HOME = PurePosixPath("/home/jovyan")
JOVYAN_UID, JOVYAN_GID = 1000, 100


async def until_answering(url: str, timeout: float, every: float = 0.05) -> bool:
    """Whether the server at ``url`` answered HTTP (any status) within ``timeout`` seconds,
    asked every ``every`` seconds.

    JupyterHub's own readiness check backs off exponentially with jitter (0.2, 0.4, 0.8,
    1.6 s...), so a server up after 1.5 s may be seen only at 3 s or later; a spawner that
    returns once this answers lets the hub's first check find the server up.
    """
    target = urlsplit(url)
    request = f"GET {target.path or '/'} HTTP/1.0\r\nHost: {target.netloc}\r\n\r\n".encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, TimeoutError):
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(target.hostname, target.port or 80), 2
            )
            try:
                writer.write(request)
                if (await asyncio.wait_for(reader.readline(), 2)).startswith(b"HTTP/"):
                    return True
            finally:
                writer.close()
        await asyncio.sleep(every)
    return False


class ConfirmFirst(Exception):
    """A spawn asked for by a link the portal did not make: JupyterHub shows the form."""


#: Seconds a spawn link made by the portal's own pages (/hub/open, /hub/course) is valid.
SPAWN_LINK_TTL = 600


def _signature(secret: bytes, username: str, server: str, options: dict, expires: int) -> str:
    canonical = json.dumps(
        [username, server, {k: sorted(v) for k, v in options.items()}, expires], sort_keys=True
    )
    return hmac.new(secret, canonical.encode(), hashlib.sha256).hexdigest()


def spawn_query(
    secret: bytes, username: str, server: str, options: dict[str, list[str]]
) -> list[tuple[str, str]]:
    """The query of a ``/hub/spawn`` link for these options, signed for this user and
    server: JupyterHub starts a server from a GET with options, so only links the portal
    made itself (after the user's own click) may carry them."""
    expires = int(time.time()) + SPAWN_LINK_TTL
    token = f"{expires}.{_signature(secret, username, server, options, expires)}"
    return [
        *((f"opt-{k}", v) for k, values in options.items() for v in values),
        ("opt-token", token),
    ]


def trusted_navigation(request: Any) -> bool:
    """Whether a GET is a click on one of the portal's own pages.

    A link or an image on another site, or in a mail, must not start servers or fetch
    courses for a signed-in victim: browsers say where a request comes from in
    ``Sec-Fetch-Site``; without it, a ``Referer`` from this very origin is needed.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site == "same-origin"
    referer = urlsplit(request.headers.get("Referer", ""))
    return referer.netloc == request.host and referer.scheme == request.protocol


def flatten_options(raw: dict[str, list[str]]) -> dict[str, Any]:
    """Form and query values arrive as lists; every option but ``datasets`` is single."""
    return {k: v[0] if k != "datasets" and len(v) == 1 else v for k, v in raw.items()}


@dataclass(frozen=True)
class SpawnPlan:
    """Everything a backend needs to start one server, decided and checked on the hub."""

    options: ServerOptions
    environment: Environment
    datasets: tuple[Dataset, ...]
    mounts: MountPlan
    resources: Resources

    @property
    def default_url(self) -> str:
        """Desktops open on the desktop; a lab for one chosen dataset opens in its folder."""
        if self.options.server_type == "desktop":
            return "/desktop"
        if self.options.datasets is not None and len(self.mounts.dataset_mounts) == 1:
            return f"/lab/tree/{self.mounts.dataset_mounts[0].target}"
        return "/lab"


class PortalSpawner(Configurable):
    """Traits and spawn-time authorisation shared by the portal's spawners.

    A mixin: ``PortalLocalSpawner(PortalSpawner, SimpleLocalProcessSpawner)`` and so on, so
    ``c.PortalSpawner.storage_roots`` configures every backend at once.
    """

    #: The server types a backend can run (the local backend has no desktop).
    supported_server_types: tuple[str, ...] = ("lab", "desktop")
    #: User options a backend checks itself (Slurm: partition, walltime), besides ours.
    backend_options: tuple[str, ...] = ()

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
    environments_file = Unicode(
        "",
        config=True,
        help="The environments table. Default: the images/environments.yaml shipped with us.",
    )
    resource_presets = Dict(
        default_value={"small": {"cpu": 1, "memory": "2G"}, "large": {"cpu": 4, "memory": "16G"}},
        config=True,
        help="""Resource presets users may pick, besides "default" (the environment's hint).

        Name -> {"cpu": cores, "memory": "8G"}.
        """,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The hub's courses, configured before any course_of_server() needs them: a course
        # server is traced back to its course through them, never through its name.
        CourseLibrary.instance(config=self.config, log=self.log)

    @default("options_form")
    def _options_form_default(self) -> Callable:
        return options_form

    def backend_form_context(self) -> dict[str, Any]:
        """What the spawn form shows of this backend's own options (none by default)."""
        return {}

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, Any]:
        """Form fields as user options; the form always states its datasets (none is a choice)."""
        options = {k: v for k, v in formdata.items() if k != "_xsrf"}
        options.setdefault("datasets", [])
        return flatten_options(options)

    def options_from_query(self, query: dict[str, list[str]]) -> dict[str, Any]:
        """``/hub/spawn?opt-type=desktop&opt-datasets=PID&opt-token=...`` as user options.

        Only with a valid token of :func:`spawn_query` for this user and server: any
        other link gets the spawn form, filled in by nothing, with a word on why. The
        portal's links always state their datasets, and a query cannot carry an empty list:
        no ``opt-datasets`` means none (a simulation course), never the default of all.
        """
        options = {k: v for k, v in query.items() if k != "token"}
        options.setdefault("datasets", [])
        token = (query.get("token") or [""])[-1]
        expires, _, signature = token.partition(".")
        handler = getattr(self, "handler", None)
        secret = handler.settings.get("cookie_secret", b"") if handler is not None else b""
        valid = (
            bool(secret)
            and expires.isdigit()
            and int(expires) >= time.time()
            and hmac.compare_digest(
                signature, _signature(secret, self.user.name, self.name, options, int(expires))
            )
        )
        if not valid:
            raise ConfirmFirst("This link was not made by the portal: choose what to start.")
        return flatten_options(options)

    audit_interval = Float(
        300.0,
        min=0,
        config=True,
        help="""Seconds between two checks, while a server runs, that its user may still read
        every dataset it mounts: the user's claims are read again from the identity
        provider and the catalogue is asked again. A server with a dataset the user lost
        is stopped, and the home page says why. 0 disables the check.""",
    )

    claims_max_age = Float(
        120.0,
        min=1,
        config=True,
        help="""Seconds the user's claims (groups, proposals) may be old at a spawn. They are
        read again from the identity provider just before each spawn; when it does not
        answer, a spawn with claims older than this is refused with a page saying so, rather
        than mounting data on rights the provider may have taken away.""",
    )

    environment_name = ""  # the environment the running server was started in
    mounted_pids: tuple[str, ...] = ()  # what the running server mounts, for the audit
    member_of: frozenset[str] = frozenset()  # proposals whose processed area it mounts
    access_revoked = ""  # why the audit stopped this server: the home page shows it
    _last_audit = 0.0

    def get_state(self) -> dict:
        state = super().get_state()
        if self.environment_name:
            state["environment"] = self.environment_name  # shown on the home page
        if self.mounted_pids:
            state["datasets"] = list(self.mounted_pids)
        if self.member_of:
            state["processed"] = sorted(self.member_of)
        if self.access_revoked:  # kept past the stop, for the home page
            state["access_revoked"] = self.access_revoked
        return state

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.environment_name = state.get("environment", "")
        self.mounted_pids = tuple(state.get("datasets") or ())
        self.member_of = frozenset(state.get("processed") or ())
        self.access_revoked = state.get("access_revoked", "")

    def clear_state(self) -> None:
        """Forget the stopped server, but not why the audit stopped it."""
        super().clear_state()
        end_shares(getattr(self, "orm_spawner", None))  # a restart may mount other data
        self.environment_name = ""
        self.mounted_pids = ()
        self.member_of = frozenset()

    @property
    def support_requests(self) -> list[str]:
        """Support staff asking to join this session, for its owner's home page."""
        return SUPPORT_REQUESTS.of(self.user.name, self.name)

    # -- the access audit ---------------------------------------------------------------

    async def poll(self) -> int | None:
        """JupyterHub's poll (every ``poll_interval``), plus the access audit when it is due.

        A server whose access was revoked is stopped here, then reported as ended: the hub
        removes its route and forgets it, as for a server that died.
        """
        status = await super().poll()
        due = time.monotonic() - self._last_audit >= self.audit_interval
        guarded = self.mounted_pids or self.member_of
        if status is not None or not self.audit_interval or not due or not guarded:
            return status
        self._last_audit = time.monotonic()
        lost = await self.audit()
        if not lost:
            # The owner keeps access; each grantee must still read all of it too.
            await audit_shares(self.orm_spawner, self.catalogue, self.mounted_pids, self.member_of)
            return None
        self.access_revoked = (
            f"Your session {self.name or 'default'} was stopped: you may no longer read"
            f" {', '.join(lost)}."
        )
        if stopping(self):
            return None  # stopping already: the hub's stop ends it
        self.log.warning("%s: access revoked to %s; stopping", log_name(self), lost)
        await self.stop(now=True)  # the hub's own stop skips a server that reports an exit
        return await super().poll()

    async def audit(self) -> list[str]:
        """The mounted datasets the user may no longer read, as the catalogue says now.

        The user's claims are read again first (groups and proposals change at the identity
        provider). A catalogue or provider that cannot answer stops nothing: only a clear
        "no" does, so an outage never costs anyone their session.
        """
        current = getattr(self.authenticator, "current_model", None)
        try:
            model = await current(self.user) if current else {}
        except Exception as e:  # nothing known about the user now: keep what we know
            self.log.warning("%s: claims not read again (%s)", log_name(self), e)
            model = {}
        if model is None:  # the provider refuses this user's live token: access ends
            return [*self.mounted_pids, *(f"the processed area of {p}" for p in self.member_of)]
        if model.get("auth_state"):
            await self.user.save_auth_state(model["auth_state"])
        user = await self.user_for_catalogue()
        lost = []
        if self.processed_root and self.member_of:
            try:
                now = await asyncio.to_thread(self.catalogue.member_proposals, user)
                lost += [f"the processed area of {p}" for p in sorted(self.member_of - now)]
            except CatalogueError as e:
                self.log.warning("%s: membership audit skipped: %s", log_name(self), e)
        for pid in self.mounted_pids:
            try:
                await asyncio.to_thread(self.catalogue.get, pid, user)
            except DatasetNotFound:
                lost.append(pid)
            except CatalogueError as e:
                self.log.warning("%s: access audit skipped for %s: %s", log_name(self), pid, e)
        return lost

    @property
    def catalogue(self) -> Catalogue:
        """The hub's one catalogue (``c.PortalCatalogue.backend``)."""
        return PortalCatalogue.instance(config=self.config, log=self.log).catalogue

    @property
    def environments(self) -> dict[str, Environment]:
        return load_environments(Path(self.environments_file) if self.environments_file else None)

    # -- progress ---------------------------------------------------------------------

    def progress_event(self, message: str, progress: int) -> None:
        """Tell the user's spawn page what is happening now."""
        self.log.info("%s: %s", log_name(self), message)
        self._events.append({"progress": progress, "message": message})

    async def progress(self) -> AsyncIterator[dict]:
        """The events of the current start, as they happen (JupyterHub stops reading at the end)."""
        sent = 0
        while True:
            events = getattr(self, "_events", [])
            while sent < len(events):
                yield events[sent]
                sent += 1
            await asyncio.sleep(0.2)

    # -- the decision -----------------------------------------------------------------

    async def user_for_catalogue(self) -> CatalogueUser:
        return user_from_auth_state(self.user.name, await self.user.get_auth_state())

    async def fresh_user(self) -> CatalogueUser:
        """The user for the catalogue, with claims the provider vouched for just now.

        Only for authenticators that read claims again (Umbrella's ``current_model``); with
        others there is nothing fresher to have.
        """
        state = await self.user.get_auth_state() or {}
        if hasattr(self.authenticator, "current_model"):
            age = time.time() - float(state.get("claims_at") or 0)
            if age > self.claims_max_age:
                raise SpawnRefused(
                    "Your server was not started: the identity provider could not be asked"
                    " for your current groups and proposals just now, and the portal does not"
                    " mount data on rights it cannot confirm. Nothing was changed; please try"
                    " again in a minute.",
                    503,
                )
        return user_from_auth_state(self.user.name, state)

    async def prepare_spawn(self) -> SpawnPlan:
        """Check the options, ask the catalogue *now* for each dataset, and plan the mounts.

        Nothing the browser sent is trusted: a pid is mounted only if the catalogue returns
        it for this user at this moment, and only through a configured storage root. The
        catalogue and the storage (GPFS, NFS: every dataset folder is resolved and stat'ed)
        are asked from worker threads: the hub's event loop serves every user and its own
        health probe, and must not wait for one slow disk.
        """
        self._events: list[dict] = []
        environments = self.environments
        raw = {k: v for k, v in (self.user_options or {}).items() if k not in self.backend_options}
        options = parse_options(raw, environments, self.resource_presets)
        if options.server_type not in self.supported_server_types:
            raise SpawnRefused(
                f"this portal's {type(self).__name__} cannot run a {options.server_type}"
                f" server; it runs: {', '.join(self.supported_server_types)}",
                400,
            )
        user = await self.fresh_user()
        catalogue = self.catalogue
        try:
            roots = [StorageRoot(k, v) for k, v in self.storage_roots.items()]
            if options.datasets is None:
                self.progress_event("Looking up your datasets in the catalogue", 10)
                datasets = []
                if self.default_datasets == "all":
                    # One bad catalogue entry must not block all the others: skip it, say so.
                    listed = await asyncio.to_thread(catalogue.datasets_for, user)
                    datasets, refused = await asyncio.to_thread(mountable, listed, roots)
                    for problem in refused:
                        self.log.warning("%s: skipping %s", log_name(self), problem)
                    if refused:
                        self.progress_event(
                            f"Skipped {len(refused)} dataset(s) that cannot be mounted safely", 20
                        )
            else:
                self.progress_event(f"Checking access to {len(options.datasets)} dataset(s)", 10)
                datasets = [
                    await asyncio.to_thread(catalogue.get, p, user) for p in options.datasets
                ]
            member_of: frozenset[str] = frozenset()
            if self.processed_root:
                member_of = await asyncio.to_thread(catalogue.member_proposals, user)
            mounts = await asyncio.to_thread(
                plan_mounts, datasets, roots, self.processed_root or None, member_of
            )
            self.member_of = frozenset(
                d.proposal for d in datasets if d.proposal and d.proposal in member_of
            )
        except CatalogueUnavailable as e:  # an outage, not a "no": say so, and when to retry
            self.log.warning("no spawn for %s, the catalogue is down: %s", self.user.name, e)
            raise SpawnRefused(
                f"Your server was not started: the catalogue cannot answer right now ({e})."
                " Nothing was changed; please try again in a minute.",
                503,
            ) from e
        except (CatalogueError, MountError) as e:
            self.log.warning("refusing spawn for %s: %s", self.user.name, e)
            raise SpawnRefused(str(e)) from e
        if options.environment:
            environment = environments[options.environment]
        else:
            environment = pick_environment(datasets, environments, options.server_type)
        preset = self.resource_presets.get(options.resources)
        resources = (
            Resources(float(preset["cpu"]), str(preset["memory"]))
            if preset
            else Resources(environment.cpu, environment.memory)
        )
        self.progress_event(f"Mounting {len(mounts.dataset_mounts)} dataset(s) read-only", 30)
        self.environment_name = environment.name
        self.mounted_pids = tuple(d.pid for d in datasets)
        self.access_revoked = ""
        self._last_audit = time.monotonic()
        return SpawnPlan(options, environment, tuple(datasets), mounts, resources)
