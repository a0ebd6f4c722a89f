"""Turn validated :class:`~portal.settings.PortalSettings` into JupyterHub traitlets config.

The result is plain data ``{Class: {trait: value}}``, printed as a ``jupyterhub_config.py``
of simple assignments. A site can read exactly what the portal configures, and anything
the friendly layer does not cover goes through ``extra_config``, applied last.
"""

from __future__ import annotations

import pprint
from pathlib import Path
from typing import Any

from portal import __version__
from portal.catalogue import catalogue_class
from portal.settings import PortalSettings

Config = dict[str, dict[str, Any]]
TEMPLATES = Path(__file__).with_name("templates")


def hub_url(settings: PortalSettings) -> str:
    """The URL users open: the public URL if set, else the address the proxy binds."""
    hub = settings.hub
    if hub.public_url:
        return str(hub.public_url).rstrip("/") + hub.base_url
    host = "127.0.0.1" if hub.ip in ("", "0.0.0.0") else hub.ip
    return f"http://{host}:{hub.port}{hub.base_url}"


def render_config(settings: PortalSettings) -> Config:
    """The traitlets config for ``settings``; ``extra_config`` overrides what it generates."""
    hub, auth, spawner = settings.hub, settings.auth, settings.spawner
    state = Path(hub.state_dir)
    config: Config = {
        "JupyterHub": {
            "bind_url": f"http://{hub.ip}:{hub.port}{hub.base_url}",
            "db_url": hub.db_url or f"sqlite:///{state / 'jupyterhub.sqlite'}",
            "cookie_secret_file": str(state / "jupyterhub_cookie_secret"),
            "authenticator_class": "umbrella",
            "spawner_class": f"portal-{spawner.backend}",
            "allow_named_servers": True,  # a lab and a desktop side by side
            "template_paths": [str(TEMPLATES)],
            "extra_handlers": [
                ("/datasets", "portal.handlers.DatasetsHandler"),
                ("/open", "portal.handlers.OpenHandler"),
            ],
            "named_server_limit_per_user": spawner.named_server_limit,
        },
        "ConfigurableHTTPProxy": {"pid_file": str(state / "jupyterhub-proxy.pid")},
        "Authenticator": {"admin_users": sorted(hub.admin_users)},
    }
    umbrella: dict[str, Any] = {
        "issuer": str(auth.issuer).rstrip("/"),
        "client_id": auth.client_id,
        "scope": auth.scopes,
        "username_claims": auth.username_claims,
        "groups_claim": auth.groups_claim,
        "group_prefixes": auth.group_prefixes,
        "proposals_claim": auth.proposals_claim,
        "allowed_groups": sorted(auth.allowed_groups),
        "admin_groups": sorted(auth.admin_groups),
        "allow_all": auth.allow_all,
        "login_service": auth.login_label,
        "login_logo_url": auth.login_logo,
        "discovery_timeout": auth.discovery_timeout,
        "tls_verify": auth.tls_verify,
        "basic_auth": auth.token_endpoint_auth == "client_secret_basic",
        "refresh_margin": auth.refresh_margin,
        "id_token_leeway": auth.id_token_leeway,
    }
    if auth.client_secret:
        umbrella["client_secret"] = auth.client_secret
    if auth.callback_url:
        umbrella["oauth_callback_url"] = str(auth.callback_url)
    elif hub.public_url:
        umbrella["oauth_callback_url"] = hub_url(settings) + "hub/oauth_callback"
    config["UmbrellaOAuthenticator"] = umbrella

    local = settings.catalogue.local
    remote = settings.catalogue.backend_section
    if settings.catalogue.backend == "local" and local is not None:
        config["LocalCatalogue"] = {
            "data_root": str(local.data_root),
            "index_path": str(local.index_path or state / "catalogue.sqlite"),
        }
    elif remote is not None:
        # Keys are the traits' names; the class is whatever the entry point names, so a
        # site's c.SciCatCatalogue.* and ours always address the same class.
        traits = remote.model_dump(mode="json", exclude_none=True)
        traits["url"] = traits["url"].rstrip("/")
        config[catalogue_class(settings.catalogue.backend).__name__] = traits
    roots = {prefix: str(path) for prefix, path in spawner.storage_roots.items()}
    if not roots and local is not None:
        roots = {str(local.data_root): str(local.data_root)}
    config["PortalCatalogue"] = {"backend": settings.catalogue.backend}
    spawner_config: dict[str, Any] = {
        "storage_roots": roots,
        "default_datasets": spawner.default_datasets,
    }
    if spawner.processed_root:
        spawner_config["processed_root"] = str(spawner.processed_root)
    config["PortalSpawner"] = spawner_config  # every backend is a PortalSpawner
    if spawner.backend == "docker":
        docker = spawner.docker
        hub_api = f"http://{docker.hub_connect_ip}:{docker.hub_api_port}"
        # Containers reach the hub on the bridge; servers outlive a hub restart.
        config["JupyterHub"].update(
            hub_bind_url=hub_api, hub_connect_url=hub_api, cleanup_servers=False
        )
        config["PortalDockerSpawner"] = {
            "network_name": docker.network,
            "home_volume": docker.home_volume,
            "pull_policy": docker.pull_policy,
            "manifest_dir": str(state / "manifests"),
        }
    if spawner.home_dir:
        config["PortalLocalSpawner"] = {"home_dir_template": spawner.home_dir}

    for cls, traits in settings.extra_config.items():
        config.setdefault(cls, {}).update(traits)
    return config


def render_python(settings: PortalSettings) -> str:
    """``render_config`` as the text of a ``jupyterhub_config.py``."""
    lines = [
        f"# JupyterHub configuration generated by panosc-portal {__version__}",
        f"# from {settings.source or 'portal.yaml'}. Edit that file, not this one.",
        "# Secrets: set JUPYTERHUB_CRYPT_KEY (auth_state encryption) and OAUTH_CLIENT_SECRET",
        "# in the hub's environment unless portal.yaml sets auth.client_secret.",
        "c = get_config()  # noqa: F821",
        "",
    ]
    for cls, traits in render_config(settings).items():
        for name, value in traits.items():
            text = pprint.pformat(value, width=88, sort_dicts=True)
            lines.append(f"c.{cls}.{name} = {text}")
        lines.append("")
    return "\n".join(lines)
