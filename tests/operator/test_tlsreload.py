"""The serving certificate follows its files: rotation under load, half-written pairs, symlink swaps."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from taskcreds.operator import certificates as certs
from taskcreds.operator import webhook
from taskcreds.operator.tlsreload import ReloadingCertificate, TLSFilesError, check_pair

from taskcreds.metrics import register_operator

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def ca() -> tuple[bytes, bytes]:
    return certs.make_ca("reload-test-ca", NOW)


def new_pair(ca: tuple[bytes, bytes], days: int = 90) -> tuple[bytes, bytes]:
    return certs.make_serving_cert(*ca, ["localhost"], NOW, timedelta(days=days))


def der(cert_pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)


@dataclass
class Served:
    tls: ReloadingCertificate
    port: int
    client_ctx: ssl.SSLContext

    async def peer_cert(self) -> bytes:
        """DER of the certificate a brand-new connection is served."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=self.client_ctx,
                                                       server_hostname="localhost")
        try:
            return writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        finally:
            writer.close()
            await writer.wait_closed()


@pytest.fixture
async def served(ca: tuple[bytes, bytes], tmp_path: Path) -> AsyncIterator[Served]:
    certs.write_pair_atomically(tmp_path, *new_pair(ca))
    tls = ReloadingCertificate(tmp_path / "tls.crt", tmp_path / "tls.key", metrics=register_operator())
    app = web.Application()

    async def hello(_: web.Request) -> web.Response:
        await asyncio.sleep(0.002)  # a request in flight while the certificate changes
        return web.json_response({"status": "ok"})

    app.router.add_get("/healthz", hello)
    stop = asyncio.Event()
    ready: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(webhook.serve(app, tls, "127.0.0.1", 0, stop, poll_interval=0.02,
                                             on_ready=ready.set_result))
    _, port = (await asyncio.wait_for(ready, 5))[0]
    yield Served(tls, port, ssl.create_default_context(cadata=ca[0].decode()))
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_rotation_under_load_fails_no_request_and_new_connections_get_the_new_cert(
        served: Served, ca: tuple[bytes, bytes]) -> None:
    first = der(served.tls.cert_file.read_bytes())
    assert await served.peer_cert() == first
    failures: list[str] = []
    done = 0
    stop = asyncio.Event()

    async def client(keep_alive: bool) -> None:
        nonlocal done
        connector = aiohttp.TCPConnector(ssl=served.client_ctx, force_close=not keep_alive)
        async with aiohttp.ClientSession(connector=connector) as session:
            while not stop.is_set():
                try:
                    async with session.get(f"https://127.0.0.1:{served.port}/healthz",
                                           server_hostname="localhost") as resp:
                        if resp.status != 200:
                            failures.append(f"HTTP {resp.status}")
                        await resp.read()
                        done += 1
                except (aiohttp.ClientError, OSError) as exc:
                    failures.append(repr(exc))

    clients = [asyncio.create_task(client(keep_alive=i % 2 == 0)) for i in range(4)]
    seen = [first]
    for _ in range(3):
        await asyncio.sleep(0.1)
        cert, key = new_pair(ca)
        certs.write_pair_atomically(served.tls.cert_file.parent, cert, key)
        for _ in range(100):  # the watcher polls every 20 ms
            if await served.peer_cert() == der(cert):
                break
            await asyncio.sleep(0.02)
        seen.append(await served.peer_cert())
        assert seen[-1] == der(cert), "a new connection is served the new certificate"
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*clients)
    assert failures == []
    assert done > 50, f"only {done} requests ran during the rotations"
    assert len(set(seen)) == 4 and served.tls.loads == 4


async def test_a_half_written_pair_is_ignored_until_it_matches(served: Served, ca: tuple[bytes, bytes],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    before = der(served.tls.cert_file.read_bytes())
    cert, key = new_pair(ca)
    directory = served.tls.cert_file.parent
    with caplog.at_level(logging.WARNING, logger="taskcreds.operator.tlsreload"):
        (directory / "tls.key").write_bytes(key)  # the key lands first
        assert served.tls.reload_if_changed() is False
        assert served.tls.reload_if_changed() is False  # nothing changed since: no second warning
    warnings = [r for r in caplog.records if "not usable yet" in r.getMessage()]
    assert len(warnings) == 1 and "does not belong" in warnings[0].fields["problem"]  # type: ignore[attr-defined]
    assert "PRIVATE KEY" not in caplog.text
    assert await served.peer_cert() == before, "still serving the old, consistent pair"
    (directory / "tls.crt").write_bytes(cert)
    assert served.tls.reload_if_changed() is True
    assert await served.peer_cert() == der(cert)


@pytest.mark.parametrize("name, cert_bytes, key_bytes", [
    ("truncated certificate", lambda c, k: c[: len(c) // 2], lambda c, k: k),
    ("empty key", lambda c, k: c, lambda c, k: b""),
    ("certificate and key swapped", lambda c, k: k, lambda c, k: c),
])
def test_unusable_files_keep_the_current_certificate(ca: tuple[bytes, bytes], tmp_path: Path, name: str,
                                                     cert_bytes: object, key_bytes: object) -> None:
    certs.write_pair_atomically(tmp_path, *new_pair(ca))
    tls = ReloadingCertificate(tmp_path / "tls.crt", tmp_path / "tls.key")
    cert, key = new_pair(ca)
    (tmp_path / "tls.crt").write_bytes(cert_bytes(cert, key))  # type: ignore[operator]
    (tmp_path / "tls.key").write_bytes(key_bytes(cert, key))  # type: ignore[operator]
    assert tls.reload_if_changed() is False and tls.loads == 1


def test_each_load_sets_the_expiry_gauge(ca: tuple[bytes, bytes], tmp_path: Path) -> None:
    metrics = register_operator()
    certs.write_pair_atomically(tmp_path, *new_pair(ca, days=30))
    tls = ReloadingCertificate(tmp_path / "tls.crt", tmp_path / "tls.key", metrics=metrics)

    def gauge() -> float | None:
        return metrics.registry.get_sample_value("taskcreds_webhook_certificate_expiry_timestamp_seconds")

    assert gauge() == (NOW + timedelta(days=30)).replace(microsecond=0).timestamp()
    certs.write_pair_atomically(tmp_path, *new_pair(ca, days=60))
    assert tls.reload_if_changed()
    assert gauge() == (NOW + timedelta(days=60)).replace(microsecond=0).timestamp()
    assert tls.not_after == (NOW + timedelta(days=60)).replace(microsecond=0)


def test_kubelet_style_symlink_swap_is_followed(ca: tuple[bytes, bytes], tmp_path: Path) -> None:
    """Secret volumes (cert-manager) swap a ``..data`` symlink; the file paths never change."""
    def publish(version: str, pair: tuple[bytes, bytes]) -> None:
        certs.write_pair_atomically(tmp_path / version, *pair)
        os.symlink(version, tmp_path / "..data_tmp")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")

    publish("v1", new_pair(ca))
    for name in ("tls.crt", "tls.key"):
        os.symlink(f"..data/{name}", tmp_path / name)
    tls = ReloadingCertificate(tmp_path / "tls.crt", tmp_path / "tls.key")
    second = new_pair(ca)
    publish("v2", second)
    assert tls.reload_if_changed() is True
    assert tls.not_after == x509.load_pem_x509_certificate(second[0]).not_valid_after_utc


@pytest.mark.parametrize("name, setup, message", [
    ("no files", lambda d, p: None, "cannot read"),
    ("mismatched pair", lambda d, p: ((d / "tls.crt").write_bytes(p[0]), (d / "tls.key").write_bytes(
        certs.make_ca("x", NOW)[1])), "does not belong"),
    ("not PEM", lambda d, p: ((d / "tls.crt").write_bytes(b"hello"), (d / "tls.key").write_bytes(p[1])),
     "does not hold a PEM certificate"),
])
def test_unusable_files_at_start_are_refused_with_a_reason(ca: tuple[bytes, bytes], tmp_path: Path, name: str,
                                                          setup: object, message: str) -> None:
    setup(tmp_path, new_pair(ca))  # type: ignore[operator]
    with pytest.raises(TLSFilesError, match=message) as err:
        ReloadingCertificate(tmp_path / "tls.crt", tmp_path / "tls.key")
    assert "PRIVATE" not in str(err.value)


def test_check_pair_accepts_rsa_pairs_too(tmp_path: Path) -> None:
    """cert-manager may hand out RSA keys; the reloader must not insist on ECDSA."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    assert check_pair(cert_pem, key_pem) is None
