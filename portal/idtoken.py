"""OpenID Connect ID token verification: signature against the issuer's JWKS, then claims.

oauthenticator decodes ID tokens without checking their signature; a portal that mounts
data by identity must not. Keys are fetched from ``jwks_uri`` and fetched again when a
token names a key id we do not know, or a known key id fails the signature check (the
provider rotated its keys; some reuse the key id, as a restarted provider may), at most once
per ``min_refetch`` seconds so that forged tokens cannot make us hammer the provider.
Only asymmetric algorithms are accepted, so ``alg: none`` and an HMAC token "signed" with
the provider's public key are both refused.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt

ASYMMETRIC_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip


class IdTokenError(Exception):
    """The ID token must not be trusted; the message says why, for logs and the 403 page."""


class JwksCache:
    """The issuer's signing keys by key id, refreshed on an unknown ``kid``."""

    def __init__(self, fetch: Callable[[], Awaitable[dict[str, Any]]], min_refetch: float = 2.0):
        self._fetch = fetch
        self._min_refetch = min_refetch
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")

    async def _refresh(self) -> None:
        document = await self._fetch()
        keys: dict[str | None, jwt.PyJWK] = {}
        for data in document.get("keys", []):
            if data.get("use", "sig") != "sig":
                continue
            try:
                keys[data.get("kid")] = jwt.PyJWK(data)
            except jwt.PyJWTError:
                continue  # a key type we cannot use; others may still be fine
        self._keys = keys
        self._fetched_at = time.monotonic()

    def _due(self) -> bool:
        return time.monotonic() - self._fetched_at >= self._min_refetch

    async def refetch(self) -> bool:
        """Fetch the keys again if the last fetch is old enough; whether it was."""
        if not self._due():
            return False
        await self._refresh()
        return True

    async def key(self, kid: str | None) -> jwt.PyJWK:
        """The key for ``kid``, fetching the JWKS again if it is new to us."""
        if kid not in self._keys and self._due():
            await self._refresh()
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        if kid not in self._keys:
            raise IdTokenError(f"ID token signed with unknown key id {kid!r}")
        return self._keys[kid]


async def verify_id_token(
    token: str,
    *,
    keys: JwksCache,
    issuer: str,
    client_id: str,
    nonce: str | None,
    leeway: float = 60.0,
    algorithms: tuple[str, ...] = ASYMMETRIC_ALGORITHMS,
) -> dict[str, Any]:
    """The verified claims of ``token``, or :class:`IdTokenError`.

    Checks the signature, ``iss``, ``aud`` (and ``azp`` when there are several audiences),
    ``exp`` and ``iat`` with ``leeway`` seconds of clock skew, and ``nonce`` when one was
    sent in the authorization request.
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as e:
        raise IdTokenError(f"ID token is not a JWT: {e}") from None
    alg = header.get("alg")
    if alg not in algorithms:
        raise IdTokenError(
            f"ID token algorithm {alg!r} is not accepted (accepted: {', '.join(algorithms)})"
        )
    key = await keys.key(header.get("kid"))

    def decode(key: jwt.PyJWK) -> dict[str, Any]:
        return jwt.decode(
            token,
            key=key.key,
            algorithms=[alg],
            audience=client_id,
            issuer=issuer,
            leeway=leeway,
            options={"require": ["iss", "sub", "aud", "exp", "iat"]},
        )

    try:
        try:
            claims = decode(key)
        except jwt.InvalidSignatureError:
            if not await keys.refetch():  # a new key under the old id, or a forgery
                raise
            claims = decode(await keys.key(header.get("kid")))
    except jwt.PyJWTError as e:
        raise IdTokenError(f"ID token rejected: {e}") from None
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise IdTokenError("ID token rejected: several audiences and azp is not this client")
    if nonce is not None and not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
        raise IdTokenError("ID token rejected: nonce does not match this login")
    return claims
