"""The Docker network of user containers: they reach neither each other nor the host, only
the hub's API.

Docker's default bridge lets every container talk to every other, and any container can
reach every service on the host through its gateway address. The portal's servers join a
bridge of their own (``panosc-users`` by default) made with inter-container traffic off
(``com.docker.network.bridge.enable_icc=false``), and a host firewall chain lets what
comes in from that bridge reach the hub's API port and nothing else on the host (replies to
connections the hub or the proxy opened still pass). Traffic out to other networks (a
``pip install``) is Docker's ordinary NAT, untouched.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import docker

ICC = "com.docker.network.bridge.enable_icc"
BRIDGE_NAME = "com.docker.network.bridge.name"


class NetworkError(Exception):
    """The user network is unsafe or cannot be set up; the message names the fix."""


def ensure_user_network(client: docker.APIClient, name: str) -> str:
    """The bridge interface of network ``name``, created with inter-container traffic off.

    An existing network that lets containers reach each other is refused, not used.
    """
    found = [n for n in client.networks(names=[name]) if n["Name"] == name]
    if not found:
        interface = f"br-{name}"[:15]
        client.create_network(
            name,
            driver="bridge",
            options={ICC: "false", BRIDGE_NAME: interface},
            labels={"org.panosc.portal.network": "users"},
        )
        found = [client.inspect_network(name)]
    info = found[0]
    options = info.get("Options") or {}
    if info.get("Driver") != "bridge" or options.get(ICC) != "false":
        raise NetworkError(
            f"the Docker network {name!r} lets containers reach each other; set"
            " spawner.docker.network to a network the portal creates (default: panosc-users),"
            f" or create it with: docker network create -o {ICC}=false {name}"
        )
    if info.get("EnableIPv6"):
        raise NetworkError(
            f"the Docker network {name!r} has IPv6, which the portal's firewall chain does not"
            " cover; use a network without it"
        )
    interface = options.get(BRIDGE_NAME) or f"br-{info['Id'][:12]}"
    if not Path("/sys/class/net", interface).exists():
        raise NetworkError(
            f"the bridge {interface} of network {name!r} is not in the hub's network namespace,"
            " so the hub cannot close the host to it: run the hub on the Docker host itself"
        )
    return interface


def host_rules(interface: str, hub_port: int) -> list[list[str]]:
    """The ``iptables`` commands (each a check-or-add) that close the host to ``interface``
    except for replies and ``hub_port``: chain ``PANOSC-<interface>``, jumped to from INPUT."""
    chain = f"PANOSC-{interface}"[:28]
    return [
        ["-N", chain],
        ["-I", chain, "1", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"],
        ["-I", chain, "1", "-p", "tcp", "--dport", str(hub_port), "-j", "RETURN"],
        ["-A", chain, "-j", "DROP"],
        ["-I", "INPUT", "1", "-i", interface, "-j", chain],
    ]


def guard_host(interface: str, hub_port: int) -> None:
    """Install :func:`host_rules` unless already there; :class:`NetworkError` if impossible."""
    iptables = shutil.which("iptables")
    if iptables is None:
        raise NetworkError(
            "the portal closes the host to user containers with iptables, which is missing:"
            " apt-get install iptables"
        )
    for rule in host_rules(interface, hub_port):
        action, rest = rule[0], rule[1:]
        if action == "-N":
            check = [iptables, "-n", "-L", rest[0]]
        else:
            where = rest[:1] + rest[2:] if action == "-I" else rest
            check = [iptables, "-C", *where]
        if subprocess.run(check, capture_output=True).returncode == 0:
            continue
        done = subprocess.run([iptables, *rule], capture_output=True, text=True)
        if done.returncode:
            raise NetworkError(
                f"cannot close the host to user containers ({' '.join(rule)}):"
                f" {done.stderr.strip()}; the hub needs root (or CAP_NET_ADMIN) for this"
            )
