"""The mount plan: from datasets the catalogue approved to mounts, as pure logic.

Every backend (local symlinks, Docker binds, Kubernetes volumes) consumes the same
:class:`MountPlan`, so path safety is decided once, here. A storage location is only ever
mapped through a configured :class:`StorageRoot`, after ``..`` and symlinks are resolved on
the host; anything that lands outside its root is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from portal.catalogue.model import Dataset

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


def resolve_location(dataset: Dataset, roots: Sequence[StorageRoot]) -> Path:
    """The host path of a dataset, resolved, and guaranteed inside the root it maps through."""
    location = PurePosixPath(dataset.location)
    if not location.is_absolute() or ".." in location.parts:
        raise MountError(
            f"dataset {dataset.pid}: storage location {dataset.location!r} must be an absolute"
            " path without '..'"
        )
    for root in sorted(roots, key=lambda r: len(PurePosixPath(r.prefix).parts), reverse=True):
        prefix = PurePosixPath(root.prefix)
        if location != prefix and prefix not in location.parents:
            continue
        base = Path(root.host_path).resolve()
        source = (base / location.relative_to(prefix)).resolve()
        if source == base or not source.is_relative_to(base):
            raise MountError(
                f"dataset {dataset.pid}: storage location {dataset.location!r} resolves to"
                f" {source}, outside the storage root {root.host_path}; refusing to mount it"
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
) -> MountPlan:
    """Mounts for ``datasets`` under ``~/datasets/<proposal>/<dataset>/``, read-only.

    Datasets are taken in pid order, so when two sanitise to the same folder name the
    later one gets ``-2``, ``-3``... the same way every time. With ``processed_root``, each
    proposal also gets a writable ``~/datasets/<proposal>/processed/`` backed by
    ``<processed_root>/<proposal>``.
    """
    mounts: list[Mount] = []
    manifest: list[dict] = []
    taken: set[PurePosixPath] = set()
    proposals: dict[str, PurePosixPath] = {}
    for dataset in sorted(datasets, key=lambda d: d.pid):
        source = resolve_location(dataset, roots)
        folder = DATASETS_DIR / safe_name(dataset.proposal)
        proposals.setdefault(dataset.proposal, folder)
        base = safe_name(PurePosixPath(dataset.location).name)
        if base == "processed":
            base = "processed_"
        target, n = folder / base, 1
        while target in taken:
            n += 1
            target = folder / f"{base}-{n}"
        taken.add(target)
        mounts.append(Mount(source, target, read_only=True, pid=dataset.pid))
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
            source = Path(processed_root).resolve() / safe_name(proposal)
            mounts.append(Mount(source, folder / "processed", read_only=False))
    return MountPlan(tuple(mounts), tuple(manifest))
