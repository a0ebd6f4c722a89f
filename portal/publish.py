"""Publish results: register a folder of a processed area as a derived dataset.

The user names a proposal, a folder of its processed area (relative to it), the
provenance records of the sessions that produced it, a title and a description. Nothing
the browser sends is trusted as a path: the folder is resolved here, component by
component without following a symlink, inside ``<processed_root>/<proposal>``, and the
proposal's membership is asked of the catalogue at publish time. A refusal copies and moves
nothing. The catalogue gets a description of the folder (inputs from the records, software
from their environment and image digest, the files with sizes).

Backends: SciCat gets a derived dataset through ``POST /api/v3/Datasets`` as its DTOs
validate it (``CreateDerivedDatasetObsoleteDto``), its ``sourceFolder`` the results where
they are, as SciCat's ingestors register data. The PaNOSC Search API is read-only and
publishing there is refused with a message saying so. The local catalogue gets a frozen copy:
the results are copied into ``<data_root>/<proposal>/derived/<name>/`` beside the portal's
``derived.json`` and re-indexed (:func:`publish_local`), so what is published, cited and
mounted is what was published, whatever the members later do in their shared, writable
processed area, and "Open" mounts it as any other dataset, through its storage root.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from tornado import web

from portal.catalogue.base import Catalogue, CatalogueError, DatasetNotFound
from portal.catalogue.model import CatalogueUser, Dataset
from portal.handlers import PortalPage
from spawner.mounts import open_folder, proposal_folder
from spawner.provenance import Record, read_records

#: The most files a published folder may list (a SciCat OrigDatablock is one document).
MAX_FILES = 10_000


class PublishRefused(CatalogueError):
    """Publishing is refused; ``field`` names the form field to fix, the message how."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class PublishedFile:
    """One regular file of the published folder: path relative to it, size, mtime."""

    path: str
    size: int
    modified: float


@dataclass(frozen=True)
class Publication:
    """What is registered: checked facts only, each decided on the hub."""

    proposal: str
    folder: Path  # the host folder, resolved inside the processed area
    relative: str  # the folder relative to the processed area, as the user sees it
    title: str
    description: str
    inputs: tuple[Dataset, ...]
    software: tuple[str, ...]  # "environment image@digest" of each record
    records: tuple[Record, ...]
    files: tuple[PublishedFile, ...]
    user: CatalogueUser

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def processed_area(processed_root: str, proposal: str) -> Path:
    """The host folder of ``proposal``'s processed area (as :mod:`spawner.mounts` mounts it)."""
    return Path(processed_root).resolve() / proposal_folder(proposal)


def resolve_folder(area: Path, relative: str) -> Path:
    """``relative`` (as typed or chosen in the form) inside ``area``, or :class:`PublishRefused`.

    Refused: an absolute path, any ``..`` or empty component, a component that is a symlink
    or not a folder. Each component is looked at with ``lstat`` from the area down, so no
    link planted by a proposal member (the area is shared) leads out of it.
    """
    text = relative.strip().strip("/") if not relative.startswith("/") else relative
    if text.startswith("/") or "\\" in text or "\0" in text:
        raise PublishRefused(
            "folder",
            f"Folder {relative!r}: give a path relative to the processed area"
            " (like results/fit-1), not an absolute one.",
        )
    parts = PurePosixPath(text).parts if text else ()
    if any(p in ("..", ".") for p in text.split("/")):
        raise PublishRefused(
            "folder", f"Folder {relative!r}: '..' and '.' are not allowed; pick a listed folder."
        )
    if parts and parts[0] == "provenance":
        raise PublishRefused("folder", "Folder: the provenance records are not results.")
    current = area
    try:
        if not stat.S_ISDIR(area.lstat().st_mode):
            raise OSError
    except OSError:
        raise PublishRefused(
            "proposal", "This proposal has no processed area yet: start a session first."
        ) from None
    for part in parts:
        current = current / part
        try:
            mode = current.lstat().st_mode
        except OSError:
            raise PublishRefused(
                "folder", f"Folder {relative!r} does not exist in the processed area."
            ) from None
        if stat.S_ISLNK(mode):
            raise PublishRefused(
                "folder",
                f"Folder {relative!r} goes through a symbolic link ({part}); publish the"
                " folder itself, inside the processed area.",
            )
        if not stat.S_ISDIR(mode):
            raise PublishRefused("folder", f"{relative!r} is not a folder; pick a folder.")
    return current


def list_files(folder: Path) -> tuple[PublishedFile, ...]:
    """The regular files below ``folder``; links are neither followed nor listed."""
    found: list[PublishedFile] = []
    pending = [folder]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    rel = Path(entry.path).relative_to(folder).as_posix()
                    found.append(PublishedFile(rel, info.st_size, info.st_mtime))
                if len(found) > MAX_FILES:
                    raise PublishRefused(
                        "folder",
                        f"The folder holds more than {MAX_FILES:,} files: pick a smaller one.",
                    )
    return tuple(sorted(found, key=lambda f: f.path))


def list_folders(area: Path, limit: int = 500) -> list[str]:
    """Folders of the processed area (relative, sorted) for the form: no links, no records."""
    found: list[str] = []
    pending = [area]
    while pending and len(found) < limit:
        with os.scandir(pending.pop()) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name.startswith(".") or entry.name == "provenance":
                    continue
                if entry.is_dir(follow_symlinks=False):
                    found.append(Path(entry.path).relative_to(area).as_posix())
                    pending.append(Path(entry.path))
    return sorted(found)


def prepare(
    catalogue: Catalogue,
    user: CatalogueUser,
    processed_root: str,
    *,
    proposal: str,
    folder: str,
    records: list[str],
    title: str,
    description: str,
) -> Publication:
    """Check everything the form sent and return what would be published; refuse otherwise.

    Membership is the catalogue's answer now (:meth:`Catalogue.member_proposals`), not the
    form's. Every input named by a chosen record must be readable by ``user`` now: a record
    is a file in a shared area, and any member could have written it.
    """
    if not processed_root:
        raise PublishRefused("proposal", "This portal has no processed areas to publish from.")
    if not proposal or proposal not in catalogue.member_proposals(user):
        raise PublishRefused(
            "proposal",
            f"Proposal {proposal!r}: you are not a member of it; pick one of your proposals.",
        )
    if not title.strip():
        raise PublishRefused("title", "Title: give the results a title.")
    area = processed_area(processed_root, proposal)
    host = resolve_folder(area, folder)
    if host == area:
        raise PublishRefused("folder", "Folder: pick a folder inside the processed area.")
    files = list_files(host)
    if not files:
        raise PublishRefused(
            "folder", f"Folder {folder!r} is empty: save your results in it first."
        )
    known = {r.path.name: r for r in read_records(area)}
    chosen = []
    for name in records:
        if name not in known:
            raise PublishRefused(
                "records", f"Provenance record {name!r} is not in this processed area."
            )
        chosen.append(known[name])
    if not chosen:
        raise PublishRefused(
            "records", "Provenance: pick the session (or sessions) that produced these results."
        )
    inputs: dict[str, Dataset] = {}
    for record in chosen:
        for pid, _title in record.datasets:
            try:
                inputs[pid] = catalogue.get(pid, user)
            except DatasetNotFound:
                raise PublishRefused(
                    "records",
                    f"Provenance record {record.path.name} names the input {pid}, which you"
                    " may not read: pick another record.",
                ) from None
    software = tuple(
        dict.fromkeys(
            f"{r.environment} {r.image}@{r.digest}".strip() for r in chosen if r.environment
        )
    )
    return Publication(
        proposal=proposal,
        folder=host,
        relative=host.relative_to(area).as_posix(),
        title=title.strip(),
        description=description.strip(),
        inputs=tuple(inputs.values()),
        software=software,
        records=tuple(chosen),
        files=files,
        user=user,
    )


def scicat_derived(publication: Publication, source_folder: str) -> dict[str, Any]:
    """The body of ``POST /api/v3/Datasets`` for a derived dataset, as SciCat's
    ``CreateDerivedDatasetObsoleteDto`` validates it (whitelisted fields only)."""
    user = publication.user
    email = user.email or ""
    return {
        "type": "derived",
        "datasetName": publication.title,
        "description": publication.description,
        "owner": user.username,
        "contactEmail": email,
        "investigator": email or user.username,
        "sourceFolder": source_folder,
        "creationTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "ownerGroup": publication.proposal,
        "accessGroups": sorted({g for d in publication.inputs for g in d.access_groups}),
        "inputDatasets": [d.pid for d in publication.inputs],
        "usedSoftware": list(publication.software),
        "jobParameters": {
            "provenance": [r.path.name for r in publication.records],
            "sessions": [
                {"server": r.server_name, "started": r.started, "stopped": r.stopped}
                for r in publication.records
            ],
        },
        "proposalId": publication.proposal,
        "size": publication.size,
        "numberOfFiles": len(publication.files),
        "isPublished": False,
    }


def publish_scicat(catalogue: Any, publication: Publication, source_folder: str) -> dict[str, Any]:
    """POST the derived dataset to SciCat with the token the backend reads with; SciCat's
    answer (the created dataset) or :class:`CatalogueError` with SciCat's own message."""
    if not publication.user.email:
        raise PublishRefused(
            "contact", "SciCat needs a contact e-mail: your identity provider gave none verified."
        )
    body = scicat_derived(publication, source_folder)
    url = catalogue.endpoint("/api/v3/Datasets")
    headers = {"Accept": "application/json", **catalogue.auth_headers(publication.user)}
    response = catalogue.send(url, headers, json_body=body, creates=f"'{publication.title}'")
    if response.status_code not in (200, 201):
        raise PublishRefused(
            "catalogue",
            f"SciCat refused the derived dataset (HTTP {response.status_code}):"
            f" {scicat_reason(response)}. Nothing was registered.",
        )
    return response.json()


def scicat_reason(response: Any) -> str:
    """SciCat's own words for a refusal: its ``message`` (NestJS puts the DTO's problems
    there as a list), else the start of the body."""
    try:
        message = response.json().get("message")
    except (ValueError, AttributeError):
        message = None
    if isinstance(message, list):
        message = "; ".join(str(m) for m in message)
    return str(message or response.text[:300] or response.reason)


def refuse_read_only(backend: str) -> None:
    """The PaNOSC Search API serves records and takes none: say so, before any work."""
    raise PublishRefused(
        "catalogue",
        f"This portal's catalogue ({backend}) is read-only: results cannot be published to it."
        " Ask the facility to publish them through its own catalogue.",
    )


def copy_results(source: Path, target: Path) -> tuple[PublishedFile, ...]:
    """Copy the regular files below ``source`` into the new folder ``target``; what was copied.

    ``source`` is in a processed area every member of the proposal may write while this runs,
    and the hub may read more than they may. So nothing is reached by a path that a link
    could redirect: the walk starts from a descriptor of ``source`` opened with no symlink
    anywhere on its way (:func:`spawner.mounts.open_folder`), goes on with :func:`os.fwalk`
    (each folder opened relative to its parent and checked to be the one listed, so a folder
    swapped for a link is not entered), and each file is opened with ``O_NOFOLLOW`` and
    copied only if it is a regular file once open, up to the size it had then. Links are
    neither followed nor copied, as :func:`list_files` does not list them.
    """
    try:
        top = open_folder(source)
    except OSError:
        raise PublishRefused(
            "folder",
            f"Folder {source.name!r} now goes through a symbolic link or is gone; publish the"
            " folder itself, inside the processed area.",
        ) from None
    copied: list[PublishedFile] = []
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        for folder, _dirs, names, dir_fd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
            here = PurePosixPath(folder)
            (target / here).mkdir(exist_ok=True)
            for name in sorted(names):
                try:
                    fd = os.open(name, flags, dir_fd=dir_fd)
                except OSError:  # a link (ELOOP), or gone since the listing
                    continue
                with os.fdopen(fd, "rb") as src:
                    info = os.fstat(src.fileno())
                    if not stat.S_ISREG(info.st_mode):
                        continue
                    if len(copied) >= MAX_FILES:
                        raise PublishRefused(
                            "folder",
                            f"The folder holds more than {MAX_FILES:,} files: pick a smaller one.",
                        )
                    out = os.open(
                        target / here / name,
                        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                        0o444,
                    )
                    with os.fdopen(out, "wb") as dst:
                        size = 0
                        while size < info.st_size:
                            chunk = src.read(min(1 << 20, info.st_size - size))
                            if not chunk:
                                break
                            dst.write(chunk)
                            size += len(chunk)
                    rel = (here / name).as_posix()
                    copied.append(PublishedFile(rel, size, info.st_mtime))
    finally:
        os.close(top)
    return tuple(sorted(copied, key=lambda f: f.path))


def publish_local(catalogue: Any, publication: Publication) -> str:
    """Register ``publication`` in the local catalogue; returns the new dataset's pid.

    The results are copied (:func:`copy_results`) into a hidden folder of
    ``<data_root>/<proposal>/derived/``, which the indexer skips, the portal's
    :data:`~portal.catalogue.local.DERIVED_FILE` is written beside them, and the folder is
    renamed into place and indexed: a failure anywhere removes the copy, so nothing is
    half-registered. The dataset belongs to the proposal, so its members read it; it is
    embargoed like its inputs (:func:`portal.catalogue.local.derived_public_date`).
    """
    from portal.catalogue.local import DERIVED_FILE

    if any(f.path == DERIVED_FILE for f in publication.files):
        raise PublishRefused(
            "folder",
            f"Folder {publication.relative!r} holds a file named {DERIVED_FILE} at its top,"
            " the name of the portal's own description of published results: rename it.",
        )
    stem = re.sub(r"[^a-z0-9]+", "-", publication.title.lower()).strip("-")[:40] or "results"
    digest = hashlib.sha256(
        f"{publication.proposal}\0{publication.folder}\0{datetime.now(UTC).isoformat()}".encode()
    ).hexdigest()[:8]
    name = f"{stem}-{digest}"
    derived = Path(catalogue.data_root) / proposal_folder(publication.proposal) / "derived"
    derived.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(derived).free
    if publication.size >= free:
        raise PublishRefused(
            "folder",
            f"The results take {publication.size:,} bytes and the catalogue's storage has"
            f" {free:,} free: ask the facility for room, or publish a smaller folder.",
        )
    partial = derived / f".{name}.partial"
    partial.mkdir()
    try:
        files = copy_results(publication.folder, partial)
        document = {
            "title": publication.title,
            "description": publication.description,
            "inputs": [d.pid for d in publication.inputs],
            "software": list(publication.software),
            "published_by": publication.user.username,
            "published": datetime.now(UTC).isoformat(),
            "copied_from": f"processed/{publication.relative}",
            "provenance": [r.path.name for r in publication.records],
            "files": [{"path": f.path, "size": f.size} for f in files],
        }
        (partial / DERIVED_FILE).write_text(json.dumps(document, indent=2) + "\n", "utf-8")
        partial.rename(derived / name)
    except OSError as e:
        raise PublishRefused(
            "folder", f"Copying the results failed ({e.strerror or e}); nothing was published."
        ) from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    catalogue.index()
    return f"{publication.proposal}/derived/{name}"


# -- the page: /hub/publish -------------------------------------------------------------


def _backend(catalogue: Catalogue) -> str:
    """``local``, ``scicat`` or the read-only backend's name."""
    from portal.catalogue.local import LocalCatalogue
    from portal.catalogue.scicat import SciCatCatalogue

    if isinstance(catalogue, LocalCatalogue):
        return "local"
    if isinstance(catalogue, SciCatCatalogue):
        return "scicat"
    return type(catalogue).__name__


class PublishHandler(PortalPage):
    """``/hub/publish``: register a folder of results as a derived dataset.

    The form lists, server-side, the user's proposals (the catalogue's member list), the
    folders of the chosen proposal's processed area and its provenance records; the POST
    checks everything again (:func:`prepare`), since none of it is trusted from the browser.
    """

    @property
    def processed_root(self) -> str:
        return str(self.settings["config"].PortalSpawner.get("processed_root", "") or "")

    async def form(
        self,
        status: int = 200,
        problem: str = "",
        field: str = "",
        values: dict[str, Any] | None = None,
        published: str = "",
    ) -> None:
        values = values or {}
        user = await self.catalogue_user()
        catalogue = self.catalogue
        backend = _backend(catalogue)
        proposals: list[str] = []
        folders: list[str] = []
        records: list[Record] = []
        try:
            proposals = sorted(await asyncio.to_thread(catalogue.member_proposals, user))
        except CatalogueError as e:
            problem = problem or f"The catalogue cannot answer right now: {e}"
        proposal = values.get("proposal") or self.get_argument("proposal", "")
        if proposal not in proposals:  # the first with a processed area, where results are
            areas = [
                p
                for p in proposals
                if self.processed_root and processed_area(self.processed_root, p).is_dir()
            ]
            proposal = (areas or proposals or [""])[0]
        if proposal and self.processed_root:
            area = processed_area(self.processed_root, proposal)
            try:
                if area.is_dir() and not area.is_symlink():
                    folders = await asyncio.to_thread(list_folders, area)
                    records = await asyncio.to_thread(read_records, area)
            except OSError:
                pass
        if backend not in ("local", "scicat"):
            problem = problem or (
                f"This portal's catalogue ({backend}) is read-only: results cannot be"
                " published to it."
            )
        self.set_status(status)
        html = await self.render_template(
            "publish.html",
            proposals=proposals,
            proposal=proposal,
            folders=folders,
            records=list(reversed(records)),
            problem=problem,
            field=field,
            values=values,
            can_publish=backend in ("local", "scicat") and bool(self.processed_root),
            backend=backend,
            published=published,
        )
        self.finish(html)

    @web.authenticated
    async def get(self) -> None:
        await self.form()

    @web.authenticated
    async def post(self) -> None:
        values = {
            "proposal": self.get_argument("proposal", ""),
            "folder": self.get_argument("folder", ""),
            "records": self.get_arguments("records"),
            "title": self.get_argument("title", ""),
            "description": self.get_argument("description", ""),
        }
        user = await self.catalogue_user()
        catalogue = self.catalogue
        backend = _backend(catalogue)
        try:
            if backend not in ("local", "scicat"):
                refuse_read_only(backend)
            publication = await asyncio.to_thread(
                prepare, catalogue, user, self.processed_root, **values
            )
            if backend == "local":
                pid = await asyncio.to_thread(publish_local, catalogue, publication)
            else:
                created = await asyncio.to_thread(
                    publish_scicat, catalogue, publication, str(publication.folder)
                )
        except PublishRefused as e:
            return await self.form(400, str(e), e.field, values)
        except CatalogueError as e:
            return await self.form(503, f"The catalogue cannot answer right now: {e}", "", values)
        if backend == "local":  # indexed already: its page lists it with its inputs
            return self.redirect(f"{self.hub.base_url}datasets/{quote(pid, safe='/')}")
        # SciCat's pid, said on the form: its page follows once SciCat lets the reader see it
        await self.form(201, published=str(created.get("pid") or ""))
