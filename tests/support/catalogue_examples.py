"""The example facility the catalogue tests share: alice, bob, and who may read which dataset.

One dataset per case of the access matrix (:data:`MATRIX`), plus more of alice's scans so that
listings span several pages; :func:`scicat_server` serves them the way SciCat would.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from portal.catalogue import CatalogueUser
from tests.support.catalogue_servers import Example
from tests.support.fake_scicat import SciCatServer, SciCatUser, scicat_record

TODAY = datetime.now(UTC).date()
PAST, FUTURE = date(2021, 1, 1), TODAY + timedelta(days=365)
SAXS, POWDER, XRF, TOMO = "PaNET01188", "PaNET01101", "PaNET01177", "PaNET01207"

ALICE = CatalogueUser(
    "alice",
    "sub-alice",
    frozenset({"tomo-team"}),
    frozenset({"MA1234"}),
    access_token="umbrella-access-alice",
    email="alice@example-facility.eu",
    id_token="id-token-alice",
)
BOB = CatalogueUser(
    "bob",
    "sub-bob",
    frozenset(),
    frozenset({"IH2002", "ES1001"}),
    access_token="umbrella-access-bob",
    email="bob@example-facility.eu",
    id_token="id-token-bob",
)


def at(day: int) -> datetime:
    return datetime(2024, 3, day, 9, 30, tzinfo=UTC)


# Who may read what, one dataset per case of the access matrix.
MATRIX = {
    "member": Example("xrf_map_0001", "MA1234", "ID21", XRF, "XRF map of a leaf", at(1)),
    "non-member": Example("phantom_tomo_0001", "IH2002", "ID19", TOMO, "Phantom tomography", at(2)),
    "open data": Example(
        "agbh_saxs_0001", "OD2019", "ID02", SAXS, "AgBh SAXS reference", at(3), public=PAST
    ),
    "embargoed": Example(
        "ceo2_powder_0001", "ES1001", "ID22", POWDER, "CeO2 powder", at(4), public=FUTURE
    ),
    "group": Example(
        "team_tomo_0001", "IN5678", "ID19", TOMO, "Team tomography", at(5), groups=("tomo-team",)
    ),
    "shared": Example(
        "shared_xrf_0001",
        "IN9999",
        "ID21",
        XRF,
        "XRF shared with alice",
        at(6),
        shared=("alice@example-facility.eu",),
    ),
}
# More of alice's data, so that listings span several pages and filters have work to do.
SCANS = [
    Example(
        f"scan_{i:04d}",
        "MA1234",
        ["ID02", "ID22", "ID21"][i % 3],
        [SAXS, POWDER, XRF][i % 3],
        f"Scan {i} of the leaf",
        at(10 + i),
    )
    for i in range(9)
]
FACILITY = [*MATRIX.values(), *SCANS]


def scicat_server(examples: list[Example] = FACILITY) -> SciCatServer:
    """alice's and bob's groups at SciCat are their proposals (SciCat's usual ownerGroup)."""
    return SciCatServer(
        datasets=[scicat_record(e) for e in examples],
        users={
            "alice": SciCatUser("alice", ALICE.email, frozenset({"MA1234", "tomo-team"})),
            "bob": SciCatUser("bob", BOB.email, frozenset({"IH2002", "ES1001"})),
            "portal": SciCatUser(
                "portal", "portal@example-facility.eu", frozenset({"admin"}), "pw"
            ),
        },
        id_tokens={"id-token-alice": "alice", "id-token-bob": "bob"},
    )


TRUST = ["ingestor"]  # the SciCat account that writes the facility's datasets
