"""The per-pod CA: certificate shapes, leaves real TLS clients accept, caching, key off disk, the bundle."""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from taskcreds.sidecar.podca import (
    CA_BUNDLE_FILE,
    PodCA,
    PodCAError,
    system_roots_path,
    write_ca_bundle,
)

from tests.spiffe.disk import assert_not_on_disk


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


async def handshake(ca: PodCA, hostname: str, *, trust: bytes | None = None) -> x509.Certificate:
    """A real TLS handshake on loopback against the leaf for ``hostname``; returns the leaf seen."""
    server = await asyncio.start_server(
        lambda r, w: w.close(), "127.0.0.1", 0, ssl=ca.server_context_for(hostname)
    )
    port = server.sockets[0].getsockname()[1]
    try:
        client = ssl.create_default_context(cadata=(trust or ca.cert_pem()).decode())
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname=hostname
        )
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return x509.load_der_x509_certificate(der)
    finally:
        server.close()
        await server.wait_closed()


def test_the_ca_is_a_short_lived_p256_ca_named_after_the_pod() -> None:
    ca = PodCA("agent-pod-7")
    cert = x509.load_pem_x509_certificate(ca.cert_pem())
    assert cert.subject == cert.issuer and "agent-pod-7" in cert.subject.rfc4514_string()
    assert (
        isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        and cert.public_key().curve.name == "secp256r1"
    )
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    lifetime = cert.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(hours=23) < lifetime <= timedelta(hours=24, minutes=1)
    assert b"PRIVATE" not in ca.cert_pem() and "PRIVATE" not in repr(ca)


@pytest.mark.parametrize(
    "hostname,san",
    [
        pytest.param("api.github.com", x509.DNSName("api.github.com"), id="dns name"),
        pytest.param("API.Example.COM.", x509.DNSName("api.example.com"), id="normalized"),
        pytest.param("127.0.0.1", None, id="ip address"),
    ],
)
async def test_leaves_pass_a_real_clients_hostname_check(hostname: str, san: x509.GeneralName | None) -> None:
    ca = PodCA("p")
    connect_as = hostname.lower().rstrip(".")
    leaf = await handshake(ca, connect_as)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if san is not None:
        assert list(names) == [san]
    else:
        assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= timedelta(hours=1, minutes=5)


async def test_a_leaf_for_one_host_is_refused_for_another() -> None:
    ca = PodCA("p")
    server = await asyncio.start_server(
        lambda r, w: w.close(), "127.0.0.1", 0, ssl=ca.server_context_for("api.example.com")
    )
    port = server.sockets[0].getsockname()[1]
    try:
        client = ssl.create_default_context(cadata=ca.cert_pem().decode())
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="evil.example.com")
    finally:
        server.close()
        await server.wait_closed()


async def test_another_pods_ca_is_not_trusted() -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(PodCA("a"), "api.example.com", trust=PodCA("b").cert_pem())


def test_leaves_are_cached_and_renewed_before_they_expire() -> None:
    clock = Clock()
    ca = PodCA("p", now=clock)
    first = ca.server_context_for("api.example.com")
    assert ca.server_context_for("API.example.com") is first and ca.leaves_issued == 1
    other = ca.server_context_for("git.example.com")
    assert other is not first and ca.leaves_issued == 2
    clock.now += timedelta(minutes=40)  # 20 min left: still good
    assert ca.server_context_for("api.example.com") is first
    clock.now += timedelta(minutes=6)  # 14 min left: renewed
    renewed = ca.server_context_for("api.example.com")
    assert renewed is not first and ca.leaves_issued == 3


def test_a_leaf_never_outlives_the_ca() -> None:
    clock = Clock()
    ca = PodCA("p", now=clock)
    clock.now += timedelta(hours=23, minutes=30)
    ca.server_context_for("api.example.com")
    assert ca._leaves["api.example.com"][1] <= ca.expires_at


@pytest.mark.parametrize(
    "hostname", ["", "exa mple.com", "a..b", "-bad.example.com", "x" * 64 + ".com", "évil.com", "host/path"]
)
def test_hostnames_that_are_not_names_are_refused(hostname: str) -> None:
    with pytest.raises(PodCAError, match="is not a hostname the pod CA signs for"):
        PodCA("p").server_context_for(hostname)


def test_the_ca_key_and_leaf_keys_never_touch_a_disk(tmp_path: Path) -> None:
    since = time.time() - 1
    ca = PodCA("p")
    for host in ("api.example.com", "git.example.com"):
        ca.server_context_for(host)
    write_ca_bundle(tmp_path, ca)
    key_pem = ca._key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert_not_on_disk(key_pem.splitlines()[1], [str(tmp_path), "/tmp", "/dev/shm", os.getcwd()], since)
    # the memfds used to load leaf keys are closed at once
    fds = [
        os.readlink(f"/proc/self/fd/{fd}")
        for fd in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{fd}")
    ]
    assert not [f for f in fds if "taskcreds-podca" in f]


def last_cert(bundle: bytes) -> x509.Certificate:
    marker = b"-----BEGIN CERTIFICATE-----"
    return x509.load_pem_x509_certificate(marker + bundle.rsplit(marker, 1)[1])


def test_the_bundle_holds_the_system_roots_and_the_pod_ca_and_no_key(tmp_path: Path) -> None:
    roots = system_roots_path()
    assert roots is not None, "the test machine has a system CA bundle"
    ca = PodCA("agent-pod")
    path = write_ca_bundle(tmp_path, ca)
    assert path == tmp_path / CA_BUNDLE_FILE
    data = path.read_bytes()
    assert b"PRIVATE KEY" not in data
    assert data.count(b"BEGIN CERTIFICATE") == roots.read_bytes().count(b"BEGIN CERTIFICATE") + 1 > 10
    assert last_cert(data) == ca.certificate
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert sorted(p.name for p in tmp_path.iterdir()) == [CA_BUNDLE_FILE]  # no temp file left behind
    ssl.create_default_context(cafile=str(path))  # loadable by OpenSSL as is
    # a restarted sidecar's new CA replaces the read-only file atomically
    again = PodCA("agent-pod")
    write_ca_bundle(tmp_path, again)
    assert last_cert(path.read_bytes()) == again.certificate


def test_a_roots_file_with_a_private_key_or_no_roots_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "roots.pem"
    bad.write_text("-----BEGIN " + "PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----\n")  # not a key
    with pytest.raises(PodCAError, match="holds a private key"):
        write_ca_bundle(tmp_path, PodCA("p"), roots=bad)
    with pytest.raises(PodCAError, match="cannot read system CA bundle"):
        write_ca_bundle(tmp_path, PodCA("p"), roots=tmp_path / "missing.pem")
    with pytest.raises(PodCAError, match="cannot write CA bundle"):
        write_ca_bundle(tmp_path / "no-such-dir", PodCA("p"))
