"""JupyterHub users of a Kubernetes hub, without a cluster, and the site they use.

kubespawner loads a kube config when a spawner is made: :data:`KUBECONFIG` names an API server
(127.0.0.1:9) that answers nothing, so a test sees every step that happens before kubespawner
would first call it. The site (:func:`build_facility`, :func:`site_config`) is real sample
data indexed by the local catalogue; :func:`pod_of` is what kubespawner would send, and
:func:`validate` checks it as a cluster of :data:`tests.support.helm.KUBERNETES` would.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kubernetes_asyncio.config.kube_config as kube_config
import pytest
import yaml
from jupyterhub import orm
from jupyterhub.objects import Hub
from jupyterhub.user import User
from kubernetes_asyncio.client import ApiClient
from traitlets.config import Config

from portal.catalogue import PortalCatalogue
from portal.catalogue.local import index_tree
from portal.demo.sampledata import generate
from spawner.kube import PortalKubeSpawner
from tests.support.helm import BIN, KUBERNETES

XRF = "MA1234/ID21/xrf_map_0001"
CEO2 = "ES1001/ID22/ceo2_powder_0001"
TOMO = "IH2002/ID19/phantom_tomo_0001"  # embargoed; alice is not a member
ESCAPE = "MA1234/ID21/escape_0001"  # a dataset folder that is a symlink out of the root
HOME = "/home/jovyan"

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: none, user: {token: none}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""


class Hubs:
    """Real JupyterHub users of one hub configuration, in an in-memory hub database."""

    def __init__(self, config: Config) -> None:
        PortalCatalogue.clear_instance()  # one catalogue per hub, and this is a new hub
        self.config = config
        self.db = orm.new_session_factory("sqlite://")()
        self.hub = Hub(base_url="/hub/", connect_url="http://portal-panosc-portal-hub:8081")

    def spawner(self, username: str, server: str, options: dict[str, Any]) -> PortalKubeSpawner:
        found = self.db.query(orm.User).filter_by(name=username).first()
        if found is None:
            found = orm.User(name=username)
            self.db.add(found)
            self.db.commit()
        user = User(
            found,
            settings={
                "spawner_class": PortalKubeSpawner,
                "config": self.config,
                "hub": self.hub,
                "allow_named_servers": True,
            },
        )
        spawner = user.get_or_create_spawner(server, server)
        spawner.user_options = options
        return spawner


def build_facility(base: Path) -> Path:
    """Sample data indexed by the local catalogue in ``base``, plus a dataset escaping its
    root, and the kube config of no cluster."""
    data = base / "data"
    generate(data)
    outside = base / "secrets"
    outside.mkdir()
    (outside / "passwords.txt").write_text("not for users\n")
    (data / ESCAPE).symlink_to(outside, target_is_directory=True)
    index_tree(data, str(base / "catalogue.sqlite"))
    (base / "kubeconfig").write_text(KUBECONFIG)
    return base


@contextmanager
def without_cluster(facility: Path) -> Iterator[None]:
    """The kube config kubespawner loads: an API server that is not there (see above)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(facility / "kubeconfig"))
        yield


def site_config(facility: Path) -> Config:
    """A hub's config: the local catalogue, one hostPath root and an NFS processed area."""
    config = Config()
    config.PortalCatalogue.backend = "local"
    config.LocalCatalogue.data_root = str(facility / "data")
    config.LocalCatalogue.index_path = str(facility / "catalogue.sqlite")
    config.PortalSpawner.storage_roots = {str(facility / "data"): str(facility / "data")}
    config.PortalSpawner.processed_root = str(facility / "processed")
    config.PortalKubeSpawner.storage_volumes = {
        str(facility / "data"): {"hostPath": {"path": "/gpfs/visitor", "type": "Directory"}},
        str(facility / "processed"): {"nfs": {"server": "nfs.example.eu", "path": "/processed"}},
    }
    return config


async def pod_of(spawner: PortalKubeSpawner) -> dict:
    """What kubespawner's start would send: load_user_options, then the pod manifest."""
    await spawner.load_user_options()
    pod = await spawner.get_pod_manifest()
    async with ApiClient() as api:  # only to turn the model into what goes over the wire
        return api.sanitize_for_serialization(pod)


def validate(pod: dict, tmp_path: Path) -> None:
    """``kubernetes-validate --strict`` passes the pod."""
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(pod))
    out = subprocess.run(
        [BIN / "kubernetes-validate", "--strict", "-k", KUBERNETES, str(path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "passed for resource pod/" in out.stdout + out.stderr
