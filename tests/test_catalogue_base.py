"""The catalogue interface itself: a backend that leaves out a method fails when it is made,
with the names of what it lacks, not later in front of a user."""

from __future__ import annotations

import pytest

from portal.catalogue.base import Catalogue
from portal.catalogue.http import HttpCatalogue
from portal.catalogue.local import LocalCatalogue


def test_a_backend_missing_methods_cannot_be_made() -> None:
    class Empty(Catalogue):
        pass

    with pytest.raises(TypeError, match="does not implement datasets_for, get, search"):
        Empty()


def test_an_http_backend_must_map_records() -> None:
    class NoMapping(HttpCatalogue):
        def datasets_for(self, user):
            return []

        def get(self, pid, user):
            raise NotImplementedError

        def search(self, user, **filters):
            return []

    with pytest.raises(TypeError, match="does not implement to_dataset"):
        NoMapping(url="http://127.0.0.1:9")


def test_a_complete_backend_is_made(tmp_path) -> None:
    LocalCatalogue(data_root=str(tmp_path), index_path=str(tmp_path / "index.sqlite"))
