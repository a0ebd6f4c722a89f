"""A bounded summary of a NeXus file's tree, for the dataset page: made once, at index time.

A dataset page shows what is in the file before anyone starts a server: its groups with
their NeXus class, its datasets with shape and type. The file is untrusted, so the walk
follows hard links only (a soft or external link is listed by name, never followed), stops
after :data:`MAX_ENTRIES` entries and :data:`MAX_DEPTH` levels (a group hard-linked into
itself ends there), and every name is plain, bounded text. It reads no data, only the
structure and the ``NX_class`` attribute; whatever an object does wrong, it is listed
with what could be read of it, and the walk goes on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import h5py

from portal.catalogue.model import TreeEntry
from portal.catalogue.nexus import clean_text

MAX_ENTRIES = 200
MAX_DEPTH = 8
MAX_NAME = 64  # characters of one name in a path
MAX_PATH = 256
MAX_RANK = 32  # HDF5's own limit on dimensions
KINDS = ("group", "dataset", "link")


def checked(value: Any) -> TreeEntry:
    """An entry from the JSON of a worker that may have been taken over: every part
    checked and bounded again; ``ValueError`` (or ``TypeError``) for anything malformed."""
    path, kind, nx_class, shape, dtype = value
    if kind not in KINDS or not isinstance(path, str):
        raise ValueError(f"not a tree entry: {value!r:.100}")
    if shape is not None:
        if not isinstance(shape, list) or len(shape) > MAX_RANK:
            raise ValueError(f"not a shape: {shape!r:.100}")
        shape = tuple(n for n in shape if isinstance(n, int) and n >= 0)
    return TreeEntry(
        "/" + "/".join(clean_text(p)[:MAX_NAME] for p in path.split("/") if p)[:MAX_PATH],
        kind,
        clean_text(nx_class)[:MAX_NAME],
        shape,
        clean_text(dtype)[:MAX_NAME],
    )


def _dtype(dataset: h5py.Dataset) -> str:
    """The type as a person reads it: ``int32``, ``float64``, ``string``, ``compound``."""
    kind = dataset.dtype.kind
    if kind in "SUO" or h5py.check_string_dtype(dataset.dtype) is not None:
        return "string"
    if kind == "V":
        return "compound" if dataset.dtype.names else "opaque"
    return str(dataset.dtype)


def _entry(path: str, item: h5py.Group | h5py.Dataset) -> TreeEntry:
    nx_class = clean_text(item.attrs.get("NX_class", ""))[:MAX_NAME]
    if isinstance(item, h5py.Group):
        return TreeEntry(path, "group", nx_class)
    return TreeEntry(path, "dataset", nx_class, item.shape, _dtype(item))


def summarise(f: h5py.File) -> list[TreeEntry]:
    """The file's objects, depth first in name order (each group before its members), at
    most :data:`MAX_ENTRIES`. A group reached again through another hard link is listed
    but not walked twice."""
    found: list[TreeEntry] = []
    seen: set[Any] = {f.id}
    # Members are named one at a time: a group of a million members costs MAX_ENTRIES.
    stack: list[tuple[Iterator[str], h5py.Group, str]] = [(iter(f), f, "")]
    while stack and len(found) < MAX_ENTRIES:
        names, group, prefix = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        path = f"{prefix}/{clean_text(name)[:MAX_NAME]}"[:MAX_PATH]
        try:
            if not isinstance(group.get(name, getlink=True), h5py.HardLink):
                found.append(TreeEntry(path, "link"))
                continue
            item = group[name]
            found.append(_entry(path, item))
        except Exception:  # an object HDF5 cannot open or describe: listed as best we can
            found.append(TreeEntry(path, "link"))
            continue
        if isinstance(item, h5py.Group) and len(stack) < MAX_DEPTH and item.id not in seen:
            seen.add(item.id)
            stack.append((iter(item), item, path))
    return found


def tree_of(f: h5py.File) -> list[TreeEntry]:
    """:func:`summarise`, or as much of it as the file allows: never raises."""
    try:
        return summarise(f)
    except Exception:  # the file's fault; the dataset keeps its metadata
        return []


__all__ = ["MAX_ENTRIES", "checked", "summarise", "tree_of"]
