"""The environments table, the image build tool, and the built images' smoke tests.

The first half needs no Docker: the table's validation, the build order, apt sources, CA
handling and the build contexts. The second half (marker ``docker``) uses the images the
``built_images`` fixture builds with ``--bootstrap-base``, as CI does, and checks each one
from inside (``images/<name>/smoke_test.py``, run by ``images/smoke.py``, in the images with
Python), from its file system (no private key, the host's CAs trusted), from its metadata
(labels, user, command), in the host's Chromium (JupyterLab's browser check, h5web, the
desktop through noVNC) and, for the proxy and the hub, run as the Helm chart runs them.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from playwright.sync_api import Page, expect

from portal import __version__, images
from portal.cli import main
from portal.demo.sampledata import generate
from spawner.environments import (
    DATA_FILE,
    EnvironmentsError,
    Image,
    load_environments,
    load_images,
)
from tests.support.helm import CI, full, hub_portal_yaml, pod_specs, render
from tests.support.net import free_port, wait_http
from tests.support.paths import ARTIFACTS, ROOT

IMAGES = load_images()
ENVIRONMENTS = load_environments()
# The images built on base have its Python, for the smoke tests; the proxy has Node only.
PYTHON_IMAGES = [n for n in IMAGES if images.build_order(IMAGES, [n])[0].name == "base"]
CERT = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2VydA==\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49==\n-----END PRIVATE KEY-----\n"

# PaNET ids (portal/catalogue/panet.yaml)
SCANNING_XRF = "PaNET01288"
XANES = "PaNET01199"
SAXS = "PaNET01188"
NEUTRON_POWDER_DIFFRACTION = "PaNET01100"
INELASTIC_NEUTRON = "PaNET01245"
XRAY_MICROTOMOGRAPHY = "PaNET01208"
MX = "PaNET01164"


# --- The environments table -------------------------------------------------------------


def test_every_image_has_its_directory_and_nothing_else_lists_images() -> None:
    dirs = {p.parent.name for p in (ROOT / "images").glob("*/Dockerfile")}
    assert dirs == set(IMAGES)
    for name, image in IMAGES.items():
        # The proxy carries configurable-http-proxy's version (see test_helm_chart.py).
        assert image.image.startswith(f"panosc/{name}:")
        assert image.image.endswith(f":{__version__}") is (name != "proxy"), name
    for name in PYTHON_IMAGES:
        assert (ROOT / "images" / name / "smoke_test.py").is_file(), name
    assert set(IMAGES) - set(PYTHON_IMAGES) == {"proxy"}
    assert DATA_FILE.resolve() == ROOT / "images" / "environments.yaml"


def test_each_technique_environment_serves_its_field() -> None:
    served = {
        SCANNING_XRF: {"xrf"},
        XANES: {"xrf", "spectroscopy"},  # spectroscopy's term is closer: it opens there
        SAXS: {"diffraction"},
        NEUTRON_POWDER_DIFFRACTION: {"diffraction", "neutron"},
        INELASTIC_NEUTRON: {"neutron"},
        XRAY_MICROTOMOGRAPHY: {"tomography"},
        MX: set(),
        "PaNET09999": set(),  # not in the portal's PaNET subset
    }
    general = {n for n, e in ENVIRONMENTS.items() if not e.techniques}
    assert general == {"base", "desktop", "simulation"}
    for technique, specific in served.items():
        serving = {n for n, e in ENVIRONMENTS.items() if e.serves(technique)}
        assert serving == specific | general, technique


def test_server_types_and_resources() -> None:
    assert ENVIRONMENTS["desktop"].server_types == ("desktop", "lab")
    assert ENVIRONMENTS["simulation"].server_types == ("lab", "desktop")
    with_desktop = {"desktop", "simulation"}
    assert all(e.server_types == ("lab",) for n, e in ENVIRONMENTS.items() if n not in with_desktop)
    assert ENVIRONMENTS["tomography"].memory == "16G" and ENVIRONMENTS["tomography"].cpu == 4
    assert "hub" not in ENVIRONMENTS and IMAGES["hub"].parent == "base"
    assert "proxy" not in ENVIRONMENTS and IMAGES["proxy"].parent is None


def _broken(tmp_path: Path, change) -> Path:
    doc = yaml.safe_load(DATA_FILE.read_text())
    change(doc)
    path = tmp_path / "environments.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _set(index: int, key: str, value: object):
    return lambda doc: doc["environments"][index].__setitem__(key, value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            _set(1, "techniques", ["PaNET01177", "PaNET99999"]),
            r"\[1\] \(xrf\)\.techniques\[1\]: .*PaNET99999",
        ),
        (
            _set(1, "techniques", ["x-ray fluorescence"]),
            r"\(xrf\)\.techniques\[0\]: write the PaNET id 'PaNET01177'",
        ),
        (
            _set(2, "server_types", ["lab", "vnc"]),
            r"\(diffraction\)\.server_types\[1\]: Input should be 'lab' or 'desktop'",
        ),
        (
            _set(2, "server_types", []),
            r"\(diffraction\)\.server_types: List should have at least 1 item",
        ),
        (
            _set(3, "from", "desktop"),
            r"\(tomography\)\.from: 'desktop' is not an environment listed earlier",
        ),
        (
            _set(3, "resources", {"cpu": 2, "memory": "16 GB"}),
            r"\(tomography\)\.resources\.memory: must look like",
        ),
        (
            _set(3, "resources", {"cpu": 0, "memory": "1G"}),
            r"\(tomography\)\.resources\.cpu: must be a positive",
        ),
        (_set(4, "name", "xrf"), r"\[4\] \(xrf\)\.name: is listed twice"),
        (_set(4, "name", "proxy"), r"\(proxy\)\.name: must .* \(not 'hub' or 'proxy'\)"),
        (_set(4, "image", "panosc/neutron"), r"\(neutron\)\.image: must look like"),
        (
            _set(4, "colour", "blue"),
            r"\(neutron\): unknown key 'colour'; valid keys here: name, image",
        ),
        (
            lambda d: d["environments"][0].pop("description"),
            r"\[0\] \(base\)\.description: is required but missing",
        ),
        (lambda d: d["hub"].__setitem__("from", "nothing"), r"hub\.from: 'nothing' is not"),
        (lambda d: d["proxy"].pop("image"), r"proxy\.image: is required but missing"),
        (
            lambda d: d["proxy"].__setitem__("port", 8000),
            r"proxy: unknown key 'port'; valid keys here: image, from",
        ),
        (lambda d: d["proxy"].__setitem__("image", "chp"), r"proxy\.image: must look like"),
        (
            lambda d: d.__setitem__("images", []),
            r"\(top level\): unknown key 'images'; valid keys here: environments, hub, proxy",
        ),
    ],
)
def test_table_errors_name_the_entry_and_the_field(tmp_path: Path, change, message: str) -> None:
    path = _broken(tmp_path, change)
    with pytest.raises(EnvironmentsError, match=message) as error:
        load_images(path)
    assert re.match(rf"{re.escape(str(path))}:\d+: ", str(error.value)), "the file and the line"


# --- The build tool, without Docker -----------------------------------------------------


def _names(selected: list[str]) -> list[str]:
    return [i.name for i in images.build_order(IMAGES, selected)]


def test_build_order_pulls_in_parents_and_keeps_them_first() -> None:
    assert _names(["desktop"]) == ["base", "xrf", "desktop"]
    assert _names(["hub", "neutron"]) == ["base", "neutron", "hub"]
    assert _names(["proxy"]) == ["proxy"]  # built from plain Debian, nothing of the hub's
    assert _names([]) == list(IMAGES)
    with pytest.raises(images.BuildError, match=r"unknown image.*nope; the images are base, xrf"):
        images.build_order(IMAGES, ["nope"])


def test_apt_sources_in_both_formats_and_the_bootstrap_mirror(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# a comment\ndeb [arch=amd64] http://mirror.example/debian bookworm main contrib\n"
        "deb-src http://mirror.example/debian bookworm main\n"
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://off.example\nSuites: bookworm\nEnabled: no\n"
    )
    (tmp_path / "sources.list.d" / "nodesource.sources.disabled").write_text(
        "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n"
    )
    found = images.apt_sources([tmp_path / "sources.list", tmp_path / "sources.list.d"])
    assert found == [
        ("http://mirror.example/debian", "bookworm", ("main", "contrib")),
        ("http://deb.example/debian", "bookworm", ("main",)),
        ("http://deb.example/debian", "bookworm-updates", ("main",)),
        ("http://security.example/debian-security", "bookworm-security", ("main",)),
    ]
    mirror, sources_list = images.debian_sources(found)
    assert mirror == "http://mirror.example/debian"
    assert "deb http://security.example/debian-security bookworm-security main\n" in sources_list
    mirror, sources_list = images.debian_sources(found, "http://local.example/debian")
    assert mirror == "http://local.example/debian"
    assert sources_list.splitlines()[0] == "deb http://local.example/debian bookworm main"
    with pytest.raises(images.BuildError, match=r"no Debian bookworm mirror.*--mirror"):
        images.debian_sources([images.AptSource("http://ubuntu.example/ubuntu", "noble", ())])


def test_only_certificates_go_into_the_build_never_a_key(tmp_path: Path, capsys) -> None:
    ca = tmp_path / "ca"
    (ca / "sub").mkdir(parents=True)
    (ca / "proxy.crt").write_text(CERT)
    (ca / "sub" / "facility.pem").write_text(CERT)
    (ca / "proxy.key").write_text(KEY)
    (ca / "bundle-with-key.pem").write_text(CERT + KEY)
    (ca / "README").write_text("not a certificate\n")
    certs = images.ca_certificates(ca)
    assert [p.name for p in certs] == ["proxy.crt", "facility.pem"]
    assert "proxy.key: it holds a private key" in capsys.readouterr().err

    for name in ("base", "proxy"):  # the images built from plain Debian
        context = images.prepare_context(IMAGES[name], tmp_path / "work", certs)
        copied = sorted(p.name for p in (context / "ca-certificates").iterdir())
        assert copied == ["00-proxy.crt", "01-facility.crt"]  # update-ca-certificates: *.crt
        text = "".join(p.read_text() for p in context.rglob("*") if p.is_file())
        assert "PRIVATE KEY" not in text


def test_hub_context_carries_the_portal_with_the_table_as_a_file(tmp_path: Path) -> None:
    context = images.prepare_context(IMAGES["hub"], tmp_path, [])
    table = context / "src" / "spawner" / "environments.yaml"
    assert table.is_file() and not table.is_symlink()
    assert table.read_text() == DATA_FILE.read_text()
    assert (context / "src" / "pyproject.toml").is_file()
    assert not list(context.rglob("__pycache__"))
    assert not (context / "ca-certificates").exists()  # only the first image takes them


def test_cli_errors_are_one_line_not_a_traceback(capsys, monkeypatch) -> None:
    assert main(["images", "build", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("images: unknown image(s) nope") and "Traceback" not in err

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert main(["images", "build", "base"]) == 1
    assert "images: no Docker engine answers" in capsys.readouterr().err


# --- Built images (Docker) --------------------------------------------------------------


def docker(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def _built(built_images: dict[str, str], name: str) -> str:
    if name not in built_images:
        pytest.skip(f"{name} is not among the images this session built (PANOSC_TEST_IMAGES)")
    return built_images[name]


@pytest.fixture(scope="module")
def sample_data() -> Iterator[Path]:
    """The demo's NeXus files, in a directory the containers' uid 1000 can read."""
    with tempfile.TemporaryDirectory(prefix="panosc-images-data-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        generate(root / "data")
        yield root / "data"


@pytest.mark.docker
def test_a_failed_step_names_the_image_and_the_command(
    built_images: dict[str, str], tmp_path: Path, monkeypatch, capsys
) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo about to fail && exit 3\n"
    )
    monkeypatch.setattr(images, "IMAGES_DIR", tmp_path)
    monkeypatch.setattr(
        images, "load_images", lambda: {"broken": Image("broken", "panosc-test/broken:0", None)}
    )
    assert main(["images", "build", "--bootstrap-base"]) == 1
    err = capsys.readouterr().err
    assert "images: broken failed: step 3/3: RUN echo about to fail && exit 3" in err
    assert "about to fail" in err.split("the end of its log")[1]  # the log's tail
    assert "Traceback" not in err


@pytest.mark.docker
@pytest.mark.parametrize("name", list(IMAGES))
def test_labels_user_and_command(built_images: dict[str, str], name: str) -> None:
    tag = _built(built_images, name)
    config = json.loads(docker("image", "inspect", tag).stdout)[0]["Config"]
    assert config["Labels"]["org.opencontainers.image.version"] == __version__
    assert config["Labels"][images.ENVIRONMENT_LABEL] == name
    revision = images.git_revision()
    if revision:
        assert config["Labels"]["org.opencontainers.image.revision"] == revision
    assert config["User"] == "1000"
    assert config["Entrypoint"] == ["tini", "-g", "--"]
    if name == "hub":  # `docker run` of the image runs what the chart runs
        command = _chart_program(_chart_container("hub"))
    elif name == "proxy":
        command = ["configurable-http-proxy"]
    else:
        command = ["jupyterhub-singleuser"]
    assert config["Cmd"] == command


@pytest.mark.docker
@pytest.mark.parametrize("name", PYTHON_IMAGES)
def test_smoke(built_images: dict[str, str], sample_data: Path, name: str) -> None:
    """The image's smoke tests and those of the images it is built on, run inside it."""
    tag = _built(built_images, name)
    with tempfile.TemporaryDirectory(prefix="panosc-smoke-") as out:
        Path(out).chmod(0o777)  # the container's uid 1000 writes its screenshots here
        result = docker(
            "run",
            "--rm",
            "--env",
            f"EXPECTED_JUPYTERHUB={importlib.metadata.version('jupyterhub')}",
            "--volume",
            f"{ROOT / 'images'}:/smoke:ro",
            "--volume",
            f"{sample_data}:/home/jovyan/datasets:ro",
            "--volume",
            f"{out}:/artifacts",
            tag,
            "python",
            "/smoke/smoke.py",
            *_lineage(name),
        )
        ARTIFACTS.mkdir(exist_ok=True)
        for png in Path(out).glob("*.png"):
            shutil.copyfile(png, ARTIFACTS / f"images-{png.name}")
    print(result.stdout)
    assert result.returncode == 0, f"smoke tests failed in {tag}:\n{result.stdout}{result.stderr}"


def _lineage(name: str) -> list[str]:
    return [i.name for i in images.build_order(IMAGES, [name])]


SECRET_ENV = re.compile(r"SECRET|TOKEN|PASSW|PRIVATE|CREDENTIAL|API_KEY", re.IGNORECASE)
SCANNED = ("/etc/ssl", "/usr/local/share/ca-certificates", "/home/jovyan", "/root", "/srv", "/tmp")


@pytest.mark.docker
@pytest.mark.parametrize("name", list(IMAGES))
def test_no_private_key_or_secret_and_the_hosts_cas_trusted(
    built_images: dict[str, str], name: str
) -> None:
    """Read from the image's file system (as root would), not from inside as uid 1000."""
    tag = _built(built_images, name)
    env = json.loads(docker("image", "inspect", tag).stdout)[0]["Config"]["Env"]
    assert not [e for e in env if SECRET_ENV.search(e.split("=", 1)[0])], env

    files = _files_in(tag, SCANNED)
    keys = [p for p, data in files.items() if p.endswith(".key") or b"PRIVATE KEY" in data]
    assert not keys, f"private keys in {tag}: {keys}"

    bundle = re.sub(rb"\s", b"", files["/etc/ssl/certs/ca-certificates.crt"])
    ca_dir = images.default_ca_dir()
    for cert in images.ca_certificates(ca_dir) if ca_dir else []:
        body = re.sub(rb"\s", b"", cert.read_bytes().split(b"-----")[2])
        assert body in bundle, f"{cert} is not trusted in {tag}"


def _files_in(tag: str, paths: Sequence[str]) -> dict[str, bytes]:
    """The regular files under ``paths`` in the image, by absolute path (missing paths skipped).

    Read with ``docker cp`` from a created, never started, container: as root would see them,
    and without running anything of the image.
    """
    container = docker("create", tag).stdout.strip()
    files: dict[str, bytes] = {}
    try:
        for path in paths:
            tar = subprocess.run(["docker", "cp", f"{container}:{path}", "-"], capture_output=True)
            if tar.returncode != 0:
                continue  # not in this image
            with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
                for member in archive.getmembers():
                    extracted = archive.extractfile(member) if member.isfile() else None
                    if extracted:
                        files[str(Path(path).parent / member.name)] = extracted.read()
    finally:
        docker("rm", container)
    return files


@pytest.mark.docker
def test_hub_ships_every_file_of_the_portal(built_images: dict[str, str]) -> None:
    """A file the wheel leaves out (package-data) breaks only the installed hub: find it here."""
    tag = _built(built_images, "hub")
    site = "/opt/venv/lib/python3.11/site-packages"
    packages = ("portal", "spawner")
    shipped = {
        str(Path(p).relative_to(site)) for p in _files_in(tag, [f"{site}/{p}" for p in packages])
    }
    wanted = {
        str(p.relative_to(ROOT))
        for package in packages
        for p in (ROOT / package).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert wanted <= shipped, f"not in {tag}: {sorted(wanted - shipped)}"


# The chart's podSecurityContext (uid 1000, group 100) and containerSecurityContext (read-only
# root, no capabilities, no privilege escalation), as docker options.
CHART_SECURITY = (
    "--read-only",
    "--user",
    "1000:100",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
)


def _chart_container(component: str, *settings: str) -> dict:
    """The container of the chart's ``component`` Deployment, rendered for a minimal site."""
    objects = render(CI / "minimal-values.yaml", *settings)
    return pod_specs(objects)[full(component)]["containers"][0]


def _chart_program(container: dict) -> list[str]:
    """The command line the chart runs in ``container``, after the image's entrypoint or not."""
    return [*container.get("command", []), *container.get("args", [])]


def _as_kubernetes_runs(tag: str, container: dict, env: dict[str, str]) -> list[str]:
    """``docker run`` arguments that start ``tag`` as Kubernetes starts ``container``.

    ``command`` replaces the image's ENTRYPOINT (and its CMD), ``args`` replace its CMD; the
    values of the container's environment (Secrets in the chart) come from ``env``.
    """
    names = [e["name"] for e in container.get("env", [])]
    assert set(names) <= set(env), f"no value for {sorted(set(names) - set(env))}"
    run = [*CHART_SECURITY, *(a for name in names for a in ("--env", f"{name}={env[name]}"))]
    command, args = container.get("command"), container.get("args", [])
    if command:
        return [*run, "--entrypoint", command[0], tag, *command[1:], *args]
    return [*run, tag, *args]


def _start(*args: str) -> str:
    """A detached container's id."""
    run = docker("run", "--detach", *args)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def _published(container: str, port: int) -> str:
    return f"http://{docker('port', container, str(port)).stdout.splitlines()[0]}"


def _logs(container: str) -> str:
    logs = docker("logs", container)
    return logs.stdout + logs.stderr


def _wait_for(url: str, *containers: str, timeout: float = 90) -> None:
    """Wait until ``url`` answers 200, as the chart's readiness probe does; fail with the logs."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        running = [
            docker("inspect", "-f", "{{.State.Running}}", c).stdout.strip() for c in containers
        ]
        if running != ["true"] * len(containers) or time.monotonic() > deadline:
            pytest.fail(
                f"{url} did not answer:\n" + "\n".join(_logs(c)[-3000:] for c in containers)
            )
        time.sleep(0.3)


def _gateway(network: str) -> str:
    """The host's address on a docker network: where its containers reach the host."""
    inspect = docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", network)
    assert inspect.returncode == 0, inspect.stderr
    return inspect.stdout.strip()


class _UsersServer(BaseHTTPRequestHandler):
    """Stands in for a user's server: answers with the path it was asked for."""

    def do_GET(self) -> None:
        body = f"server saw {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test asserts what it saw."""


@pytest.fixture
def users_server() -> Iterator[str]:
    """A small HTTP server on the host, where containers on the default network reach it."""
    server = ThreadingHTTPServer((_gateway("bridge"), 0), _UsersServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{server.server_address[0]}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.docker
def test_the_proxy_image_routes_with_the_charts_settings(
    built_images: dict[str, str], users_server: str
) -> None:
    """The chart's proxy pod answers its probes, sends a user's path to the server the hub
    names through the API, and refuses the API to anyone without the hub's token."""
    tag = _built(built_images, "proxy")
    token = secrets.token_hex(32)
    container = _start(
        *("--publish", "127.0.0.1::8000", "--publish", "127.0.0.1::8001"),
        *_as_kubernetes_runs(tag, _chart_container("proxy"), {"CONFIGPROXY_AUTH_TOKEN": token}),
    )
    try:
        public, api = _published(container, 8000), _published(container, 8001)
        _wait_for(f"{public}/_chp_healthz", container)
        route, target = f"{api}/api/routes/user/alice", {"target": users_server}
        wrong = {"Authorization": "token not-the-hubs-token"}
        assert requests.post(route, json=target, headers=wrong, timeout=10).status_code == 403
        assert requests.get(f"{api}/api/routes", timeout=10).status_code == 403
        hubs = {"Authorization": f"token {token}"}
        assert requests.post(route, json=target, headers=hubs, timeout=10).status_code == 201

        answer = requests.get(f"{public}/user/alice/lab/tree/data.nxs?reset", timeout=10)
        assert answer.status_code == 200
        assert answer.text == "server saw /user/alice/lab/tree/data.nxs?reset"
        routes = requests.get(f"{api}/api/routes", headers=hubs, timeout=10).json()
        assert routes["/user/alice"]["target"] == users_server
    finally:
        docker("rm", "--force", container)


@pytest.mark.docker
def test_the_hub_starts_as_the_chart_starts_it_behind_the_proxy_image(
    built_images: dict[str, str], tmp_path: Path
) -> None:
    """The chart's hub and proxy pods, on one network under their Services' names.

    The hub image carries no proxy: it runs the chart's command with the chart's portal.yaml
    and Secrets, reads a real OIDC provider's discovery, and registers its route with the
    proxy image's API, so users reach the portal's sign-in page through the proxy.
    """
    hub_tag, proxy_tag = _built(built_images, "hub"), _built(built_images, "proxy")
    network = f"panosc-test-{secrets.token_hex(4)}"
    created = docker("network", "create", network)
    assert created.returncode == 0, created.stderr
    containers: list[str] = []
    provider: subprocess.Popen | None = None
    try:
        gateway, port = _gateway(network), str(free_port())
        issuer = f"http://{gateway}:{port}"
        log = tmp_path / "oidc.log"
        with log.open("wb") as out:
            provider = subprocess.Popen(
                [sys.executable, "-m", "oidc_provider_mock", "-H", gateway, "-p", port],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_http(f"{issuer}/.well-known/openid-configuration", provider, log=log)

        objects = render(CI / "minimal-values.yaml", f"portal.auth.issuer={issuer}")
        specs = pod_specs(objects)
        hub, proxy = (specs[full(c)]["containers"][0] for c in ("hub", "proxy"))
        config = tmp_path / "config"
        config.mkdir(mode=0o755)
        (config / "portal.yaml").write_text(hub_portal_yaml(objects))
        (config / "portal.yaml").chmod(0o644)
        kube = yaml.safe_load(hub_portal_yaml(objects))["spawner"]["kube"]
        env = {e["name"]: secrets.token_hex(32) for c in (hub, proxy) for e in c["env"]}

        proxy_api = urlsplit(kube["proxy_api_url"]).hostname or ""
        hub_service = urlsplit(kube["hub_connect_url"]).hostname or ""
        containers.append(
            _start(
                *("--network", network, "--network-alias", proxy_api),
                *("--publish", "127.0.0.1::8000", "--publish", "127.0.0.1::8001"),
                *_as_kubernetes_runs(proxy_tag, proxy, env),
            )
        )
        containers.append(
            _start(
                *("--network", network, "--network-alias", hub_service),
                # the chart's volumes: the ConfigMap, the state volume (its group is the pod's
                # fsGroup, 100) and an emptyDir for /tmp
                *("--volume", f"{config}:/usr/local/etc/panosc-portal:ro"),
                *("--tmpfs", "/srv/jupyterhub:uid=1000,gid=100", "--tmpfs", "/tmp"),
                *_as_kubernetes_runs(hub_tag, hub, env),
            )
        )
        public, api = _published(containers[0], 8000), _published(containers[0], 8001)
        _wait_for(f"{public}/hub/health", *containers)

        token = {"Authorization": f"token {env['CONFIGPROXY_AUTH_TOKEN']}"}
        routes = requests.get(f"{api}/api/routes", headers=token, timeout=10).json()
        assert routes["/"]["target"] == kube["hub_connect_url"].rstrip("/"), routes
        login = requests.get(f"{public}/hub/login", timeout=10)
        assert login.status_code == 200 and "Sign in with Umbrella" in login.text
    finally:
        hub_logs = _logs(containers[1]) if len(containers) > 1 else ""
        for container in containers:
            docker("rm", "--force", container)
        docker("network", "rm", network)
        if provider:
            provider.terminate()
            provider.wait(10)
    assert "Traceback" not in hub_logs, hub_logs[-3000:]


def _jupyter_lab(tag: str, data: Path, page_config: Path) -> tuple[str, str]:
    """A JupyterLab server in ``tag`` with the data mounted; its URL and container id."""
    token = "smoke-test"
    container = docker(
        "run",
        "--detach",
        "--publish",
        "127.0.0.1::8888",
        "--volume",
        f"{data}:/home/jovyan/datasets:ro",
        "--volume",
        f"{page_config}:/etc/jupyter/labconfig/page_config.json:ro",
        tag,
        "jupyter",
        "lab",
        "--ip=0.0.0.0",
        "--port=8888",
        "--no-browser",
        f"--IdentityProvider.token={token}",
    ).stdout.strip()
    address = docker("port", container, "8888").stdout.splitlines()[0]
    return f"http://{address}", container


@pytest.mark.docker
@pytest.mark.browser
@pytest.mark.parametrize("name", list(ENVIRONMENTS))
def test_in_the_browser(
    built_images: dict[str, str], sample_data: Path, browser, tmp_path: Path, name: str
) -> None:
    """JupyterLab's own browser check, in Debian's Chromium; then h5web and the desktop.

    ``python -m jupyterlab.browser_check`` would download Playwright's Chromium into the
    image; instead the page config it sets (``browserTest``) is given to a plain JupyterLab
    in the image, and this test does what its browser-test.js does: wait for the app to be
    restored and fail on any error the page collected.
    """
    tag = _built(built_images, name)
    page_config = tmp_path / "page_config.json"
    page_config.write_text(json.dumps({"browserTest": True}))
    page_config.chmod(0o644)
    url, container = _jupyter_lab(tag, sample_data, page_config)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(90_000)
    try:
        _wait_for_lab(page, f"{url}/lab?reset&token=smoke-test")
        errors = json.loads(page.locator("#browserTest").text_content() or "[]")
        assert errors == [], f"JupyterLab in {tag} reported errors: {errors}"
        _open_in_h5web(page, url, "ES1001/ID22/ceo2_powder_0001/ceo2_powder_0001.nxs")
        page.screenshot(path=ARTIFACTS / f"images-{name}-h5web.png")
        if "desktop" in ENVIRONMENTS[name].server_types:
            page.goto(f"{url}/desktop/")
            expect(page.locator("canvas")).to_be_visible()
            page.wait_for_timeout(12_000)  # XFCE starts behind noVNC
            page.screenshot(path=ARTIFACTS / f"images-{name}-novnc.png")
    finally:
        page.close()
        logs = docker("logs", container)
        docker("rm", "--force", container)
    assert "Traceback" not in logs.stdout + logs.stderr, logs.stderr[-3000:]


def _wait_for_lab(page: Page, url: str) -> None:
    deadline = time.monotonic() + 60
    while True:  # the server needs a few seconds to listen
        try:
            page.goto(url)
            break
        except Exception:
            assert time.monotonic() < deadline, f"{url} did not answer"
            time.sleep(1)
    page.locator("#main").wait_for()
    page.locator("#browserTest.completed").wait_for(state="attached")


def _open_in_h5web(page: Page, url: str, path: str) -> None:
    folder, file = path.rsplit("/", 1)
    page.goto(f"{url}/lab/tree/datasets/{folder}?token=smoke-test")
    page.locator(".jp-DirListing-item", has_text=file).dblclick()
    expect(page.get_by_role("tree").first.get_by_text("entry", exact=True)).to_be_visible()
    expect(page.get_by_text("NX Heatmap")).to_be_visible()
    expect(page.locator("canvas").first).to_be_visible()
    page.wait_for_timeout(2000)  # let the heatmap finish drawing
