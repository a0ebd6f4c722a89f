"""The private parts of pinned libraries the portal relies on, in one place.

Each is used because no public API does the same; each is checked by
``tests/test_upstream.py`` (it exists, and behaves as the portal assumes), so that raising a
pin in ``pyproject.toml`` fails there, in one obvious test, rather than somewhere in a login
or a spawn. Nothing else in the portal touches another library's underscore names, but for
one override: :class:`spawner.local.PortalLocalSpawner` replaces JupyterHub's
``LocalProcessSpawner._signal`` (6.1), the one method through which its ``poll`` (signal 0)
and ``stop`` (SIGINT, SIGTERM, SIGKILL) reach a server's process, so that a sandboxed server
gets its stop signal inside the sandbox; the test checks that both still go through it.
"""

from __future__ import annotations

from typing import Any


async def token_to_auth_model(authenticator: Any, token_info: dict) -> dict:
    """oauthenticator's ``_token_to_auth_model`` (17.x): tokens to the auth model a login
    returns, with userinfo read, ``auth_state`` built and managed groups applied.

    Reading a user's claims again for a spawn or the access audit must give exactly what a
    login gives; the public ``authenticate`` needs a login request, ``refresh_user`` is the
    method the portal overrides.
    """
    return await authenticator._token_to_auth_model(token_info)


def request_by_token(handler: Any) -> bool:
    """Whether JupyterHub (6.1) authenticated this request by an API token, not a cookie.

    JupyterHub sets ``_token_authenticated`` only on token-authenticated requests and
    reads it after a refused ``refresh_user``: a browser request without it would end in a
    500 instead of a new login, so a missing one is set to ``False`` (a cookie) here.
    """
    if not hasattr(handler, "_token_authenticated"):
        handler._token_authenticated = False
    return bool(handler._token_authenticated)


def log_name(spawner: Any) -> str:
    """How JupyterHub (6.1) names a server in its log: ``alice``, or ``alice:lab`` for a
    named server (``Spawner._log_name``).

    The portal's log lines about a server use the same name, so that one search follows a
    server through the hub's log; no public attribute gives it.
    """
    return spawner._log_name


def stopping(spawner: Any) -> bool:
    """Whether the hub is stopping this server right now: JupyterHub's (6.1)
    ``Spawner._stop_pending``, which ``User.stop`` sets for the whole of a stop.

    The public ``Spawner.pending`` does not answer this: it says ``"spawn"`` while a spawn
    is pending, even when a stop is too (a stop that cancels a spawn).
    """
    return bool(spawner._stop_pending)


def apply_kube_profile(spawner: Any, name: str) -> None:
    """kubespawner's own profile loading (7.1): apply the profile ``name`` of the spawner's
    ``profile_list`` (its ``kubespawner_override``), as a user's choice of it would.

    The portal chooses the environment itself, after the catalogue check; kubespawner's
    public ``load_user_options`` would read the choice from the browser's options instead.
    ``ValueError`` when there is no such profile.
    """
    profiles = spawner._sorted_dict_values(spawner.profile_list)
    profiles = spawner._get_initialized_profile_list(profiles)
    spawner._load_profile(name, profiles)


def drop_batchspawner_api() -> None:
    """Take batchspawner's (1.3) ``/api/batchspawner`` handler out of the hub's API.

    Importing batchspawner appends it to JupyterHub's ``apihandlers.default_handlers``, a
    module list that is not an API: it sets any attribute of the spawner the job's token
    names (``exec_prefix``, ``batch_script``...), so user code holding its server's token
    could make the hub run anything. :class:`portal.slurm_port.PortHandler` takes its path.
    """
    from jupyterhub.apihandlers import default_handlers

    default_handlers[:] = [h for h in default_handlers if h[0] != r"/api/batchspawner"]
