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
                (r"/datasets/(.+)/thumbnail\.png", "portal.handlers.DatasetThumbnailHandler"),
                (r"/datasets/(.+)", "portal.handlers.DatasetHandler"),
                ("/open", "portal.handlers.OpenHandler"),
                ("/publish", "portal.publish.PublishHandler"),
                (r"/course/([a-z0-9-]+)", "portal.handlers.CourseHandler"),
                (r"/course/([a-z0-9-]+)/students", "portal.handlers.CourseStudentsHandler"),
                ("/sharing", "portal.sharing.SharingHandler"),
                ("/support", "portal.sharing.SupportHandler"),
                ("/api/batchspawner", "portal.slurm_port.PortHandler"),
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
        "request_timeout": auth.request_timeout,
        # oauthenticator's current name: its deprecated tls_verify defaults to False.
        "validate_server_cert": auth.tls_verify,
        "basic_auth": auth.token_endpoint_auth == "client_secret_basic",
        "refresh_margin": auth.refresh_margin,
        "id_token_leeway": auth.id_token_leeway,
        "identities_file": str(state / "identities.sqlite"),
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
        "audit_interval": spawner.audit_interval,
    }
    if spawner.processed_root:
        spawner_config["processed_root"] = str(spawner.processed_root)
    config["PortalSpawner"] = spawner_config  # every backend is a PortalSpawner
    if spawner.audit_interval:  # the audit runs at the hub's polls: poll at least as often
        config.setdefault("Spawner", {})["poll_interval"] = min(30, spawner.audit_interval)
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
    if spawner.backend == "kube":
        config["PortalKubeSpawner"] = render_kube(settings, config)
    if spawner.backend == "slurm" and spawner.slurm is not None:
        slurm = spawner.slurm
        hub_api = f"http://{slurm.hub_connect_ip}:{slurm.hub_api_port}"
        # Compute nodes reach the hub's API; jobs outlive a hub restart.
        config["JupyterHub"].update(
            hub_bind_url=hub_api, hub_connect_url=hub_api, cleanup_servers=False
        )
        config["PortalSlurmSpawner"] = {
            "partitions": {
                name: p.model_dump(exclude_none=True) for name, p in slurm.partitions.items()
            },
            "default_partition": slurm.default_partition or next(iter(slurm.partitions)),
            "default_walltime": slurm.default_walltime,
            "slurm_account": slurm.account,
            "extra_sbatch": slurm.extra_sbatch,
            "slurm_conf": str(slurm.slurm_conf or ""),
            "environments_dir": str(slurm.environments_dir),
            "node_python": slurm.node_python,
            "home_dir_template": slurm.home_dir,
        }
    if spawner.home_dir:
        config["PortalLocalSpawner"] = {"home_dir_template": spawner.home_dir}

    config["JupyterHub"]["upgrade_db"] = config["JupyterHub"]["db_url"].startswith("sqlite")
    # The hub reads the proxy's routes at every activity update and re-adds any it lost: a
    # proxy restarted in its own pod (Kubernetes) routes to every server again within a
    # minute at most, whatever the culling settings.
    config["JupyterHub"]["last_activity_interval"] = min(
        ROUTE_CHECK_INTERVAL, activity_interval(settings.cull.timeout)
    )
    config["JupyterHub"].update(culling(settings, culler_api_url(settings)))
    config["JupyterHub"].setdefault("template_vars", {}).update(branding_vars(settings))
    if settings.branding.logo_file:
        config["JupyterHub"]["logo_file"] = str(settings.branding.logo_file)
    if not hub.admin_access:
        config["JupyterHub"].setdefault("load_roles", []).extend(admin_roles(settings))
        # Admins are made by the role alone; their groups still let them sign in.
        config["Authenticator"]["admin_users"] = []
        umbrella["admin_groups"] = []
        if not auth.allow_all:
            umbrella["allowed_groups"] = sorted({*auth.allowed_groups, *auth.admin_groups})
    sharing(settings, config)
    if settings.cull.enabled:  # activity must reach the hub well within the idle timeout
        config.setdefault("Spawner", {})["environment"] = {
            "JUPYTERHUB_ACTIVITY_INTERVAL": str(activity_interval(settings.cull.timeout))
        }
    courses = settings.courses
    config["CourseLibrary"] = {
        "courses": {
            name: source.model_dump(mode="json", exclude_defaults=True)
            for name, source in courses.sources.items()
        },
        "trainer_groups": courses.trainer_groups,
        "checkout_dir": str(state / "courses"),
        "update_interval": courses.update_interval,
    }
    for cls, traits in settings.extra_config.items():
        config.setdefault(cls, {}).update(traits)
    return config


def branding_vars(settings: PortalSettings) -> dict[str, Any]:
    """``portal_branding`` for the templates (page.html, login.html): who runs this portal
    and what it is for. A logo file is served by JupyterHub itself at ``/hub/logo``
    (``JupyterHub.logo_file``), so ``logo_url`` is set only for a remote logo."""
    branding = settings.branding
    return {
        "portal_branding": {
            "name": branding.name,
            "facility": branding.facility,
            "tagline": branding.tagline,
            "logo_url": branding.logo_url,
            "links": [link.model_dump() for link in branding.links],
        }
    }


#: What a portal admin may do (``hub.admin_access: false``, the default): manage users and
#: groups, see and stop any server, run the hub. Not: enter a user's server
#: (``access:servers``), start or edit one (``start:servers``: it would mount the user's
#: data), share one (``shares``), read or create tokens (``tokens``), read the Umbrella
#: tokens kept in auth_state (``admin:auth_state``, part of ``admin:users``), or point the
#: hub's proxy elsewhere (``proxy``: users' traffic and cookies would follow). JupyterHub
#: refuses to change the scopes of its own ``admin`` role, so portal admins hold this role
#: instead and nobody holds ``admin``.
PORTAL_ADMIN_SCOPES = [
    "admin-ui",
    "users",
    "delete:users",
    "read:servers",
    "delete:servers",
    "admin:groups",
    "list:services",
    "read:services",
    "read:hub",
    "shutdown",
    "read:roles",
    "read:metrics",
]


def admin_roles(settings: PortalSettings) -> list[dict[str, Any]]:
    """The ``portal-admin`` role for the configured admins, and an ``admin`` role held by none.

    Naming the ``admin`` role's members (none) also takes it from anyone an earlier
    configuration made an admin in the database.
    """
    return [
        {"name": "admin", "users": [], "groups": [], "services": []},
        {
            "name": "portal-admin",
            "description": "Manage users and stop servers, without access to users' data",
            "scopes": PORTAL_ADMIN_SCOPES,
            "users": sorted(settings.hub.admin_users),
            "groups": sorted(settings.auth.admin_groups),
        },
    ]


#: The hub-managed service whose short-lived tokens create shares after the catalogue check
#: (portal/sharing.py), and all it holds: ``shares`` (which includes ``access:servers``, needed
#: to grant it) and the names of users and groups to share with.
SHARING_SERVICE = "portal-sharing"
SHARING_SCOPES = ["shares", "read:users:name", "read:groups:name"]


def sharing(settings: PortalSettings, config: Config) -> None:
    """Sharing sessions: users share only through the portal, which asks the catalogue first.

    JupyterHub lets whoever holds ``shares`` on a server share it with anyone; a user
    holding it could share embargoed data through ``POST /hub/api/shares/...`` and skip the
    catalogue. So the ``user`` role is pinned to ``self`` (no ``shares``; naming it also
    takes ``shares`` back from a role an earlier configuration stored in the database), and
    shares are made by the ``portal-sharing`` service, a name without a process or a
    configured token: the hub mints it short-lived tokens in memory. Servers re-check with
    the hub every ``sharing.auth_cache`` seconds, so revoked access ends that fast.
    """
    hub = config["JupyterHub"]
    hub.setdefault("services", []).append({"name": SHARING_SERVICE})
    hub.setdefault("load_roles", []).extend(
        [
            {
                "name": "user",
                "description": "Standard user privileges, without sharing servers directly",
                "scopes": ["self"],
            },
            {
                "name": SHARING_SERVICE,
                "description": "Share users' servers once the catalogue allowed each grantee",
                "scopes": SHARING_SCOPES,
                "services": [SHARING_SERVICE],
            },
        ]
    )
    config["PortalSharing"] = {"support_groups": sorted(settings.sharing.support_groups)}
    config.setdefault("Spawner", {})["args"] = [
        f"--HubOAuth.cache_max_age={settings.sharing.auth_cache}"
    ]


#: Seconds between two reads of the proxy's routes by the hub, at most (Zero to JupyterHub's
#: ``last_activity_interval``).
ROUTE_CHECK_INTERVAL = 60


def activity_interval(timeout: int) -> int:
    """How often servers report activity: JupyterHub's 300 s, or less for short idle
    timeouts, so a server in use is never culled for lack of news."""
    return max(5, min(300, timeout // 3))


def culler_api_url(settings: PortalSettings) -> str | None:
    """The hub API URL for the idle culler, when the default one would not do.

    On Kubernetes the hub's API URL is its Service; the culler runs in the hub's own pod,
    and a pod reaching itself through its Service (hairpin traffic) is dropped by some
    network plugins, so culling would silently never run. It asks the hub on localhost.
    """
    if settings.spawner.backend != "kube":
        return None
    port = settings.spawner.kube.hub_api_port
    return f"http://localhost:{port}{settings.hub.base_url}hub/api"


def culling(settings: PortalSettings, api_url: str | None = None) -> dict[str, Any]:
    """The idle culler as a hub service, allowed only what culling needs.

    The same timeouts go to the home page (``template_vars``), which shows each server's
    remaining lifetime.
    """
    cull = settings.cull
    lifetime = {"cull_timeout": cull.timeout if cull.enabled else 0}
    lifetime["cull_max_age"] = cull.max_age if cull.enabled else 0
    if not cull.enabled:
        return {"template_vars": lifetime}
    command = [
        "python3",
        "-m",
        "jupyterhub_idle_culler",
        f"--timeout={cull.timeout}",
        f"--cull-every={cull.every}",
        f"--max-age={cull.max_age}",
        *([f"--url={api_url}"] if api_url else []),
    ]
    return {
        "services": [{"name": "idle-culler", "command": command}],
        "load_roles": [
            {
                "name": "idle-culler",
                "description": "Stop idle servers and servers past their maximum age",
                "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
                "services": ["idle-culler"],
            }
        ],
        "template_vars": lifetime,
    }


def render_kube(settings: PortalSettings, config: Config) -> dict[str, Any]:
    """The Kubernetes backend's traits; the hub's and proxy's settings go into ``config``.

    The proxy runs in its own pod (the chart's), so the hub does not start one; the hub
    listens on all its pod's addresses, IPv4 and IPv6 (an empty host, as Zero to
    JupyterHub binds it), and user pods reach it through its Service.
    """
    kube = settings.spawner.kube
    config["JupyterHub"].update(
        hub_bind_url=f"http://:{kube.hub_api_port}",
        hub_connect_url=str(kube.hub_connect_url).rstrip("/"),
        cleanup_servers=False,
    )
    config["ConfigurableHTTPProxy"].update(
        should_start=False, api_url=str(kube.proxy_api_url).rstrip("/")
    )
    home = kube.home
    traits: dict[str, Any] = {
        "storage_volumes": {
            folder: volume.model_dump(exclude_none=True)
            for folder, volume in kube.storage_volumes.items()
        },
        "image_registry": kube.image_registry,
        "image_pull_policy": kube.image_pull_policy,
        "image_pull_secrets": kube.image_pull_secrets,
        "storage_capacity": home.capacity,
        "storage_access_modes": home.access_modes,
        "start_timeout": kube.start_timeout,
        "guarantee_fraction": kube.guarantee_fraction,
        "extra_labels": kube.pod_labels,
        "profile_overrides": kube.profile_overrides,
    }
    if home.storage_class:
        traits["storage_class"] = home.storage_class
    return traits


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
