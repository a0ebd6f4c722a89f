"""JupyterHub users of a Kubernetes hub, without a cluster.

kubespawner loads a kube config when a spawner is made: :data:`KUBECONFIG` names an API server
(127.0.0.1:9) that answers nothing, so a test sees every step that happens before kubespawner
would first call it.
"""

from __future__ import annotations

from typing import Any

from jupyterhub import orm
from jupyterhub.objects import Hub
from jupyterhub.user import User
from traitlets.config import Config

from portal.catalogue import PortalCatalogue
from spawner.kube import PortalKubeSpawner

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
