"""The ``panosc-portal`` command: check and render settings, run the demo, index a catalogue,
check courses.

Every failure a person can fix is printed as one clear message and exit code 1 or 2,
never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

from portal import __version__
from portal.demo import default_state_dir


def _config_check(args: argparse.Namespace) -> int:
    from portal import settings

    s = settings.load(args.file)
    print(
        f"{args.file}: OK (issuer {s.auth.issuer}, catalogue {s.catalogue.backend},"
        f" spawner {s.spawner.backend})"
    )
    return 0


def _config_render(args: argparse.Namespace) -> int:
    from portal import render, settings

    print(render.render_python(settings.load(args.file)), end="")
    return 0


def _demo(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("oidc_provider_mock") is None:
        print(
            "panosc-portal demo needs the demo extra: pip install 'panosc-portal[demo]'",
            file=sys.stderr,
        )
        return 2
    from portal.demo.run import DemoError, run_demo

    try:
        return run_demo(
            args.state_dir or default_state_dir(), args.port, args.oidc_port, args.spawner
        )
    except DemoError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1


def _serve(args: argparse.Namespace) -> int:
    from portal.serve import serve

    serve(args.config)
    return 0  # not reached: serve() becomes JupyterHub


def _catalogue_index(args: argparse.Namespace) -> int:
    from portal.catalogue.local import index_tree

    report = index_tree(args.root, args.index)
    print(
        f"{args.root}: {report.added} added, {report.updated} updated, {report.removed} removed,"
        f" {report.unchanged} unchanged, {len(report.skipped_files)} file(s) skipped"
    )
    for path in report.skipped_files:
        print(f"  skipped: {path}")
    return 0


def _course_check(args: argparse.Namespace) -> int:
    """Validate each course folder and run its notebooks; 1 if anything failed."""
    from portal.course_check import run_course
    from portal.demo.sampledata import generate
    from spawner.course_format import CourseError, load_course

    failures, data_root = 0, args.data
    with tempfile.TemporaryDirectory(prefix="panosc-course-data-") as scratch:
        for folder in args.folders:
            try:
                course = load_course(folder)
                print(
                    f"{folder}: {course.title!r}, {len(course.notebooks)} notebook(s) in the"
                    f" {course.environment} environment"
                )
                if not args.execute:
                    continue
                if data_root is None:
                    data_root = Path(scratch) / "sample-data"
                    generate(data_root)
                for result in run_course(course, data_root, args.timeout):
                    print("  " + result.describe(), flush=True)
                    failures += not result.ok
            except CourseError as e:
                print("\n".join(e.problems), file=sys.stderr)
                failures += 1
    return 1 if failures else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="panosc-portal", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"panosc-portal {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="check or render a portal.yaml").add_subparsers(
        dest="action", required=True
    )
    check = config.add_parser("check", help="validate a portal.yaml")
    check.add_argument("file", type=Path)
    check.set_defaults(func=_config_check)
    rend = config.add_parser("render", help="print the JupyterHub config a portal.yaml makes")
    rend.add_argument("file", type=Path)
    rend.set_defaults(func=_config_render)

    srv = sub.add_parser("serve", help="run the portal a portal.yaml describes")
    srv.add_argument("-c", "--config", type=Path, default=Path("portal.yaml"), help="portal.yaml")
    srv.set_defaults(func=_serve)

    demo = sub.add_parser("demo", help="run the whole portal locally on sample data")
    demo.add_argument("--port", type=int, default=8000, help="portal port (default 8000)")
    demo.add_argument(
        "--oidc-port", type=int, default=9400, help="demo identity provider port (default 9400)"
    )
    demo.add_argument(
        "--spawner",
        choices=("local", "docker"),
        default="local",
        help="local processes (default) or Docker containers (needs the images built)",
    )
    demo.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where data, database and logs live (default ~/.local/state/panosc-portal/demo)",
    )
    demo.set_defaults(func=_demo)

    cat = sub.add_parser("catalogue", help="catalogue tools").add_subparsers(
        dest="action", required=True
    )
    index = cat.add_parser("index", help="index a local NeXus data tree (incremental)")
    index.add_argument("root", type=Path)
    index.add_argument("--index", type=Path, default=None, help="SQLite index file")
    index.set_defaults(func=_catalogue_index)

    from portal.images import add_parser as add_images_parser

    add_images_parser(sub)  # images build

    course = sub.add_parser("course", help="check notebook courses").add_subparsers(
        dest="action", required=True
    )
    c = course.add_parser(
        "check",
        help="validate course folders and run their notebooks in their environments",
        description="Validate each course folder (course.yaml, notebooks stored without"
        " outputs), then run every notebook with nbclient in a container of the course's"
        " environment, with its datasets mounted under ~/datasets as the portal mounts them.",
    )
    c.add_argument("folders", nargs="+", type=Path, help="course folders (with course.yaml)")
    c.add_argument(
        "--data",
        type=Path,
        default=None,
        help="data tree the datasets come from, laid out <root>/<proposal>/<instrument>/"
        "<dataset>/ (default: freshly generated sample data)",
    )
    c.add_argument("--timeout", type=int, default=600, help="seconds a cell may run (600)")
    c.add_argument(
        "--no-execute",
        dest="execute",
        action="store_false",
        help="only validate the folders and notebooks (no Docker needed)",
    )
    c.set_defaults(func=_course_check)
    return p


def main(argv: list[str] | None = None) -> int:
    from portal.catalogue import CatalogueError
    from portal.settings import SettingsError

    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as e:
        print(str(e), file=sys.stderr)
        return 1
    except CatalogueError as e:
        print(f"catalogue: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
