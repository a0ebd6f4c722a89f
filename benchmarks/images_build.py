"""Clean build time and size of each image, as a fresh CI machine would build them.

Not a test: a script that prints figures, used to decide which images the test suite builds
(see ``TEST_IMAGES_ENV`` in tests/support/docker_support.py). It debootstraps a new base
under its own tag (so the one the tests reuse is left alone) and builds with ``--no-cache``,
which for Docker's classic builder is a build from nothing, without deleting anyone's images
or cache. pip downloads are never cached in the images (``PIP_NO_CACHE_DIR``), so every
package is fetched again too.

    .venv/bin/python benchmarks/images_build.py [NAMES...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from portal.images import BuildError, BuildOptions, build, default_ca_dir

BENCH_BASE = "panosc-bench/debootstrap:bookworm"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="images to build (default: all)")
    args = parser.parse_args()
    subprocess.run(["docker", "rmi", BENCH_BASE], capture_output=True)
    options = BuildOptions(
        base_image=BENCH_BASE,
        bootstrap_base=True,
        extra_ca_certs=default_ca_dir(),
        no_cache=True,
    )
    started = time.monotonic()
    try:
        built = build(args.names, options)
    except BuildError as e:
        print(f"images: {e}", file=sys.stderr)
        return 1
    finally:
        subprocess.run(["docker", "rmi", BENCH_BASE], capture_output=True)  # only the tag
    total = time.monotonic() - started
    images_only = sum(b.seconds for b in built)
    print(
        f"total {total:.0f} s ({total / 60:.1f} min): debootstrap, import and tagging"
        f" {total - images_only:.0f} s, image builds {images_only:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
