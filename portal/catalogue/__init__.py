"""Datasets, proposals and who may read them. Imports nothing from JupyterHub."""

from portal.catalogue.base import (
    Catalogue,
    CatalogueError,
    CatalogueUnavailable,
    DatasetNotFound,
    PortalCatalogue,
    catalogue_class,
    may_read,
)
from portal.catalogue.model import CatalogueUser, Dataset, Proposal

__all__ = [
    "Catalogue",
    "CatalogueError",
    "CatalogueUnavailable",
    "CatalogueUser",
    "Dataset",
    "DatasetNotFound",
    "PortalCatalogue",
    "Proposal",
    "catalogue_class",
    "may_read",
]
