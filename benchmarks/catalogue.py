"""How fast the local catalogue indexes and answers, at the size of a busy facility year.

Not a test: a script that prints figures. It writes N small NeXus datasets (a few KB each,
one NXentry with title, definition, times, instrument and source) in P proposals, plus
``proposals.yaml``, indexes them with :class:`~portal.catalogue.local.LocalCatalogue`, and
prints files indexed per second (a full index, then a re-index with nothing changed) and the
p50/p95 latency of ``datasets_for`` and ``search`` (text, technique) for a user who is a
member of every proposal, against the same queries for a member of one proposal (the
baseline). The goal: ``datasets_for`` (the query behind the spawn form) at p95 <= 100 ms.

    .venv/bin/python benchmarks/catalogue.py [--datasets 10000] [--proposals 200]
                                             [--queries 50] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import h5py

from portal.catalogue import CatalogueUser
from portal.catalogue.local import LocalCatalogue

# (application definition, probe, instrument): four technique families, as at a synchrotron
# and a neutron source.
KINDS = [
    ("NXsas", "x-ray", "ID02"),
    ("NXmonopd", "x-ray", "ID22"),
    ("NXfluo", "x-ray", "ID21"),
    ("NXtomo", "neutron", "ICON"),
]
GOAL_MS = 100.0


def write_nexus(path: Path, title: str, kind: tuple[str, str, str], start: datetime) -> None:
    """A minimal but valid NeXus file: what the indexer reads, nothing more."""
    definition, probe, instrument = kind
    with h5py.File(path, "w") as f:
        f.attrs["default"] = "entry"
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry["title"] = title
        entry["definition"] = definition
        entry["start_time"] = start.isoformat()
        entry["end_time"] = (start + timedelta(minutes=20)).isoformat()
        inst = entry.create_group("instrument")
        inst.attrs["NX_class"] = "NXinstrument"
        inst["name"] = instrument
        source = inst.create_group("source")
        source.attrs["NX_class"] = "NXsource"
        source["probe"] = probe


def generate(root: Path, datasets: int, proposals: int) -> list[str]:
    """Write the tree and ``proposals.yaml``; return the proposal ids."""
    ids = [f"MX{1000 + p}" for p in range(proposals)]
    epoch = datetime(2024, 1, 1, tzinfo=UTC)
    for n in range(datasets):
        proposal = ids[n % proposals]
        kind = KINDS[n % len(KINDS)]
        folder = root / proposal / kind[2] / f"sample_{n:05d}"
        folder.mkdir(parents=True)
        start = epoch + timedelta(minutes=37 * n)
        write_nexus(folder / f"{folder.name}.nxs", f"Sample {n} {kind[0]}", kind, start)
    embargo_end = date.today() + timedelta(days=365)
    lines = ["proposals:"]
    for p, proposal in enumerate(ids):
        public = date(2020, 1, 1) if p % 20 == 0 else embargo_end  # 1 in 20 is open data
        lines.append(f"  {proposal}: {{members: [pi{p}], public_date: {public}}}")
    (root / "proposals.yaml").write_text("\n".join(lines) + "\n")
    return ids


def latencies(query: Callable[[], list], runs: int) -> tuple[float, float, int]:
    """p50 and p95 in milliseconds over ``runs`` calls (after a warm-up), and the answer size."""
    answer = query()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        query()
        times.append((time.perf_counter() - started) * 1000)
    cuts = statistics.quantiles(times, n=20, method="inclusive")
    return statistics.median(times), cuts[18], len(answer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=10_000)
    parser.add_argument("--proposals", type=int, default=200)
    parser.add_argument("--queries", type=int, default=50, help="runs of each query")
    parser.add_argument("--workdir", type=Path, help="where to write (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="leave the data in place")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="catalogue-bench-", dir=args.workdir))
    try:
        root = work / "data"
        started = time.perf_counter()
        ids = generate(root, args.datasets, args.proposals)
        print(
            f"generated {args.datasets} datasets in {len(ids)} proposals"
            f" in {time.perf_counter() - started:.1f} s under {work}"
        )

        catalogue = LocalCatalogue(data_root=str(root), index_path=str(work / "index.sqlite"))
        for label in ("full index", "re-index, nothing changed"):
            started = time.perf_counter()
            report = catalogue.index()
            elapsed = time.perf_counter() - started
            print(
                f"{label:28s} {args.datasets / elapsed:8.0f} files/s  ({elapsed:.2f} s,"
                f" added {report.added}, unchanged {report.unchanged})"
            )

        users = {
            f"member of {len(ids)} proposals": CatalogueUser("many", proposals=frozenset(ids)),
            "member of 1 proposal (baseline)": CatalogueUser("one", proposals=frozenset(ids[1:2])),
        }
        print(f"\nlatency over {args.queries} runs, ms        p50      p95   results")
        worst = 0.0
        for who, user in users.items():
            queries = {
                "datasets_for": lambda u=user: catalogue.datasets_for(u),
                "search text": lambda u=user: catalogue.search(u, text="sample 42"),
                "search technique": lambda u=user: catalogue.search(
                    u, technique="x-ray scattering"
                ),
            }
            print(who)
            for name, query in queries.items():
                p50, p95, size = latencies(query, args.queries)
                print(f"  {name:34s} {p50:8.1f} {p95:8.1f} {size:9d}")
                if name == "datasets_for":
                    worst = max(worst, p95)
        verdict = "meets" if worst <= GOAL_MS else "MISSES"
        print(f"\ndatasets_for p95 {worst:.1f} ms: {verdict} the {GOAL_MS:.0f} ms goal")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
