"""Finding 8: an issuer reached over https is verified, even when configured in plain Python.

A man in the middle with a certificate of their own (here: a self-signed one on a real
HTTPS server on loopback) must not be able to serve the discovery document or the signing
keys: with those, they could sign ID tokens for any user.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from portal.auth import DiscoveryError, UmbrellaOAuthenticator


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture
def impostor(tmp_path: Path) -> Iterator[str]:
    """An https issuer whose certificate nobody trusts; yields its URL."""
    documents: dict[str, dict] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(documents.get(self.path, {})).encode()
            self.send_response(200 if self.path in documents else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*self_signed(tmp_path))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    issuer = f"https://127.0.0.1:{server.server_address[1]}"
    documents["/.well-known/openid-configuration"] = {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/jwks",
    }
    documents["/jwks"] = {"keys": []}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield issuer
    server.shutdown()
    server.server_close()


def test_discovery_refuses_an_untrusted_certificate_by_default(impostor: str) -> None:
    # As a site configures it in jupyterhub_config.py: the issuer, nothing about TLS.
    with pytest.raises(DiscoveryError, match="CERTIFICATE_VERIFY_FAILED"):
        UmbrellaOAuthenticator(issuer=impostor, client_id="portal", discovery_timeout=1)


def test_the_signing_keys_are_fetched_with_verification(impostor: str) -> None:
    # Discovery let through on purpose (the only way to reach the keys at all), then the
    # keys are fetched as at every login: verification is on again, and refuses them.
    auth = UmbrellaOAuthenticator(
        issuer=impostor, client_id="portal", discovery_timeout=1, validate_server_cert=False
    )
    assert auth.jwks_url == f"{impostor}/jwks"  # the server itself answers
    assert asyncio.run(auth._fetch_jwks()) == {"keys": []}
    auth.validate_server_cert = True
    with pytest.raises(Exception, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        asyncio.run(auth._fetch_jwks())
