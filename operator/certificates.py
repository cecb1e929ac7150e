"""The webhook's CA and serving certificate: made with ``cryptography``, kept in a Secret, rotated early.

The kube-apiserver calls the webhook over TLS and trusts only the ``caBundle`` of the
MutatingWebhookConfiguration, so the operator owns a small private CA:

- CA: ECDSA P-256, 5 years (:data:`CA_LIFETIME`), re-made once 2/3 of its life has passed.
  While the old CA is still valid it stays in the bundle next to the new one, so a replica that
  still serves a certificate of the old CA keeps working until it reloads.
- serving certificate: ECDSA P-256, 90 days (:data:`SERVING_LIFETIME`), re-issued after 60 days;
  DNS names of the webhook Service (:func:`dns_names_for`).

Pure functions make and inspect certificates; :func:`ensure_webhook_certificate` is the thin I/O
shell that talks to the cluster (only through :class:`~taskcreds.operator.cluster.Cluster`) and
writes ``tls.crt``/``tls.key`` for :mod:`taskcreds.operator.tlsreload` to pick up.
Private keys never appear in a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from taskcreds.operator.cluster import Cluster, Conflict

from taskcreds.logs import fields

__all__ = [
    "CA_LIFETIME", "SERVING_LIFETIME", "ROTATE_FRACTION", "CLOCK_SKEW",
    "SECRET_CA_CERT", "SECRET_CA_KEY", "SECRET_TLS_CERT", "SECRET_TLS_KEY",
    "CertificateError", "StoredPair",
    "make_ca", "make_serving_cert", "needs_rotation", "dns_names_for", "not_after",
    "check_stored_pair", "ensure_webhook_certificate", "maintain_webhook_certificate",
    "write_pair_atomically",
]

log = logging.getLogger("taskcreds.operator.certificates")

CA_LIFETIME = timedelta(days=5 * 365)
SERVING_LIFETIME = timedelta(days=90)
ROTATE_FRACTION = 2 / 3
#: certificates start this long before "now" so a replica or API server whose clock lags accepts them
CLOCK_SKEW = timedelta(minutes=5)

# Secret keys: kubernetes.io/tls shape plus the CA key, so any replica can rotate
SECRET_CA_CERT = "ca.crt"
SECRET_CA_KEY = "ca.key"
SECRET_TLS_CERT = "tls.crt"
SECRET_TLS_KEY = "tls.key"
_LABELS = {"app.kubernetes.io/name": "taskcreds", "app.kubernetes.io/component": "webhook-certificate"}


class CertificateError(ValueError):
    """A certificate or key that cannot be used; the message says which and why (never the key)."""


# --- pure: make and inspect --------------------------------------------------------------------

def dns_names_for(service: str, namespace: str) -> list[str]:
    """Every name the API server may use for the Service: svc, svc.ns, svc.ns.svc, and the FQDN."""
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local"]


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise CertificateError("now must be timezone-aware (UTC), got a naive datetime")
    return now.astimezone(UTC)


def make_ca(common_name: str, now: datetime, lifetime: timedelta = CA_LIFETIME) -> tuple[bytes, bytes]:
    """A self-signed CA that may only sign end-entity certificates (pathlen 0). Returns (cert, key) PEM."""
    now = _utc(now)
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def make_serving_cert(ca_cert_pem: bytes, ca_key_pem: bytes, dns_names: list[str], now: datetime,
                      lifetime: timedelta = SERVING_LIFETIME) -> tuple[bytes, bytes]:
    """A TLS server certificate for ``dns_names`` signed by the CA; never outlives the CA."""
    if not dns_names:
        raise CertificateError("dns_names is empty: a serving certificate needs at least one DNS name")
    now = _utc(now)
    ca_cert = _load_cert(ca_cert_pem, "CA certificate")
    ca_key = _load_key(ca_key_pem, "CA key")
    if not _same_public_key(ca_cert, ca_key):
        raise CertificateError("CA key does not belong to the CA certificate")
    key = _new_key()
    expires = min(now + lifetime, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - CLOCK_SKEW, ca_cert.not_valid_before_utc))
        .not_valid_after(expires)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def not_after(cert_pem: bytes) -> datetime:
    """Expiry (UTC) of the first certificate in ``cert_pem``."""
    return _load_cert(cert_pem, "certificate").not_valid_after_utc


def needs_rotation(cert_pem: bytes, now: datetime, fraction: float = ROTATE_FRACTION) -> bool:
    """True once ``fraction`` of the certificate's life has passed (or it is not yet/no longer valid)."""
    if not 0 < fraction <= 1:
        raise CertificateError(f"fraction must be in (0, 1], got {fraction}")
    cert = _load_cert(cert_pem, "certificate")
    now = _utc(now)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        return True
    return now >= start + (end - start) * fraction


@dataclass(frozen=True)
class StoredPair:
    """The four PEM blobs kept in the Secret. ``ca_bundle`` may hold a previous CA after the current one."""

    ca_bundle: bytes
    ca_key: bytes
    tls_cert: bytes
    tls_key: bytes

    @property
    def ca_cert(self) -> bytes:
        """The current CA: the first certificate of the bundle."""
        return _first_pem(self.ca_bundle)

    def __repr__(self) -> str:  # keys stay out of reprs and tracebacks
        return "StoredPair(<pem>)"

    def secret_data(self) -> dict[str, bytes]:
        return {SECRET_CA_CERT: self.ca_bundle, SECRET_CA_KEY: self.ca_key,
                SECRET_TLS_CERT: self.tls_cert, SECRET_TLS_KEY: self.tls_key}


def check_stored_pair(pair: StoredPair, dns_names: list[str], now: datetime,
                      fraction: float = ROTATE_FRACTION) -> str | None:
    """None when ``pair`` can be served as is; otherwise why not (for the log, never key material).

    Checks: everything parses, keys match certificates, the serving cert is signed by the current
    CA and names every DNS name, and neither certificate is due for rotation.
    """
    try:
        ca = _load_cert(pair.ca_cert, SECRET_CA_CERT)
        ca_key = _load_key(pair.ca_key, SECRET_CA_KEY)
        leaf = _load_cert(pair.tls_cert, SECRET_TLS_CERT)
        leaf_key = _load_key(pair.tls_key, SECRET_TLS_KEY)
    except CertificateError as exc:
        return str(exc)
    if not _same_public_key(ca, ca_key):
        return f"{SECRET_CA_KEY} does not belong to {SECRET_CA_CERT}"
    if not _same_public_key(leaf, leaf_key):
        return f"{SECRET_TLS_KEY} does not belong to {SECRET_TLS_CERT}"
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return f"{SECRET_TLS_CERT} is not signed by the CA in {SECRET_CA_CERT}"
    try:
        sans = set(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                   .value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        sans = set()
    missing = [n for n in dns_names if n not in sans]
    if missing:
        return f"{SECRET_TLS_CERT} does not name {', '.join(missing)}"
    if needs_rotation(pair.ca_cert, now, fraction):
        return "the CA is due for rotation"
    if needs_rotation(pair.tls_cert, now, fraction):
        return "the serving certificate is due for rotation"
    return None


def plan_pair(stored: StoredPair | None, common_name: str, dns_names: list[str], now: datetime,
              fraction: float = ROTATE_FRACTION) -> tuple[StoredPair, str | None]:
    """The pair to serve and, when it is new, why it was made. Pure apart from key generation."""
    if stored is not None:
        why = check_stored_pair(stored, dns_names, now, fraction)
        if why is None:
            return stored, None
        # keep a still-good CA (no caBundle churn); make a new one when it is due or unusable
        ca_ok = False
        try:
            ca_ok = (_same_public_key(_load_cert(stored.ca_cert, "ca"), _load_key(stored.ca_key, "ca key"))
                     and not needs_rotation(stored.ca_cert, now, fraction))
        except CertificateError:
            ca_ok = False
        if ca_ok:
            cert, key = make_serving_cert(stored.ca_cert, stored.ca_key, dns_names, now)
            return StoredPair(stored.ca_bundle, stored.ca_key, cert, key), why
    else:
        why = "no stored certificate"
    ca_cert, ca_key = make_ca(common_name, now)
    bundle = ca_cert
    if stored is not None:  # the old CA stays trusted until it expires: replicas switch over smoothly
        try:
            old = _load_cert(stored.ca_cert, "ca")
            if old.not_valid_after_utc > _utc(now):
                bundle = ca_cert + old.public_bytes(serialization.Encoding.PEM)
        except CertificateError:
            pass
    cert, key = make_serving_cert(ca_cert, ca_key, dns_names, now)
    return StoredPair(bundle, ca_key, cert, key), why


# --- I/O shell --------------------------------------------------------------------------------

def _pair_from_secret(secret: dict[str, Any] | None) -> StoredPair | None:
    if not secret:
        return None
    data = secret.get("data")
    if not isinstance(data, dict):
        data = {}
    # each key on its own: a missing or undecodable tls.key must not discard a still-valid CA
    # (plan_pair keeps it, so replicas serving its leaves stay trusted); check_stored_pair says why
    return StoredPair(*(_decode_key(data.get(k))
                        for k in (SECRET_CA_CERT, SECRET_CA_KEY, SECRET_TLS_CERT, SECRET_TLS_KEY)))


def _decode_key(value: Any) -> bytes:
    """One Secret data value; b"" when missing or not base64 (unusable, never an exception)."""
    if not isinstance(value, str):
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error is a ValueError
        return b""


def write_pair_atomically(cert_dir: str | os.PathLike[str], cert_pem: bytes, key_pem: bytes) -> bool:
    """Write ``tls.key`` then ``tls.crt`` (each via rename, key 0600); False when both were current.

    Two renames cannot be one atomic step: a reader may briefly see a new key next to the old
    certificate. :mod:`taskcreds.operator.tlsreload` ignores such a mismatched pair until it matches.
    """
    directory = Path(cert_dir)
    directory.mkdir(parents=True, exist_ok=True)
    changed = False
    for name, blob, mode in ((SECRET_TLS_KEY, key_pem, 0o600), (SECRET_TLS_CERT, cert_pem, 0o644)):
        target = directory / name
        try:
            if target.read_bytes() == blob:
                continue
        except OSError:
            pass
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        changed = True
    return changed


async def ensure_webhook_certificate(cluster: Cluster, *, namespace: str, secret_name: str, service: str,
                                     webhook_configuration: str, cert_dir: str | os.PathLike[str],
                                     now: datetime | None = None) -> datetime:
    """Make sure a valid serving pair is stored, trusted (caBundle) and on disk; return its expiry.

    Safe to run from every replica at once and periodically (hourly is plenty): a valid stored pair
    is reused; a missing, broken or nearly expired one is replaced. When another replica wins the
    write (:class:`Conflict`), its pair is read back and used. After writing, the Secret is read
    again so every replica converges on the stored pair even when the API had no conflict to report.
    """
    now = _utc(now or datetime.now(UTC))
    dns_names = dns_names_for(service, namespace)
    common_name = f"taskcreds-webhook-ca.{namespace}"
    pair: StoredPair | None = None
    for _attempt in range(5):
        secret = await cluster.get_secret(namespace, secret_name)
        stored = _pair_from_secret(secret)
        pair, why = plan_pair(stored, common_name, dns_names, now)
        if why is None:
            break
        log.info("webhook certificate (re)made", extra=fields(
            secret=f"{namespace}/{secret_name}", reason=why, expires=not_after(pair.tls_cert).isoformat()))
        # optimistic concurrency: create only if absent, replace only the version we read, so two
        # replicas starting together never each serve their own pair (one would be untrusted)
        version = ((secret or {}).get("metadata") or {}).get("resourceVersion")
        try:
            if secret is None:
                await cluster.apply_secret(namespace, secret_name, pair.secret_data(), labels=dict(_LABELS),
                                           create_only=True)
            else:
                await cluster.apply_secret(namespace, secret_name, pair.secret_data(), labels=dict(_LABELS),
                                           resource_version=version)
        except Conflict:
            log.info("another replica wrote the webhook certificate first; using its pair",
                     extra=fields(secret=f"{namespace}/{secret_name}"))
            continue
        # read back: with last-writer-wins semantics the stored pair is the one every replica serves
        winner = _pair_from_secret(await cluster.get_secret(namespace, secret_name))
        if winner is not None and check_stored_pair(winner, dns_names, now) is None:
            pair = winner
        break
    else:
        raise CertificateError(
            f"could not store the webhook certificate in Secret {namespace}/{secret_name}: "
            "5 write conflicts in a row")
    assert pair is not None
    await cluster.patch_webhook_ca_bundle(webhook_configuration, pair.ca_bundle)
    write_pair_atomically(cert_dir, pair.tls_cert, pair.tls_key)
    return not_after(pair.tls_cert)


async def maintain_webhook_certificate(cluster: Cluster, *, namespace: str, secret_name: str, service: str,
                                      webhook_configuration: str, cert_dir: str | os.PathLike[str],
                                      interval: float = 3600.0, retry: float = 30.0) -> None:
    """Run :func:`ensure_webhook_certificate` every ``interval`` seconds until cancelled.

    Call ``ensure_webhook_certificate`` once before serving (the files must exist), then run this
    as a task. A failure (API down, conflicts) is logged by type and retried after ``retry``
    seconds; the served pair stays valid for weeks, so there is time.
    """
    delay = interval
    while True:
        await asyncio.sleep(delay)
        try:
            await ensure_webhook_certificate(
                cluster, namespace=namespace, secret_name=secret_name, service=service,
                webhook_configuration=webhook_configuration, cert_dir=cert_dir)
            delay = interval
        except Exception as exc:  # keep the loop alive whatever the cause
            log.warning("webhook certificate check failed; retrying", extra=fields(
                secret=f"{namespace}/{secret_name}", error=type(exc).__name__, retry_seconds=retry))
            delay = retry


# --- helpers ------------------------------------------------------------------------------------

def _first_pem(bundle: bytes) -> bytes:
    end = b"-----END CERTIFICATE-----"
    i = bundle.find(end)
    return bundle if i < 0 else bundle[: i + len(end)] + b"\n"


def _load_cert(pem: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_first_pem(pem))
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{what} is not a PEM certificate") from exc


def _load_key(pem: bytes, what: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise CertificateError(f"{what} is not an unencrypted PEM private key") from None  # no key text
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{what} is a {type(key).__name__}, expected an ECDSA key")
    return key


def _same_public_key(cert: x509.Certificate, key: Any) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt))
