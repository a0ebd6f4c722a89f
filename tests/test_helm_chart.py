"""The Helm chart, rendered and validated as a cluster would receive it.

No Kubernetes API server can run on these machines (no k3s, kind or apiserver can be had),
so nothing here installs the chart. These are fakes of necessity: ``helm lint`` and ``helm
template`` render the chart with the site examples of ``helm/panosc-portal/ci/`` (minimal,
production-like, ESRF-like) and a broken file the schema must refuse;
``kubernetes-validate --strict`` checks every rendered object against the Kubernetes 1.33
API schemas, offline; and the assertions read the objects a cluster would be given. Without
a cluster ``lookup`` finds nothing, so only the first install's secret generation renders.

helm comes from scripts/setup.sh (``setup_helm``, into the virtualenv); without it these
tests fail rather than skip.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

from portal import __version__
from portal.render import render_config
from portal.settings import AuthSettings, CatalogueSettings, CullSettings, load
from spawner.environments import load_environments, load_images
from tests.support.helm import (
    BIN,
    CHART,
    CI,
    KUBERNETES,
    NAMESPACE,
    RELEASE,
    full,
    helm,
    hub_portal_yaml,
    one,
    pod_specs,
    render,
    render_text,
    run_helm,
    selector,
)
from tests.support.paths import ROOT

SITES = sorted(p.name for p in CI.glob("*.yaml"))
BROKEN = ROOT / "tests" / "helm-values" / "broken-values.yaml"


# -- lint, render, validate --------------------------------------------------------------


@pytest.mark.parametrize("site", SITES)
def test_lint_is_clean(site: str) -> None:
    out = run_helm("lint", "--strict", str(CHART), "-f", str(CI / site))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("site", SITES)
def test_every_rendered_object_is_valid_kubernetes(site: str, tmp_path: Path) -> None:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(render_text(CI / site))
    out = subprocess.run(
        [BIN / "kubernetes-validate", "--strict", "-k", KUBERNETES, str(rendered)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    passed = re.findall(r"passed for resource (\S+)", out.stdout + out.stderr)
    assert len(passed) == len(render(CI / site)) >= 15


def test_the_schema_refuses_unknown_keys_naming_them() -> None:
    out = run_helm("template", RELEASE, str(CHART), "-f", str(BROKEN))
    assert out.returncode != 0
    for message in (
        "at '/hub': additional properties 'dbb' not allowed",
        "at '/portal/auth': additional properties 'client_secret' not allowed",
        "at '/portal/storage/roots/0/volume': maxProperties: got 2, want 1",
        "at '/portal/catalogue': missing property 'scicat'",
    ):
        assert message in out.stderr, out.stderr


@cache
def generator():
    """helm/panosc-portal/tools/generate.py, loaded as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("chart_generate", CHART / "tools" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_json_schema_and_readme_table_are_generated_from_the_yaml_schema() -> None:
    """Editing values.schema.yaml without the generator, or a generated file by hand, fails."""
    for path, text in generator().generated().items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} is not what values.schema.yaml gives: run"
            " `python helm/panosc-portal/tools/generate.py`"
        )


def test_every_key_of_the_schema_has_a_description() -> None:
    schema = generator().load_schema()
    undescribed = []

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            for name, child in node.get("properties", {}).items():
                if not (isinstance(child, dict) and str(child.get("description", "")).strip()):
                    undescribed.append(f"{where}.{name}".lstrip("."))
            for key, child in node.items():
                if key != "if":  # a condition's properties are tests, not keys
                    walk(child, f"{where}.{key}" if key != "properties" else where)
        elif isinstance(node, list):
            for child in node:
                walk(child, where)

    walk(schema, "")
    assert not undescribed, undescribed
    assert len(generator().keys(schema)) > 150


def test_a_password_in_the_database_url_is_refused() -> None:
    out = run_helm(
        "template",
        RELEASE,
        str(CHART),
        "-f",
        str(CI / "minimal-values.yaml"),
        "--set",
        "hub.db.type=postgres",
        "--set",
        "hub.db.url=postgresql://portal:hunter2@db.example.eu/portal",
    )
    assert out.returncode != 0
    assert "hub.db.url must not hold the password" in out.stderr


def test_the_client_secret_is_required() -> None:
    out = run_helm(
        "template", RELEASE, str(CHART), "-f", str(CI / "minimal-values.yaml"),
        "--set", "portal.clientSecret=",
    )  # fmt: skip
    assert out.returncode != 0
    assert "portal.clientSecret or portal.existingClientSecret.name is required" in out.stderr


# -- what the objects say ----------------------------------------------------------------


def test_secrets_never_appear_in_configmaps() -> None:
    objects = render(
        CI / "minimal-values.yaml",
        "hub.db.type=postgres",
        "hub.db.url=postgresql://portal@db.example.eu/portal",
        "hub.db.password=db-password-value",
    )
    secret = one(objects, "Secret", full("hub"))
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(values) == {
        "crypt-key",
        "cookie-secret",
        "proxy-token",
        "client-secret",
        "db-password",
    }
    assert values["client-secret"] == "not-a-real-secret"
    assert values["db-password"] == "db-password-value"
    for key in ("crypt-key", "cookie-secret", "proxy-token"):
        assert re.fullmatch(r"[0-9a-f]{64}", values[key])  # 32 random bytes, hex
    configmaps = [o for o in objects if o["kind"] == "ConfigMap"]
    assert configmaps
    for configmap in configmaps:
        text = json.dumps(configmap)
        for key, value in values.items():
            assert value not in text, f"{key} is in ConfigMap {configmap['metadata']['name']}"
    settings = yaml.safe_load(hub_portal_yaml(objects))
    assert "client_secret" not in settings["auth"]
    env = {
        e["name"]: e["valueFrom"] for e in pod_specs(objects)[full("hub")]["containers"][0]["env"]
    }
    assert env["OAUTH_CLIENT_SECRET"] == {
        "secretKeyRef": {"name": full("hub"), "key": "client-secret"}
    }
    assert env["PGPASSWORD"] == {"secretKeyRef": {"name": full("hub"), "key": "db-password"}}


def test_existing_secrets_are_read_not_copied() -> None:
    objects = render(CI / "production-values.yaml")
    secret = one(objects, "Secret", full("hub"))
    assert set(secret["data"]) == {"crypt-key", "cookie-secret", "proxy-token"}
    env = {
        e["name"]: e["valueFrom"] for e in pod_specs(objects)[full("hub")]["containers"][0]["env"]
    }
    assert env["OAUTH_CLIENT_SECRET"] == {
        "secretKeyRef": {"name": "portal-oidc", "key": "client-secret"}
    }
    assert env["PGPASSWORD"] == {"secretKeyRef": {"name": "portal-db", "key": "password"}}


def test_generated_secrets_are_kept_across_upgrades_with_lookup() -> None:
    """The template asks the installed release's Secret first; helm template cannot show it."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert 'lookup "v1" "Secret" .root.Release.Namespace (include "panosc-portal.hub" .root)' in (
        helpers
    )
    assert (CHART / "templates" / "hub" / "secret.yaml").read_text().count("keptSecret") == 3


def test_network_policies_confine_user_pods_to_hub_proxy_and_dns() -> None:
    objects = render(CI / "minimal-values.yaml")
    policies = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "NetworkPolicy"}
    assert set(policies) == {full("hub"), full("proxy"), full("singleuser")}
    users = policies[full("singleuser")]
    assert users["policyTypes"] == ["Ingress", "Egress"]
    assert users["podSelector"]["matchLabels"] == selector("singleuser-server")
    reached = [
        (
            [
                p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                for p in r.get("to", [])
            ],
            sorted((p["port"], p["protocol"]) for p in r["ports"]),
        )
        for r in users["egress"]
    ]
    assert reached == [
        (["hub"], [(8081, "TCP")]),
        (["proxy"], [(8000, "TCP")]),
        ([], [(53, "TCP"), (53, "UDP")]),
    ]
    senders = [
        p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for p in users["ingress"][0]["from"]
    ]
    assert senders == ["proxy", "hub"] and len(users["ingress"]) == 1


def test_network_policies_allow_site_egress_explicitly() -> None:
    objects = render(CI / "production-values.yaml")
    policies = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "NetworkPolicy"}
    assert policies[full("singleuser")]["egress"][-1] == {
        "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
        "ports": [{"port": 443, "protocol": "TCP"}],
    }
    assert policies[full("hub")]["egress"][-1]["to"] == [{"ipBlock": {"cidr": "10.0.0.0/8"}}]


def test_rbac_grants_exactly_what_kubespawner_uses() -> None:
    objects = render(CI / "production-values.yaml")
    kinds = {o["kind"] for o in objects}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    role = one(objects, "Role", full("hub"))
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "delete", "list", "watch"]},
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["create", "get"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "watch"]},
    ]
    binding = one(objects, "RoleBinding", full("hub"))
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": full("hub"),
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": full("hub"), "namespace": NAMESPACE}
    ]
    specs = pod_specs(objects)
    assert specs[full("hub")]["serviceAccountName"] == full("hub")
    for name, spec in specs.items():
        assert spec["automountServiceAccountToken"] is (name == full("hub")), name


@pytest.mark.parametrize("site", SITES)
def test_the_hub_portal_yaml_round_trips_through_the_cli(site: str, tmp_path: Path) -> None:
    objects = render(CI / site)
    path = tmp_path / "portal.yaml"
    path.write_text(hub_portal_yaml(objects))
    out = subprocess.run(
        [BIN / "panosc-portal", "config", "check", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "spawner kube" in out.stdout
    settings = load(path)
    # The hub sees each storage folder where the spawner expects it, through the same volume.
    hub = pod_specs(objects)[full("hub")]
    volumes = {v["name"]: {k: x for k, x in v.items() if k != "name"} for v in hub["volumes"]}
    mounts = {m["mountPath"]: m for m in hub["containers"][0]["volumeMounts"]}
    for folder, volume in settings.spawner.kube.storage_volumes.items():
        mount = mounts[folder]
        assert volumes[mount["name"]] == volume.model_dump(exclude_defaults=True)
        assert mount.get("readOnly", False) is (Path(folder) != settings.spawner.processed_root)


def test_values_schema_and_portal_settings_agree() -> None:
    """portal.auth, portal.catalogue and cull are portal.yaml's sections: same keys, no secret."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    portal = schema["properties"]["portal"]["properties"]
    assert set(portal["auth"]["properties"]) == set(AuthSettings.model_fields) - {"client_secret"}
    catalogue = portal["catalogue"]["properties"]
    assert set(catalogue) == set(CatalogueSettings.model_fields)
    for section in ("local", "scicat", "search_api"):
        model = CatalogueSettings.model_fields[section].annotation.__args__[0]
        assert set(catalogue[section]["properties"]) == set(model.model_fields), section
    cull = schema["properties"]["cull"]["properties"]
    assert {re.sub("([A-Z])", r"_\1", k).lower() for k in cull} == set(CullSettings.model_fields)


def test_images_come_from_the_environments_table() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__  # the tag of every image the table names
    specs = pod_specs(render(CI / "minimal-values.yaml", "portal.environments.imageRegistry="))
    pulled = [c["image"] for c in specs[full("image-puller")]["initContainers"]]
    assert pulled == [e.image for e in load_environments().values()]
    assert specs[full("hub")]["containers"][0]["image"] == load_images()["hub"].image
    # The proxy has its own small image: a new hub image does not restart it.
    assert specs[full("proxy")]["containers"][0]["image"] == load_images()["proxy"].image
    mirrored = pod_specs(render(CI / "production-values.yaml"))
    pulled = [
        c["image"]
        for name in (full("image-puller"), full("image-puller-tomography"))
        for c in mirrored[name]["initContainers"]
    ]
    assert sorted(pulled) == sorted(
        f"registry.example-facility.eu/{e.image}" for e in load_environments().values()
    )


@pytest.mark.parametrize("site", SITES)
def test_every_example_pulls_from_the_sites_registry(site: str) -> None:
    """An example without imageRegistry would send every pull to Docker Hub."""
    registry = yaml.safe_load((CI / site).read_text())["portal"]["environments"]["imageRegistry"]
    for name, spec in pod_specs(render(CI / site)).items():
        for container in spec.get("initContainers", []) + spec["containers"]:
            if container["name"] != "pause":
                assert container["image"].startswith(f"{registry}/panosc/"), (name, container)


def test_environments_pinned_to_nodes_are_pulled_only_there() -> None:
    objects = render(
        CI / "production-values.yaml",
        'prePuller.tolerations=[{"key": "dedicated", "value": "portal", "effect": "NoSchedule"}]',
        "portal.environments.overrides.tomography.tolerations="
        '[{"key": "gpu", "operator": "Exists"}]',
        set_json=True,
    )
    pullers = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "DaemonSet"}
    assert set(pullers) == {full("image-puller"), full("image-puller-tomography")}
    everywhere = pullers[full("image-puller")]["template"]["spec"]
    gpu = pullers[full("image-puller-tomography")]["template"]["spec"]
    assert "tomography" not in {c["name"][5:] for c in everywhere["initContainers"]}
    assert [c["name"] for c in gpu["initContainers"]] == ["pull-tomography"]
    assert "nodeSelector" not in everywhere
    assert gpu["nodeSelector"] == {"example-facility.eu/gpu": "true"}
    site_taint = {"key": "dedicated", "value": "portal", "effect": "NoSchedule"}
    assert everywhere["tolerations"] == [site_taint]
    assert gpu["tolerations"] == [site_taint, {"key": "gpu", "operator": "Exists"}]
    # The DaemonSet of every node keeps the selector it always had (selectors are immutable:
    # a changed one would fail the upgrade); each DaemonSet selects only its own pods.
    assert pullers[full("image-puller")]["selector"]["matchLabels"] == selector("image-puller")
    selectors = [p["selector"]["matchLabels"] for p in pullers.values()]
    assert selectors[0] != selectors[1]
    for spec in pullers.values():
        assert (
            spec["selector"]["matchLabels"].items()
            <= spec["template"]["metadata"]["labels"].items()
        )


@pytest.mark.parametrize("site", SITES)
def test_every_container_is_bounded_and_locked_down(site: str) -> None:
    for name, spec in pod_specs(render(CI / site)).items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name}/{container['name']}"
            resources = container["resources"]
            for bound in ("requests", "limits"):
                assert set(resources[bound]) == {"cpu", "memory"}, where
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["runAsNonRoot"] is True, where


def test_pod_disruption_budgets_cover_hub_and_proxy() -> None:
    objects = render(CI / "minimal-values.yaml")
    budgets = {
        o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "PodDisruptionBudget"
    }
    assert {
        n: b["selector"]["matchLabels"]["app.kubernetes.io/component"] for n, b in budgets.items()
    } == {
        full("hub"): "hub",
        full("proxy"): "proxy",
    }


def test_ingress_serves_the_proxy_over_tls() -> None:
    objects = render(CI / "production-values.yaml")
    ingress = one(objects, "Ingress", f"{RELEASE}-panosc-portal")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "facility-ca"
    assert ingress["spec"]["tls"] == [
        {"hosts": ["portal.example-facility.eu"], "secretName": "portal-tls"}
    ]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": full("proxy-public"), "port": {"name": "http"}}
    settings = yaml.safe_load(hub_portal_yaml(objects))
    assert settings["hub"]["public_url"] == "https://portal.example-facility.eu/"


def hub_config(objects: list[dict], tmp_path: Path) -> dict:
    """The traitlets config the hub makes of the chart's portal.yaml (what serve renders)."""
    path = tmp_path / "portal.yaml"
    path.write_text(hub_portal_yaml(objects))
    return render_config(load(path))


def test_the_idle_culler_is_a_hub_service_with_least_privilege(tmp_path: Path) -> None:
    objects = render(CI / "production-values.yaml")
    hub = hub_config(objects, tmp_path)["JupyterHub"]
    [service] = [s for s in hub["services"] if s["name"] == "idle-culler"]
    assert service["name"] == "idle-culler"
    assert service["command"][:3] == ["python3", "-m", "jupyterhub_idle_culler"]
    assert {"--timeout=7200", "--cull-every=300", "--max-age=86400"} <= set(service["command"])
    roles = {r["name"]: r for r in hub["load_roles"]}
    # admins: no data access; users: no direct sharing (portal/sharing.py shares for them)
    assert set(roles) == {"idle-culler", "admin", "portal-admin", "user", "portal-sharing"}
    role = roles["idle-culler"]
    assert role["services"] == ["idle-culler"]
    assert role["scopes"] == ["list:users", "read:users:activity", "read:servers", "delete:servers"]
    # It asks the hub on localhost, never through the hub's own Service (hairpin traffic,
    # which some network plugins drop): the hub listens on every address of its pod.
    assert "--url=http://localhost:8081/hub/api" in service["command"]
    assert hub["hub_bind_url"] == "http://:8081"  # IPv4 and IPv6
    policy = one(objects, "NetworkPolicy", full("hub"))["spec"]
    hub_pods = {"podSelector": {"matchLabels": selector("hub")}}
    assert hub_pods not in policy["ingress"][0]["from"]
    assert not [r for r in policy["egress"] if hub_pods in r.get("to", [])]
    under = hub_config(render(CI / "minimal-values.yaml", "hub.baseUrl=/portal/"), tmp_path)
    assert (
        "--url=http://localhost:8081/portal/hub/api"
        in next(s for s in under["JupyterHub"]["services"] if s["name"] == "idle-culler")["command"]
    )
    off = hub_config(render(CI / "minimal-values.yaml", "cull.enabled=false"), tmp_path)
    assert [s["name"] for s in off["JupyterHub"]["services"]] == ["portal-sharing"]


def test_extra_config_passes_through(tmp_path: Path) -> None:
    config = hub_config(render(CI / "production-values.yaml"), tmp_path)
    assert config["Spawner"]["http_timeout"] == 60


NGINX_BODY = "nginx.ingress.kubernetes.io/proxy-body-size"
NGINX_TIMEOUTS = (
    "nginx.ingress.kubernetes.io/proxy-read-timeout",
    "nginx.ingress.kubernetes.io/proxy-send-timeout",
)


def test_nginx_examples_let_uploads_and_idle_websockets_through() -> None:
    """nginx refuses bodies over 1 MB and cuts websockets idle for 60 s unless told."""
    nginx = [
        site
        for site in SITES
        if (yaml.safe_load((CI / site).read_text()).get("ingress") or {}).get("className")
        == "nginx"
    ]
    assert set(nginx) == {"esrf-like-values.yaml", "production-values.yaml"}
    for site in nginx:
        annotations = one(render(CI / site), "Ingress", f"{RELEASE}-panosc-portal")["metadata"][
            "annotations"
        ]
        size = re.fullmatch(r"(\d+)m", annotations[NGINX_BODY])
        assert size and int(size[1]) >= 64, site
        for timeout in NGINX_TIMEOUTS:
            assert int(annotations[timeout]) >= 3600, (site, timeout)


def test_on_cilium_the_hub_may_reach_the_api_server() -> None:
    assert not [o for o in render(CI / "minimal-values.yaml") if o["kind"] == "CiliumNetworkPolicy"]
    objects = render(CI / "production-values.yaml", "hub.networkPolicy.ciliumApiServer=true")
    policy = one(objects, "CiliumNetworkPolicy", full("hub-kube-apiserver"))
    assert policy["apiVersion"] == "cilium.io/v2"
    ports = [{"port": "443", "protocol": "TCP"}, {"port": "6443", "protocol": "TCP"}]
    assert policy["spec"] == {
        "endpointSelector": {"matchLabels": selector("hub")},
        # the API server's ports only: etcd and the kubelets on those nodes stay closed
        "egress": [{"toEntities": ["kube-apiserver"], "toPorts": [{"ports": ports}]}],
    }
    # The plain NetworkPolicy is still there, with the site's own rules.
    hub = one(objects, "NetworkPolicy", full("hub"))["spec"]
    assert hub["egress"][-1]["to"] == [{"ipBlock": {"cidr": "10.0.0.0/8"}}]


@pytest.mark.parametrize(
    "settings",
    [(), ("cull.timeout=86400",), ("cull.enabled=false",)],
    ids=["defaults", "day-long-idle-timeout", "no-culling"],
)
def test_a_restarted_proxy_gets_its_routes_back_within_a_minute(
    settings: tuple[str, ...], tmp_path: Path
) -> None:
    """The hub re-adds missing routes at each activity update; it must come often."""
    config = hub_config(render(CI / "production-values.yaml", *settings), tmp_path)
    assert 0 < config["JupyterHub"]["last_activity_interval"] <= 60


def test_an_upgrade_of_the_hub_leaves_the_proxy_alone() -> None:
    """A new hub image or configuration must not restart the proxy (and drop websockets)."""
    base = ("hub.existingSecret=portal-keys",)
    before = render(CI / "production-values.yaml", *base)
    after = render(CI / "production-values.yaml", *base, "hub.image.tag=0.2.0", "cull.timeout=3600")
    proxy = [one(o, "Deployment", full("proxy")) for o in (before, after)]
    assert proxy[0] == proxy[1]
    hub = [one(o, "Deployment", full("hub"))["spec"]["template"] for o in (before, after)]
    assert hub[0] != hub[1]


def test_a_new_portal_release_leaves_the_proxy_running(tmp_path: Path) -> None:
    """The proxy image carries configurable-http-proxy's version, not the portal's: a release
    that does not change the proxy must not restart it (every open websocket would drop)."""
    chart = tmp_path / "panosc-portal"
    shutil.copytree(CHART, chart)  # files/environments.yaml: the table itself, not the link
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["appVersion"] = "99.0.0"
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))

    def pods(chart: Path) -> dict[str, dict]:
        out = run_helm(
            "template", RELEASE, str(chart), "-f", str(CI / "production-values.yaml"),
            "--set", "hub.existingSecret=portal-keys",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        objects = [d for d in yaml.safe_load_all(out.stdout) if d]
        return {
            n: one(objects, "Deployment", full(n))["spec"]["template"] for n in ("hub", "proxy")
        }

    before, after = pods(CHART), pods(chart)
    assert before["proxy"] == after["proxy"]
    assert before["hub"] != after["hub"]  # the hub does move to the new release
    dockerfile = (ROOT / "images" / "proxy" / "Dockerfile").read_text()
    pinned = re.search(r"configurable-http-proxy@(\S+)", dockerfile)[1]
    assert load_images()["proxy"].image == f"panosc/proxy:{pinned}"


def test_checksums_are_of_the_keys_the_secret_holds() -> None:
    """The generated keys are made once per render: the Secret and the pods' checksums see the
    same ones, so the first upgrade (when lookup finds them) restarts nothing."""
    objects = render(CI / "minimal-values.yaml")
    token = one(objects, "Secret", full("hub"))["data"]["proxy-token"]
    proxy = one(objects, "Deployment", full("proxy"))["spec"]["template"]["metadata"]
    assert (
        proxy["annotations"]["checksum/proxy-token"] == hashlib.sha256(token.encode()).hexdigest()
    )


def test_changed_secrets_restart_the_pods_that_read_them() -> None:
    def annotations(*settings: str) -> tuple[dict, dict]:
        objects = render(CI / "minimal-values.yaml", "hub.existingSecret=portal-keys", *settings)
        return tuple(
            one(objects, "Deployment", full(n))["spec"]["template"]["metadata"]["annotations"]
            for n in ("hub", "proxy")
        )

    hub, proxy = annotations()
    assert set(hub) == {"checksum/config", "checksum/secret"}
    assert set(proxy) == {"checksum/proxy-token"}
    new_hub, new_proxy = annotations("portal.clientSecret=rotated")
    assert new_hub["checksum/secret"] != hub["checksum/secret"]
    assert new_hub["checksum/config"] == hub["checksum/config"]
    assert new_proxy == proxy
    db_hub, _ = annotations(
        "hub.db.type=postgres", "hub.db.url=postgresql://portal@db.example.eu/portal",
        "hub.db.password=rotated",
    )  # fmt: skip
    assert db_hub["checksum/secret"] != hub["checksum/secret"]
    _, other_keys = annotations("hub.existingSecret=portal-keys-2025")
    assert other_keys != proxy


def test_with_existing_keys_every_render_is_the_same() -> None:
    """helm template (Argo CD) cannot look the installed keys up: without hub.existingSecret
    every sync would make new ones, the proxy would refuse the hub and stored logins would
    become unreadable. With it, the output is reproducible and names the site's Secret."""
    first = run_helm(
        "template", RELEASE, str(CHART), "-f", str(CI / "production-values.yaml"),
        "--set", "hub.existingSecret=portal-keys",
    )  # fmt: skip
    second = run_helm(
        "template", RELEASE, str(CHART), "-f", str(CI / "production-values.yaml"),
        "--set", "hub.existingSecret=portal-keys",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    objects = [d for d in yaml.safe_load_all(first.stdout) if d]
    assert not [o for o in objects if o["kind"] == "Secret"]  # nothing of the chart's to keep
    specs = pod_specs(objects)
    refs = {
        (workload, e["name"]): e["valueFrom"]["secretKeyRef"]
        for workload in ("hub", "proxy")
        for e in specs[full(workload)]["containers"][0]["env"]
    }
    for ref in ("JUPYTERHUB_CRYPT_KEY", "JPY_COOKIE_SECRET", "CONFIGPROXY_AUTH_TOKEN"):
        assert refs[("hub", ref)]["name"] == "portal-keys"
    assert refs[("proxy", "CONFIGPROXY_AUTH_TOKEN")] == {
        "name": "portal-keys",
        "key": "proxy-token",
    }


def test_the_sqlite_database_is_upgraded_and_kept(tmp_path: Path) -> None:
    objects = render(CI / "minimal-values.yaml")
    claim = one(objects, "PersistentVolumeClaim", full("hub-db"))
    assert claim["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    keys = one(objects, "Secret", full("hub"))  # without them, the database's tokens are noise
    assert keys["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert hub_config(objects, tmp_path)["JupyterHub"]["upgrade_db"] is True
    postgres = hub_config(render(CI / "production-values.yaml"), tmp_path)
    assert postgres["JupyterHub"]["upgrade_db"] is False  # the site upgrades PostgreSQL


def test_probes_give_a_slow_first_start_time_and_never_drop_a_ready_hub() -> None:
    """Zero to JupyterHub's probe values: readiness every 2 s, liveness after a long start."""
    specs = pod_specs(render(CI / "minimal-values.yaml", "hub.baseUrl=/portal/"))
    for workload, path, start in (
        ("hub", "/portal/hub/health", 300),
        ("proxy", "/_chp_healthz", 60),
    ):
        container = specs[full(workload)]["containers"][0]
        ready, live = container["readinessProbe"], container["livenessProbe"]
        assert ready["httpGet"] == live["httpGet"] == {"path": path, "port": "http"}
        assert (ready["periodSeconds"], ready["failureThreshold"]) == (2, 1000)
        assert live["initialDelaySeconds"] == start
        # a hub that stops answering is restarted only after 30 checks, 10 s apart
        assert (live["periodSeconds"], live["timeoutSeconds"], live["failureThreshold"]) == (
            10, 3, 30,
        )  # fmt: skip


def test_servers_reserve_a_share_of_their_limits(tmp_path: Path) -> None:
    config = hub_config(render(CI / "minimal-values.yaml"), tmp_path)
    assert config["PortalKubeSpawner"]["guarantee_fraction"] == 0.25
    half = hub_config(
        render(CI / "minimal-values.yaml", "singleuser.guaranteeFraction=0.5", set_json=True),
        tmp_path,
    )
    assert half["PortalKubeSpawner"]["guarantee_fraction"] == 0.5


def test_a_home_access_mode_that_blocks_a_second_server_is_refused() -> None:
    out = run_helm(
        "template", RELEASE, str(CHART), "-f", str(CI / "minimal-values.yaml"),
        "--set", "singleuser.storage.accessModes={ReadWriteOncePod}",
    )  # fmt: skip
    assert out.returncode != 0
    assert "/singleuser/storage/accessModes/0" in out.stderr
    assert "value must be one of 'ReadWriteOnce', 'ReadWriteMany'" in out.stderr


def test_notes_print_the_url_and_next_steps() -> None:
    out = run_helm(
        "install", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run=client",
        "-f", str(CI / "production-values.yaml"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    notes = out.stdout.split("NOTES:", 1)[1]
    assert "Open it at: https://portal.example-facility.eu/" in notes
    assert "https://portal.example-facility.eu/hub/oauth_callback" in notes
    assert f"kubectl --namespace {NAMESPACE} logs deployment/{full('hub')}" in notes


# -- documentation ---------------------------------------------------------------------


def test_the_chart_readme_documents_every_value_and_shows_the_esrf_example() -> None:
    readme = (CHART / "README.md").read_text()
    assert (CI / "esrf-like-values.yaml").read_text() in readme

    def keys(schema: dict, prefix: str = "") -> list[str]:
        """Every value a site sets: the leaves of the schema (a $ref is one value)."""
        found = []
        for name, sub in schema.get("properties", {}).items():
            found += keys(sub, f"{prefix}{name}.") if "properties" in sub else [prefix + name]
        return found

    schema = json.loads((CHART / "values.schema.json").read_text())
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, re.MULTILINE))
    missing = [k for k in keys(schema) if k not in documented]
    assert not missing, f"README.md documents no row for: {', '.join(missing)}"


def test_the_chart_readme_has_the_sites_checklist_before_install() -> None:
    readme = (CHART / "README.md").read_text()
    checklist = readme.split("## Before you install", 1)[1].split("\n## ", 1)[0]
    items = re.findall(r"^- \[ \] \*\*([^*]+)\.\*\*", checklist, re.MULTILINE)
    for topic in ("Registry", "Ingress", "Network plugin", "Storage permissions", "GPUs"):
        assert [i for i in items if topic in i], f"no checklist item for {topic}: {items}"
    for value in ("imageRegistry", NGINX_BODY, *NGINX_TIMEOUTS, "ciliumApiServer",
                  "portal.storage.processed", "ReadWriteMany", "hub.existingSecret"):  # fmt: skip
        assert value.split("nginx.ingress.kubernetes.io/")[-1] in checklist, value
    assert "https://<host><hub.baseUrl>hub/oauth_callback" in readme


def test_the_readme_kubernetes_commands_work_as_pasted(tmp_path: Path) -> None:
    """The offline checks of README.md's "Deploy on Kubernetes", run exactly as written."""
    section = (ROOT / "README.md").read_text().split("## Deploy on Kubernetes", 1)[1]
    section = section.split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.DOTALL)
    [checks] = [b for b in blocks if "kubernetes-validate" in b]
    (tmp_path / "helm").symlink_to(ROOT / "helm")
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.path.dirname(helm())}{os.pathsep}{os.environ['PATH']}",
    }
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", checks],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout and "spawner kube" in out.stdout


def test_sharing_support_groups_reach_the_hub(tmp_path: Path) -> None:
    """sharing.supportGroups and authCache become portal.yaml's sharing: section."""
    values = ["sharing.supportGroups={local-contacts}", "sharing.authCache=10"]
    config = hub_config(render(CI / "minimal-values.yaml", *values), tmp_path)
    assert config["PortalSharing"] == {"support_groups": ["local-contacts"]}
    assert config["Spawner"]["args"] == ["--HubOAuth.cache_max_age=10"]
