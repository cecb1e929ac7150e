"""The development authority and its Workload API, checked with py-spiffe's real client."""

# ruff: noqa: F811  (pytest fixtures imported from tests.spiffe.fixtures are parameters here)
from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Callable

import grpc
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
from spiffe import JwtSource, SpiffeId, WorkloadApiClient, X509Source
from spiffe._proto import workload_pb2, workload_pb2_grpc

from taskcreds.devauthority import (
    ENV_DEV_AUTHORITY,
    DevAuthority,
    DevAuthorityError,
    DevAuthorityRefused,
    WorkloadApiServer,
)
from taskcreds.svid import X509SvidMaterial
from tests.spiffe.fixtures import AGENT_ID, BROKER_ID, dev_authority, workload_api  # noqa: F401

# --- refusing to start -----------------------------------------------------------------------------


def test_refuses_without_being_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_DEV_AUTHORITY, raising=False)
    with pytest.raises(DevAuthorityRefused) as err:
        DevAuthority()
    message = str(err.value)
    assert "taskcreds demo" in message and "tests only" in message and "SPIRE" in message
    assert "allow=True" in message and f"{ENV_DEV_AUTHORITY}=1" in message


@pytest.mark.parametrize(("env", "allowed"), [("1", True), ("0", False), ("true", False), ("", False)])
def test_environment_switch(monkeypatch: pytest.MonkeyPatch, env: str, allowed: bool) -> None:
    monkeypatch.setenv(ENV_DEV_AUTHORITY, env)
    if allowed:
        assert DevAuthority().trust_domain == "taskcreds.local"
    else:
        with pytest.raises(DevAuthorityRefused):
            DevAuthority()


@pytest.mark.parametrize("trust_domain", ["Upper.case", "has/slash", "", "port:1"])
def test_invalid_trust_domain_named(trust_domain: str) -> None:
    with pytest.raises(DevAuthorityError, match="trust domain"):
        DevAuthority(trust_domain, allow=True)


# --- X.509-SVIDs -----------------------------------------------------------------------------------


def test_x509_svid_is_shaped_like_spires(dev_authority: DevAuthority) -> None:
    svid = dev_authority.mint_x509_svid(AGENT_ID, ttl=120)
    leaf = x509.load_der_x509_certificate(svid.chain_der[0])
    ca = x509.load_der_x509_certificate(svid.bundle_der[0])
    ext = leaf.extensions
    assert ext.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value.ca is False
    usage = ext.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
    assert usage.digital_signature and not usage.key_cert_sign and not usage.crl_sign
    assert set(ext.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = ext.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert list(san) == [x509.UniformResourceIdentifier(AGENT_ID)]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert leaf.public_key().curve.name == "secp256r1"
    leaf.verify_directly_issued_by(ca)
    assert svid.expires_at == leaf.not_valid_after_utc
    assert 110 <= (svid.expires_at - leaf.not_valid_before_utc).total_seconds() - 30 <= 121


def test_x509_svid_parses_with_py_spiffe(dev_authority: DevAuthority) -> None:
    from spiffe import X509Svid

    svid = dev_authority.mint_x509_svid(AGENT_ID)
    parsed = X509Svid.parse_raw(b"".join(svid.chain_der), svid.key_der)
    assert str(parsed.spiffe_id) == AGENT_ID


@pytest.mark.parametrize(("spiffe_id", "says"), [
    pytest.param("spiffe://other.org/ns/a/sa/b", "not in trust domain 'taskcreds.local'",
                 id="other trust domain"),
    pytest.param("spiffe://taskcreds.local", "names the trust domain itself", id="no path"),
    pytest.param("spiffe://taskcreds.local/a/", "invalid path segment", id="malformed"),
    pytest.param("taskcreds.local/a", "must start with 'spiffe://'", id="no scheme"),
])
def test_mint_refuses_ids_outside_the_trust_domain(dev_authority: DevAuthority, spiffe_id: str,
                                                   says: str) -> None:
    with pytest.raises(DevAuthorityError) as err:
        dev_authority.mint_x509_svid(spiffe_id)
    assert says in str(err.value)
    with pytest.raises(DevAuthorityError):
        dev_authority.mint_jwt_svid(spiffe_id, ["x"])


def test_rotate_ca_keeps_the_old_ca_trusted(dev_authority: DevAuthority) -> None:
    old = dev_authority.mint_x509_svid(AGENT_ID)
    dev_authority.rotate_ca()
    new = dev_authority.mint_x509_svid(AGENT_ID)
    cas = [x509.load_der_x509_certificate(der) for der in dev_authority.bundle_der()]
    assert len(cas) == 2 and new.bundle_der == dev_authority.bundle_der()
    x509.load_der_x509_certificate(old.chain_der[0]).verify_directly_issued_by(cas[0])
    x509.load_der_x509_certificate(new.chain_der[0]).verify_directly_issued_by(cas[1])
    assert dev_authority.bundle_pem().count(b"BEGIN CERTIFICATE") == 2
    assert len(dev_authority.jwt_bundle()["keys"]) == 2


# --- JWT-SVIDs -------------------------------------------------------------------------------------


def test_jwt_svid_verifies_with_pyjwt_against_the_jwks(dev_authority: DevAuthority) -> None:
    token = dev_authority.mint_jwt_svid(AGENT_ID, ["openbao", "taskcreds"], ttl=60)
    keys = jwt.PyJWKSet.from_dict(dev_authority.jwt_bundle())
    assert all(k.key_id for k in keys.keys)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256"
    key = next(k for k in keys.keys if k.key_id == header["kid"])
    claims = jwt.decode(token, key.key, algorithms=["ES256"], audience="openbao")
    assert claims["sub"] == AGENT_ID and claims["exp"] - claims["iat"] == 60
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, key.key, algorithms=["ES256"], audience="someone-else")


def test_jwt_svid_from_a_rotated_key_still_validates(dev_authority: DevAuthority) -> None:
    old = dev_authority.mint_jwt_svid(AGENT_ID, ["a"])
    dev_authority.rotate_ca()
    new = dev_authority.mint_jwt_svid(AGENT_ID, ["a"])
    assert jwt.get_unverified_header(old)["kid"] != jwt.get_unverified_header(new)["kid"]
    for token in (old, new):
        assert dev_authority.validate_jwt_svid(token, "a")["sub"] == AGENT_ID


def test_jwt_svid_needs_an_audience(dev_authority: DevAuthority) -> None:
    with pytest.raises(DevAuthorityError, match="audience"):
        dev_authority.mint_jwt_svid(AGENT_ID, [])


def test_foreign_jwt_is_refused(dev_authority: DevAuthority) -> None:
    foreign = DevAuthority(allow=True).mint_jwt_svid(AGENT_ID, ["a"])
    with pytest.raises(DevAuthorityError, match="unknown key id"):
        dev_authority.validate_jwt_svid(foreign, "a")


# --- the Workload API, through py-spiffe's client --------------------------------------------------

Factory = Callable[..., WorkloadApiServer]


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


def _serial(der: bytes) -> int:
    return x509.load_der_x509_certificate(der).serial_number


def test_workload_api_serves_everything_to_py_spiffe(workload_api: Factory,
                                                     dev_authority: DevAuthority) -> None:
    api = workload_api(AGENT_ID)
    assert api.socket_uri.startswith("unix:///")
    with WorkloadApiClient(api.socket_uri, default_timeout=5) as client:
        svid = client.fetch_x509_svid()
        assert str(svid.spiffe_id) == AGENT_ID
        assert _serial(api.current.chain_der[0]) == svid.leaf.serial_number
        context = client.fetch_x509_context()
        assert X509SvidMaterial.from_spiffe(context.default_svid, context.x509_bundle_set) == api.current
        bundles = client.fetch_x509_bundles()
        (bundle,) = bundles.bundles
        assert bundle.trust_domain.name == "taskcreds.local" and len(bundle.x509_authorities) == 1
        token = client.fetch_jwt_svid({"openbao"}).token
        assert dev_authority.validate_jwt_svid(token, "openbao")["sub"] == AGENT_ID
        validated = client.validate_jwt_svid(token, "openbao")
        assert str(validated.spiffe_id) == AGENT_ID
        (jwt_bundle,) = client.fetch_jwt_bundles().bundles
        assert set(jwt_bundle.jwt_authorities) == {k["kid"] for k in dev_authority.jwt_bundle()["keys"]}


def test_workload_api_refuses_jwt_for_another_identity(workload_api: Factory) -> None:
    from spiffe.workloadapi.errors import FetchJwtSvidError

    api = workload_api(AGENT_ID)
    with WorkloadApiClient(api.socket_uri, default_timeout=5) as client:
        with pytest.raises(FetchJwtSvidError, match="PERMISSION_DENIED"):
            client.fetch_jwt_svid({"a"}, subject=SpiffeId(BROKER_ID))


def test_workload_api_rejects_forged_jwt(workload_api: Factory) -> None:
    from spiffe.workloadapi.errors import ValidateJwtSvidError

    api = workload_api(AGENT_ID)
    forged = DevAuthority(allow=True).mint_jwt_svid(AGENT_ID, ["a"])
    with WorkloadApiClient(api.socket_uri, default_timeout=5) as client:
        with pytest.raises(ValidateJwtSvidError):
            client.validate_jwt_svid(forged, "a")


@pytest.mark.parametrize("call", ["FetchX509SVID", "FetchX509Bundles", "FetchJWTBundles",
                                  "FetchJWTSVID", "ValidateJWTSVID"])
def test_calls_without_the_security_header_are_rejected(workload_api: Factory, call: str) -> None:
    api = workload_api(AGENT_ID)
    requests = {
        "FetchX509SVID": workload_pb2.X509SVIDRequest(),
        "FetchX509Bundles": workload_pb2.X509BundlesRequest(),
        "FetchJWTBundles": workload_pb2.JWTBundlesRequest(),
        "FetchJWTSVID": workload_pb2.JWTSVIDRequest(audience=["a"]),
        "ValidateJWTSVID": workload_pb2.ValidateJWTSVIDRequest(audience="a", svid="x.y.z"),
    }
    with grpc.insecure_channel("unix:" + api.socket_path) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            answer = getattr(stub, call)(requests[call], timeout=5)
            if call.startswith("Fetch") and call != "FetchJWTSVID":
                next(iter(answer))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "security header missing" in err.value.details()
        # the same call with the header gets through
        ok = getattr(stub, call)(requests[call], timeout=5, metadata=[("workload.spiffe.io", "true")]) \
            if call != "ValidateJWTSVID" else None
        if ok is not None and call != "FetchJWTSVID":
            assert next(iter(ok)) is not None


def test_rotation_is_pushed_to_a_live_x509_source(workload_api: Factory) -> None:
    api = workload_api(AGENT_ID)
    source = X509Source(socket_path=api.socket_uri, timeout_in_seconds=5)
    try:
        updates = threading.Event()
        source.subscribe_for_updates(updates.set)
        before = source.get_x509_context().default_svid.leaf.serial_number
        new = api.rotate()
        assert updates.wait(5)
        after = source.get_x509_context().default_svid.leaf.serial_number
        assert before != after == _serial(new.chain_der[0])
    finally:
        source.close()


def test_svid_is_reissued_before_expiry(workload_api: Factory) -> None:
    api = workload_api(AGENT_ID, svid_ttl=1.0)
    source = X509Source(socket_path=api.socket_uri, timeout_in_seconds=5)
    try:
        first = source.get_x509_context().default_svid.leaf.serial_number
        _wait_for(lambda: source.get_x509_context().default_svid.leaf.serial_number != first, 3)
    finally:
        source.close()


def test_set_spiffe_id_serves_another_identity(workload_api: Factory) -> None:
    api = workload_api(AGENT_ID)
    api.set_spiffe_id(BROKER_ID)
    with WorkloadApiClient(api.socket_uri, default_timeout=5) as client:
        assert str(client.fetch_x509_svid().spiffe_id) == BROKER_ID
        assert str(client.fetch_jwt_svid({"a"}).spiffe_id) == BROKER_ID
    with pytest.raises(DevAuthorityError):
        api.set_spiffe_id("spiffe://other.org/x")


def test_stop_and_start_again_a_live_x509_source_follows(workload_api: Factory) -> None:
    api = workload_api(AGENT_ID)
    source = X509Source(socket_path=api.socket_uri, timeout_in_seconds=5)
    try:
        api.stop()
        assert not os.path.exists(api.socket_path)
        time.sleep(0.2)
        new = api.rotate()  # minted while nobody serves it
        api.start()
        serial = _serial(new.chain_der[0])
        _wait_for(lambda: source.get_x509_context().default_svid.leaf.serial_number == serial)
        assert not source.is_closed()
    finally:
        source.close()


def test_socket_is_private_and_removed_on_stop(workload_api: Factory) -> None:
    api = workload_api(AGENT_ID)
    mode = os.stat(api.socket_path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    api.stop()
    api.stop()  # twice is fine
    assert not os.path.exists(api.socket_path)


def test_start_replaces_a_stale_socket(dev_authority: DevAuthority) -> None:
    import socket
    import tempfile

    directory = tempfile.mkdtemp(prefix="tc-spiffe-", dir="/tmp")
    path = f"{directory}/agent.sock"
    with socket.socket(socket.AF_UNIX) as crashed:  # a crashed server leaves its socket file behind
        crashed.bind(path)
    server = WorkloadApiServer(dev_authority, path, AGENT_ID)
    try:
        server.start()
        with WorkloadApiClient(server.socket_uri, default_timeout=5) as client:
            assert str(client.fetch_x509_svid().spiffe_id) == AGENT_ID
    finally:
        server.stop()
        os.rmdir(directory)


def test_jwt_source_reads_bundles(workload_api: Factory, dev_authority: DevAuthority) -> None:
    api = workload_api(AGENT_ID)
    source = JwtSource(socket_path=api.socket_uri, timeout_in_seconds=5)
    try:
        (bundle,) = source.bundles
        kid = dev_authority.jwt_bundle()["keys"][0]["kid"]
        assert bundle.get_jwt_authority(kid) is not None
        svid = source.fetch_svid({"taskcreds"})
        assert str(svid.spiffe_id) == AGENT_ID and json.dumps(svid.token)
    finally:
        source.close()


@pytest.mark.parametrize(("make_path", "says"), [
    pytest.param(lambda d: f"{d}/file/agent.sock", "cannot create the directory", id="parent is a file"),
    pytest.param(lambda d: f"{d}/{'x' * 120}.sock", "at most 107", id="path too long"),
])
def test_bad_socket_path_is_reported(dev_authority: DevAuthority, tmp_path, make_path, says) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "file").write_text("")
    server = WorkloadApiServer(dev_authority, make_path(tmp_path), AGENT_ID)
    with pytest.raises(DevAuthorityError) as err:
        server.start()
    assert says in str(err.value)
    assert not server.running


def test_ca_rotation_reaches_a_live_x509_source(workload_api: Factory, dev_authority: DevAuthority) -> None:
    from spiffe import TrustDomain

    api = workload_api(AGENT_ID)
    source = X509Source(socket_path=api.socket_uri, timeout_in_seconds=5)
    try:
        dev_authority.rotate_ca()
        api.rotate()
        td = TrustDomain("taskcreds.local")
        _wait_for(lambda: len(source.get_bundle_for_trust_domain(td).x509_authorities) == 2)
    finally:
        source.close()
