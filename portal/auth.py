"""Umbrella sign-in: an OpenID Connect authenticator for photon and neutron facilities.

Umbrella (UmbrellaID) is reached either directly or through a facility Keycloak acting as
a broker, and the two release different claims, so every claim name is a setting. Unlike
oauthenticator's ``GenericOAuthenticator``, which this extends, it reads the issuer's
``/.well-known/openid-configuration`` itself: a site sets ``issuer`` and nothing else.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any
from urllib.parse import urlencode

import requests
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthLogoutHandler
from traitlets import Bool, Float, List, Unicode, default

ENDPOINTS = {
    "authorization_endpoint": "authorize_url",
    "token_endpoint": "token_url",
    "userinfo_endpoint": "userdata_url",
}


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


class UmbrellaLogoutHandler(OAuthLogoutHandler):
    """Ends the hub session, then RP-initiated logout at the issuer, which sends the user back."""

    async def render_logout_page(self) -> None:
        end_session = self.authenticator.end_session_url
        if not end_session:
            return await super().render_logout_page()
        back = f"{self.request.protocol}://{self.request.host}{self.hub.base_url}login"
        params = {"client_id": self.authenticator.client_id, "post_logout_redirect_uri": back}
        self.redirect(f"{end_session}?{urlencode(params)}")


class UmbrellaOAuthenticator(GenericOAuthenticator):
    """Log in with Umbrella (or a facility Keycloak brokering it) over OpenID Connect."""

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

        For ``email`` the local part is used; for ``sub`` a stable hash ("u-<12 hex>").
        The result is normalised to lowercase [a-z0-9._-].
        """,
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
    discover_on_start = Bool(
        True,
        config=True,
        help="Read the discovery document when the hub starts (turn off only in tests).",
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

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.issuer and self.discover_on_start:
            self.apply_discovery(discover(self.issuer, self.discovery_timeout, self.tls_verify))

    def apply_discovery(self, doc: dict[str, Any]) -> None:
        """Fill each endpoint the site did not set from the discovery document."""
        for key, trait in ENDPOINTS.items():
            if not getattr(self, trait) and doc.get(key):
                setattr(self, trait, doc[key])
        if not self.end_session_url and doc.get("end_session_endpoint"):
            self.end_session_url = doc["end_session_endpoint"]

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
                value = value.split("@", 1)[0]
            elif claim == "sub":
                value = "u-" + hashlib.sha256(value.encode()).hexdigest()[:12]
            name = safe_username(value)
            if name:
                return name
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
        state["sub"] = str(user_info.get("sub", ""))
        state["groups"] = sorted(
            {self.strip_group(g) for g in self.claims_list(user_info, self.groups_claim)}
        )
        state["proposals"] = sorted(set(self.claims_list(user_info, self.proposals_claim)))
        return state
