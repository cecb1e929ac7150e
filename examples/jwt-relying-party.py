"""A relying party of the taskcreds `jwt` provider: fetch the broker's public keys and revoked list,
verified the SPIFFE way, and check a token with them.

Why this shape: the broker serves its X.509-SVID, a certificate whose identity is a SPIFFE ID (its
URI SAN) and that carries no DNS name, so a client checking the host name in the issuer URL
(`https://taskcreds-broker.taskcreds-system.svc:8444`) is refused. Do what the sidecar does instead:
verify the chain against the trust domain's SPIFFE bundle and then require the broker's SPIFFE ID,
before sending anything. Never turn certificate verification off: whoever answers instead of the
broker could then hand you their own signing key.

    python3 jwt-relying-party.py --bundle /run/spire-bundle/bundle.crt \\
        --broker https://taskcreds-broker.taskcreds-system.svc:8444 \\
        --broker-id spiffe://example.org/ns/taskcreds-system/sa/taskcreds-operator \\
        --audience agents/my-api --namespace agents  < token

prints the token's claims, or exits 1 saying why it is refused. Needs Python 3.10+, `cryptography`
and `PyJWT` (pip install 'pyjwt[crypto]'). See docs/broker-api.md, "Reaching and verifying the broker".
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import sys
import urllib.parse
from typing import Any

from cryptography import x509

MAX_BODY = 1 << 20


class WrongBroker(Exception):
    """The server's certificate chains to the bundle but names another SPIFFE ID: nothing was sent."""


class Refused(Exception):
    """The token is not acceptable (the message says why; it never contains the token)."""


def broker_context(bundle_pem: str) -> ssl.SSLContext:
    """TLS 1.2+, the chain verified against the SPIFFE bundle only (no system roots).

    Host-name checking is off because the identity is checked as a SPIFFE ID right after the
    handshake (:func:`fetch_json`); the chain is still verified (CERT_REQUIRED).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = False
    context.load_verify_locations(cadata=bundle_pem)
    return context


def spiffe_id_of(cert_der: bytes) -> str | None:
    """The SPIFFE ID of an X.509-SVID: its one URI SAN, if that is a spiffe:// URI."""
    cert = x509.load_der_x509_certificate(cert_der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if len(uris) == 1 and uris[0].startswith("spiffe://") else None


def fetch_json(url: str, bundle_pem: str, broker_id: str, timeout: float = 10.0) -> Any:
    """GET ``url`` from the broker: chain checked against the bundle, then its SPIFFE ID, then the request."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"{url!r}: expected an https:// URL of the broker")
    conn = http.client.HTTPSConnection(
        parts.hostname, parts.port or 443, context=broker_context(bundle_pem), timeout=timeout
    )
    try:
        conn.connect()  # the handshake verifies the chain: ssl.SSLCertVerificationError otherwise
        assert conn.sock is not None
        der = conn.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        peer = spiffe_id_of(der) if der else None
        if peer != broker_id:
            raise WrongBroker(f"{parts.hostname}:{parts.port} presented SPIFFE ID {peer!r}, expected "
                              f"{broker_id!r}; nothing was sent to it")
        conn.request("GET", parts.path or "/", headers={"Accept": "application/json"})
        response = conn.getresponse()
        body = response.read(MAX_BODY + 1)
        if response.status != 200 or len(body) > MAX_BODY:
            raise RuntimeError(f"GET {url}: HTTP {response.status}, {len(body)} bytes")
        return json.loads(body)
    finally:
        conn.close()


def verify_token(token: str, *, jwks: dict[str, Any], revoked: dict[str, Any], issuer: str,
                 audience: str, namespace: str | None = None,
                 cluster_source: bool = False) -> dict[str, Any]:
    """The token's claims once signature, iss, aud, exp, the revoked list and the source checks pass
    (docs/broker-api.md, "what a relying party must check")."""
    import jwt  # PyJWT

    try:
        kid = jwt.get_unverified_header(token).get("kid")
        key = next((k for k in jwks.get("keys", []) if k.get("kid") == kid), None)
        if key is None:
            raise Refused(f"no key {kid!r} in the JWKS (signed by another issuer, or the JWKS is stale)")
        claims: dict[str, Any] = jwt.decode(
            token, jwt.PyJWK(key, algorithm="ES256").key, algorithms=["ES256"], issuer=issuer,
            audience=audience, options={"require": ["iss", "aud", "exp", "jti", "namespace", "source_kind"]},
        )
    except jwt.PyJWTError as exc:
        raise Refused(f"{type(exc).__name__}: {exc}") from None
    if claims["jti"] in {entry.get("jti") for entry in revoked.get("revoked", [])}:
        raise Refused(f"jti {claims['jti']} is revoked (its task ended or it was replaced)")
    expected_kind = "ClusterCredentialSource" if cluster_source else "CredentialSource"
    if claims["source_kind"] != expected_kind:
        raise Refused(f"minted by a {claims['source_kind']}, expected a {expected_kind}")
    if namespace is not None and claims["namespace"] != namespace:
        raise Refused(f"issued to a pod in namespace {claims['namespace']!r}, expected {namespace!r}")
    return claims


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="PEM file with the SPIFFE trust bundle")
    parser.add_argument("--broker", required=True,
                        help="the broker's URL, e.g. https://taskcreds-broker.taskcreds-system.svc:8444")
    parser.add_argument("--broker-id", required=True, help="the broker's SPIFFE ID")
    parser.add_argument("--issuer", help="the tokens' iss if broker.jwtIssuer is set (default: --broker)")
    parser.add_argument("--audience", required=True)
    parser.add_argument("--namespace", help="the namespace whose pods may present the token")
    parser.add_argument("--cluster-source", action="store_true",
                        help="the audience is a ClusterCredentialSource's")
    args = parser.parse_args(argv)
    with open(args.bundle, encoding="ascii") as f:
        bundle = f.read()
    base = args.broker.rstrip("/")
    jwks = fetch_json(base + "/.well-known/jwks.json", bundle, args.broker_id)
    revoked = fetch_json(base + "/v1/jwt/revoked", bundle, args.broker_id)
    try:
        claims = verify_token(sys.stdin.read().strip(), jwks=jwks, revoked=revoked,
                              issuer=args.issuer or args.broker, audience=args.audience,
                              namespace=args.namespace, cluster_source=args.cluster_source)
    except Refused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(claims, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
