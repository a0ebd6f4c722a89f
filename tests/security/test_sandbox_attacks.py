"""Attacks from inside a researcher's server on the sandboxed local backend (the demo's).

alice runs code in her own JupyterLab (a kernel, as a notebook cell would) while bob has a
server running too, and tries what a curious or hostile user would: read bob's home, the
data tree outside her plan, the hub's state and configuration, bob's server's environment
(its API token); reach bob's server, the hub's public port and the identity provider over
the network; rewrite the code the hub runs (the idle culler) to escalate; and make the hub's
course delivery hang. Each attempt must fail, and each test fails if it succeeds.
"""

from __future__ import annotations

import json
import pwd
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from portal.demo.sampledata import DEMO_USERS
from tests.support.portal_client import PortalClient

pytestmark = pytest.mark.e2e

SECRET = "bob-private-notes-4711"


@pytest.fixture(scope="module")
def bob(demo) -> Iterator[PortalClient]:
    client = PortalClient(demo.url)
    client.login(DEMO_USERS["bob"]["sub"])
    client.spawn("victim")
    body = {"type": "file", "format": "text", "content": SECRET}
    r = client.api("PUT", "user/bob/victim/api/contents/secret.txt", json=body)
    assert r.status_code in (200, 201), r.text
    yield client
    client.stop("victim")  # the demo is shared: leave it as found


@pytest.fixture(scope="module")
def alice(demo, bob) -> Iterator[PortalClient]:
    client = PortalClient(demo.url)
    client.login(DEMO_USERS["alice"]["sub"])
    client.spawn("attack")
    yield client
    client.stop("attack")


def attempt(alice: PortalClient, code: str) -> dict:
    """Run ``code`` (which sets ``found``) in alice's server; what it found, as JSON."""
    program = f"import json, os, socket\nfound = {{}}\n{code}\nprint(json.dumps(found))"
    out = alice.run_python(program, server="attack")
    return json.loads(out.strip().splitlines()[-1])


def test_the_server_runs_as_an_account_of_its_own_without_privileges(alice) -> None:
    found = attempt(
        alice,
        "found['uid'] = os.getuid()\n"
        "status = dict(l.split(':\\t') for l in open('/proc/self/status').read().splitlines()"
        " if ':\\t' in l)\n"
        "found['caps'] = [status['CapEff'], status['CapBnd']]\n"
        "found['nnp'] = status['NoNewPrivs']\n"
        "import pwd; found['name'] = pwd.getpwuid(os.getuid()).pw_name",
    )
    assert found["uid"] not in (0, 65534)  # neither root (the hub here) nor nobody
    assert found["name"] == "panosc-alice"
    assert found["caps"] == ["0000000000000000", "0000000000000000"]
    assert found["nnp"] == "1"


def test_bobs_home_and_the_data_outside_the_plan_cannot_be_read(alice, demo) -> None:
    targets = {
        "bob's home": str(demo.state / "homes/bob/secret.txt"),
        "bob's home in the sandbox layout": "/home/panosc-bob/secret.txt",
        "embargoed data": str(demo.state / "data"),
        "the demo's whole state": str(demo.state),
    }
    found = attempt(
        alice,
        f"for what, path in {targets!r}.items():\n"
        "    try:\n"
        "        found[what] = os.listdir(path) if os.path.isdir(path) else open(path).read()\n"
        "    except OSError as e:\n"
        "        found[what] = type(e).__name__\n"
        "found['homes'] = os.listdir('/home')",
    )
    assert found["homes"] == ["panosc-alice"], found
    for what in targets:
        assert found[what] in ("FileNotFoundError", "PermissionError"), (what, found[what])
    assert SECRET not in json.dumps(found)


def test_the_hubs_state_and_secrets_are_out_of_reach(alice, demo) -> None:
    hub = demo.state / "hub"
    files = [
        hub / "jupyterhub_config.py",
        hub / "jupyterhub_cookie_secret",
        hub / "crypt_key",
        hub / "jupyterhub.sqlite",
        demo.state / "portal.yaml",
    ]
    assert any(f.exists() for f in files), "the demo's state is not where this test looks"
    found = attempt(
        alice,
        f"for path in {[str(f) for f in files]!r}:\n"
        "    try:\n"
        "        found[path] = open(path, 'rb').read(64).hex()\n"
        "    except OSError as e:\n"
        "        found[path] = type(e).__name__",
    )
    assert set(found.values()) <= {"FileNotFoundError", "PermissionError"}, found


def test_other_servers_processes_and_tokens_are_invisible(alice, bob) -> None:
    found = attempt(
        alice,
        "envs = []\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        envs.append(open(f'/proc/{pid}/environ', 'rb').read().decode(errors='replace'))\n"
        "    except OSError:\n"
        "        pass\n"
        "found['users'] = sorted({e.split('JUPYTERHUB_USER=')[1].split(chr(0))[0]"
        " for e in envs if 'JUPYTERHUB_USER=' in e})\n"
        "found['processes'] = len(list(filter(str.isdigit, os.listdir('/proc'))))",
    )
    assert found["users"] == ["alice"], found
    assert found["processes"] < 20, found  # her sandbox's own few processes, not the host's


def test_the_network_reaches_the_hubs_api_and_nothing_else(alice, bob, demo) -> None:
    settings = yaml.safe_load((demo.state / "portal.yaml").read_text())
    api_port = urlsplit(settings["extra_config"]["JupyterHub"]["hub_bind_url"]).port
    with sqlite3.connect(demo.state / "hub/jupyterhub.sqlite") as db:
        (bob_port,) = db.execute(
            "SELECT servers.port FROM servers JOIN spawners ON spawners.server_id = servers.id"
            " WHERE spawners.name = 'victim'"
        ).fetchone()
    with socket.create_connection(("127.0.0.1", bob_port), timeout=3):
        pass  # bob's server answers on the host's loopback
    targets = {
        "hub API": ("127.0.0.1", api_port),
        "bob's server": ("127.0.0.1", bob_port),
        "public port": ("127.0.0.1", urlsplit(demo.url).port),
        "identity provider": ("127.0.0.1", urlsplit(demo.issuer).port),
        "outside": ("1.1.1.1", 443),
    }
    found = attempt(
        alice,
        f"for what, address in {targets!r}.items():\n"
        "    try:\n"
        "        socket.create_connection(tuple(address), timeout=3).close()\n"
        "        found[what] = 'connected'\n"
        "    except OSError as e:\n"
        "        found[what] = type(e).__name__",
    )
    assert found.pop("hub API") == "connected"
    assert "connected" not in found.values(), found


def test_the_socket_folder_cannot_be_rigged(alice, demo) -> None:
    """The hub uses the sockets in /run/portal as root: a symlink put there would make it
    chown, or connect to, anything on the host. The folder is root's and read-only inside."""
    found = attempt(
        alice,
        "for name in ('hub.sock', 'server.sock', 'new'):\n"
        "    path = '/run/portal/' + name\n"
        "    try:\n"
        "        os.symlink('/etc/shadow', path + '.x'); os.replace(path + '.x', path)\n"
        "        found[name] = 'replaced'\n"
        "    except OSError as e:\n"
        "        found[name] = type(e).__name__\n"
        "found['owner'] = os.stat('/run/portal').st_uid",
    )
    assert found.pop("owner") == 0
    assert "replaced" not in found.values(), found


def test_other_host_accounts_cannot_use_a_servers_sockets(alice) -> None:
    """A local account outside the sandbox (here nobody) must not hold alice's connections
    to the hub, nor reach her server around the proxy's authentication."""
    gid = pwd.getpwnam("panosc-alice").pw_gid
    folders = [p for p in Path("/run").glob("panosc-*") if p.stat().st_gid == gid]
    assert folders, "alice's server has no socket folder where this test looks"
    probe = (
        "import socket, sys\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        socket.socket(socket.AF_UNIX).connect(path); print(path, 'connected')\n"
        "    except OSError as e:\n"
        "        print(path, type(e).__name__)"
    )
    sockets = [str(f / name) for f in folders for name in ("hub.sock", "server.sock")]
    nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    done = subprocess.run(
        [*nobody, sys.executable, "-I", "-c", probe, *sockets], capture_output=True, text=True
    )
    assert done.stdout.count("PermissionError") == len(sockets), done.stdout + done.stderr


def test_a_flood_of_connections_to_the_hub_is_capped(alice, demo) -> None:
    """Each connection through the bridge costs the hub descriptors: a sandbox gets a few
    dozen at once, the rest are cut, and the hub keeps answering."""
    settings = yaml.safe_load((demo.state / "portal.yaml").read_text())
    api_port = urlsplit(settings["extra_config"]["JupyterHub"]["hub_bind_url"]).port
    found = attempt(
        alice,
        "import time\n"
        f"held = [socket.create_connection(('127.0.0.1', {api_port}), timeout=5)"
        " for _ in range(200)]\n"
        "time.sleep(1)\n"
        "alive = 0\n"
        "for s in held:\n"
        "    s.setblocking(False)\n"
        "    try:\n"
        "        alive += s.recv(1, socket.MSG_PEEK) != b''\n"
        "    except BlockingIOError:\n"
        "        alive += 1\n"
        "    except OSError:\n"
        "        pass\n"
        "found['alive'] = alive\n"
        "for s in held: s.close()",
    )
    assert 0 < found["alive"] <= 32, found
    assert alice.api("GET", "hub/api/user").status_code == 200


def test_the_private_tmp_is_bounded(alice) -> None:
    found = attempt(alice, "st = os.statvfs('/tmp'); found['size'] = st.f_blocks * st.f_frsize")
    assert found["size"] <= 1 << 30


def test_no_namespace_of_ones_own_to_attack_the_kernel_from(alice) -> None:
    """A user namespace would make alice "root" inside it, with the kernel's mount and
    netfilter code in reach; the sandbox's seccomp filter refuses it, and other new
    namespaces, while ordinary threads and processes work."""
    found = attempt(
        alice,
        "import ctypes, errno, subprocess\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "for name, flag in [('user', 0x10000000), ('mount', 0x20000), ('net', 0x40000000)]:\n"
        "    found[name] = libc.unshare(flag) == 0 or errno.errorcode[ctypes.get_errno()]\n"
        "run = lambda *argv: subprocess.run(argv, capture_output=True, text=True)\n"
        "found['unshare -Ur'] = run('unshare', '-Ur', 'true').returncode\n"
        "found['child'] = run('sh', '-c', 'echo ok').stdout",
    )
    assert found.pop("child") == "ok\n"
    assert found.pop("unshare -Ur") != 0
    assert set(found.values()) == {"EPERM"}, found


def test_parallel_analysis_works_in_the_sandbox(alice) -> None:
    """multiprocessing needs POSIX semaphores (/dev/shm): a pool of workers runs."""
    found = attempt(
        alice,
        "import multiprocessing\n"
        "with multiprocessing.get_context('fork').Pool(2) as pool:\n"
        "    found['squares'] = pool.map(abs, [-1, -2, -3])",
    )
    assert found["squares"] == [1, 2, 3]


def test_the_culler_and_the_environment_cannot_be_rewritten(alice) -> None:
    found = attempt(
        alice,
        "import jupyterhub_idle_culler, sys\n"
        "for path in [jupyterhub_idle_culler.__file__, sys.executable, '/usr/bin/env']:\n"
        "    try:\n"
        "        open(path, 'ab').close()\n"
        "        found[path] = 'writable'\n"
        "    except OSError as e:\n"
        "        found[path] = type(e).__name__",
    )
    assert "writable" not in found.values(), found


def test_a_booby_trapped_home_cannot_hang_or_hijack_course_delivery(demo) -> None:
    """Files alice controls where the delivery runs: a module shadowing the standard
    library, a pipe where the delivery reads its merge base. Opening the course link
    still delivers, promptly, and nothing of hers runs in it."""
    carol = PortalClient(demo.url)
    carol.login(DEMO_USERS["carol"]["sub"])
    assert carol.click("/hub/course/nexus-basics").status_code == 200
    carol.wait_ready("course-nexus-basics", timeout=120)
    trap = (
        "import os, pathlib\n"
        "home = pathlib.Path.home()\n"
        "(home / 'argparse.py').write_text('import os; os.kill(os.getppid(), 9)')\n"
        "(home / 'json.py').write_text('while True: pass')\n"
        "base = home / 'courses/nexus-basics/.course'\n"
        "for nb in base.glob('*.ipynb'):\n"
        "    nb.unlink(); os.mkfifo(nb)\n"
        "print(sorted(p.name for p in base.iterdir()))"
    )
    assert ".ipynb" in carol.run_python(trap, server="course-nexus-basics")
    started = time.monotonic()
    page = carol.click("/hub/course/nexus-basics", timeout=60)
    assert page.status_code == 200, page.text
    assert time.monotonic() - started < 30
    listing = carol.api("GET", "user/carol/course-nexus-basics/api/contents/courses/nexus-basics")
    assert any(f["name"].endswith(".ipynb") for f in listing.json()["content"])
    carol.stop("course-nexus-basics")


def test_homes_belong_to_their_accounts_only(demo, bob) -> None:
    home = Path(demo.state / "homes/bob")
    assert home.stat().st_mode & 0o077 == 0
    assert home.stat().st_uid != 0


def test_the_local_backend_refuses_to_run_unsandboxed() -> None:
    """A hub that cannot give users accounts and sandboxes (not root) does not start, and
    says what to do instead; it never falls back to running users as itself."""
    with tempfile.TemporaryDirectory() as folder:  # readable by nobody, unlike tmp_path
        Path(folder).chmod(0o755)
        refuse_unprivileged(Path(folder))


def refuse_unprivileged(tmp_path: Path) -> None:
    config = tmp_path / "portal.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hub": {"state_dir": str(tmp_path / "state")},
                "auth": {"issuer": "http://127.0.0.1:9", "client_id": "c", "client_secret": "s"},
                "catalogue": {"backend": "local", "local": {"data_root": str(tmp_path)}},
            }
        )
    )
    nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    done = subprocess.run(
        [*nobody, sys.executable, "-m", "portal.cli", "serve", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "spawner.backend: local" in done.stderr and "needs the hub to run as root" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state").exists()  # nothing started
