"""The catalogue interface: the single authority on who may read which dataset.

Backends (local NeXus index, SciCat, PaNOSC Search API) subclass :class:`Catalogue` and are
found through the ``panosc_portal.catalogues`` entry-point group, so a site can add its own
without touching the portal. Nothing here imports JupyterHub.
"""

from __future__ import annotations

import sys
from abc import abstractmethod
from dataclasses import dataclass
from datetime import UTC, date, datetime
from importlib.metadata import entry_points
from typing import Any

from traitlets import Unicode
from traitlets.config import LoggingConfigurable, SingletonConfigurable

from portal.catalogue.model import CatalogueUser, Dataset, Thumbnail, TreeEntry

ENTRY_POINT_GROUP = "panosc_portal.catalogues"


class CatalogueError(Exception):
    """Base of the errors a catalogue raises on purpose, with a message for a person."""


class DatasetNotFound(CatalogueError):
    """The pid does not exist *or* the user may not read it.

    The two cases are deliberately indistinguishable, so an embargoed dataset is never
    revealed to someone who guesses its pid.
    """

    def __init__(self, pid: str) -> None:
        super().__init__(f"dataset {pid!r} was not found, or you do not have access to it")
        self.pid = pid


class CatalogueUnavailable(CatalogueError):
    """The backend could not be reached; the message names the URL (or path) and the cause."""


def may_read(dataset: Dataset, user: CatalogueUser, members: frozenset[str], today: date) -> bool:
    """The one access rule every backend applies.

    A user may read a dataset when they are a member of its proposal (from their identity
    claims or from the catalogue's own member list), when it is open data, when one of
    their groups is granted access (SciCat's ``ownerGroup``/``accessGroups``), or when it is
    shared with their verified e-mail address (SciCat's ``sharedWith``).
    """
    return (
        (bool(dataset.proposal) and dataset.proposal in user.proposals)
        or user.username in members
        or dataset.is_public(today)
        or bool(dataset.access_groups & user.groups)
        or (bool(user.email) and user.email in dataset.shared_with)
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def newest_first(datasets: list[Dataset]) -> list[Dataset]:
    """The order every backend returns: newest start time first, undated datasets last."""
    return sorted(
        datasets, key=lambda d: (d.start_time is None, -(d.start_time or _EPOCH).timestamp())
    )


@dataclass(frozen=True)
class DatasetPage:
    """One page of a search and the number of matching datasets in all: what a paged list
    (the spawn form, ``/hub/datasets``) needs to show "51-100 of 100,000" and its links.

    ``datasets`` holds at most ``limit`` datasets, the ones after the first ``offset`` of
    all matches in :func:`newest_first` order; ``total`` counts only datasets the user may
    read, as the page does.
    """

    datasets: tuple[Dataset, ...]
    total: int
    offset: int
    limit: int


class Catalogue(LoggingConfigurable):
    """What the hub and the spawner ask about datasets. Every answer is already access-checked."""

    def __init__(self, **kwargs: Any) -> None:
        # traitlets' metaclass is not ABCMeta, so @abstractmethod alone stops nothing: a
        # backend missing a method would fail only when a user first needs it.
        cls = type(self)
        missing = sorted(
            name
            for name in dir(cls)
            if getattr(getattr(cls, name, None), "__isabstractmethod__", False)
        )
        if missing:
            raise TypeError(
                f"catalogue backend {cls.__module__}.{cls.__name__} cannot be used: it does not"
                f" implement {', '.join(missing)} (see portal.catalogue.base.Catalogue)"
            )
        super().__init__(**kwargs)

    @abstractmethod
    def datasets_for(self, user: CatalogueUser) -> list[Dataset]:
        """Every dataset this user may read, newest first."""

    @abstractmethod
    def get(self, pid: str, user: CatalogueUser) -> Dataset:
        """The dataset ``pid`` if this user may read it, else :class:`DatasetNotFound`."""

    @abstractmethod
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
        """Datasets this user may read that match every given filter.

        ``technique`` is a PaNET id or name and also matches the techniques below it.
        """

    def search_page(
        self,
        user: CatalogueUser,
        *,
        text: str = "",
        technique: str = "",
        proposal: str = "",
        instrument: str = "",
        limit: int = 50,
        offset: int = 0,
    ) -> DatasetPage:
        """:meth:`search`'s page with the total count of matches, for paging.

        Raises as :meth:`search` does (:class:`~portal.catalogue.techniques.UnknownTechnique`
        for an unknown technique, :class:`CatalogueError` when the backend cannot answer), and
        ``ValueError`` for a negative ``limit`` or ``offset``. This default asks
        :meth:`search` for every match and counts them here, which is what the HTTP
        backends do anyway (they fetch all matches, up to their ``max_records``, and slice);
        a backend that can count on its side (the local index) overrides it.
        """
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        found = self.search(
            user,
            text=text,
            technique=technique,
            proposal=proposal,
            instrument=instrument,
            limit=sys.maxsize,
        )
        return DatasetPage(tuple(found[offset : offset + limit]), len(found), offset, limit)

    def thumbnail(self, dataset: Dataset, user: CatalogueUser) -> Thumbnail | None:
        """The picture of ``dataset`` the catalogue keeps, if any; ``None`` by default.

        Only ever asked about a dataset that :meth:`get` (or a search) returned to ``user``:
        the access check is that call's, not this one's.
        """
        return None

    def nexus_tree(self, dataset: Dataset, user: CatalogueUser) -> tuple[TreeEntry, ...]:
        """A bounded summary of ``dataset``'s NeXus file, if the catalogue keeps one; asked
        under the same condition as :meth:`thumbnail`. None by default."""
        return ()

    def member_proposals(self, user: CatalogueUser) -> frozenset[str]:
        """The proposals ``user`` is a member of: what entitles them to its processed area.

        By default the identity claim alone; a backend that keeps member lists adds its own.
        Reading a proposal's open data, or a group grant, does not make a member.
        """
        return user.proposals


def catalogue_class(name: str) -> type[Catalogue]:
    """The backend class registered under ``name`` in the catalogue entry-point group."""
    found = entry_points(group=ENTRY_POINT_GROUP)
    for ep in found:
        if ep.name == name:
            return ep.load()
    known = ", ".join(sorted(ep.name for ep in found)) or "none installed"
    raise CatalogueError(f"unknown catalogue backend {name!r}; installed backends: {known}")


class PortalCatalogue(SingletonConfigurable):
    """The catalogue the hub uses: one per hub process, shared by spawners and hub pages.

    ``c.PortalCatalogue.backend = "scicat"`` picks the backend; the backend's own traits
    (``c.SciCatCatalogue.url`` ...) configure it.
    """

    backend = Unicode(
        "local",
        config=True,
        help=f"Catalogue backend: an entry point name in the {ENTRY_POINT_GROUP} group.",
    )
    _catalogue: Catalogue | None = None

    @property
    def catalogue(self) -> Catalogue:
        if self._catalogue is None:
            self._catalogue = catalogue_class(self.backend)(parent=self)
        return self._catalogue
