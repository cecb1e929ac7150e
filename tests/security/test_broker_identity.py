# ruff: noqa: F811  (the harness fixture is imported by name)
"""Who may talk to the broker: SVIDs past notAfter or before notBefore, another service account,
another namespace, another trust domain's CA, tokens of another pod or audience, or expired.

Each case is the real broker over SPIFFE mTLS on loopback; each refusal is checked against a
control request that differs only in the one thing under test and succeeds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from cryptography import x509

from taskcreds.devauthority import DevAuthority
from taskcreds.svid import X509SvidMaterial
from tests.operator.test_broker_harness import (  # noqa: F401  (harness is a fixture)
    BROKER_ID,
    NS,
    SA,
    TRUST_DOMAIN,
    Agent,
    Harness,
    harness,
    spiffe_id,
)


@dataclass
class Clock:
    """A settable clock for the authority: SVIDs minted in the past or the future."""

    offset: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@pytest.fixture
async def timed_harness() -> tuple[Harness, Clock]:
    """The standard broker, but its authority's clock can be moved (the CA made 3 h in the past)."""
    clock = Clock(timedelta(hours=-3))
    h = Harness()
    h.authority = DevAuthority(TRUST_DOMAIN, allow=True, now=clock)
    clock.offset = timedelta(0)
    h.broker_svid = h.authority.mint_x509_svid(BROKER_ID)
    h.put_sources()
    await h.start()
    yield h, clock
    await h.close()


@pytest.mark.parametrize(
    ("case", "minted_at", "ttl"),
    [
        ("expired an hour ago", timedelta(hours=-2), 3600.0),
        ("expired a second ago", timedelta(seconds=-62), 60.0),
        ("not valid for another hour", timedelta(hours=1, minutes=30), 3600.0),
    ],
)
async def test_svid_outside_its_validity_fails_the_handshake(
    timed_harness: tuple[Harness, Clock], case: str, minted_at: timedelta, ttl: float
) -> None:
    h, clock = timed_harness
    pod = h.add_pod("agent-1")
    clock.offset = minted_at
    stale = h.authority.mint_x509_svid(spiffe_id(), ttl=ttl)
    clock.offset = timedelta(0)
    leaf = x509.load_der_x509_certificate(stale.leaf_der)
    now = datetime.now(UTC)
    assert not (leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc), case  # really out of range
    with pytest.raises(aiohttp.ClientError):
        await h.issue(h.agent(pod, svid=stale))
    fresh = await h.issue(h.agent(pod))  # same authority, same pod, valid now: the control
    assert fresh.status == 200, fresh.doc


def _other_pod_token(h: Harness, pod: dict) -> str:
    other = h.add_pod("agent-other", namespace="team-b", service_account="builder")
    meta = other["metadata"]
    return h.cluster.issue_pod_token("team-b", "builder", meta["name"], meta["uid"])


#: case -> (how the agent is built from the harness and its pod, expected status, code, words in message)
IDENTITY_CASES: list[tuple[str, Callable[[Harness, dict], Agent], int, str, str]] = [
    (
        "svid of another service account",
        lambda h, p: h.agent(p, svid_id=spiffe_id(NS, "builder")),
        401,
        "unauthenticated",
        "disagree",
    ),
    (
        "svid of another namespace",
        lambda h, p: h.agent(p, svid_id=spiffe_id("team-b", SA)),
        401,
        "unauthenticated",
        "disagree",
    ),
    (
        "svid outside the id template",
        lambda h, p: h.agent(p, svid_id=f"spiffe://{TRUST_DOMAIN}/ns/{NS}/sa/{SA}/extra"),
        401,
        "unauthenticated",
        "template",
    ),
    (
        "token of a pod in another namespace",
        lambda h, p: h.agent(p, token=_other_pod_token(h, p)),
        401,
        "unauthenticated",
        "disagree",
    ),
    (
        "token with the kube-apiserver audience",
        lambda h, p: h.agent(p, audiences=("https://kubernetes.default.svc",)),
        401,
        "unauthenticated",
        "audience",
    ),
    (
        "token with no audience we know",
        lambda h, p: h.agent(p, audiences=("vault",)),
        401,
        "unauthenticated",
        "audience",
    ),
    (
        "token that expired",
        lambda h, p: h.agent(
            p, token=h.cluster.issue_pod_token(NS, SA, p["metadata"]["name"], p["metadata"]["uid"], ttl=-1)
        ),
        401,
        "unauthenticated",
        "not authenticated",
    ),
    (
        "token made up",
        lambda h, p: h.agent(p, token="eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
        401,
        "unauthenticated",
        "not authenticated",
    ),
    (
        "no client certificate",
        lambda h, p: h.agent(p, no_svid=True),
        401,
        "unauthenticated",
        "no client X.509-SVID",
    ),
]


@pytest.mark.parametrize(
    ("case", "make", "status", "code", "words"), IDENTITY_CASES, ids=[c[0] for c in IDENTITY_CASES]
)
async def test_identity_refusals(
    harness: Harness, case: str, make: Callable[[Harness, dict], Agent], status: int, code: str, words: str
) -> None:
    pod = harness.add_pod("agent-1")
    reply = await harness.issue(make(harness, pod))
    assert (reply.status, reply.code) == (status, code), reply.doc
    assert words in reply.doc["error"]["message"]
    assert (await harness.issue(harness.agent(pod))).status == 200  # the control


async def test_svid_of_another_trust_domain_fails_the_handshake(harness: Harness) -> None:
    """An SVID of trust domain other.local (its own CA) is not chained to the broker's bundle."""
    other = DevAuthority("other.local", allow=True)
    pod = harness.add_pod("agent-1")
    with pytest.raises(aiohttp.ClientError):
        await harness.issue(
            harness.agent(pod, svid=other.mint_x509_svid(f"spiffe://other.local/ns/{NS}/sa/{SA}"))
        )


async def test_token_of_another_pod_of_the_same_account_is_about_that_pod_only(harness: Harness) -> None:
    """A stolen token works only for its own pod's task: the thief's SVID adds nothing."""
    victim = harness.add_pod("agent-1", task="victim-task")
    thief = harness.add_pod("agent-2", task="thief-task")
    stolen = harness.agent(thief, token=harness.agent(victim).token)
    for task in ("thief-task", "victim-task"):
        reply = await harness.issue(stolen, task=task)
        if task == "thief-task":
            assert (reply.status, reply.code) == (403, "policy_denied"), reply.doc
            assert "is not the task of pod team-a/agent-1" in reply.doc["error"]["message"]
        else:  # the token's pod is the victim: same answer the victim's own sidecar would get
            assert reply.status == 200 and all(c["name"] == "api" for c in reply.doc["credentials"])


async def test_svid_expiring_on_a_kept_alive_connection_is_refused(harness: Harness) -> None:
    """The handshake checks the dates once: a connection kept alive past notAfter must not carry on.

    Found by the fault matrix (tests/scenarios/faults.py, "SVID expiry without renewal"): a sidecar
    whose SVID was no longer renewed kept getting credentials over its open connection.
    """
    pod = harness.add_pod("agent-1")
    short = harness.authority.mint_x509_svid(spiffe_id(), ttl=2.0)
    agent = harness.agent(pod, svid=short)
    first = await harness.issue(agent)
    assert first.status == 200, first.doc
    not_after = x509.load_der_x509_certificate(short.leaf_der).not_valid_after_utc
    await asyncio.sleep(max(0.0, (not_after - datetime.now(UTC)).total_seconds()) + 1.2)
    late = await harness.issue(agent)  # same session: the kept-alive connection
    assert (late.status, late.code) == (401, "unauthenticated"), late.doc
    assert "reconnect with a current SVID" in late.doc["error"]["message"]
    assert late.headers.get("Connection", "").lower() == "close"
    with pytest.raises(aiohttp.ClientError):  # a new connection: the handshake refuses the SVID
        await harness.issue(agent)
    fresh = await harness.issue(harness.agent(pod))  # the control: a current SVID
    assert fresh.status == 200, fresh.doc


# --- leaf shapes an X.509-SVID must not have (review finding 7) ------------------------------------
def _forged_svid(h: Harness, uri: str, *, ca: bool = False, key_cert_sign: bool = False) -> X509SvidMaterial:
    """A leaf signed by the trust domain's own CA (so the handshake passes) with one shape changed."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    signing = h.authority._cas[-1]  # noqa: SLF001  (the dev authority's current CA)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=key_cert_sign, crl_sign=False, encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(signing.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .sign(signing.key, hashes.SHA256())
    )
    der = serialization.Encoding.DER
    return X509SvidMaterial(
        spiffe_id=uri,
        chain_der=(cert.public_bytes(der),),
        key_der=key.private_bytes(der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        bundle_der=h.authority.bundle_der(),
        expires_at=now + timedelta(hours=1),
    )


LEAF_CASES = [
    pytest.param({}, 200, None, id="control: a well-formed leaf"),
    pytest.param({"ca": True}, 401, "basicConstraints CA:TRUE", id="CA flag on the leaf"),
    pytest.param({"key_cert_sign": True}, 401, "keyCertSign", id="leaf may sign certificates"),
    pytest.param({"suffix": "\n"}, 401, "invalid path segment", id="trailing newline in the ID"),
]


@pytest.mark.parametrize(("shape", "status", "says"), LEAF_CASES)
async def test_client_leaf_shapes(harness: Harness, shape: dict, status: int, says: str | None) -> None:
    pod = harness.add_pod("agent-1", credentials="legacy")
    uri = spiffe_id() + shape.pop("suffix", "")
    reply = await harness.issue(harness.agent(pod, svid=_forged_svid(harness, uri, **shape)))
    assert reply.status == status, reply.doc
    if says is not None:
        assert reply.code == "unauthenticated" and says in reply.doc["error"]["message"], reply.doc
        assert "not a usable X.509-SVID" in reply.doc["error"]["message"]
