"""``panosc-portal images build``: build the environment images of ``images/``, parents first.

Facility IT builds every image with one command, also on a network with no image registry
(``--bootstrap-base`` makes the first layer with debootstrap from the machine's own Debian
mirror) and behind a TLS-inspecting proxy (``--extra-ca-certs``: its CA is trusted inside
the builds). The images, their tags and what each is built FROM come from
``images/environments.yaml`` (see :mod:`spawner.environments`); this module only orders and
runs the builds, with the plain ``docker`` CLI so that no buildx or compose plugin is needed.

Builds use Docker's classic builder (``DOCKER_BUILDKIT=0``): the Dockerfiles need nothing
from BuildKit, every docker CLI up to 28 has the classic builder, while BuildKit needs the
buildx plugin with a recent CLI (absent on Debian's docker.io and on air-gapped hosts), and
the classic builder's "Step N/M" lines give the progress shown here.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from portal import __version__
from spawner.environments import Environment, EnvironmentsError, Image, load_images
from spawner.software import LABEL as SOFTWARE_LABEL
from spawner.software import label_value

ROOT = Path(__file__).resolve().parent.parent
IMAGES_DIR = ROOT / "images"
DEFAULT_BASE_IMAGE = "debian:bookworm-slim"
BOOTSTRAP_IMAGE = "panosc/debootstrap:bookworm"
SUITE = "bookworm"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
LABEL_PREFIX = "org.opencontainers.image"
# The key the Docker spawner also puts on its containers: one vocabulary for both.
ENVIRONMENT_LABEL = "org.panosc.portal.environment"
# The hub image installs the portal from these paths of the source tree.
PORTAL_SOURCES = ("pyproject.toml", "README.md", "portal", "spawner")

_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
#: Run with the built image's own Python: the versions of the distributions named after it.
_VERSIONS_SCRIPT = """
import importlib.metadata, json, sys
found = {}
for name in sys.argv[1:]:
    try:
        found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
print(json.dumps(found))
"""


class BuildError(Exception):
    """A build cannot start or a step failed; the message says which image and command."""


class AptSource(NamedTuple):
    """One ``deb`` line of an apt source: where, which suite, which components."""

    uri: str
    suite: str
    components: tuple[str, ...]


@dataclass(frozen=True)
class BuildOptions:
    """How to build: what the images without a parent start FROM, and which CAs they trust."""

    base_image: str = DEFAULT_BASE_IMAGE
    bootstrap_base: bool = False
    mirror: str | None = None
    extra_ca_certs: Path | None = None
    no_cache: bool = False


@dataclass(frozen=True)
class Built:
    """One image built: its tag, how long the build took and its size."""

    name: str
    tag: str
    seconds: float
    size_bytes: int


def build_order(images: dict[str, Image], names: Sequence[str]) -> list[Image]:
    """The images to build for ``names`` (all when empty), each after the one it is FROM.

    A name pulls in its ancestors, so ``desktop`` alone also builds ``base`` and ``xrf``.
    The table lists parents before children, so its order is a valid build order.
    """
    unknown = sorted(set(names) - set(images))
    if unknown:
        raise BuildError(
            f"unknown image(s) {', '.join(unknown)}; the images are {', '.join(images)}"
        )
    wanted: set[str] = set()
    for name in names or images:
        current: str | None = name
        while current is not None and current not in wanted:
            wanted.add(current)
            current = images[current].parent
    return [image for name, image in images.items() if name in wanted]


def apt_sources(paths: Iterable[Path] = APT_SOURCES) -> list[AptSource]:
    """Every enabled ``deb`` source in the one-line (``.list``) and deb822 (``.sources``) files.

    Only ``*.list`` and ``*.sources`` files count, as for apt itself, so a source disabled
    by renaming its file is ignored.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in {".list", ".sources"})
        elif path.is_file():
            files.append(path)
    found: list[AptSource] = []
    for file in files:
        text = file.read_text(errors="replace")
        found += _deb822(text) if file.suffix == ".sources" else _one_line(text)
    return found


def _one_line(text: str) -> list[AptSource]:
    found = []
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb":
            found.append(AptSource(words[1], words[2], tuple(words[3:])))
    return found


def _deb822(text: str) -> list[AptSource]:
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().casefold()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
            continue
        components = tuple(fields.get("components", "").split())
        for uri in fields.get("uris", "").split():
            found += [AptSource(uri, s, components) for s in fields.get("suites", "").split()]
    return found


def debian_sources(sources: Sequence[AptSource], mirror: str | None = None) -> tuple[str, str]:
    """The mirror to debootstrap from and the ``sources.list`` the new root file system gets.

    Taken from the machine's own apt sources (the ``bookworm*`` suites: main, updates,
    security), because on an air-gapped network the only reachable mirror is the one the
    machine itself uses; ``mirror`` overrides it, e.g. on an Ubuntu host.
    """
    ours = [s for s in sources if s.suite == SUITE or s.suite.startswith(f"{SUITE}-")]
    if mirror:
        ours = [AptSource(mirror, SUITE, ("main",)), *[s for s in ours if s.suite != SUITE]]
    main = next((s.uri for s in ours if s.suite == SUITE), None)
    if main is None:
        raise BuildError(
            f"no Debian {SUITE} mirror in this machine's apt sources"
            f" ({', '.join(str(p) for p in APT_SOURCES)}); give one with --mirror URL"
        )
    lines = [f"deb {s.uri} {s.suite} {' '.join(s.components) or 'main'}" for s in ours]
    return main, "\n".join(lines) + "\n"


def ca_certificates(directory: Path) -> list[Path]:
    """The certificate files in ``directory`` to trust inside the builds.

    Only PEM certificates are taken, and never a file holding a private key: a CA
    directory on a build host may well hold the key next to the certificate, and a key in
    an image layer is readable by anyone who pulls the image.
    """
    certs = []
    for path in sorted(directory.rglob("*")):
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if "PRIVATE KEY" in text:
            print(f"images: not copying {path}: it holds a private key", file=sys.stderr)
        elif "-----BEGIN CERTIFICATE-----" in text:
            certs.append(path)
    return certs


def default_ca_dir() -> Path | None:
    """The host's extra CA directory when it holds certificates, as Debian's tools use it."""
    return HOST_CA_DIR if HOST_CA_DIR.is_dir() and ca_certificates(HOST_CA_DIR) else None


def git_revision() -> str | None:
    """The commit the images are built from, when the source tree is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def _stream(
    cmd: Sequence[str],
    log: Path,
    on_line: Callable[[str], None] = lambda _: None,
    stdin: int | None = None,
    env: dict[str, str] | None = None,
) -> tuple[int, str]:
    """Run ``cmd``, appending its output to ``log``; the exit code and the output's tail."""
    tail: deque[str] = deque(maxlen=40)
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                env=env,
            )
        except OSError as e:
            raise BuildError(f"cannot run {cmd[0]}: {e}") from e
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            tail.append(line.rstrip("\n"))
            on_line(line.rstrip("\n"))
        return proc.wait(), "\n".join(tail)


def _say(message: str) -> None:
    """Progress, flushed at once: a CI log shows each step as it starts."""
    print(message, flush=True)


def _failed(what: str, command: str, log: Path, tail: str) -> BuildError:
    return BuildError(f"{what} failed: {command}\n--- the end of its log ({log}) ---\n{tail}\n---")


def check_engine() -> str:
    """The Docker engine's version; a :class:`BuildError` that says what to do when none answers."""
    if shutil.which("docker") is None:
        raise BuildError("the docker command is not installed (Debian: apt-get install docker.io)")
    out = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise BuildError(
            "no Docker engine answers (start dockerd; scripts/setup.sh's setup_docker does):"
            f" {out.stderr.strip()}"
        )
    return out.stdout.strip()


def _image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def bootstrap_base(tag: str, log_dir: Path, mirror: str | None = None) -> None:
    """Make ``tag`` from a debootstrapped Debian root file system, unless it exists already.

    This is the first layer when no image registry is reachable: debootstrap needs only the
    machine's Debian mirror. The apt cache and lists are removed before ``docker import``,
    which keeps the layer near 130 MB.
    """
    if _image_exists(tag):
        _say(f"[bootstrap] {tag} exists: reusing it (docker rmi {tag} to make it again)")
        return
    if os.geteuid() != 0:
        raise BuildError("--bootstrap-base runs debootstrap, which needs root")
    if shutil.which("debootstrap") is None:
        raise BuildError("--bootstrap-base needs debootstrap (apt-get install debootstrap)")
    main, sources_list = debian_sources(apt_sources(), mirror)
    log = log_dir / "bootstrap.log"
    started = time.monotonic()
    _say(f"[bootstrap] debootstrap --variant=minbase {SUITE} from {main} (log: {log})")
    with tempfile.TemporaryDirectory(prefix="panosc-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", SUITE, str(rootfs), main]
        code, tail = _stream(cmd, log)
        if code != 0:
            raise _failed("[bootstrap] debootstrap", " ".join(cmd), log, tail)
        (rootfs / "etc/apt/sources.list").write_text(sources_list)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / cache).glob("*"):
                if path.is_file():
                    path.unlink()
        _say(f"[bootstrap] docker import as {tag} ({time.monotonic() - started:.0f} s)")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        cmd = ["docker", "import", "--change", 'CMD ["bash"]', "-", tag]
        with tar.stdout:
            code, tail = _stream(cmd, log, stdin=tar.stdout.fileno())
        if tar.wait() != 0 or code != 0:
            raise _failed("[bootstrap] docker import", " ".join(cmd), log, tail)
    _say(f"[bootstrap] {tag} made in {time.monotonic() - started:.0f} s")


def prepare_context(image: Image, workdir: Path, certs: Sequence[Path]) -> Path:
    """A build context with what the image's Dockerfile copies, and nothing else.

    The images built from plain Debian (base, proxy) get the CA certificates (always a
    directory, maybe empty, so the Dockerfile's COPY works either way); the hub gets the
    portal's source to install.
    """
    source = IMAGES_DIR / image.name
    if not (source / "Dockerfile").is_file():
        raise BuildError(f"{image.name}: {source}/Dockerfile is missing")
    context = workdir / image.name
    shutil.copytree(source, context)
    if image.parent is None:
        (context / "ca-certificates").mkdir()
        for i, cert in enumerate(certs):
            # update-ca-certificates only reads *.crt; the index keeps equal names apart.
            shutil.copyfile(cert, context / "ca-certificates" / f"{i:02d}-{cert.stem}.crt")
    if image.name == "hub":
        for name in PORTAL_SOURCES:
            src, dst = ROOT / name, context / "src" / name
            if src.is_dir():
                # symlinks=False copies what a link points to: the environments table.
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
    return context


def _classic_builder() -> dict[str, str]:
    """The environment that selects Docker's classic builder (see the module docstring)."""
    return {**os.environ, "DOCKER_BUILDKIT": "0"}


def docker_build(
    image: Image, context: Path, build_args: dict[str, str], log_dir: Path, no_cache: bool = False
) -> tuple[str, float]:
    """Run ``docker build`` for one image, printing each step; its image id and the seconds.

    The image is left untagged and unlabelled: :func:`tag_image` labels it afterwards, and the
    images built on it start FROM this id, so a new git revision in a label does not
    invalidate their layer cache.
    """
    log = log_dir / f"{image.name}.log"
    iidfile = context.with_suffix(".iid")
    cmd = ["docker", "build", f"--iidfile={iidfile}", *(["--no-cache"] if no_cache else [])]
    cmd += [f"--build-arg={k}={v}" for k, v in build_args.items()]
    cmd.append(str(context))
    started = time.monotonic()
    step = ["", ""]  # "N/M", instruction

    def progress(line: str) -> None:
        match = _STEP.match(line)
        if match:
            step[:] = [f"{match[1]}/{match[2]}", match[3]]
            instruction = match[3] if len(match[3]) <= 90 else match[3][:87] + "..."
            _say(
                f"[{image.name} {time.monotonic() - started:6.1f} s] step {step[0]}: {instruction}"
            )

    _say(f"[{image.name}] building {image.image} (log: {log})")
    code, tail = _stream(cmd, log, progress, env=_classic_builder())
    if code != 0:
        where = f"step {step[0]}: {step[1]}" if step[0] else " ".join(cmd)
        if image.parent is None and step[1].startswith("FROM"):
            where += " (no image registry reachable? --bootstrap-base builds without one)"
        raise _failed(image.name, where, log, tail)
    return iidfile.read_text().strip(), time.monotonic() - started


def tag_image(image_id: str, tag: str, labels: dict[str, str]) -> None:
    """Tag ``image_id`` as ``tag`` with ``labels``: a metadata-only build on top of it."""
    cmd = ["docker", "build", "--quiet", f"--tag={tag}"]
    cmd += [f"--label={k}={v}" for k, v in labels.items()]
    out = subprocess.run(
        [*cmd, "-"],
        input=f"FROM {image_id}\n",
        capture_output=True,
        text=True,
        env=_classic_builder(),
    )
    if out.returncode != 0:
        raise BuildError(f"labelling {tag} failed: {' '.join(cmd)} -\n{out.stderr.strip()}")


def installed_versions(image: Environment, image_id: str) -> dict[str, str]:
    """The versions of ``image.software`` in the built image, asked of its own Python.

    Read from the image rather than from the requirements files: a version inherited from
    a parent's constraints, or one pip resolved, is then exactly what the server runs. A
    name the image lacks fails the build, so that no card ever lists software it lacks.
    """
    cmd = ["docker", "run", "--rm", "--network=none", "--entrypoint=python", image_id]
    try:
        out = subprocess.run(
            [*cmd, "-c", _VERSIONS_SCRIPT, *image.software],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired as e:
        raise BuildError(f"[{image.name}] reading its software versions timed out") from e
    if out.returncode != 0:
        raise BuildError(
            f"[{image.name}] reading its software versions failed: {' '.join(cmd)} python -c"
            f" ...\n{out.stderr.strip()}"
        )
    found = json.loads(out.stdout)
    missing = [name for name in image.software if name not in found]
    if missing:
        raise BuildError(
            f"[{image.name}] images/environments.yaml lists {', '.join(missing)} as its"
            " software, but the image has no such Python distribution: install it in"
            f" images/{image.name}/ or take it off the list"
        )
    return {name: found[name] for name in image.software}


def image_labels(image: Image, image_id: str, common: dict[str, str]) -> dict[str, str]:
    """Every label of one image: ``common`` (version, revision), its name and its software."""
    labels = {**common, ENVIRONMENT_LABEL: image.name}
    if isinstance(image, Environment) and image.software:
        labels[SOFTWARE_LABEL] = label_value(installed_versions(image, image_id))
    return labels


def image_size(tag: str) -> int:
    """The image's size in bytes, all layers counted, as ``docker images`` shows it."""
    out = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Size}}", tag],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def build(names: Sequence[str], options: BuildOptions) -> list[Built]:
    """Build ``names`` (all when empty) and whatever they are FROM, parents first."""
    if not IMAGES_DIR.is_dir():
        raise BuildError(f"{IMAGES_DIR} is missing: build the images from a source checkout")
    try:
        images = load_images()
    except EnvironmentsError as e:
        raise BuildError(str(e)) from e
    order = build_order(images, names)
    engine = check_engine()
    # private (0700) and unpredictable: nobody else on the host can plant or read the logs
    log_dir = Path(tempfile.mkdtemp(prefix=time.strftime("panosc-portal-images-%Y%m%d-%H%M%S-")))
    _say(f"images: Docker engine {engine}; building {', '.join(i.name for i in order)}")
    if options.bootstrap_base:
        bootstrap_base(options.base_image, log_dir, options.mirror)
    ca_dir = options.extra_ca_certs
    certs = ca_certificates(ca_dir) if ca_dir else []
    if ca_dir:
        _say(f"images: trusting {len(certs)} CA certificate(s) from {ca_dir} in the builds")
    labels = {f"{LABEL_PREFIX}.version": __version__}
    revision = git_revision()
    if revision:
        labels[f"{LABEL_PREFIX}.revision"] = revision
    first_args = {
        "BASE_IMAGE": options.base_image,
        "JUPYTERHUB_VERSION": importlib.metadata.version("jupyterhub"),
    }

    built: list[Built] = []
    ids: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="panosc-images-") as tmp:
        for image in order:
            context = prepare_context(image, Path(tmp), certs)
            args = first_args if image.parent is None else {"PARENT_IMAGE": ids[image.parent]}
            ids[image.name], seconds = docker_build(image, context, args, log_dir, options.no_cache)
            tag_image(ids[image.name], image.image, image_labels(image, ids[image.name], labels))
            built.append(Built(image.name, image.image, seconds, image_size(image.image)))
            _say(
                f"[{image.name}] built {image.image} in {seconds:.0f} s,"
                f" {built[-1].size_bytes / 1e9:.2f} GB"
            )
    _say(summary(built))
    return built


def summary(built: Sequence[Built]) -> str:
    """A table of what was built, for the console and for a CI log."""
    rows = [f"{'image':<12} {'tag':<32} {'build':>8} {'size':>9}"]
    rows += [
        f"{b.name:<12} {b.tag:<32} {b.seconds:>7.0f}s {b.size_bytes / 1e9:>7.2f}GB" for b in built
    ]
    return "\n".join(rows)


def _build_command(args: argparse.Namespace) -> int:
    ca_dir = args.extra_ca_certs if args.extra_ca_certs is not None else default_ca_dir()
    if ca_dir is not None and not ca_dir.is_dir():
        print(f"images: --extra-ca-certs {ca_dir} is not a directory", file=sys.stderr)
        return 2
    options = BuildOptions(
        base_image=args.base_image
        or (BOOTSTRAP_IMAGE if args.bootstrap_base else DEFAULT_BASE_IMAGE),
        bootstrap_base=args.bootstrap_base,
        mirror=args.mirror,
        extra_ca_certs=ca_dir,
        no_cache=args.no_cache,
    )
    try:
        build(args.names, options)
    except BuildError as e:
        print(f"images: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("images: interrupted", file=sys.stderr)
        return 130
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``images build`` on the ``panosc-portal`` command line."""
    images = sub.add_parser("images", help="build the environment images").add_subparsers(
        dest="action", required=True
    )
    b = images.add_parser(
        "build",
        help="build images in dependency order (all when no name is given)",
        description="Build the images of images/environments.yaml, parents first, with"
        " Docker's layer cache. Tags come from the portal's version.",
    )
    b.add_argument("names", nargs="*", help="images to build (each pulls in its parents)")
    b.add_argument(
        "--base-image",
        default=None,
        help=f"what base and proxy are built FROM (default {DEFAULT_BASE_IMAGE}; with"
        f" --bootstrap-base, the tag to create: {BOOTSTRAP_IMAGE})",
    )
    b.add_argument(
        "--bootstrap-base",
        action="store_true",
        help="make the base image with debootstrap from this machine's Debian mirror and"
        " docker import (for hosts that reach no image registry); reused once made",
    )
    b.add_argument(
        "--mirror",
        default=None,
        help="Debian mirror for --bootstrap-base (default: the one in this machine's apt sources)",
    )
    b.add_argument(
        "--extra-ca-certs",
        type=Path,
        default=None,
        metavar="DIR",
        help="CA certificates to trust inside the builds, e.g. a TLS-inspecting proxy's"
        f" (default: {HOST_CA_DIR} when it holds certificates)",
    )
    b.add_argument(
        "--no-cache",
        action="store_true",
        help="rebuild every layer (e.g. for the latest Debian security updates)",
    )
    b.set_defaults(func=_build_command)

    from portal.image_export import add_export_parser

    add_export_parser(images)
