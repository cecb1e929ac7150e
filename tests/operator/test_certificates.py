"""The webhook CA and serving certificate, and the Secret/caBundle/file shell around them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from taskcreds.operator import certificates as certs
from taskcreds.operator.cluster import AlreadyExists, Conflict

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
NAMES = certs.dns_names_for("taskcreds-webhook", "taskcreds-system")
# the serving cert starts CLOCK_SKEW before NOW, so two thirds of its life ends here
TWO_THIRDS = NOW - certs.CLOCK_SKEW + (certs.SERVING_LIFETIME + certs.CLOCK_SKEW) * (2 / 3)


@pytest.fixture(scope="module")
def ca() -> tuple[bytes, bytes]:
    return certs.make_ca("test-ca", NOW)


@pytest.fixture(scope="module")
def serving(ca: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    return certs.make_serving_cert(*ca, NAMES, NOW)


def test_dns_names_cover_every_way_the_api_server_may_call_the_service() -> None:
    assert certs.dns_names_for("wh", "ns") == ["wh", "wh.ns", "wh.ns.svc", "wh.ns.svc.cluster.local"]


def test_ca_is_ecdsa_p256_may_only_sign_leaves_and_lives_five_years(ca: tuple[bytes, bytes]) -> None:
    cert = x509.load_pem_x509_certificate(ca[0])
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    assert cert.not_valid_after_utc == NOW + certs.CA_LIFETIME
    assert cert.not_valid_before_utc == NOW - certs.CLOCK_SKEW


def test_serving_cert_names_the_service_and_is_a_server_leaf(serving: tuple[bytes, bytes]) -> None:
    cert = x509.load_pem_x509_certificate(serving[0])
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == NAMES
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.not_valid_after_utc == NOW + certs.SERVING_LIFETIME


def test_serving_cert_never_outlives_its_ca() -> None:
    short_ca = certs.make_ca("short", NOW, timedelta(days=10))
    cert = x509.load_pem_x509_certificate(certs.make_serving_cert(*short_ca, ["a"], NOW)[0])
    assert cert.not_valid_after_utc == NOW + timedelta(days=10)


def test_private_keys_are_unencrypted_pkcs8(ca: tuple[bytes, bytes], serving: tuple[bytes, bytes]) -> None:
    pem_key = b"-----BEGIN " + b"PRIVATE KEY-----"  # split: no key-shaped literal in the repository
    assert ca[1].startswith(pem_key)
    assert serving[1].startswith(pem_key)


@pytest.mark.parametrize("problem, call, expected", [
    ("no DNS names", lambda ca: certs.make_serving_cert(*ca, [], NOW), "at least one DNS name"),
    ("CA key of another CA",
     lambda ca: certs.make_serving_cert(ca[0], certs.make_ca("o", NOW)[1], ["a"], NOW),
     "CA key does not belong"),
    ("garbage CA", lambda ca: certs.make_serving_cert(b"junk", ca[1], ["a"], NOW), "not a PEM certificate"),
    ("naive time", lambda ca: certs.make_ca("x", datetime(2026, 1, 1)), "timezone-aware"),
])
def test_bad_inputs_are_refused_with_a_reason(ca: tuple[bytes, bytes], problem: str, call: Any,
                                              expected: str) -> None:
    with pytest.raises(certs.CertificateError, match=expected):
        call(ca)


def test_chain_verifies_with_ssl_over_a_real_handshake(tmp_path: Path) -> None:
    """A client trusting only the CA accepts the serving cert for every DNS name and no other name."""
    now = datetime.now(UTC)  # OpenSSL checks validity against the real clock
    ca = certs.make_ca("test-ca", now)
    serving = certs.make_serving_cert(*ca, NAMES, now)
    (tmp_path / "tls.crt").write_bytes(serving[0])
    (tmp_path / "tls.key").write_bytes(serving[1])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept_loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with server_ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        client_ctx = ssl.create_default_context(cadata=ca[0].decode())
        for name in NAMES:
            with socket.create_connection(("127.0.0.1", port)) as raw, \
                    client_ctx.wrap_socket(raw, server_hostname=name) as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
        with socket.create_connection(("127.0.0.1", port)) as raw, \
                pytest.raises(ssl.SSLCertVerificationError):
            client_ctx.wrap_socket(raw, server_hostname="evil.example.com")
    finally:
        listener.close()
        thread.join(timeout=5)


@pytest.mark.parametrize("name, at, fraction, expected", [
    ("fresh", NOW, 2 / 3, False),
    ("just before two thirds", TWO_THIRDS - timedelta(seconds=1), 2 / 3, False),
    ("at two thirds", TWO_THIRDS, 2 / 3, True),
    ("expired", NOW + certs.SERVING_LIFETIME + timedelta(days=1), 2 / 3, True),
    ("not yet valid (clock went back)", NOW - timedelta(days=1), 2 / 3, True),
    ("custom fraction half", NOW + timedelta(days=46), 0.5, True),
    ("custom fraction half, early", NOW + timedelta(days=44), 0.5, False),
])
def test_needs_rotation_boundaries(serving: tuple[bytes, bytes], name: str, at: datetime, fraction: float,
                                   expected: bool) -> None:
    assert certs.needs_rotation(serving[0], at, fraction) is expected


def test_needs_rotation_rejects_nonsense_fraction(serving: tuple[bytes, bytes]) -> None:
    with pytest.raises(certs.CertificateError, match="fraction"):
        certs.needs_rotation(serving[0], NOW, 0)


# --- ensure_webhook_certificate against a small fake cluster -------------------------------------

class FakeCluster:
    """Only what ensure_webhook_certificate may use: get_secret, apply_secret, patch_webhook_ca_bundle."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.ca_bundles: dict[str, bytes] = {}
        self.writes = 0
        self.before_apply: Any = None  # hook: runs before a write (another replica racing us)

    def store(self, namespace: str, name: str, data: dict[str, bytes]) -> None:
        old = self.secrets.get((namespace, name), {})
        rv = str(int(old.get("metadata", {}).get("resourceVersion", "0")) + 1)
        self.secrets[(namespace, name)] = {
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": rv},
            "type": "kubernetes.io/tls",
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        }

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.secrets.get((namespace, name))

    async def apply_secret(self, namespace: str, name: str, data: dict[str, bytes],
                           labels: dict[str, str] | None = None, *, create_only: bool = False,
                           resource_version: str | None = None) -> dict[str, Any]:
        if self.before_apply is not None:
            hook, self.before_apply = self.before_apply, None
            await hook()
        current = self.secrets.get((namespace, name))
        if create_only and current is not None:
            raise AlreadyExists("secrets already exists")
        if resource_version is not None and (current or {}).get("metadata", {}).get("resourceVersion") != resource_version:
            raise Conflict("the object has been modified")
        self.writes += 1
        self.store(namespace, name, data)
        return self.secrets[(namespace, name)]

    async def patch_webhook_ca_bundle(self, configuration: str, ca_bundle_pem: bytes) -> None:
        self.ca_bundles[configuration] = ca_bundle_pem

    def data(self) -> dict[str, bytes]:
        raw = self.secrets[("taskcreds-system", "wh-tls")]["data"]
        return {k: base64.b64decode(v) for k, v in raw.items()}


async def ensure(cluster: FakeCluster, cert_dir: Path, now: datetime = NOW) -> datetime:
    return await certs.ensure_webhook_certificate(
        cluster, namespace="taskcreds-system", secret_name="wh-tls", service="taskcreds-webhook",
        webhook_configuration="taskcreds", cert_dir=cert_dir, now=now)  # type: ignore[arg-type]


async def test_creates_ca_and_pair_stores_them_patches_bundle_and_writes_files(tmp_path: Path) -> None:
    cluster = FakeCluster()
    expires = await ensure(cluster, tmp_path / "certs")
    data = cluster.data()
    assert set(data) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    assert expires == NOW + certs.SERVING_LIFETIME
    assert cluster.ca_bundles["taskcreds"] == data["ca.crt"]
    assert (tmp_path / "certs" / "tls.crt").read_bytes() == data["tls.crt"]
    assert (tmp_path / "certs" / "tls.key").read_bytes() == data["tls.key"]
    assert os.stat(tmp_path / "certs" / "tls.key").st_mode & 0o777 == 0o600
    assert certs.check_stored_pair(certs.StoredPair(data["ca.crt"], data["ca.key"], data["tls.crt"],
                                                    data["tls.key"]), NAMES, NOW) is None
    assert not list((tmp_path / "certs").glob(".*")), "no temp files left behind"


async def test_reuses_a_valid_stored_pair_without_writing(tmp_path: Path) -> None:
    cluster = FakeCluster()
    await ensure(cluster, tmp_path / "a")
    before = cluster.data()
    await ensure(cluster, tmp_path / "b", NOW + timedelta(days=30))  # another replica, later
    assert cluster.writes == 1
    assert cluster.data() == before
    assert (tmp_path / "b" / "tls.crt").read_bytes() == before["tls.crt"]


async def test_rotates_the_serving_cert_after_two_thirds_keeping_the_ca(tmp_path: Path) -> None:
    cluster = FakeCluster()
    await ensure(cluster, tmp_path)
    before = cluster.data()
    later = NOW + timedelta(days=61)
    expires = await ensure(cluster, tmp_path, later)
    after = cluster.data()
    assert after["tls.crt"] != before["tls.crt"] and after["tls.key"] != before["tls.key"]
    assert after["ca.crt"] == before["ca.crt"] and after["ca.key"] == before["ca.key"], "caBundle unchanged"
    assert expires == later + certs.SERVING_LIFETIME
    assert (tmp_path / "tls.crt").read_bytes() == after["tls.crt"]


async def test_rotating_the_ca_keeps_the_old_one_in_the_bundle_while_it_is_valid(tmp_path: Path) -> None:
    cluster = FakeCluster()
    await ensure(cluster, tmp_path)
    old_ca = cluster.data()["ca.crt"]
    later = NOW + certs.CA_LIFETIME * 0.7
    await ensure(cluster, tmp_path, later)
    bundle = cluster.ca_bundles["taskcreds"]
    assert bundle.count(b"BEGIN CERTIFICATE") == 2 and bundle.endswith(old_ca)
    new_leaf = x509.load_pem_x509_certificate(cluster.data()["tls.crt"])
    new_leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(bundle))  # signed by the new (first) CA


@pytest.mark.parametrize("name, damage", [
    ("missing key", lambda d: d.pop("tls.key")),
    ("tls.key of another pair", lambda d: d.update({"tls.key": certs.make_ca("x", NOW)[1]})),
    ("garbage certificate", lambda d: d.update({"tls.crt": b"not pem"})),
    ("leaf of another CA", lambda d: d.update(dict(zip(("tls.crt", "tls.key"), certs.make_serving_cert(
        *certs.make_ca("other", NOW), NAMES, NOW), strict=True)))),
    ("wrong DNS names", lambda d: d.update(dict(zip(("tls.crt", "tls.key"), certs.make_serving_cert(
        d["ca.crt"], d["ca.key"], ["other-svc"], NOW), strict=True)))),
])
async def test_replaces_an_unusable_stored_pair(tmp_path: Path, name: str, damage: Any) -> None:
    cluster = FakeCluster()
    await ensure(cluster, tmp_path)
    data = cluster.data()
    damage(data)
    cluster.store("taskcreds-system", "wh-tls", data)
    await ensure(cluster, tmp_path)
    fixed = cluster.data()
    pair = certs.StoredPair(fixed["ca.crt"], fixed["ca.key"], fixed["tls.crt"], fixed["tls.key"])
    assert certs.check_stored_pair(pair, NAMES, NOW) is None
    assert (tmp_path / "tls.crt").read_bytes() == fixed["tls.crt"]


def _trusts(bundle: bytes, leaf_pem: bytes) -> bool:
    """Whether any CA in ``bundle`` directly signed ``leaf_pem`` (what the API server checks)."""
    leaf = x509.load_pem_x509_certificate(leaf_pem)
    for ca_cert in x509.load_pem_x509_certificates(bundle):
        try:
            leaf.verify_directly_issued_by(ca_cert)
            return True
        except (ValueError, TypeError, InvalidSignature):
            pass
    return False


def _drop(key: str) -> Any:
    return lambda raw: raw.pop(key)


def _not_base64(key: str) -> Any:
    return lambda raw: raw.update({key: "%%% not base64 %%%"})


@pytest.mark.parametrize("name, damage, same_ca", [
    ("tls.key missing", _drop("tls.key"), True),
    ("tls.crt missing", _drop("tls.crt"), True),
    ("tls.key not base64", _not_base64("tls.key"), True),
    ("tls.crt not base64", _not_base64("tls.crt"), True),
    ("tls.crt garbage", lambda raw: raw.update({"tls.crt": base64.b64encode(b"junk").decode()}), True),
    ("ca.key missing", _drop("ca.key"), False),
    ("ca.key not base64", _not_base64("ca.key"), False),
])
async def test_a_broken_secret_key_never_untrusts_a_replica_still_serving_the_old_leaf(
        tmp_path: Path, name: str, damage: Any, same_ca: bool) -> None:
    """Replica B serves leaf 1; one key of the Secret breaks; replica A repairs it. The bundle must
    still trust B's leaf (the CA is valid) — else B is refused until its next hourly check."""
    cluster = FakeCluster()
    await ensure(cluster, tmp_path / "b")
    served_by_b = (tmp_path / "b" / "tls.crt").read_bytes()
    old_ca = cluster.data()["ca.crt"]
    damage(cluster.secrets[("taskcreds-system", "wh-tls")]["data"])
    await ensure(cluster, tmp_path / "a", NOW + timedelta(minutes=1))
    bundle = cluster.ca_bundles["taskcreds"]
    assert _trusts(bundle, served_by_b), name
    assert _trusts(bundle, (tmp_path / "a" / "tls.crt").read_bytes()), name
    assert (bundle == old_ca) is same_ca, name  # a usable CA is kept as is; else the new CA joins the old
    fixed = cluster.data()
    pair = certs.StoredPair(fixed["ca.crt"], fixed["ca.key"], fixed["tls.crt"], fixed["tls.key"])
    assert certs.check_stored_pair(pair, NAMES, NOW + timedelta(minutes=1)) is None


async def test_conflict_rereads_and_uses_the_winners_pair(tmp_path: Path) -> None:
    """Two replicas start together: ours loses the write and adopts what the other one stored."""
    cluster = FakeCluster()
    winner_ca = certs.make_ca("winner", NOW)
    winner = dict(zip(("tls.crt", "tls.key"), certs.make_serving_cert(*winner_ca, NAMES, NOW), strict=True))

    async def other_replica_wins() -> None:
        stored = {"ca.crt": winner_ca[0], "ca.key": winner_ca[1], **winner}
        cluster.store("taskcreds-system", "wh-tls", stored)
        raise Conflict("the object has been modified")

    cluster.before_apply = other_replica_wins
    await ensure(cluster, tmp_path)
    assert cluster.writes == 0, "the loser does not overwrite the winner"
    assert cluster.ca_bundles["taskcreds"] == winner_ca[0]
    assert (tmp_path / "tls.crt").read_bytes() == winner["tls.crt"]


async def test_two_replicas_starting_together_serve_one_pair(tmp_path: Path) -> None:
    """The other replica stores its pair between our read and our write: our create-only write
    fails and we adopt its pair at once, so neither serves a pair the caBundle does not trust."""
    cluster = FakeCluster()
    other_dir = tmp_path / "other"

    async def other_replica_writes_after_our_read() -> None:
        await ensure(cluster, other_dir)

    cluster.before_apply = other_replica_writes_after_our_read
    await ensure(cluster, tmp_path / "ours")
    stored = cluster.data()
    assert cluster.writes == 1, "only the winner wrote"
    assert cluster.ca_bundles["taskcreds"] == stored["ca.crt"]
    assert (tmp_path / "ours" / "tls.crt").read_bytes() == stored["tls.crt"]
    assert (other_dir / "tls.crt").read_bytes() == stored["tls.crt"]


async def test_a_rotation_replaces_only_the_version_it_read(tmp_path: Path) -> None:
    """Rotating a stored pair is a replace of the version read: a concurrent rotation wins once."""
    cluster = FakeCluster()
    old = datetime(2026, 1, 1, tzinfo=UTC)
    await ensure(cluster, tmp_path / "first", now=old)
    first = cluster.data()
    await ensure(cluster, tmp_path / "late", now=old + timedelta(days=70))  # past 2/3 of 90 days: rotated
    assert cluster.data()["tls.crt"] != first["tls.crt"]
    with pytest.raises(Conflict):
        await cluster.apply_secret("taskcreds-system", "wh-tls", first, resource_version="1")


def test_stored_pair_repr_holds_no_key_material(serving: tuple[bytes, bytes],
                                                ca: tuple[bytes, bytes]) -> None:
    pair = certs.StoredPair(ca[0], ca[1], serving[0], serving[1])
    assert "PRIVATE" not in repr(pair) and "PRIVATE" not in str(pair)


async def test_maintain_retries_after_a_failure_and_keeps_going(tmp_path: Path) -> None:
    cluster = FakeCluster()
    calls = 0
    real_get = cluster.get_secret

    async def flaky_get(namespace: str, name: str) -> dict[str, Any] | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("API server unreachable")
        return await real_get(namespace, name)

    cluster.get_secret = flaky_get  # type: ignore[method-assign]
    task = asyncio.create_task(certs.maintain_webhook_certificate(
        cluster, namespace="taskcreds-system", secret_name="wh-tls", service="taskcreds-webhook",  # type: ignore[arg-type]
        webhook_configuration="taskcreds", cert_dir=tmp_path, interval=0.01, retry=0.01))
    try:
        for _ in range(200):
            if (tmp_path / "tls.crt").exists() and calls >= 4:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert (tmp_path / "tls.crt").exists() and calls >= 4
    assert cluster.writes == 1, "later rounds reuse the stored pair"


# --- the Secret another writer left: its type is immutable (KubeCluster and MemCluster alike) ------

def _cert_manager_data() -> dict[str, bytes]:
    """What cert-manager's CA issuer writes: ca.crt, tls.crt, tls.key — and no ca.key."""
    ca_cert, ca_key = certs.make_ca("cert-manager-ca", datetime.now(UTC))
    leaf, key = certs.make_serving_cert(ca_cert, ca_key, NAMES, datetime.now(UTC))
    return {"ca.crt": ca_cert, "tls.crt": leaf, "tls.key": key}


@pytest.mark.parametrize("backend", ["kube", "mem"])
@pytest.mark.parametrize("case, stored_type, data, kept_type, same_uid", [
    ("cert-manager's Secret (switching its mode off)", "kubernetes.io/tls", _cert_manager_data(),
     "kubernetes.io/tls", True),
    ("an Opaque Secret missing keys", "Opaque", {"ca.crt": b"junk"}, "Opaque", True),
    ("a custom type (no API rules)", "example.com/webhook-pair", {"tls.crt": b"junk"},
     "example.com/webhook-pair", True),
    ("a type our keys cannot satisfy: recreated", "kubernetes.io/basic-auth", {"username": b"x"},
     "Opaque", False),
])
async def test_a_secret_of_another_type_is_taken_over_and_the_new_leaf_is_trusted(
        kube_api: Any, tmp_path: Path, backend: str, case: str, stored_type: str, data: dict[str, bytes],
        kept_type: str, same_uid: bool) -> None:
    """The API refuses any update that changes a Secret's type (422): the operator keeps the type
    when its data fits it (kubernetes.io/tls allows the extra ca.* keys), else recreates the Secret."""
    from taskcreds.operator.kube import connect
    from taskcreds.operator.memcluster import MemCluster

    from tests.operator.running import webhook_configuration
    ns, name = "taskcreds-system", "wh-tls"
    cluster: Any
    if backend == "kube":
        kube_api.ensure_namespace(ns)
        kube_api.put(webhook_configuration(ns))
        kube_api.put({"apiVersion": "v1", "kind": "Secret", "type": stored_type,
                      "metadata": {"name": name, "namespace": ns},
                      "data": {k: base64.b64encode(v).decode() for k, v in data.items()}})
        cluster = await connect(url=kube_api.url, token=kube_api.admin_token)
    else:
        cluster = MemCluster()
        cluster.webhook_configurations["taskcreds"] = webhook_configuration(ns)
        cluster.put_secret(ns, name, data, secret_type=stored_type)
    try:
        before = await cluster.get_secret(ns, name)
        await certs.ensure_webhook_certificate(
            cluster, namespace=ns, secret_name=name, service="taskcreds-webhook",
            webhook_configuration="taskcreds", cert_dir=tmp_path, now=datetime.now(UTC))
        after = await cluster.get_secret(ns, name)
    finally:
        if backend == "kube":
            await cluster.close()
    assert after["type"] == kept_type, case
    assert (after["metadata"]["uid"] == before["metadata"]["uid"]) is same_uid, case
    stored = {k: base64.b64decode(v) for k, v in after["data"].items()}
    assert set(stored) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}, case
    if backend == "kube":
        mwc = kube_api.get("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", None, "taskcreds")
    else:
        mwc = cluster.webhook_configurations["taskcreds"]
    bundle = base64.b64decode(mwc["webhooks"][0]["clientConfig"]["caBundle"])
    assert _trusts(bundle, (tmp_path / "tls.crt").read_bytes()), case
    if stored_type == "kubernetes.io/tls":  # replicas still serving cert-manager's leaf stay trusted
        assert _trusts(bundle, data["tls.crt"]), case


@pytest.mark.parametrize("case, stored_type, data", [
    ("type kept (PUT)", "kubernetes.io/tls", {"tls.crt": b"c", "tls.key": b"k"}),
    ("type replaced (delete with precondition, then create)", "kubernetes.io/basic-auth", {"username": b"x"}),
])
async def test_replacing_a_secret_of_another_type_still_refuses_a_stale_version(
        kube_api: Any, case: str, stored_type: str, data: dict[str, bytes]) -> None:
    """Two replicas taking over the same Secret: the one that read an old version gets Conflict."""
    from taskcreds.operator.kube import connect
    kube_api.put({"apiVersion": "v1", "kind": "Secret", "type": stored_type,
                  "metadata": {"name": "s", "namespace": "default"},
                  "data": {k: base64.b64encode(v).decode() for k, v in data.items()}})
    cluster = await connect(url=kube_api.url, token=kube_api.admin_token)
    try:
        read = await cluster.get_secret("default", "s")
        kube_api.put({**kube_api.get("v1", "Secret", "default", "s"), "metadata": {
            "name": "s", "namespace": "default", "labels": {"moved": "on"}}})  # another writer
        with pytest.raises(Conflict):
            await cluster.apply_secret("default", "s", {"ca.crt": b"a", "tls.crt": b"c", "tls.key": b"k"},
                                       resource_version=read["metadata"]["resourceVersion"])
    finally:
        await cluster.close()
    current = kube_api.get("v1", "Secret", "default", "s")
    assert current["type"] == stored_type and current["metadata"]["labels"] == {"moved": "on"}, case
