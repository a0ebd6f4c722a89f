"""A real OIDC provider process (oidc-provider-mock) and a portal hub started from portal.yaml."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from tests.support.net import free_port, wait_http


@dataclass
class Provider:
    """oidc-provider-mock on a fixed port, restartable (a restart rotates its signing key)."""

    port: int
    log: Path
    args: tuple[str, ...] = ()
    proc: subprocess.Popen | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "oidc_provider_mock", "-p", str(self.port), *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_http(f"{self.issuer}/.well-known/openid-configuration", self.proc, log=self.log)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def set_user(self, sub: str, **claims: object) -> None:
        """Create or replace a user's claims at the provider."""
        r = requests.put(f"{self.issuer}/users/{sub}", json=claims, timeout=10)
        r.raise_for_status()

    def revoke(self, sub: str) -> None:
        requests.post(f"{self.issuer}/users/{sub}/revoke-tokens", timeout=10).raise_for_status()


@dataclass
class Hub:
    """``panosc-portal serve -c portal.yaml``, as a site runs it."""

    config: dict
    folder: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.folder / "hub.log"

    hub_api_port: int = field(default_factory=free_port)
    proxy_api_port: int = field(default_factory=free_port)

    def write_config(self) -> Path:
        """portal.yaml for this hub; its ports stay the same across restarts."""
        internal = {"ConfigurableHTTPProxy": {"api_url": f"http://127.0.0.1:{self.proxy_api_port}"}}
        if self.config.get("spawner", {}).get("backend") not in ("docker", "slurm"):  # own
            internal["JupyterHub"] = {"hub_bind_url": f"http://127.0.0.1:{self.hub_api_port}"}
        extra = self.config.get("extra_config", {})
        config = {
            **self.config,
            "hub": {
                **self.config.get("hub", {}),
                "port": self.port,
                "state_dir": str(self.folder / "state"),
            },
            "extra_config": {
                cls: {**internal.get(cls, {}), **extra.get(cls, {})} for cls in {*internal, *extra}
            },
        }
        path = self.folder / "portal.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start(self) -> None:
        path = self.write_config()
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "portal.cli", "serve", "-c", str(path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        wait_http(f"{self.url}/hub/health", self.proc, log=self.log)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def demo_provider(folder: Path, *names: str) -> Provider:
    """A started provider knowing these demo users (alice, bob, dave...) by their claims."""
    from portal.demo.sampledata import DEMO_USERS

    provider = Provider(free_port(), folder / "op.log")
    provider.start()
    for name in names:
        claims = {k: v for k, v in DEMO_USERS[name].items() if k != "sub"}
        provider.set_user(DEMO_USERS[name]["sub"], **claims)
    return provider


def hub_config(
    provider: Provider, folder: Path, data: Path, spawner: dict, **sections: dict
) -> dict:
    """portal.yaml of a test hub: sign-in at ``provider`` for the researchers group, the local
    catalogue over ``data`` and this ``spawner`` section; ``sections`` are merged over these
    defaults (``auth`` key by key)."""
    auth = {
        "issuer": provider.issuer,
        "client_id": f"portal-{folder.name}",
        "client_secret": "s",
        "allowed_groups": ["researchers"],
        **sections.pop("auth", {}),
    }
    return {
        "auth": auth,
        "catalogue": {"backend": "local", "local": {"data_root": str(data)}},
        "spawner": spawner,
        **sections,
    }


def local_hub(provider: Provider, folder: Path, data: Path, **sections: dict) -> Hub:
    """A hub with the local backend and catalogue over ``data``; ``sections`` of
    portal.yaml are merged over these defaults (``auth`` and ``spawner`` key by key)."""
    spawner = {"home_dir": str(folder / "homes/{username}"), **sections.pop("spawner", {})}
    return Hub(hub_config(provider, folder, data, spawner, **sections), folder)
