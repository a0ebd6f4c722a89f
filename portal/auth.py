"""Umbrella sign-in: an OpenID Connect authenticator for photon and neutron facilities.

Umbrella (UmbrellaID) is reached either directly or through a facility Keycloak acting as
a broker, and the two release different claims, so every claim name is a setting. Unlike
oauthenticator's ``GenericOAuthenticator``, which this extends, it reads the issuer's
``/.well-known/openid-configuration`` itself: a site sets ``issuer`` and nothing else.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import re
import sqlite3
import time
from contextlib import closing
from typing import Any
from urllib.parse import urlencode

import requests
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthLoginHandler, OAuthLogoutHandler
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Float, Integer, List, Unicode, default

from portal.idtoken import ASYMMETRIC_ALGORITHMS, IdTokenError, JwksCache, verify_id_token
from portal.upstream import request_by_token, token_to_auth_model

ENDPOINTS = {
    "authorization_endpoint": "authorize_url",
    "token_endpoint": "token_url",
    "userinfo_endpoint": "userdata_url",
}


class IdentityUnavailable(RuntimeError):
    """The identity provider could not be asked; nothing is known about the user."""


class ProviderUnreachable(IdentityUnavailable):
    """The identity provider did not answer: down, hanging or overloaded."""


def unreachable(error: Exception) -> bool:
    """Whether ``error`` says the provider did not answer (down, hanging, overloaded), as
    opposed to answering no: connection errors, timeouts (tornado's 599) and 5xx."""
    if isinstance(error, HTTPClientError):
        return error.code == 599 or error.code >= 500
    return isinstance(error, OSError)  # refused, reset, timed out (TimeoutError is one)


class DiscoveryError(RuntimeError):
    """The issuer's OIDC discovery document could not be used; the message says why."""


def discover(issuer: str, timeout: float, verify: bool = True) -> dict[str, Any]:
    """Fetch and check ``<issuer>/.well-known/openid-configuration``.

    Connection errors and 5xx answers are retried with exponential backoff until
    ``timeout`` seconds have passed; an invalid document fails at once.
    """
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    deadline = time.monotonic() + timeout
    delay = 0.25
    while True:
        left = deadline - time.monotonic()
        try:
            response = requests.get(url, timeout=max(0.5, min(left, 10)), verify=verify)
            if response.status_code < 500:
                break
            problem = f"HTTP {response.status_code}"
        except requests.RequestException as e:
            problem = f"cannot connect ({type(e).__name__}: {e})"
        if time.monotonic() + delay > deadline:
            raise DiscoveryError(
                f"OIDC discovery failed for issuer {issuer}: {url}: {problem}"
                f" (gave up after {timeout:g} s; check the issuer URL and the network)"
            )
        time.sleep(delay)
        delay = min(delay * 2, 5)
    if response.status_code != 200:
        raise DiscoveryError(f"OIDC discovery failed: {url} answered HTTP {response.status_code}")
    try:
        doc = response.json()
    except ValueError:
        raise DiscoveryError(
            f"OIDC discovery failed: {url} did not return JSON"
            f" (Content-Type {response.headers.get('Content-Type', 'none')})"
        ) from None
    if not isinstance(doc, dict):
        raise DiscoveryError(f"OIDC discovery failed: {url} did not return a JSON object")
    if doc.get("issuer", "").rstrip("/") != issuer.rstrip("/"):
        raise DiscoveryError(
            f"OIDC discovery failed: {url} names issuer {doc.get('issuer')!r}, expected"
            f" {issuer!r}; set issuer to the provider's exact issuer URL"
        )
    missing = [k for k in ("authorization_endpoint", "token_endpoint", "jwks_uri") if k not in doc]
    if missing:
        raise DiscoveryError(f"OIDC discovery failed: {url} lacks {', '.join(missing)}")
    return doc


def safe_username(value: str) -> str:
    """A JupyterHub- and DNS-friendly name: lowercase ``[a-z0-9._-]``, no leading symbol."""
    name = re.sub(r"[^a-z0-9._-]+", "-", value.strip().lower()).strip("-._")
    return name[:64]


def login_nonce(state: str, secret: bytes) -> str:
    """The OIDC nonce for one login, derived from its OAuth ``state`` parameter.

    Derived rather than stored: the callback recomputes it from the ``state`` it is called
    with, which oauthenticator has already checked against this browser's state cookie, so
    a replayed ID token from another login fails the nonce check.
    """
    digest = hmac.new(secret, f"oidc-nonce:{state}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class UmbrellaLoginHandler(OAuthLoginHandler):
    """oauthenticator's login redirect (state, PKCE), plus an OIDC ``nonce``."""

    def authorize_redirect(self, *args: Any, extra_params: dict | None = None, **kw: Any) -> None:
        extra_params = dict(extra_params or {})
        state = extra_params["state"]
        extra_params["nonce"] = login_nonce(state, self.settings["cookie_secret"])
        super().authorize_redirect(*args, extra_params=extra_params, **kw)


class UmbrellaLogoutHandler(OAuthLogoutHandler):
    """Ends the hub session, then RP-initiated logout at the issuer, which sends the user back."""

    _id_token: str | None = None

    async def handle_logout(self) -> None:
        await super().handle_logout()
        user = self.current_user  # still known to this request after the cookie is cleared
        if user is not None:
            self._id_token = ((await user.get_auth_state()) or {}).get("id_token")

    async def render_logout_page(self) -> None:
        end_session = self.authenticator.end_session_url
        if not end_session:
            return await super().render_logout_page()
        back = f"{self.request.protocol}://{self.request.host}{self.hub.base_url}login"
        params = {"client_id": self.authenticator.client_id, "post_logout_redirect_uri": back}
        if self._id_token:
            params["id_token_hint"] = self._id_token
        self.redirect(f"{end_session}?{urlencode(params)}")


class UmbrellaOAuthenticator(GenericOAuthenticator):
    """Log in with Umbrella (or a facility Keycloak brokering it) over OpenID Connect."""

    login_handler = UmbrellaLoginHandler
    logout_handler = UmbrellaLogoutHandler

    issuer = Unicode(
        "",
        config=True,
        help="""The OIDC issuer URL, e.g. https://umbrella.example.eu/realms/umbrella.

        At start-up the authenticator reads <issuer>/.well-known/openid-configuration and
        fills authorize_url, token_url, userdata_url and the end-session URL; an endpoint
        set explicitly wins.
        """,
    )
    discovery_timeout = Float(
        30.0,
        config=True,
        help="Seconds to keep retrying OIDC discovery at start-up before failing.",
    )
    request_timeout = Float(
        10.0,
        config=True,
        help="""Seconds to wait for the identity provider on each request (token exchange,
        userinfo, signing keys), queueing included. A provider that is down or hanging gets
        the user a clear page after this long, never a request that hangs.""",
    )
    http_max_clients = Integer(
        100,
        config=True,
        help="""Requests to the identity provider in flight at once. tornado's default of 10,
        shared with the hub's own calls to the proxy, makes a class of 100 signing in
        together wait in a queue until their requests time out.""",
    )
    end_session_url = Unicode(
        "",
        config=True,
        help="The issuer's end_session_endpoint, for logout. Default: from discovery.",
    )
    username_claims = List(
        Unicode(),
        default_value=["preferred_username", "email", "sub"],
        config=True,
        help="""Claims tried in order for the username.

        A claim is used only if it already is a portal username (lowercase [a-z0-9._-]),
        so that "JDoe" can never become "jdoe"; ``email`` only when the provider verified
        it (``email_verified``), as its local part and a 64-bit digest of the whole address
        ("fay.li-3f2a9c1e5b7d8a90"), so that no two addresses give one name; ``sub`` as a
        stable hash ("u-<12 hex>").
        """,
    )
    identities_file = Unicode(
        "",
        config=True,
        help="""SQLite file binding each username to the identity (issuer, sub) that first
        signed in with it, forever: deleting the user does not free the name. Empty: the
        binding lives in the user's auth_state only.""",
    )
    groups_claim = Unicode(
        "groups",
        config=True,
        help="Claim listing the user's groups: a list, or a space-separated string.",
    )
    group_prefixes = List(
        Unicode(),
        default_value=[],
        config=True,
        help="Prefixes stripped from group names, e.g. urn:geant:umbrellaid.org:group: .",
    )
    proposals_claim = Unicode(
        "proposals",
        config=True,
        help="Claim listing the user's proposal ids; kept in auth_state for the catalogue.",
    )
    jwks_url = Unicode(
        "",
        config=True,
        help="The issuer's JWKS (signing keys) URL. Default: jwks_uri from discovery.",
    )
    id_token_leeway = Float(
        60.0,
        config=True,
        help="Seconds of clock skew tolerated when checking the ID token's exp and iat.",
    )
    id_token_algorithms = List(
        Unicode(),
        default_value=list(ASYMMETRIC_ALGORITHMS),
        config=True,
        help="Signature algorithms accepted for ID tokens. Only asymmetric ones are allowed.",
    )
    refresh_margin = Float(
        120.0,
        config=True,
        help="""Refresh the user's tokens when they expire within this many seconds.

        Checked before every spawn (and when JupyterHub refreshes auth); a failed refresh
        sends the user to log in again.
        """,
    )
    login_logo_url = Unicode(
        "",
        config=True,
        help="Image shown on the login button (a URL or a data: URI); empty for none.",
    )

    @default("login_service")
    def _login_service_default(self) -> str:
        return "Umbrella"

    @default("scope")
    def _scope_default(self) -> list[str]:
        return ["openid", "profile", "email"]

    @default("enable_auth_state")
    def _enable_auth_state_default(self) -> bool:
        return True

    @default("manage_groups")
    def _manage_groups_default(self) -> bool:
        return True

    @default("auth_state_groups_key")
    def _auth_state_groups_key_default(self) -> str:
        return "groups"

    @default("custom_403_message")
    def _custom_403_message_default(self) -> str:
        return (
            "You are signed in with Umbrella, but your account is not in a group allowed to"
            " use this portal. If you think it should be, contact the facility's user office."
        )

    @default("basic_auth")
    def _basic_auth_default(self) -> bool:
        return True  # client_secret_basic: the OIDC default token endpoint authentication

    @default("refresh_pre_spawn")
    def _refresh_pre_spawn_default(self) -> bool:
        return True  # every spawn asks the provider for the user's claims again

    @default("auth_refresh_strict")
    def _auth_refresh_strict_default(self) -> bool:
        return True  # never keep serving a user whose tokens could not be refreshed

    @default("http_client")
    def _http_client_default(self) -> AsyncHTTPClient:
        """A client of the authenticator's own, with room for a class signing in at once."""
        timeouts = {
            "connect_timeout": self.request_timeout,
            "request_timeout": self.request_timeout,
        }
        return AsyncHTTPClient(
            force_instance=True, max_clients=self.http_max_clients, defaults=timeouts
        )

    async def authenticate(self, handler: Any, data: Any = None, **kwargs: Any) -> Any:
        """Sign in; a provider that does not answer gets the user a page saying so (503)."""
        try:
            return await super().authenticate(handler, data, **kwargs)
        except (HTTPClientError, OSError, TimeoutError) as e:
            if not unreachable(e):
                raise
            self.log.warning("Sign-in failed: the identity provider did not answer: %s", e)
            raise web.HTTPError(
                503,
                f"Sign-in failed: the identity provider ({self.issuer}) did not answer within"
                f" {self.request_timeout:.0f} s. Nothing was changed; please try again in a"
                " minute.",
            ) from None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        bad = sorted(set(self.id_token_algorithms) - set(ASYMMETRIC_ALGORITHMS))
        if bad:
            raise ValueError(
                f"UmbrellaOAuthenticator.id_token_algorithms: {', '.join(bad)} not allowed;"
                f" use asymmetric algorithms ({', '.join(ASYMMETRIC_ALGORITHMS)})"
            )
        if self.issuer:
            self.apply_discovery(
                discover(self.issuer, self.discovery_timeout, self.validate_server_cert)
            )
        self._keys = JwksCache(self._fetch_jwks)

    async def _fetch_jwks(self) -> dict[str, Any]:
        return await self.httpfetch(
            self.jwks_url,
            "fetching the issuer's signing keys",
            method="GET",
            validate_cert=self.validate_server_cert,
        )

    def apply_discovery(self, doc: dict[str, Any]) -> None:
        """Fill each endpoint the site did not set from the discovery document."""
        for key, trait in ENDPOINTS.items():
            if not getattr(self, trait) and doc.get(key):
                setattr(self, trait, doc[key])
        if not self.end_session_url and doc.get("end_session_endpoint"):
            self.end_session_url = doc["end_session_endpoint"]
        if not self.jwks_url:
            self.jwks_url = doc["jwks_uri"]

    def get_custom_html(self, base_url: str) -> str:
        """The login button: "Sign in with <login_service>", with the configured logo.

        JupyterHub renders this as a template, so ``authenticator_login_url`` keeps ``next``.
        """
        logo = ""
        if self.login_logo_url:
            src = html.escape(self.login_logo_url, quote=True)
            logo = f'<img src="{src}" alt="" style="height:1.6em;margin-right:.5em">'
        label = html.escape(f"Sign in with {self.login_service}")
        return (
            '<div class="service-login text-center">'
            '<a role="button" class="btn btn-jupyter btn-lg" id="umbrella-login"'
            f' href="{{{{ authenticator_login_url | e }}}}">{logo}{label}</a></div>'
        )

    # -- tokens ----------------------------------------------------------------------

    async def get_token_info(self, handler: Any, params: dict) -> dict:
        """Exchange a code (or refresh token) for tokens, and verify the ID token.

        At login the ID token is required and must carry this login's nonce; a refresh
        may omit it. ``expires_at`` is added so a spawn can tell whether to refresh.
        """
        token_info = await super().get_token_info(handler, params)
        login = params.get("grant_type") == "authorization_code"
        id_token = token_info.get("id_token")
        if login and not id_token:
            raise web.HTTPError(
                403, "The identity provider returned no ID token; request the 'openid' scope."
            )
        if id_token:
            nonce = None
            if login:
                state = handler.get_argument("state", "")
                nonce = login_nonce(state, handler.settings["cookie_secret"])
            try:
                claims = await verify_id_token(
                    id_token,
                    keys=self._keys,
                    issuer=self.issuer,
                    client_id=self.client_id,
                    nonce=nonce,
                    leeway=self.id_token_leeway,
                    algorithms=tuple(self.id_token_algorithms),
                )
            except IdTokenError as e:
                self.log.warning("Refusing login: %s", e)
                raise web.HTTPError(403, f"Sign-in refused: {e}") from None
            token_info["id_token_sub"] = claims["sub"]
        if token_info.get("expires_in"):
            token_info["expires_at"] = time.time() + float(token_info["expires_in"])
        return token_info

    async def token_to_user(self, token_info: dict) -> dict:
        """Userinfo claims, which must be about the subject the ID token named."""
        user_info = await super().token_to_user(token_info)
        expected = token_info.get("id_token_sub")
        if expected and str(user_info.get("sub")) != expected:
            raise web.HTTPError(403, "Sign-in refused: userinfo and ID token name different users")
        return user_info

    async def refresh_user(self, user: Any, handler: Any = None, **kwargs: Any) -> Any:
        """Keep the user's tokens fresh; ``False`` (log in again) when that is impossible.

        Tokens that stay valid beyond ``refresh_margin`` are kept as they are. Otherwise
        the refresh token is used; if there is none, or the provider refuses it, the user
        must log in again rather than run with a stale token: a browser session is ended.
        A provider that does not answer ends nothing (``True``: keep what is known); the
        claims then stay as old as their ``claims_at``, and a spawn refuses claims that old
        (:meth:`spawner.common.PortalSpawner.prepare_spawn`) with a page saying why.
        """
        by_token = handler is not None and request_by_token(handler)
        refreshed = await self._refresh_tokens(user, handler)
        if refreshed is False and handler is not None and not by_token:
            handler.clear_login_cookie()  # the browser's next request goes to the login page
        return refreshed

    async def _refresh_tokens(self, user: Any, handler: Any) -> Any:
        try:
            model = await self.current_model(user, handler)
        except ProviderUnreachable as e:
            self.log.warning(
                "Claims of %s not read again, the provider did not answer: %s", user.name, e
            )
            return True
        except IdentityUnavailable as e:
            self.log.warning(
                "Refreshing the identity of %s failed (%s): login needed", user.name, e
            )
            return False
        if model is None:
            self.log.info("The identity provider no longer vouches for %s: login needed", user.name)
            return False
        return model

    async def current_model(self, user: Any, handler: Any = None) -> dict | None:
        """The user's auth model with their claims as the provider releases them *now*.

        Groups and proposals can be taken away at the provider at any time; a spawn, and
        the access audit of running servers, must not rely on what the login said. Valid
        tokens are used to read userinfo again; tokens about to expire are refreshed first.

        ``None`` only for the provider's own clear "no" to this user: userinfo refusing an
        access token that has not expired (revoked tokens, a disabled account), be it after
        a refused refresh. Anything
        else, from an outage to a session that simply reached its maximum age, is
        :class:`IdentityUnavailable`: it says nothing about the user's rights.
        """
        state = await user.get_auth_state() or {}
        if not state.get("access_token"):
            raise IdentityUnavailable(f"the hub holds no tokens for {user.name}")
        token_info = {
            **(state.get("token_response") or {}),
            "access_token": state["access_token"],
            "refresh_token": state.get("refresh_token"),
            "id_token": state.get("id_token"),
        }
        expires_at = token_info.get("expires_at")
        live = expires_at is None or expires_at > time.time()
        try:
            if expires_at is not None and expires_at - time.time() <= self.refresh_margin:
                token_info = await self._refreshed(state, handler) or token_info
            model = await token_to_auth_model(self, token_info)
        except HTTPClientError as e:
            # userinfo refuses a live token: revoked (Keycloak answers 401 invalid_token,
            # others 400 access_denied or 403)
            if live and e.code in (400, 401, 403):
                return None
            kind = ProviderUnreachable if unreachable(e) else IdentityUnavailable
            raise kind(f"{type(e).__name__}: {e}") from None
        except IdentityUnavailable:
            raise
        except Exception as e:  # unreachable, timed out, nonsense
            kind = ProviderUnreachable if unreachable(e) else IdentityUnavailable
            raise kind(f"{type(e).__name__}: {e}") from None
        if model["name"] != user.name:
            raise IdentityUnavailable(f"the claims of {user.name} now map to {model['name']}")
        return model

    async def _refreshed(self, state: dict, handler: Any) -> dict | None:
        """New tokens for ``state``'s refresh token; ``None`` when it is refused but the
        access token still lives (userinfo then says whether the user is still welcome)."""
        live = (state.get("token_response") or {}).get("expires_at", 0) > time.time()
        if not state.get("refresh_token"):
            if live:
                return None
            raise IdentityUnavailable("the tokens expired and cannot be refreshed")
        params = self.build_refresh_token_request_params(state["refresh_token"])
        try:
            token_info = await self.get_token_info(handler, params)
        except HTTPClientError as e:  # invalid_grant: a session's end, or a revocation
            if unreachable(e):
                raise ProviderUnreachable(f"refresh: {e}") from None
            if live:
                return None
            raise IdentityUnavailable(f"refresh refused ({e.code})") from None
        if not token_info.get("refresh_token"):  # many providers keep the old one valid
            token_info["refresh_token"] = state["refresh_token"]
        return token_info

    async def run_post_auth_hook(self, handler: Any, authentication: dict) -> dict:
        """Bind the username to this identity (issuer, sub), or refuse another identity.

        Two identities whose claims map to the same username must never share an account
        (and its data, home and memberships): the first one keeps the name for good, even
        after the user is deleted, and the second is told why it cannot sign in.
        """
        name = authentication["name"]
        state = authentication.get("auth_state") or {}
        identity = (state.get("iss") or self.issuer, state.get("sub") or "")
        user = handler.find_user(name) if handler is not None else None
        known = ((await user.get_auth_state()) or {}) if user is not None else {}
        recorded = (known.get("iss") or identity[0], known.get("sub") or identity[1])
        bound = await asyncio.to_thread(self._bind, name, recorded)
        if bound != identity or recorded != identity:
            self.log.warning("Refusing login as %s: identity %s is not %s", name, identity, bound)
            raise web.HTTPError(
                403,
                f"Sign-in refused: the username {name!r} already belongs to another"
                " identity. Ask the portal's administrators to resolve the clash.",
            )
        return await super().run_post_auth_hook(handler, authentication)

    def _bind(self, name: str, identity: tuple[str, str]) -> tuple[str, str]:
        """The identity ``name`` is bound to, binding it to ``identity`` if it is free."""
        if not self.identities_file:
            return identity
        with closing(sqlite3.connect(self.identities_file, timeout=30)) as db, db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS identities (name TEXT PRIMARY KEY, issuer TEXT"
                " NOT NULL, sub TEXT NOT NULL, bound_at TEXT DEFAULT CURRENT_TIMESTAMP)"
            )
            db.execute(
                "INSERT OR IGNORE INTO identities (name, issuer, sub) VALUES (?, ?, ?)",
                (name, *identity),
            )
            (issuer, sub) = db.execute(
                "SELECT issuer, sub FROM identities WHERE name = ?", (name,)
            ).fetchone()
        return issuer, sub

    def claims_list(self, claims: dict[str, Any], name: str) -> list[str]:
        """A claim that may be a list or a space-separated string, as a list of strings."""
        value = claims.get(name) or []
        if isinstance(value, str):
            value = value.split()
        return [str(v) for v in value]

    def user_info_to_username(self, user_info: dict[str, Any]) -> str:
        for claim in self.username_claims:
            value = user_info.get(claim)
            if not value:
                continue
            value = str(value)
            if claim == "email":
                if user_info.get("email_verified") is not True:
                    continue  # anyone can claim an address the provider did not check
                address = value.strip().lower()
                digest = hashlib.sha256(address.encode()).hexdigest()[:16]  # 64 bits
                value = f"{safe_username(address.split('@', 1)[0])[:40]}-{digest}"
            elif claim == "sub":
                value = "u-" + hashlib.sha256(value.encode()).hexdigest()[:12]
            if value and safe_username(value) == value:
                return value
        raise ValueError(
            f"none of the username claims {self.username_claims} is in the user's claims;"
            f" the provider released {sorted(user_info)}"
        )

    def strip_group(self, group: str) -> str:
        for prefix in self.group_prefixes:
            if group.startswith(prefix):
                return group[len(prefix) :]
        return group

    def build_auth_state_dict(self, token_info: dict, user_info: dict) -> dict:
        state = super().build_auth_state_dict(token_info, user_info)
        state["iss"] = self.issuer
        state["sub"] = str(user_info.get("sub", ""))
        state["claims_at"] = time.time()  # when the provider last vouched for these claims
        state["groups"] = sorted(
            {self.strip_group(g) for g in self.claims_list(user_info, self.groups_claim)}
        )
        state["proposals"] = sorted(set(self.claims_list(user_info, self.proposals_claim)))
        # Only an address the provider verified may grant access (SciCat's sharedWith).
        verified = user_info.get("email_verified") is True and user_info.get("email")
        state["email"] = str(user_info["email"]).lower() if verified else ""
        return state
