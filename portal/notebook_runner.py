"""The program ``course check`` runs in the environment's container: a course's notebooks, run.

:mod:`portal.course_check` starts it, as the student, after the course has been delivered into
``~/courses/<name>/`` as a course link delivers it, with the image's own Python:
``python -I -c <this file's text> FOLDER NOTEBOOK... --timeout SECONDS``. It prints one JSON
line per notebook (:func:`execute`). Nothing but the standard library is imported at the top,
so that the hub can read this file without nbclient; nbclient is the image's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def execute(folder: Path, notebooks: list[str], timeout: int) -> Iterator[dict[str, Any]]:
    """Run each notebook in ``folder`` with nbclient, in order; one result per notebook.

    A failing notebook stops at its first failing cell, which the result names (1-based, as a
    person counts cells) with the error and the cell's source.
    """
    import nbformat  # the image's, imported here: the hub never runs notebooks
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    for name in notebooks:
        path = folder / name
        started = time.monotonic()
        result: dict[str, Any] = {"notebook": name, "ok": True}
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        )
        cell_number = None
        try:
            with client.setup_kernel():
                for index, cell in enumerate(nb.cells):
                    cell_number = index + 1
                    client.execute_cell(cell, index)
        except Exception as e:  # a failing cell, a timeout, a dead kernel: all name the cell
            error = (
                f"{e.ename}: {e.evalue}"
                if isinstance(e, CellExecutionError)
                else f"{type(e).__name__}: {e}"
            )
            source = nb.cells[cell_number - 1].source if cell_number else ""
            result.update(ok=False, cell=cell_number, error=error, source=source)
        result["seconds"] = round(time.monotonic() - started, 1)
        yield result


def main(argv: list[str] | None = None) -> int:
    """``FOLDER NOTEBOOK... [--timeout SECONDS]``: one JSON line per notebook, in order."""
    parser = argparse.ArgumentParser(description="Run a course's notebooks with nbclient.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("notebooks", nargs="+")
    parser.add_argument("--timeout", type=int, default=600, help="seconds a cell may run")
    args = parser.parse_args(argv)
    for result in execute(args.folder.expanduser(), args.notebooks, args.timeout):
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
