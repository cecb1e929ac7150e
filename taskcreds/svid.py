"""TLS from X.509-SVIDs for aiohttp servers and clients (the broker and the sidecar).

spiffe-tls is pyOpenSSL-based and does not plug into aiohttp, so both sides build a standard
``ssl.SSLContext`` from an SVID here: the peer chain is verified against the SPIFFE trust bundle
(no hostname check: SPIFFE authenticates by URI SAN, not DNS name) and the caller then reads the
peer's SPIFFE ID with :func:`peer_spiffe_id` and authorizes it.

The SVID's private key never touches a disk file. Python's ``ssl`` can only load a key from a
path, so it is written to an anonymous in-memory file (``memfd_create``), loaded through
``/proc/self/fd/N`` and the descriptor closed at once: nothing appears in any directory, nothing
survives the call, and no other process (or the agent container sharing a volume) can open it.

Error tree::

    SvidError            a certificate, SPIFFE ID or SVID that is not what SPIFFE requires
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID

if TYPE_CHECKING:
    from spiffe import X509Bundle, X509BundleSet, X509Svid

__all__ = [
    "SvidError",
    "X509SvidMaterial",
    "server_context",
    "client_context",
    "load_svid",
    "peer_spiffe_id",
    "spiffe_id_of",
    "parse_spiffe_id",
]

_MAX_ID_LENGTH = 2048
# used with fullmatch: "$" would also match before a trailing newline
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_ID_RULES = (
    "spiffe://<trust domain>[/<path>], trust domain of lowercase letters, digits, '.', '-', '_'; "
    "path segments of letters, digits, '.', '-', '_' (no empty, '.' or '..' segments, no trailing '/')"
)


class SvidError(Exception):
    """A certificate, SPIFFE ID or SVID that does not meet the SPIFFE rules; the message says which."""


@dataclass(frozen=True)
class X509SvidMaterial:
    """One X.509-SVID with its key and trust bundle, as plain DER, whoever issued it.

    Made by the development authority (demo, tests) or from py-spiffe's objects
    (:meth:`from_spiffe`, SPIRE in a cluster), so every TLS helper works the same with both.
    ``key_der`` is hidden from ``repr`` so a logged or asserted object never shows the key.
    """

    spiffe_id: str
    chain_der: tuple[bytes, ...] = field(repr=False)  # leaf first
    key_der: bytes = field(repr=False)  # PKCS#8 DER
    bundle_der: tuple[bytes, ...] = field(repr=False)  # trust bundle CA certificates
    expires_at: datetime

    def __repr__(self) -> str:
        return (f"X509SvidMaterial(spiffe_id={self.spiffe_id!r}, leaf_sha256={self.fingerprint[:16]}..., "
                f"chain={len(self.chain_der)}, bundle={len(self.bundle_der)}, "
                f"expires_at={self.expires_at.isoformat()})")

    @property
    def leaf_der(self) -> bytes:
        return self.chain_der[0]

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the leaf certificate (hex): a non-secret name for this SVID in logs and tests."""
        return hashlib.sha256(self.chain_der[0]).hexdigest()

    def chain_pem(self) -> bytes:
        return b"".join(ssl.DER_cert_to_PEM_cert(der).encode() for der in self.chain_der)

    def bundle_pem(self) -> bytes:
        return b"".join(ssl.DER_cert_to_PEM_cert(der).encode() for der in self.bundle_der)

    @classmethod
    def from_spiffe(cls, svid: X509Svid, bundles: X509BundleSet | X509Bundle) -> X509SvidMaterial:
        """Convert py-spiffe's SVID and its trust domain's bundle (or a bundle set holding it).

        Only the SVID's own trust domain is trusted: federated bundles in a set are left out, so
        a peer from another trust domain is refused at the handshake.
        """
        from spiffe import X509BundleSet  # py-spiffe is imported only when its objects are used

        trust_domain = svid.spiffe_id.trust_domain
        if isinstance(bundles, X509BundleSet):
            bundle = bundles.get_bundle_for_trust_domain(trust_domain)
            if bundle is None:
                raise SvidError(f"the bundle set has no bundle for trust domain {trust_domain.name!r}")
        else:
            bundle = bundles
            if bundle.trust_domain != trust_domain:
                raise SvidError(f"bundle is for trust domain {bundle.trust_domain.name!r}, "
                                f"the SVID for {trust_domain.name!r}")
        der = serialization.Encoding.DER
        authorities = sorted(c.public_bytes(der) for c in bundle.x509_authorities)
        if not authorities:
            raise SvidError(f"the bundle of trust domain {trust_domain.name!r} holds no CA certificate")
        return cls(
            spiffe_id=str(svid.spiffe_id),
            chain_der=tuple(c.public_bytes(der) for c in svid.cert_chain),
            key_der=svid.private_key.private_bytes(
                der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            bundle_der=tuple(authorities),
            expires_at=svid.leaf.not_valid_after_utc,
        )


def parse_spiffe_id(spiffe_id: str) -> tuple[str, str]:
    """Split a SPIFFE ID into (trust domain, path), checked per the SPIFFE ID specification.

    The path is ``""`` for a trust domain's own ID, otherwise it starts with ``/``.
    """
    if not isinstance(spiffe_id, str) or not spiffe_id:
        raise SvidError(f"{spiffe_id!r} is not a SPIFFE ID: expected {_ID_RULES}")
    if len(spiffe_id) > _MAX_ID_LENGTH:
        raise SvidError(f"SPIFFE ID is {len(spiffe_id)} characters long, at most {_MAX_ID_LENGTH} allowed")
    if not spiffe_id.startswith("spiffe://"):
        raise SvidError(f"{spiffe_id!r} is not a SPIFFE ID: it must start with 'spiffe://'; "
                        f"expected {_ID_RULES}")
    rest = spiffe_id[len("spiffe://"):]
    trust_domain, slash, path = rest.partition("/")
    if not trust_domain or not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise SvidError(f"{spiffe_id!r} has an invalid trust domain {trust_domain!r}; expected {_ID_RULES}")
    if not slash:
        return trust_domain, ""
    for segment in path.split("/"):
        if not segment or segment in (".", "..") or not _SEGMENT.fullmatch(segment):
            raise SvidError(f"{spiffe_id!r} has an invalid path segment {segment!r}; expected {_ID_RULES}")
    return trust_domain, "/" + path


def spiffe_id_of(cert_der: bytes) -> str:
    """The SPIFFE ID of an X.509-SVID: its one and only URI SAN, which must be a valid SPIFFE ID."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError as exc:
        raise SvidError(f"not a DER X.509 certificate: {exc}") from None
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        raise SvidError("certificate has no subjectAltName: an X.509-SVID carries exactly one "
                        "spiffe:// URI SAN") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)  # type: ignore[attr-defined]
    if len(uris) != 1:
        raise SvidError(f"certificate has {len(uris)} URI SANs: an X.509-SVID carries exactly one "
                        "spiffe:// URI SAN")
    _not_a_ca(cert, str(uris[0]))
    parse_spiffe_id(uris[0])
    return str(uris[0])


def _not_a_ca(cert: x509.Certificate, uri: str) -> None:
    """A leaf X.509-SVID must not be a CA (SPIFFE X.509-SVID spec, 4.1 and 4.3): CA:TRUE or the
    keyCertSign/cRLSign key usages would let its holder sign SVIDs for any ID of the trust domain."""
    try:
        constraints = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:  # type: ignore[attr-defined]
        raise SvidError(f"certificate for {uri!r} is a CA (basicConstraints CA:TRUE): an X.509-SVID leaf "
                        "must have CA:FALSE")
    try:
        usage = cert.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
    except x509.ExtensionNotFound:
        return
    if usage.key_cert_sign or usage.crl_sign:  # type: ignore[attr-defined]
        raise SvidError(f"certificate for {uri!r} has key usage keyCertSign or cRLSign: an X.509-SVID "
                        "leaf must not sign certificates")


def peer_spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The SPIFFE ID of the peer's verified leaf certificate, or None.

    None means "no SPIFFE identity": no TLS, no client certificate (``client_cert="optional"``),
    or a certificate that is not a valid X.509-SVID. The chain was already verified against
    the bundle during the handshake; this only reads the identity. With aiohttp:
    ``peer_spiffe_id(request.transport.get_extra_info("ssl_object"))``.
    """
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        return spiffe_id_of(der)
    except SvidError:
        return None


def peer_validity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> tuple[datetime, datetime] | None:
    """(notBefore, notAfter) of the peer's leaf certificate, UTC, or None without one.

    The handshake checks the dates once; a kept-alive connection outlives them. A server that
    must not serve an expired SVID checks this on every request.
    """
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def load_svid(context: ssl.SSLContext, svid: X509SvidMaterial) -> None:
    """(Re)load an SVID's chain, key and bundle into an existing context.

    Used to rotate a server's SVID in place: an aiohttp server keeps its one SSLContext for its
    lifetime, and new handshakes pick up the newly loaded certificate. CAs are only ever added
    (OpenSSL has no way to remove one), which is what a bundle rotation needs anyway: the old
    CA stays trusted until the process restarts.
    """
    if not svid.bundle_der:
        raise SvidError(f"SVID {svid.spiffe_id!r} comes with an empty trust bundle: "
                        "nothing to verify peers with")
    context.load_verify_locations(cadata=b"".join(svid.bundle_der))
    _load_chain_from_memory(context, svid)


def server_context(svid: X509SvidMaterial, *,
                   client_cert: Literal["required", "optional"] = "required") -> ssl.SSLContext:
    """A TLS 1.2+ server context presenting ``svid`` and verifying client SVIDs against its bundle.

    With ``client_cert="optional"`` clients without a certificate get through the handshake
    (for ``/healthz`` and the JWKS); :func:`peer_spiffe_id` then returns None for them.
    """
    if client_cert not in ("required", "optional"):
        raise SvidError(f"client_cert={client_cert!r}: expected 'required' or 'optional'")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED if client_cert == "required" else ssl.CERT_OPTIONAL
    load_svid(context, svid)
    return context


def client_context(svid: X509SvidMaterial) -> ssl.SSLContext:
    """A TLS 1.2+ client context presenting ``svid`` and verifying the server chain against its bundle.

    Hostnames are not checked (SPIFFE IDs are not DNS names): check the server's ID with
    :func:`peer_spiffe_id` after connecting.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    load_svid(context, svid)
    return context


def _load_chain_from_memory(context: ssl.SSLContext, svid: X509SvidMaterial) -> None:
    """Load chain and key through an anonymous memfd, so the key never exists as a file."""
    try:
        key = serialization.load_der_private_key(svid.key_der, password=None)
    except (ValueError, TypeError):
        # never include the bytes: they are the key
        raise SvidError(f"the private key of SVID {svid.spiffe_id!r} is not PKCS#8 DER") from None
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.memfd_create("taskcreds-svid", os.MFD_CLOEXEC)
    try:
        os.write(fd, svid.chain_pem() + key_pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    except ssl.SSLError as exc:
        raise SvidError(f"SVID {svid.spiffe_id!r}: certificate chain and key do not load "
                        f"({exc.reason or 'mismatched key'})") from None
    finally:
        os.close(fd)
