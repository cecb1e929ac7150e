"""TLS from SVIDs: real mutual-TLS handshakes on loopback, SPIFFE ID rules, the key kept off disk."""

# ruff: noqa: F811  (pytest fixtures imported from tests.spiffe.fixtures are parameters here)
from __future__ import annotations

import os
import ssl
import time
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from taskcreds.devauthority import DevAuthority
from taskcreds.svid import (
    SvidError,
    X509SvidMaterial,
    client_context,
    load_svid,
    parse_spiffe_id,
    peer_spiffe_id,
    server_context,
    spiffe_id_of,
)
from tests.spiffe.disk import assert_not_on_disk, key_marker
from tests.spiffe.fixtures import AGENT_ID, BROKER_ID, dev_authority  # noqa: F401
from tests.spiffe.tls import TlsServer, handshake

# --- SPIFFE IDs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spiffe_id", "expected"), [
    pytest.param("spiffe://taskcreds.local/ns/a/sa/b", ("taskcreds.local", "/ns/a/sa/b"), id="workload"),
    pytest.param("spiffe://example.org", ("example.org", ""), id="trust domain itself"),
    pytest.param("spiffe://td_1-x.y/A.b-c_9", ("td_1-x.y", "/A.b-c_9"), id="allowed characters"),
])
def test_parse_spiffe_id_accepts(spiffe_id: str, expected: tuple[str, str]) -> None:
    assert parse_spiffe_id(spiffe_id) == expected


@pytest.mark.parametrize(("spiffe_id", "says"), [
    pytest.param("", "not a SPIFFE ID", id="empty"),
    pytest.param("https://taskcreds.local/x", "must start with 'spiffe://'", id="other scheme"),
    pytest.param("SPIFFE://taskcreds.local/x", "must start with 'spiffe://'", id="uppercase scheme"),
    pytest.param("spiffe:///x", "invalid trust domain ''", id="no trust domain"),
    pytest.param("spiffe://Taskcreds.local/x", "invalid trust domain", id="uppercase trust domain"),
    pytest.param("spiffe://td:8080/x", "invalid trust domain", id="port"),
    pytest.param("spiffe://user@td/x", "invalid trust domain", id="userinfo"),
    pytest.param("spiffe://td/", "invalid path segment ''", id="trailing slash"),
    pytest.param("spiffe://td/a//b", "invalid path segment ''", id="empty segment"),
    pytest.param("spiffe://td/a/../b", "invalid path segment '..'", id="dot dot"),
    pytest.param("spiffe://td/./b", "invalid path segment '.'", id="dot"),
    pytest.param("spiffe://td/a?b=c", "invalid path segment 'a?b=c'", id="query"),
    pytest.param("spiffe://td/a#frag", "invalid path segment", id="fragment"),
    pytest.param("spiffe://td/%41", "invalid path segment", id="percent-encoding"),
    pytest.param("spiffe://td/" + "a" * 2040, "at most 2048", id="too long"),
    pytest.param("spiffe://td/ns/a\n", "invalid path segment", id="trailing newline"),
    pytest.param("spiffe://td\n", "invalid trust domain", id="trailing newline after the trust domain"),
    pytest.param("spiffe://td\n/ns/a", "invalid trust domain", id="newline in the trust domain"),
])
def test_parse_spiffe_id_refuses_with_reason(spiffe_id: str, says: str) -> None:
    with pytest.raises(SvidError) as err:
        parse_spiffe_id(spiffe_id)
    assert says in str(err.value)


def _cert(uris: list[str], *, extra_dns: bool = False, ca: bool | None = None, signs: bool = False) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "t")])
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(hours=1)))
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    if extra_dns:
        sans.append(x509.DNSName("example.org"))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if signs:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=True, encipher_only=False, decipher_only=False,
        ), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(("uris", "extra_dns", "says"), [
    pytest.param([], False, "no subjectAltName", id="no SAN"),
    pytest.param(["spiffe://td/a", "spiffe://td/b"], False, "2 URI SANs", id="two SPIFFE IDs"),
    pytest.param(["https://example.org/a"], False, "must start with 'spiffe://'", id="https URI"),
    pytest.param(["spiffe://td/a/"], False, "invalid path segment", id="malformed ID"),
])
def test_spiffe_id_of_refuses(uris: list[str], extra_dns: bool, says: str) -> None:
    with pytest.raises(SvidError) as err:
        spiffe_id_of(_cert(uris, extra_dns=extra_dns))
    assert says in str(err.value)


@pytest.mark.parametrize(("ca", "signs", "says"), [
    pytest.param(True, False, "basicConstraints CA:TRUE", id="CA leaf"),
    pytest.param(False, True, "keyCertSign or cRLSign", id="leaf that signs CRLs"),
])
def test_spiffe_id_of_refuses_a_leaf_that_is_a_ca(ca: bool, signs: bool, says: str) -> None:
    with pytest.raises(SvidError) as err:
        spiffe_id_of(_cert(["spiffe://td/ns/a"], ca=ca, signs=signs))
    assert says in str(err.value) and "spiffe://td/ns/a" in str(err.value)


def test_spiffe_id_of_accepts_an_explicit_ca_false_leaf() -> None:
    assert spiffe_id_of(_cert(["spiffe://td/ns/a"], ca=False)) == "spiffe://td/ns/a"


def test_spiffe_id_of_reads_the_one_uri_san_next_to_dns_names() -> None:
    assert spiffe_id_of(_cert(["spiffe://td/ns/a"], extra_dns=True)) == "spiffe://td/ns/a"


def test_spiffe_id_of_refuses_junk() -> None:
    with pytest.raises(SvidError, match="not a DER X.509 certificate"):
        spiffe_id_of(b"junk")


def test_peer_spiffe_id_without_tls_is_none() -> None:
    assert peer_spiffe_id(None) is None


# --- mutual TLS ------------------------------------------------------------------------------------


async def test_mutual_tls_both_sides_see_each_others_spiffe_id(dev_authority: DevAuthority) -> None:
    broker = dev_authority.mint_x509_svid(BROKER_ID)
    agent = dev_authority.mint_x509_svid(AGENT_ID)
    result = await handshake(server_context(broker), client_context(agent))
    assert (result.server_saw, result.client_saw) == (AGENT_ID, BROKER_ID)
    assert result.version in ("TLSv1.2", "TLSv1.3")


def _other_authority() -> DevAuthority:
    return DevAuthority("taskcreds.local", allow=True)  # same name, different CA: an impostor


def _past(hours: float) -> DevAuthority:
    then = datetime.now(UTC) - timedelta(hours=hours)
    return DevAuthority("taskcreds.local", allow=True, now=lambda: then)


# (name, how to make the server SVID, how to make the client SVID); `a` is the shared authority
REFUSED = [
    ("client from another CA", lambda a: a.mint_x509_svid(BROKER_ID),
     lambda a: _other_authority().mint_x509_svid(AGENT_ID)),
    ("server from another CA", lambda a: _other_authority().mint_x509_svid(BROKER_ID),
     lambda a: a.mint_x509_svid(AGENT_ID)),
    ("client from another trust domain", lambda a: a.mint_x509_svid(BROKER_ID),
     lambda a: DevAuthority("other.org", allow=True).mint_x509_svid("spiffe://other.org/agent")),
    ("expired client SVID", lambda a: a.mint_x509_svid(BROKER_ID),
     lambda a: _expired_svid(a)),
    ("expired server SVID", lambda a: _expired_svid(a, BROKER_ID),
     lambda a: a.mint_x509_svid(AGENT_ID)),
    ("client SVID for servers only (EKU serverAuth)", lambda a: a.mint_x509_svid(BROKER_ID),
     lambda a: a.mint_x509_svid(AGENT_ID, extended_key_usage=[ExtendedKeyUsageOID.SERVER_AUTH])),
    ("server SVID for clients only (EKU clientAuth)",
     lambda a: a.mint_x509_svid(BROKER_ID, extended_key_usage=[ExtendedKeyUsageOID.CLIENT_AUTH]),
     lambda a: a.mint_x509_svid(AGENT_ID)),
]


def _expired_svid(authority: DevAuthority, spiffe_id: str = AGENT_ID) -> X509SvidMaterial:
    """An SVID of ``authority``'s CA that expired an hour ago (signed with its real CA key)."""
    then = datetime.now(UTC) - timedelta(hours=2)
    real_now = authority._now
    authority._now = lambda: then
    try:
        svid = authority.mint_x509_svid(spiffe_id, ttl=3600)
    finally:
        authority._now = real_now
    assert svid.expires_at < datetime.now(UTC)
    return svid


@pytest.mark.parametrize(("make_server", "make_client"), [pytest.param(s, c, id=n) for n, s, c in REFUSED])
async def test_handshake_refused(dev_authority: DevAuthority, make_server, make_client) -> None:  # type: ignore[no-untyped-def]
    server_svid, client_svid = make_server(dev_authority), make_client(dev_authority)
    # each side trusts only the shared authority's bundle, as the broker and the sidecar do
    server_svid = _with_bundle(server_svid, dev_authority.bundle_der())
    client_svid = _with_bundle(client_svid, dev_authority.bundle_der())
    async with TlsServer(server_context(server_svid)) as server:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await server.connect(client_context(client_svid))
        assert server.seen == []  # the server never got an authenticated connection


def _with_bundle(svid: X509SvidMaterial, bundle: tuple[bytes, ...]) -> X509SvidMaterial:
    return X509SvidMaterial(svid.spiffe_id, svid.chain_der, svid.key_der, bundle, svid.expires_at)


async def test_client_certificate_optional_lets_anonymous_clients_in(dev_authority: DevAuthority) -> None:
    broker = dev_authority.mint_x509_svid(BROKER_ID)
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cadata=b"".join(broker.bundle_der))
    result = await handshake(server_context(broker, client_cert="optional"), anonymous)
    assert (result.server_saw, result.client_saw) == (None, BROKER_ID)


async def test_client_certificate_required_refuses_anonymous_clients(dev_authority: DevAuthority) -> None:
    broker = dev_authority.mint_x509_svid(BROKER_ID)
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cadata=b"".join(broker.bundle_der))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await handshake(server_context(broker), anonymous)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_tls_below_1_2_is_refused(dev_authority: DevAuthority) -> None:
    broker = dev_authority.mint_x509_svid(BROKER_ID)
    old = client_context(dev_authority.mint_x509_svid(AGENT_ID))
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    assert server_context(broker).minimum_version == ssl.TLSVersion.TLSv1_2
    assert client_context(broker).minimum_version == ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await handshake(server_context(broker), old)


def test_server_context_names_the_accepted_client_cert_values(dev_authority: DevAuthority) -> None:
    with pytest.raises(SvidError, match="expected 'required' or 'optional'"):
        server_context(dev_authority.mint_x509_svid(BROKER_ID), client_cert="maybe")  # type: ignore[arg-type]


async def test_load_svid_rotates_a_server_context_in_place(dev_authority: DevAuthority) -> None:
    context = server_context(dev_authority.mint_x509_svid(BROKER_ID))
    agent = client_context(dev_authority.mint_x509_svid(AGENT_ID))
    async with TlsServer(context) as server:
        first = await server.connect(agent)
        load_svid(context, dev_authority.mint_x509_svid(BROKER_ID + "-next"))
        second = await server.connect(agent)
    assert (first.client_saw, second.client_saw) == (BROKER_ID, BROKER_ID + "-next")


# --- the key stays in memory -----------------------------------------------------------------------


def test_bad_key_error_never_shows_the_key(dev_authority: DevAuthority) -> None:
    svid = dev_authority.mint_x509_svid(AGENT_ID)
    broken = X509SvidMaterial(svid.spiffe_id, svid.chain_der, svid.key_der[:-7], svid.bundle_der,
                              svid.expires_at)
    with pytest.raises(SvidError) as err:
        client_context(broken)
    assert "not PKCS#8 DER" in str(err.value)
    assert svid.key_der[:-7].hex() not in str(err.value) and repr(svid.key_der[:-7]) not in str(err.value)


def test_mismatched_key_is_refused(dev_authority: DevAuthority) -> None:
    one, two = dev_authority.mint_x509_svid(AGENT_ID), dev_authority.mint_x509_svid(AGENT_ID)
    mixed = X509SvidMaterial(one.spiffe_id, one.chain_der, two.key_der, one.bundle_der, one.expires_at)
    with pytest.raises(SvidError, match="do not load"):
        server_context(mixed)


def test_repr_never_shows_key_material(dev_authority: DevAuthority) -> None:
    svid = dev_authority.mint_x509_svid(AGENT_ID)
    text = repr(svid) + str(svid)
    assert AGENT_ID in text
    assert repr(svid.key_der)[2:40] not in text and "key" not in text


def test_key_never_written_to_disk_and_no_descriptor_leaks(dev_authority: DevAuthority) -> None:
    svid = dev_authority.mint_x509_svid(AGENT_ID)
    fds_before = set(os.listdir("/proc/self/fd"))
    started = time.time() - 1
    for _ in range(5):
        server_context(svid)
        client_context(svid)
    assert set(os.listdir("/proc/self/fd")) - fds_before == set()  # every memfd closed
    assert_not_on_disk(key_marker(svid), ["/tmp", "/dev/shm", os.getcwd()], started)


# --- aiohttp, as the broker and the sidecar use it -------------------------------------------------


async def test_aiohttp_server_and_client_authenticate_each_other(dev_authority: DevAuthority) -> None:
    import aiohttp
    from aiohttp import web

    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"you": peer_spiffe_id(request.transport.get_extra_info("ssl_object"))})

    app = web.Application()
    app.router.add_get("/whoami", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    broker = server_context(dev_authority.mint_x509_svid(BROKER_ID))
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=broker)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            agent = client_context(dev_authority.mint_x509_svid(AGENT_ID))
            async with session.get(f"https://127.0.0.1:{port}/whoami", ssl=agent) as response:
                assert await response.json() == {"you": AGENT_ID}
            impostor = client_context(_other_authority().mint_x509_svid(AGENT_ID))
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"https://127.0.0.1:{port}/whoami", ssl=impostor) as response:
                    await response.read()
    finally:
        await runner.cleanup()


# --- from py-spiffe's objects ----------------------------------------------------------------------


def test_from_spiffe_with_a_bundle_or_a_bundle_set(dev_authority: DevAuthority) -> None:
    from spiffe import TrustDomain, X509Bundle, X509BundleSet, X509Svid

    svid = dev_authority.mint_x509_svid(AGENT_ID)
    parsed = X509Svid.parse_raw(b"".join(svid.chain_der), svid.key_der)
    bundle = X509Bundle.parse_raw(TrustDomain("taskcreds.local"), b"".join(svid.bundle_der))
    foreign = X509Bundle.parse_raw(TrustDomain("other.org"), b"".join(_other_authority().bundle_der()))
    assert X509SvidMaterial.from_spiffe(parsed, bundle) == svid
    both = X509BundleSet.of([bundle, foreign])
    assert X509SvidMaterial.from_spiffe(parsed, both) == svid  # federated bundles are not trusted
    with pytest.raises(SvidError, match="bundle is for trust domain 'other.org'"):
        X509SvidMaterial.from_spiffe(parsed, foreign)
    with pytest.raises(SvidError, match="no bundle for trust domain 'taskcreds.local'"):
        X509SvidMaterial.from_spiffe(parsed, X509BundleSet.of([foreign]))
