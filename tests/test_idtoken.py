"""ID token verification against a JWKS served over real HTTP, with tokens we sign ourselves.

oidc-provider-mock always signs correctly, so the ways a token can be wrong (tampered,
expired, wrong audience, wrong nonce, forged algorithm) are produced here with our own
keys, served from a local JWKS endpoint exactly as an issuer serves them.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from portal.idtoken import IdTokenError, JwksCache, verify_id_token

ISSUER = "https://umbrella.example.eu"
CLIENT = "panosc-portal"


class Keys:
    """The issuer's key pairs; ``published`` is what its JWKS endpoint serves."""

    def __init__(self) -> None:
        self.private: dict[str, rsa.RSAPrivateKey] = {}
        self.published: list[str] = []
        self.fetches = 0

    def add(self, kid: str) -> None:
        self.private[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.published.append(kid)

    def jwks(self) -> dict:
        keys = []
        for kid in self.published:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private[kid].public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}

    def sign(self, claims: dict, kid: str = "k1", alg: str = "RS256") -> str:
        return jwt.encode(claims, self.private[kid], algorithm=alg, headers={"kid": kid})


@pytest.fixture
def keys() -> Iterator[Keys]:
    k = Keys()
    k.add("k1")
    yield k


@pytest.fixture
def jwks_url(keys: Keys) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            keys.fetches += 1
            body = json.dumps(keys.jwks()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/jwks"
    server.shutdown()


def claims(**overrides: object) -> dict:
    now = int(time.time())
    base = {"iss": ISSUER, "sub": "u-123", "aud": CLIENT, "iat": now, "exp": now + 300}
    base.update({"nonce": "n-1"})
    base.update(overrides)
    return base


def cache(url: str, min_refetch: float = 0.0) -> JwksCache:
    async def fetch() -> dict:
        return requests.get(url, timeout=5).json()

    return JwksCache(fetch, min_refetch=min_refetch)


async def verify(token: str, url: str, nonce: str | None = "n-1", **kw: object) -> dict:
    keys = kw.pop("keys", None) or cache(url)
    return await verify_id_token(token, keys=keys, issuer=ISSUER, client_id=CLIENT, nonce=nonce)


async def test_a_good_token_is_accepted(keys: Keys, jwks_url: str) -> None:
    assert (await verify(keys.sign(claims()), jwks_url))["sub"] == "u-123"


def tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=="))
    data["sub"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    return f"{header}.{forged}.{signature}"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda k: tamper(k.sign(claims())), "Signature verification failed"),
        (lambda k: k.sign(claims(exp=int(time.time()) - 3600)), "expired"),
        (lambda k: k.sign(claims(aud="another-client")), "Audience"),
        (lambda k: k.sign(claims(iss="https://evil.example")), "issuer"),
        (lambda k: k.sign(claims(nonce="replayed")), "nonce"),
        (lambda k: k.sign(claims(iat=int(time.time()) + 3600)), "not yet valid"),
        (lambda k: k.sign(claims(aud=[CLIENT, "other"], azp="other")), "azp"),
        (lambda k: k.sign({"iss": ISSUER, "sub": "x", "aud": CLIENT, "nonce": "n-1"}), "exp"),
    ],
    ids=[
        "tampered",
        "expired",
        "wrong-aud",
        "wrong-iss",
        "wrong-nonce",
        "future-iat",
        "azp",
        "no-exp",
    ],
)
async def test_bad_tokens_are_refused(keys: Keys, jwks_url: str, make, reason: str) -> None:
    with pytest.raises(IdTokenError, match=reason):
        await verify(make(keys), jwks_url)


async def test_alg_none_is_refused(keys: Keys, jwks_url: str) -> None:
    token = jwt.encode(claims(), None, algorithm="none")
    with pytest.raises(IdTokenError, match="'none' is not accepted"):
        await verify(token, jwks_url)


async def test_hmac_signed_with_the_public_key_is_refused(keys: Keys, jwks_url: str) -> None:
    """The classic algorithm-confusion forgery: HS256 keyed with the issuer's public key."""
    pem = (
        keys.private["k1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = {"alg": "HS256", "kid": "k1", "typ": "JWT"}
    signing_input = ".".join(
        base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")
        for part in (header, claims())
    )
    import hashlib
    import hmac

    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    token = signing_input + "." + base64.urlsafe_b64encode(signature).decode().rstrip("=")
    with pytest.raises(IdTokenError, match="'HS256' is not accepted"):
        await verify(token, jwks_url)


async def test_key_rotation_fetches_the_new_keys(keys: Keys, jwks_url: str) -> None:
    shared = cache(jwks_url)
    await verify(keys.sign(claims()), jwks_url, keys=shared)
    assert keys.fetches == 1
    await verify(keys.sign(claims()), jwks_url, keys=shared)
    assert keys.fetches == 1  # known key: no new fetch
    keys.add("k2")
    keys.published = ["k2"]  # the issuer rotated
    assert (await verify(keys.sign(claims(), kid="k2"), jwks_url, keys=shared))["sub"] == "u-123"
    assert keys.fetches == 2


async def test_unknown_key_ids_cannot_hammer_the_issuer(keys: Keys, jwks_url: str) -> None:
    limited = cache(jwks_url, min_refetch=60)
    await verify(keys.sign(claims()), jwks_url, keys=limited)
    keys.add("rogue")  # a key the issuer never published
    for _ in range(5):
        with pytest.raises(IdTokenError, match="unknown key id 'rogue'"):
            await verify(keys.sign(claims(), kid="rogue"), jwks_url, keys=limited)
    assert keys.fetches == 1


async def test_a_new_key_under_the_same_key_id_is_fetched(keys: Keys, jwks_url: str) -> None:
    """A provider restarted with a new key may keep its key id (oidc-provider-mock does)."""
    shared = cache(jwks_url)
    await verify(keys.sign(claims()), jwks_url, keys=shared)
    keys.add("k1")  # a new key pair, same id: the old public key no longer verifies
    assert (await verify(keys.sign(claims()), jwks_url, keys=shared))["sub"] == "u-123"
    assert keys.fetches == 2


async def test_forged_signatures_cannot_hammer_the_issuer(keys: Keys, jwks_url: str) -> None:
    limited = cache(jwks_url, min_refetch=60)
    genuine = keys.sign(claims())
    await verify(genuine, jwks_url, keys=limited)
    forger = Keys()
    forger.add("k1")  # the issuer's key id, someone else's key
    for _ in range(5):
        with pytest.raises(IdTokenError, match="Signature verification failed"):
            await verify(forger.sign(claims()), jwks_url, keys=limited)
    assert keys.fetches == 1
    assert (await verify(genuine, jwks_url, keys=limited))["sub"] == "u-123"
