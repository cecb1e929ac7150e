"""The per-pod CA the egress proxy uses to terminate the agent's TLS for credential-bearing hosts.

The sidecar makes the CA at start (ECDSA P-256, valid about a day) and keeps its key only in this
object's memory: the agent trusts the CA through a bundle of public certificates
(:func:`write_ca_bundle`), and the CA signs one short-lived leaf per host the proxy intercepts.
Leaves are cached and renewed well before they expire. Python's ``ssl`` loads keys only from a
path, so leaf keys go through an anonymous ``memfd`` exactly like :mod:`taskcreds.svid` does:
no key ever exists as a file in any directory.

A restarted sidecar makes a new CA and rewrites the bundle; agents that cached the old bundle in
memory must reconnect, which is the price of never persisting the key.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import ssl
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["PodCA", "PodCAError", "write_ca_bundle", "system_roots_path", "CA_BUNDLE_FILE"]

CA_BUNDLE_FILE = "ca-bundle.crt"
CA_LIFETIME = timedelta(hours=24)
LEAF_LIFETIME = timedelta(hours=1)
LEAF_RENEW_BEFORE = timedelta(minutes=15)  # a leaf is replaced when less than this is left
BACKDATE = timedelta(minutes=5)  # tolerate a little clock skew between sidecar and agent
MAX_CACHED_LEAVES = 512  # hosts are bounded by the routes; this only caps a pathological pod
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?)*$"
)
_SYSTEM_ROOTS = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
)


class PodCAError(Exception):
    """A hostname the CA will not sign for, or a CA bundle that cannot be written."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class PodCA:
    """A CA made in memory for one pod; signs cached, short-lived leaf certificates per host."""

    def __init__(self, pod_name: str, *, now: Callable[[], datetime] | None = None) -> None:
        self._now = now or _utcnow
        self.pod_name = pod_name
        self._key = ec.generate_private_key(ec.SECP256R1())
        start = self._now() - BACKDATE
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "taskcreds"),
                # CN is limited to 64 characters; a pod name may be up to 253
                x509.NameAttribute(NameOID.COMMON_NAME, f"taskcreds pod CA {pod_name}"[:64]),
            ]
        )
        public = self._key.public_key()
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + BACKDATE + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self._cert_pem = self._cert.public_bytes(serialization.Encoding.PEM)
        self._leaves: OrderedDict[str, tuple[ssl.SSLContext, datetime]] = OrderedDict()
        self.leaves_issued = 0  # how many leaves were signed (tests and metrics read it)

    def __repr__(self) -> str:
        return f"PodCA(pod_name={self.pod_name!r}, expires_at={self.expires_at.isoformat()})"

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def expires_at(self) -> datetime:
        return self._cert.not_valid_after_utc

    def cert_pem(self) -> bytes:
        """The CA certificate (public material only), PEM."""
        return self._cert_pem

    def server_context_for(self, hostname: str) -> ssl.SSLContext:
        """A TLS server context presenting a leaf for ``hostname``, signed by this CA.

        The same context is returned until its leaf gets within LEAF_RENEW_BEFORE of expiry.
        Only HTTP/1.1 is offered over ALPN: the proxy speaks nothing else to the agent.
        """
        host = normalize_hostname(hostname)
        now = self._now()
        cached = self._leaves.get(host)
        if cached is not None and cached[1] - now > LEAF_RENEW_BEFORE:
            self._leaves.move_to_end(host)
            return cached[0]
        context, not_after = self._issue(host, now)
        self._leaves[host] = (context, not_after)
        self._leaves.move_to_end(host)
        while len(self._leaves) > MAX_CACHED_LEAVES:
            self._leaves.popitem(last=False)
        return context

    def _issue(self, host: str, now: datetime) -> tuple[ssl.SSLContext, datetime]:
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        not_before = now - BACKDATE
        # never outlive the CA: a leaf valid past its issuer fails verification anyway
        not_after = min(now + LEAF_LIFETIME, self.expires_at)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.memfd_create("taskcreds-podca-leaf", os.MFD_CLOEXEC)
        try:
            os.write(fd, cert.public_bytes(serialization.Encoding.PEM) + self._cert_pem + key_pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        self.leaves_issued += 1
        return context, not_after


def normalize_hostname(hostname: str) -> str:
    """Lower-case DNS name or IP literal without a trailing dot; PodCAError for anything else."""
    host = hostname.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(host):
        raise PodCAError(
            f"{hostname!r} is not a hostname the pod CA signs for: expected a DNS name "
            "(letters, digits, '-', '_', dot-separated labels of at most 63 characters) "
            "or an IP address"
        )
    return host


def system_roots_path() -> Path | None:
    """Where the system's trusted roots are: certifi's bundle when installed, else the OS bundle."""
    try:
        import certifi
    except ImportError:
        certifi = None  # type: ignore[assignment]
    candidates = ([certifi.where()] if certifi is not None else []) + list(_SYSTEM_ROOTS)
    for candidate in candidates:
        path = Path(candidate)
        if path.is_file():
            return path
    return None


def write_ca_bundle(
    directory: Path, ca: PodCA, *, roots: Path | None = None, name: str = CA_BUNDLE_FILE
) -> Path:
    """Write system roots + the pod CA to ``directory/name`` atomically, mode 0444; return its path.

    Tools that take one CA file (SSL_CERT_FILE, GIT_SSL_CAINFO, CURL_CA_BUNDLE, REQUESTS_CA_BUNDLE)
    replace the system store with it, so the roots must be in it too, or every unintercepted host
    would fail to verify. Only certificates go in: a PRIVATE KEY block in ``roots`` is refused.
    """
    roots = roots if roots is not None else system_roots_path()
    if roots is None:
        raise PodCAError(
            "no system CA bundle found (looked for certifi and "
            f"{', '.join(_SYSTEM_ROOTS)}); install ca-certificates or certifi"
        )
    try:
        system = roots.read_bytes()
    except OSError as exc:
        raise PodCAError(f"cannot read system CA bundle {roots}: {exc.strerror}") from None
    if b"PRIVATE KEY" in system:
        raise PodCAError(f"{roots} holds a private key; a CA bundle must hold certificates only")
    data = system.rstrip(b"\n") + b"\n\n# taskcreds pod CA (" + ca.pod_name.encode() + b")\n" + ca.cert_pem()
    directory = Path(directory)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o444)
        os.replace(tmp, directory / name)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise PodCAError(f"cannot write CA bundle to {directory / name}: {exc.strerror}") from None
    return directory / name
