"""``POST /hub/api/batchspawner``: a Slurm job tells the hub its server's port, and only that.

The job's node program (:mod:`spawner.slurm_job`) picks a free port on the compute node and
posts it with the server's own API token before the server starts. The server's code
holds that token too, so the hub takes from it exactly one thing: a port, once, for the
server of that token, while that server is starting. (batchspawner's own handler at this
path sets any attribute of the spawner the request names; it is removed,
:func:`portal.upstream.drop_batchspawner_api`.)
"""

from __future__ import annotations

from jupyterhub.apihandlers import APIHandler
from tornado import web


class PortHandler(APIHandler):
    @web.authenticated
    def post(self) -> None:
        token = self.get_auth_token()
        spawner = next(
            (s for s in self.current_user.spawners.values() if token and s.api_token == token),
            None,
        )
        if spawner is None or not hasattr(spawner, "job_id"):
            raise web.HTTPError(403, "only a Slurm job's own server token may report its port")
        body = self.get_json_body()
        if not isinstance(body, dict) or set(body) != {"port"}:
            raise web.HTTPError(400, 'the body must be {"port": <number>} and nothing else')
        port = body["port"]
        if type(port) is not int or not 1024 <= port <= 65535:
            raise web.HTTPError(400, "port must be a number from 1024 to 65535")
        if spawner.pending != "spawn" or spawner.port:
            raise web.HTTPError(409, "this server is not waiting for its port")
        spawner.port = port
        self.set_status(201)
        self.finish({"port": port})
