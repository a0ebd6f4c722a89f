"""The mount plan: from datasets the catalogue approved to mounts, as pure logic.

Every backend (local symlinks, Docker binds, Kubernetes volumes) consumes the same
:class:`MountPlan`, so path safety is decided once, here. A storage location is only ever
mapped through a configured :class:`StorageRoot`, and below the root no component of its
path may be a symlink: a member who can write in one proposal's tree must not be able to
point a folder at another proposal's data. Each planned source carries the device and inode
it had when checked, so a backend can compare them with what it actually mounted
(:func:`identity_of`), which closes the window of a rename between the check and the bind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from portal.catalogue.model import Dataset
from spawner.nofollow import open_folder

DATASETS_DIR = PurePosixPath("datasets")
MANIFEST_NAME = "datasets.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class MountError(Exception):
    """A dataset cannot be mounted safely; the message names the dataset and the reason."""


@dataclass(frozen=True)
class StorageRoot:
    """Where catalogue locations under ``prefix`` live on the host: ``host_path``.

    For example the catalogue says ``/data/visitor/ma1234/...`` and the host mounts GPFS
    at ``/srv/gpfs/visitor``: ``StorageRoot("/data/visitor", "/srv/gpfs/visitor")``.
    """

    prefix: str
    host_path: str


@dataclass(frozen=True)
class Mount:
    """One mount: ``source`` on the host, ``target`` relative to the user's home."""

    source: Path
    target: PurePosixPath
    read_only: bool
    pid: str | None = None
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) of source when it was checked


@dataclass(frozen=True)
class MountPlan:
    """The mounts of one server and the manifest written to ``~/datasets/datasets.json``."""

    mounts: tuple[Mount, ...]
    manifest: tuple[dict, ...]

    def manifest_json(self) -> str:
        return json.dumps({"datasets": list(self.manifest)}, indent=2, ensure_ascii=False)

    @property
    def dataset_mounts(self) -> tuple[Mount, ...]:
        return tuple(m for m in self.mounts if m.pid is not None)


def safe_name(name: str) -> str:
    """A path component made only of ``[A-Za-z0-9._-]``, never empty, ``.`` or ``..``."""
    cleaned = _UNSAFE.sub("_", name).strip("._") or "_"
    return cleaned[:100]


def identity_of(path: Path) -> tuple[int, int]:
    """``(st_dev, st_ino)`` of a folder reached without following any symlink below ``/``."""
    fd = open_folder(path)
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(str(path))
    return info.st_dev, info.st_ino


def proposal_folder(proposal: str) -> str:
    """The folder of a proposal under ``~/datasets`` and the processed root: its id when
    that is a safe name, else the safe name plus a digest, so two ids never share one."""
    name = safe_name(proposal)
    if name == proposal:
        return name
    return f"{name[:90]}-{hashlib.sha256(proposal.encode()).hexdigest()[:8]}"


def resolve_location(dataset: Dataset, roots: Sequence[StorageRoot]) -> Path:
    """The host path of a dataset, inside the root it maps through, with no symlink below it.

    The root's own host path may be a symlink (``/data`` -> ``/gpfs``, a site's choice); no
    component between it and the dataset may be (a data owner's choice, not trusted).
    """
    if not dataset.location:
        raise MountError(
            f"dataset {dataset.pid}: the catalogue gives it no storage location the portal"
            " can trust, so it cannot be mounted"
        )
    location = PurePosixPath(dataset.location)
    components = dataset.location.rstrip("/").split("/")[1:]
    if not location.is_absolute() or any(c in ("", ".", "..") for c in components):
        raise MountError(
            f"dataset {dataset.pid}: storage location {dataset.location!r} must be an absolute"
            " path without '.', '..' or empty components"
        )
    for root in sorted(roots, key=lambda r: len(PurePosixPath(r.prefix).parts), reverse=True):
        prefix = PurePosixPath(root.prefix)
        if location != prefix and prefix not in location.parents:
            continue
        base = Path(root.host_path).resolve()
        given = base / location.relative_to(prefix)
        source = given.resolve()
        if source == base or not source.is_relative_to(base):
            raise MountError(
                f"dataset {dataset.pid}: storage location {dataset.location!r} resolves to"
                f" {source}, outside the storage root {root.host_path}; refusing to mount it"
            )
        if source != given:
            raise MountError(
                f"dataset {dataset.pid}: storage location {dataset.location!r} goes through a"
                f" symlink on this host ({given} is really {source}); refusing to mount it"
            )
        if not source.is_dir():
            raise MountError(
                f"dataset {dataset.pid}: storage location {dataset.location!r} is not a"
                f" folder on this host ({source})"
            )
        return source
    prefixes = ", ".join(r.prefix for r in roots) or "none configured"
    raise MountError(
        f"dataset {dataset.pid}: storage location {dataset.location!r} is under no configured"
        f" storage root (storage roots: {prefixes})"
    )


def verify_mount(mount: Mount, mounted: tuple[int, int] | None = None) -> None:
    """Refuse a mount whose source is no longer the folder that was checked.

    ``mounted`` is the identity a backend read from what it really mounted (inside the
    container); without it, the source path is identified again now, symlink-free.
    """
    if mount.identity is None:
        return
    what = f"dataset {mount.pid or mount.target}: {mount.source}"
    if mounted is None:
        try:
            mounted = identity_of(mount.source)
        except OSError as e:
            raise MountError(
                f"{what} can no longer be reached without a symlink ({e.strerror or e});"
                " refusing it"
            ) from None
    if mounted != mount.identity:
        raise MountError(f"{what} was replaced between the access check and the mount; refusing it")


def open_verified(mount: Mount) -> int:
    """A descriptor of ``mount``'s source, refused (:class:`MountError`) unless it is the
    folder the access check planned: nothing can be swapped in between."""
    what = f"dataset {mount.pid or mount.target}: {mount.source}"
    try:
        fd = open_folder(mount.source)
    except OSError as e:
        raise MountError(
            f"{what} can no longer be reached without a symlink ({e.strerror or e}); refusing it"
        ) from None
    info = os.fstat(fd)
    if mount.identity is not None and (info.st_dev, info.st_ino) != mount.identity:
        os.close(fd)
        raise MountError(f"{what} was replaced between the access check and the mount; refusing it")
    return fd


def mountable(
    datasets: Iterable[Dataset], roots: Sequence[StorageRoot]
) -> tuple[list[Dataset], list[MountError]]:
    """Split datasets into those that can be mounted safely and the reasons for the others."""
    ok, refused = [], []
    for dataset in datasets:
        try:
            resolve_location(dataset, roots)
            ok.append(dataset)
        except MountError as e:
            refused.append(e)
    return ok, refused


def plan_mounts(
    datasets: Iterable[Dataset],
    roots: Sequence[StorageRoot],
    processed_root: str | None = None,
    member_of: frozenset[str] = frozenset(),
) -> MountPlan:
    """Mounts for ``datasets`` under ``~/datasets/<proposal>/<dataset>/``, read-only.

    Datasets are taken in pid order, so when two sanitise to the same folder name the
    later one gets ``-2``, ``-3``... the same way every time. With ``processed_root``, each
    proposal in ``member_of`` (the proposals the user is a *member* of, as the catalogue
    says) also gets a writable ``~/datasets/<proposal>/processed/`` backed by
    ``<processed_root>/<proposal>``. Reading a proposal's open data or holding a group grant
    gives no processed area: it holds results derived from embargoed data, and code that
    the proposal's members run. A dataset without a proposal gets none.
    """
    mounts: list[Mount] = []
    manifest: list[dict] = []
    taken: set[PurePosixPath] = set()
    proposals: dict[str, PurePosixPath] = {}
    for dataset in sorted(datasets, key=lambda d: d.pid):
        source = resolve_location(dataset, roots)
        folder = DATASETS_DIR / proposal_folder(dataset.proposal)
        proposals.setdefault(dataset.proposal, folder)
        base = safe_name(PurePosixPath(dataset.location).name)
        if base == "processed":
            base = "processed_"
        target, n = folder / base, 1
        while target in taken:
            n += 1
            target = folder / f"{base}-{n}"
        taken.add(target)
        try:
            identity = identity_of(source)
        except OSError as e:
            raise MountError(
                f"dataset {dataset.pid}: {source} changed while it was checked ({e})"
            ) from None
        mounts.append(Mount(source, target, read_only=True, pid=dataset.pid, identity=identity))
        manifest.append(
            {
                "pid": dataset.pid,
                "title": dataset.title,
                "proposal": dataset.proposal,
                "instrument": dataset.instrument,
                "techniques": [
                    {"pid": p, "name": n}
                    for p, n in zip(dataset.techniques, dataset.technique_names, strict=True)
                ],
                "path": str(target),
            }
        )
    if processed_root:
        for proposal, folder in sorted(proposals.items()):
            if not proposal or proposal not in member_of:
                continue
            source = Path(processed_root).resolve() / proposal_folder(proposal)
            mounts.append(Mount(source, folder / "processed", read_only=False))
    return MountPlan(tuple(mounts), tuple(manifest))
