"""SciCat as the portal's catalogue, as its current backend (NestJS) serves it.

**API version** (``api_version``): ``v4`` (the default, ``GET /api/v4/datasets``) or ``v3``
(``GET /api/v3/Datasets``, which the current backend still serves for older clients). The
two differ, in what the portal sends, only in the ``where`` dialect (SciCat's
``src/common/pipes/filter.pipe.ts`` maps v3's LoopBack ``or``/``and``/``inq``/``ilike`` to
MongoDB; v4 takes MongoDB's ``$or``/``$and``/``$in``/``$regex`` and rejects anything else)
and in the records' shape (v3 adds ``proposalId``/``instrumentId`` strings beside v4's
``proposalIds``/``instrumentIds`` arrays). Both read paging only from
``filter.limits = {limit, skip, sort}`` (``src/common/utils.ts``; a top-level ``limit`` or
``skip`` is ignored without an error), so each page asks for ``limits`` with a stable sort
(``creationTime`` newest first, then ``pid``), and a short page ends the listing. ``get`` is
one request: the listing's own query with a ``where`` on the pid, so an embargoed and an
unknown pid answer alike (an empty page).

**Authentication** (``auth_mode``). SciCat accepts only its own JWT; any other bearer token
is served as anonymous with HTTP 200 (``src/auth/guards/jwt-auth.guard.ts``), so the
portal never forwards the user's Umbrella token. Instead:

- ``user`` (default): the user's ID token is exchanged for a SciCat token of their own at
  ``POST /api/v3/auth/oidc/token`` (SciCat must trust the portal's OIDC client: its
  ``OIDC_CLIENT_ID`` or ``OIDC_ADDITIONAL_AUTHORIZED_PARTIES``), kept until it expires.
  SciCat filters by the user's SciCat groups; the portal checks every record again with
  the groups and e-mail SciCat reports for that token (``/api/v3/auth/whoami``).
- ``service``: one functional account's token (``service_token``, or ``service_username``
  and ``service_password`` for ``POST /api/v3/auth/login``), and the portal filters by the
  user's identity itself, in the query and again on every record: their ``groups`` claim
  plus their ``proposals`` claim (SciCat's ``ownerGroup`` is usually the proposal) and their
  verified e-mail.

Either way a token SciCat does not know (``whoami`` answers empty: anonymous) is an error
that says so, never a silently short list.

**Locations**: SciCat lets its users create and edit datasets of their own, with any
``sourceFolder``; only datasets written (``createdBy``, ``updatedBy``) by the accounts in
``trusted_writers`` (the facility's ingestors) are given a location the portal mounts.

**Thumbnails**: a dataset's picture is its first attachment's ``thumbnail``, a data URI,
as SciCat's own frontend shows it: ``GET /api/v3/datasets/{pid}/thumbnail``
(``datasets/datasets.controller.ts`` ``thumbnail``) answers ``{thumbnail}`` or ``{}``, 404
for an unknown pid and 403 for one the token may not read. It is asked only for a dataset
:meth:`~SciCatCatalogue.get` returned, and only a PNG, JPEG, GIF or WebP whose bytes say so
is kept.

**Access**: SciCat's own rule (``src/casl/abilities/datasets.ability.ts`` and the list's
access filter): ``ownerGroup`` or ``accessGroups`` among the user's groups, ``sharedWith``
holding their e-mail, ``isPublished``, and everything for its ``ADMIN_GROUPS``
(``admin_groups`` here). Proposal membership from the portal's ``proposals`` claim counts
only as a group (service mode); nothing else grants access. Imports nothing from JupyterHub.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from traitlets import Enum, List, Unicode, default

from portal.catalogue.base import CatalogueError, DatasetNotFound, may_read, newest_first
from portal.catalogue.http import (
    PUBLISHED,
    CatalogueCredentialsRejected,
    HttpCatalogue,
    json_of,
    parse_time,
    technique_filter,
    technique_id,
)
from portal.catalogue.model import CatalogueUser, Dataset, Thumbnail

WHOAMI = "/api/v3/auth/whoami"
LOGIN = "/api/v3/auth/login"
EXCHANGE = "/api/v3/auth/oidc/token"
#: Newest first, as the interface promises; the pid makes pages stable between equal times.
SORT = {"creationTime": "desc", "pid": "asc"}
THUMBNAIL = "/api/v3/datasets/{pid}/thumbnail"
#: The pictures a data URI may hold, by the bytes each format starts with.
IMAGE_MAGIC = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),  # and "WEBP" at byte 8: see data_uri_image
}
MAX_THUMBNAIL = 1 << 20  # bytes of a decoded thumbnail: SciCat calls them "small"
_DATA_URI = re.compile(r"data:(image/[a-z]+);base64,([A-Za-z0-9+/=\s]+)")


def data_uri_image(value: object) -> Thumbnail | None:
    """The picture in a ``data:image/...;base64,...`` URI, if it is one the portal serves
    and its bytes are of the type it claims; else ``None``."""
    found = _DATA_URI.fullmatch(value.strip()) if isinstance(value, str) else None
    if found is None or found[1] not in IMAGE_MAGIC or len(found[2]) > MAX_THUMBNAIL * 4 // 3 + 8:
        return None
    try:
        data = base64.b64decode("".join(found[2].split()), validate=True)
    except binascii.Error:
        return None
    if not data.startswith(IMAGE_MAGIC[found[1]]) or len(data) > MAX_THUMBNAIL:
        return None
    if found[1] == "image/webp" and data[8:12] != b"WEBP":  # RIFF holds audio and video too
        return None
    return Thumbnail(data, found[1])


@dataclass(frozen=True)
class Dialect:
    """How one API version spells a ``where`` (SciCat's ``WherePipe`` maps v3's to v4's)."""

    path: str
    any_of: str
    all_of: str
    one_of: str
    ilike: str

    def regex(self, pattern: str) -> dict[str, str]:
        """A case-insensitive regular expression condition."""
        if self.ilike == "ilike":  # v3: WherePipe turns it into $regex with $options "i"
            return {"ilike": pattern}
        return {"$regex": pattern, "$options": "i"}

    def combine(self, clauses: list[dict[str, Any]]) -> dict[str, Any]:
        if len(clauses) > 1:
            return {self.all_of: clauses}
        return clauses[0] if clauses else {}


DIALECTS = {
    "v4": Dialect("/api/v4/datasets", "$or", "$and", "$in", "$regex"),
    "v3": Dialect("/api/v3/Datasets", "or", "and", "inq", "ilike"),
}


@dataclass(frozen=True)
class SciCatIdentity:
    """A SciCat token and who SciCat says it belongs to (``whoami``)."""

    token: str
    expires: float
    groups: frozenset[str]
    email: str


def _first(record: dict[str, Any], single: str, many: str) -> str:
    """A v3 single value (``proposalId``) or the first of a v4 array (``proposalIds``)."""
    value = record.get(single)
    if not value and isinstance(record.get(many), list) and record[many]:
        value = record[many][0]
    return str(value or "")


class SciCatCatalogue(HttpCatalogue):
    """Datasets from a SciCat catalogue; every answer is access-checked by SciCat's rule."""

    api_version = Enum(
        ["v4", "v3"],
        default_value="v4",
        config=True,
        help="SciCat API: v4 (/api/v4/datasets, current) or v3 (/api/v3/Datasets).",
    )
    auth_mode = Enum(
        ["user", "service"],
        default_value="user",
        config=True,
        help="user: each user's own SciCat token, exchanged for their ID token;"
        " service: one functional account, the portal filtering by the user's identity.",
    )
    service_token = Unicode(
        "",
        config=True,
        help="auth_mode service: a SciCat token (JWT) of the functional account."
        " Default: the SCICAT_SERVICE_TOKEN environment variable.",
    )
    service_username = Unicode(
        "", config=True, help="auth_mode service: the functional account, to log in with."
    )
    service_password = Unicode(
        "",
        config=True,
        help="auth_mode service: its password. Default: SCICAT_SERVICE_PASSWORD.",
    )
    admin_groups = List(
        Unicode(),
        config=True,
        help="SciCat's ADMIN_GROUPS: their members read every dataset, as in SciCat.",
    )
    trusted_writers = List(
        Unicode(),
        config=True,
        help="""SciCat accounts (createdBy, updatedBy) whose datasets' sourceFolder the portal
        mounts: the facility's ingestors, e.g. ["ingestor"]. SciCat lets its users create
        and edit datasets of their own, with any sourceFolder: a dataset written by anyone
        else is listed, but never mounted. Empty: nothing is mounted.""",
    )

    @default("service_token")
    def _service_token_default(self) -> str:
        return os.environ.get("SCICAT_SERVICE_TOKEN", "")

    @default("service_password")
    def _service_password_default(self) -> str:
        return os.environ.get("SCICAT_SERVICE_PASSWORD", "")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._identities: dict[tuple, SciCatIdentity] = {}
        self._identities_lock = threading.Lock()

    @property
    def dialect(self) -> Dialect:
        return DIALECTS[self.api_version]

    # -- tokens -----------------------------------------------------------------------

    def _identity_key(self, user: CatalogueUser) -> tuple:
        if self.auth_mode == "service":
            return ("service",)
        digest = hashlib.sha256((user.id_token or "").encode()).hexdigest()
        return ("user", user.sub, user.username, digest)

    def identity(self, user: CatalogueUser) -> SciCatIdentity:
        """The SciCat token to ask with, for ``user`` (or the service), acquired when needed."""
        key = self._identity_key(user)
        with self._identities_lock:
            known = self._identities.get(key)
        if known is not None and known.expires - 30 > time.time():
            return known
        token, expires = self._service_token() if key == ("service",) else self._user_token(user)
        whoami = self.send(
            self.endpoint(WHOAMI),
            {"Accept": "application/json", "Authorization": f"Bearer {token}"},
        )
        answer = json_of(whoami, self.endpoint(WHOAMI)) if whoami.text.strip() else None
        if not isinstance(answer, dict) or not answer.get("username"):
            whose = "the portal's service account" if key == ("service",) else user.username
            raise CatalogueCredentialsRejected(
                f"SciCat at {self.url} does not accept the token of {whose}: {WHOAMI} answers"
                " anonymous, so it would list public data only"
                + (
                    "; check SciCatCatalogue.service_token (or its account) against this SciCat"
                    if key == ("service",)
                    else "; signing out and in again renews it"
                )
            )
        found = SciCatIdentity(
            token,
            expires,
            frozenset(str(g) for g in answer.get("currentGroups") or []),
            str(answer.get("email") or "").lower(),
        )
        with self._identities_lock:
            self._identities[key] = found
        return found

    def _token_answer(self, path: str, body: dict[str, str], failure: str) -> tuple[str, float]:
        url = self.endpoint(path)
        response = self.send(url, {"Accept": "application/json"}, json_body=body)
        if response.status_code in (400, 401, 403):
            raise CatalogueCredentialsRejected(
                f"{failure} (HTTP {response.status_code}: {response.text[:200]})"
            )
        answer = json_of(response, url)
        if not isinstance(answer, dict) or not answer.get("access_token"):
            raise CatalogueCredentialsRejected(f"{failure}: {url} returned no access_token")
        ttl = float(answer.get("expires_in") or answer.get("ttl") or 3600)
        return str(answer["access_token"]), time.time() + ttl

    def _service_token(self) -> tuple[str, float]:
        if self.service_token:
            return self.service_token, float("inf")
        if not (self.service_username and self.service_password):
            raise CatalogueCredentialsRejected(
                "SciCatCatalogue.auth_mode is 'service' but no service_token, nor"
                " service_username and service_password (SCICAT_SERVICE_PASSWORD), is set"
            )
        return self._token_answer(
            LOGIN,
            {"username": self.service_username, "password": self.service_password},
            f"SciCat at {self.url} refused the login of the service account"
            f" {self.service_username!r}",
        )

    def _user_token(self, user: CatalogueUser) -> tuple[str, float]:
        if not user.id_token:
            raise CatalogueCredentialsRejected(
                f"the hub holds no ID token for {user.username} to sign in to SciCat with;"
                " signing out and in again renews it"
            )
        return self._token_answer(
            EXCHANGE,
            {"idToken": user.id_token},
            f"SciCat at {self.url} refused the sign-in of {user.username}: signing out and in"
            " again renews it; if it persists, SciCat must accept this portal's OIDC client"
            " (OIDC_CLIENT_ID or OIDC_ADDITIONAL_AUTHORIZED_PARTIES)",
        )

    def auth_headers(self, user: CatalogueUser) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.identity(user).token}"}

    def rejected(self, url: str, status: int, user: CatalogueUser) -> CatalogueError:
        with self._identities_lock:  # an expired token (401 SESSION_EXPIRED): get a new one
            self._identities.pop(self._identity_key(user), None)
        return CatalogueCredentialsRejected(
            f"SciCat at {url} refused the token used for {user.username} (HTTP {status});"
            " try again, or sign out and in again"
        )

    # -- who may read what ------------------------------------------------------------

    def reader(self, user: CatalogueUser) -> CatalogueUser:
        """``user`` as SciCat knows them: groups and e-mail that SciCat's rule compares."""
        if self.auth_mode == "user":
            me = self.identity(user)
            return replace(user, groups=me.groups, email=me.email, proposals=frozenset())
        return replace(user, groups=user.groups | user.proposals, proposals=frozenset())

    def is_admin(self, reader: CatalogueUser) -> bool:
        return bool(reader.groups & set(self.admin_groups))

    def access_where(self, reader: CatalogueUser) -> dict[str, Any] | None:
        """SciCat's list filter for ``reader``, sent in service mode (SciCat adds its own in
        user mode); ``None`` for an admin."""
        if self.is_admin(reader):
            return None
        d = self.dialect
        groups = sorted(reader.groups)
        clauses: list[dict[str, Any]] = [
            {"ownerGroup": {d.one_of: groups}},
            {"accessGroups": {d.one_of: groups}},
            {"isPublished": True},
        ]
        if reader.email:
            clauses.append({"sharedWith": {d.one_of: [reader.email]}})
        return {d.any_of: clauses}

    def readable(self, user: CatalogueUser, records: Any) -> list[Dataset]:
        reader = self.reader(user)
        if self.is_admin(reader):
            return newest_first(list(self.datasets(records)))
        today = datetime.now(UTC).date()
        return newest_first(
            [d for d in self.datasets(records) if may_read(d, reader, frozenset(), today)]
        )

    # -- queries ----------------------------------------------------------------------

    def search_clauses(
        self, *, text: str = "", technique: str = "", proposal: str = "", instrument: str = ""
    ) -> list[dict[str, Any]]:
        """One ``where`` clause per search filter, in this API version's dialect."""
        d = self.dialect
        clauses: list[dict[str, Any]] = []
        if text:
            pattern = re.escape(text)
            clauses.append(
                {d.any_of: [{"datasetName": d.regex(pattern)}, {"pid": d.regex(pattern)}]}
            )
        if technique:
            clauses.append({"techniques.pid": {d.one_of: sorted(technique_filter(technique))}})
        if proposal:
            clauses.append({"proposalIds": proposal})
        if instrument:
            whole = f"^{re.escape(instrument)}$"
            clauses.append(
                {d.any_of: [{"creationLocation": d.regex(whole)}, {"instrumentIds": instrument}]}
            )
        return clauses

    def _query(
        self, user: CatalogueUser, clauses: list[dict[str, Any]], limit: int | None = None
    ) -> list[Dataset]:
        if self.auth_mode == "service" and (access := self.access_where(self.reader(user))):
            clauses = [access, *clauses]
        where = self.dialect.combine(clauses)

        def page(skip: int, size: int) -> dict[str, Any]:
            query: dict[str, Any] = {
                "limits": {"limit": min(size, limit or size), "skip": skip, "sort": SORT}
            }
            if where:
                query["where"] = where
            return query

        records = self.records(user, self.dialect.path, page)
        if limit is not None:
            records = (r for _, r in zip(range(limit), records, strict=False))
        return self.readable(user, records)

    def to_dataset(self, record: dict[str, Any]) -> Dataset:
        pid = str(record["pid"])
        groups = [record.get("ownerGroup"), *(record.get("accessGroups") or [])]
        return Dataset(
            pid=pid,
            title=str(record.get("datasetName") or pid),
            proposal=_first(record, "proposalId", "proposalIds"),
            instrument=str(record.get("creationLocation") or "")
            or _first(record, "instrumentId", "instrumentIds"),
            location=self._trusted_location(record),
            techniques=tuple(
                technique_id(t.get("pid"), t.get("name"))
                for t in record.get("techniques") or []
                if isinstance(t, dict)
            ),
            start_time=parse_time(record.get("startTime") or record.get("creationTime")),
            end_time=parse_time(record.get("endTime")),
            public_date=PUBLISHED if record.get("isPublished") is True else None,
            size=int(record.get("size") or 0),
            file_count=int(record.get("numberOfFiles") or 0),
            access_groups=frozenset(str(g) for g in groups if g),
            shared_with=frozenset(str(e).lower() for e in record.get("sharedWith") or []),
        )

    def _trusted_location(self, record: dict[str, Any]) -> str:
        """``sourceFolder``, if only trusted accounts wrote the record; else none."""
        writers = {record.get("createdBy"), record.get("updatedBy")} - {None}
        if not writers or not writers <= set(self.trusted_writers):
            return ""
        return str(record.get("sourceFolder") or "")

    def datasets_for(self, user: CatalogueUser) -> list[Dataset]:
        return self._query(user, [])

    def get(self, pid: str, user: CatalogueUser) -> Dataset:
        found = self._query(user, [{"pid": pid}], limit=1)
        if not found:
            raise DatasetNotFound(pid)
        return found[0]

    def thumbnail(self, dataset: Dataset, user: CatalogueUser) -> Thumbnail | None:
        """The dataset's first attachment's thumbnail, asked with the same token as
        :meth:`get`; none when SciCat has none, or no longer lets this token read it."""
        path = THUMBNAIL.format(pid=quote(dataset.pid, safe=""))
        try:  # read no more than the largest picture kept, and never cached raw
            answer = self.get_json(user, path, max_bytes=MAX_THUMBNAIL * 4 // 3 + 4096)
        except CatalogueError as e:  # a picture is never worth an error page
            self.log.info("catalogue: no thumbnail for %s: %s", dataset.pid, e)
            return None
        return data_uri_image(answer.get("thumbnail") if isinstance(answer, dict) else None)

    def search(
        self,
        user: CatalogueUser,
        *,
        text: str = "",
        technique: str = "",
        proposal: str = "",
        instrument: str = "",
        limit: int = 50,
        offset: int = 0,
    ) -> list[Dataset]:
        clauses = self.search_clauses(
            text=text, technique=technique, proposal=proposal, instrument=instrument
        )
        return self._query(user, clauses)[offset : offset + limit]


__all__ = ["DIALECTS", "SciCatCatalogue"]
