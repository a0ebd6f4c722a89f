"""Runs images' smoke tests inside a built image, docker-stacks style.

``python /smoke/smoke.py base xrf`` imports ``/smoke/<name>/smoke_test.py`` for each name and
calls every ``test_*`` function in it, going on after a failure so that one run reports them
all; the exit code is the number of failures. tests/test_images.py mounts ``images/`` at
``/smoke`` and passes an image's name after those of the images it is built on, whose
promises it keeps too. The images have no pytest, hence this small runner.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(*cmd: str, timeout: float = 120) -> str:
    """A command's output (stdout and stderr); a failure shows the command and its output."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (
        f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout}{out.stderr}"
    )
    return out.stdout + out.stderr


def main(names: list[str]) -> int:
    failures = 0
    for name in names:
        spec = importlib.util.spec_from_file_location(
            f"smoke_{name}", HERE / name / "smoke_test.py"
        )
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for test_name, test in list(vars(module).items()):
            if not test_name.startswith("test_") or not callable(test):
                continue
            try:
                test()
            except Exception:
                failures += 1
                print(f"FAIL {name}: {test_name}\n{traceback.format_exc()}", flush=True)
            else:
                print(f"ok   {name}: {test_name}", flush=True)
    return failures


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
