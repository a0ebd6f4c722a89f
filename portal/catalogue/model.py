"""The values that flow from the catalogue to the spawner: plain, frozen dataclasses.

They carry no behaviour tied to a backend, so every step of a session (catalogue, mount
plan, spawner) can be tested alone with hand-made values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any


@dataclass(frozen=True)
class Dataset:
    """One dataset as a catalogue reports it.

    ``location`` is the storage path exactly as the catalogue gives it (for example
    ``/data/visitor/ma1234/id21/xrf_map_0001``); the mount plan, not the catalogue,
    decides what it means on a host, so a catalogue can never point a mount anywhere.
    """

    pid: str
    title: str
    proposal: str
    instrument: str
    location: str
    techniques: tuple[str, ...] = ()
    start_time: datetime | None = None
    end_time: datetime | None = None
    public_date: date | None = None
    size: int = 0
    file_count: int = 0
    access_groups: frozenset[str] = frozenset()
    shared_with: frozenset[str] = frozenset()  # e-mail addresses (SciCat's sharedWith)
    doi: str = ""  # where the catalogue knows one (the PaNOSC Search API does)
    #: A derived dataset (published results): the pids it was made from and the software
    #: that made it ("environment image@digest"); empty for raw data.
    inputs: tuple[str, ...] = ()
    software: tuple[str, ...] = ()
    description: str = ""

    def is_public(self, today: date) -> bool:
        """Open data: its embargo (public date) has passed."""
        return self.public_date is not None and self.public_date <= today

    @property
    def technique_names(self) -> tuple[str, ...]:
        """Human names of :attr:`techniques`, for pages and ``datasets.json``."""
        from portal.catalogue import techniques

        names = []
        for pid in self.techniques:
            try:
                names.append(techniques.get(pid).name)
            except techniques.UnknownTechnique:
                names.append(pid)
        return tuple(names)


@dataclass(frozen=True)
class Thumbnail:
    """A small picture of a dataset (its default plot), as the catalogue keeps it."""

    data: bytes
    content_type: str = "image/png"


@dataclass(frozen=True)
class TreeEntry:
    """One object of a dataset's NeXus file, for its page: ``/entry/data/data``, a dataset
    of shape (1024, 1024) and type int32 (made by :mod:`portal.catalogue.tree`)."""

    path: str
    kind: str  # "group", "dataset", or "link" (soft or external: never followed)
    nx_class: str = ""
    shape: tuple[int, ...] | None = None
    dtype: str = ""

    @property
    def depth(self) -> int:
        return self.path.count("/") - 1

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def as_list(self) -> list[Any]:
        """The form it travels in from the worker and is kept in the index (JSON)."""
        return [self.path, self.kind, self.nx_class, self.shape, self.dtype]


@dataclass(frozen=True)
class Proposal:
    """An experiment proposal: the unit of data ownership at a facility."""

    id: str
    title: str = ""
    members: frozenset[str] = frozenset()
    public_date: date | None = None


@dataclass(frozen=True)
class CatalogueUser:
    """Who is asking, as the hub knows them from the identity provider.

    Built on the hub from the user's auth_state; the tokens are only ever sent to a
    catalogue backend that uses them, never to a single-user server. ``email`` is set only
    when the identity provider verified it.
    """

    username: str
    sub: str = ""
    groups: frozenset[str] = frozenset()
    proposals: frozenset[str] = frozenset()
    access_token: str | None = field(default=None, repr=False)
    email: str = ""
    id_token: str | None = field(default=None, repr=False)
