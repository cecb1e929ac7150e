"""A server ``ssl.SSLContext`` whose certificate follows ``tls.crt``/``tls.key`` on disk.

The webhook's serving pair is rotated underneath a running server (by
:func:`taskcreds.operator.certificates.ensure_webhook_certificate`, cert-manager, or a kubelet
Secret-volume swap). :class:`ReloadingCertificate` polls the files' stat signature (cheap, about once
a second) and, when it changed, loads the new pair into the *same* context: connections already
established keep their certificate, every handshake after the load gets the new one, and no
listener is restarted, so no request is dropped.

A pair caught half-written (new key, old certificate) is ignored with one warning and retried
when either file changes again. The bytes checked are exactly the bytes loaded: they are handed to
OpenSSL through an in-memory file (memfd), never re-read from the watched path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from taskcreds.logs import fields
from taskcreds.metrics import OperatorMetrics

__all__ = ["ReloadingCertificate", "TLSFilesError", "DEFAULT_POLL_INTERVAL"]

log = logging.getLogger("taskcreds.operator.tlsreload")

DEFAULT_POLL_INTERVAL = 1.0


class TLSFilesError(ValueError):
    """The certificate/key files cannot be served; names the file and the problem (never key bytes)."""


_Signature = tuple[tuple[int, int, int, int], tuple[int, int, int, int]]


class ReloadingCertificate:
    """Owns a server SSLContext and keeps its certificate equal to the files' current valid pair.

    The first load happens in the constructor and raises :class:`TLSFilesError` when the files
    are unusable, so a command can refuse to start with a clear message.
    """

    def __init__(self, cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str], *,
                 metrics: OperatorMetrics | None = None) -> None:
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self._metrics = metrics
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.not_after: datetime | None = None
        self.loads = 0  # how many pairs were loaded, for tests and logs
        self._seen: _Signature | None = None
        signature = self._signature()
        try:
            cert_pem, key_pem = self._read()
        except OSError as exc:
            raise TLSFilesError(f"cannot read {exc.filename}: {exc.strerror}") from None
        problem = check_pair(cert_pem, key_pem, self.cert_file, self.key_file)
        if problem:
            raise TLSFilesError(problem)
        self._load(cert_pem, key_pem)
        self._seen = signature

    def reload_if_changed(self) -> bool:
        """Load the pair when the files changed since the last look and now match; True when loaded."""
        signature = self._signature()
        if signature is None or signature == self._seen:
            return False
        self._seen = signature
        try:
            cert_pem, key_pem = self._read()
        except OSError as exc:
            log.warning("webhook certificate files unreadable; keeping the current one",
                        extra=fields(cert=str(self.cert_file), error=type(exc).__name__))
            return False
        problem = check_pair(cert_pem, key_pem, self.cert_file, self.key_file)
        if problem:
            log.warning("webhook certificate files not usable yet; keeping the current one",
                        extra=fields(cert=str(self.cert_file), problem=problem))
            return False
        self._load(cert_pem, key_pem)
        log.info("webhook certificate reloaded", extra=fields(
            cert=str(self.cert_file), expires=self.not_after.isoformat() if self.not_after else None))
        return True

    async def watch(self, interval: float = DEFAULT_POLL_INTERVAL) -> None:
        """Poll forever (cancel the task to stop). Two ``stat`` calls per tick: no cost worth measuring."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.reload_if_changed()
            except Exception as exc:  # never let a bad file kill the watcher
                log.error("webhook certificate reload failed", extra=fields(error=type(exc).__name__))

    # --- internals ---

    def _signature(self) -> _Signature | None:
        try:
            a, b = os.stat(self.cert_file), os.stat(self.key_file)
        except OSError:
            return None
        return ((a.st_ino, a.st_size, a.st_mtime_ns, a.st_ctime_ns),
                (b.st_ino, b.st_size, b.st_mtime_ns, b.st_ctime_ns))

    def _read(self) -> tuple[bytes, bytes]:
        return self.cert_file.read_bytes(), self.key_file.read_bytes()

    def _load(self, cert_pem: bytes, key_pem: bytes) -> None:
        with _in_memory_file(cert_pem) as cert_path, _in_memory_file(key_pem) as key_path:
            try:
                self.context.load_cert_chain(cert_path, key_path)
            except ssl.SSLError as exc:
                raise TLSFilesError(
                    f"OpenSSL refused {self.cert_file} / {self.key_file}: {exc.reason}") from None
        self.not_after = x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc
        self.loads += 1
        if self._metrics is not None:
            self._metrics.webhook_certificate_expiry.set(self.not_after.timestamp())


def check_pair(cert_pem: bytes, key_pem: bytes, cert_name: object = "certificate",
               key_name: object = "key") -> str | None:
    """None when the key belongs to the (first) certificate; otherwise what is wrong."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return f"{cert_name} does not hold a PEM certificate (expected -----BEGIN CERTIFICATE-----)"
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return f"{key_name} does not hold an unencrypted PEM private key"
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*fmt) != key.public_key().public_bytes(*fmt):
        return f"{key_name} does not belong to {cert_name} (a pair caught mid-rotation?)"
    return None


@contextlib.contextmanager
def _in_memory_file(data: bytes) -> Iterator[str]:
    """A path OpenSSL can open that holds ``data`` and never touches a disk (memfd on Linux)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("taskcreds-tls", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="taskcreds-tls-") as tmp:  # pragma: no cover - non-Linux
        path = Path(tmp) / "pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        yield str(path)
