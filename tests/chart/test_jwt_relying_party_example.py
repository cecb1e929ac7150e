"""examples/jwt-relying-party.py against a real broker (SPIFFE mTLS server, real jwt provider): it
reaches the JWKS and revoked list with full certificate verification, refuses a server with another
SPIFFE ID or another trust domain's chain, and checks tokens as docs/broker-api.md says."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import ssl
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from taskcreds.devauthority import DevAuthority
from tests.chart.helm import REPO
from tests.operator.test_broker_harness import NS, Harness, harness  # noqa: F401  (fixture)

ISSUER = "https://broker.test"  # the harness broker's jwt issuer


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("jwt_relying_party", REPO / "examples" / "jwt-relying-party.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


rp = load_example()


async def fetch(h: Harness, path: str, *, bundle: str | None = None, broker_id: str | None = None) -> Any:
    return await asyncio.to_thread(
        rp.fetch_json,
        h.url + path,
        bundle or h.authority.bundle_pem().decode(),
        broker_id or h.broker_svid.spiffe_id,
        5.0,
    )


async def issued_token(h: Harness, pod_name: str, credentials: str = "api") -> tuple[dict[str, Any], str]:
    pod = h.add_pod(pod_name, credentials=credentials)
    reply = await h.issue(h.agent(pod))
    assert reply.status == 200, reply.doc
    return pod, reply.doc["credentials"][0]["files"]["token"]


async def test_fetches_with_verification_and_accepts_a_live_token(harness: Harness) -> None:  # noqa: F811
    _, token = await issued_token(harness, "agent-1")
    jwks = await fetch(harness, "/.well-known/jwks.json")
    revoked = await fetch(harness, "/v1/jwt/revoked")
    claims = rp.verify_token(token, jwks=jwks, revoked=revoked, issuer=ISSUER, audience=f"{NS}/my-api",
                             namespace=NS)
    assert (claims["namespace"], claims["pod"], claims["source_kind"]) == (NS, "agent-1", "CredentialSource")


async def test_a_token_of_an_ended_task_is_refused_through_the_revoked_list(harness: Harness) -> None:  # noqa: F811
    pod, token = await issued_token(harness, "agent-2")
    reply = await harness.call(harness.agent(pod), "POST", "/v1/tasks/fix-42/revoke", {})
    assert reply.status == 200, reply.doc
    jwks = await fetch(harness, "/.well-known/jwks.json")
    revoked = await fetch(harness, "/v1/jwt/revoked")
    with pytest.raises(rp.Refused, match="is revoked"):
        rp.verify_token(token, jwks=jwks, revoked=revoked, issuer=ISSUER, audience=f"{NS}/my-api")


# (case, verify_token arguments besides token/jwks/revoked, what the refusal says)
REFUSALS = [
    ("another audience", {"issuer": ISSUER, "audience": f"{NS}/other-api"}, "InvalidAudienceError"),
    ("another issuer", {"issuer": "https://elsewhere.test", "audience": f"{NS}/my-api"}, "InvalidIssuerError"),
    ("another namespace", {"issuer": ISSUER, "audience": f"{NS}/my-api", "namespace": "team-b"}, "namespace 'team-a'"),
    (
        "expected from a ClusterCredentialSource",
        {"issuer": ISSUER, "audience": f"{NS}/my-api", "cluster_source": True},
        "minted by a CredentialSource",
    ),
]


@pytest.mark.parametrize(("args", "says"), [(a, s) for _, a, s in REFUSALS], ids=[c for c, _, _ in REFUSALS])
async def test_token_checks_refuse_what_the_docs_say_to_refuse(
    harness: Harness, args: dict[str, Any], says: str  # noqa: F811
) -> None:
    _, token = await issued_token(harness, "agent-3")
    jwks = await fetch(harness, "/.well-known/jwks.json")
    with pytest.raises(rp.Refused, match=says) as info:
        rp.verify_token(token, jwks=jwks, revoked={"revoked": []}, **args)
    assert token not in str(info.value)


async def test_a_server_with_another_spiffe_id_gets_nothing(harness: Harness) -> None:  # noqa: F811
    """Same trust domain, chain valid, but not the broker's ID: refused before the request is sent."""
    expected = harness.broker_svid.spiffe_id
    harness.broker_svid = harness.authority.mint_x509_svid(f"spiffe://taskcreds.local/ns/{NS}/sa/impostor")
    with pytest.raises(rp.WrongBroker, match="impostor.*expected.*nothing was sent"):
        await fetch(harness, "/.well-known/jwks.json", broker_id=expected)


async def test_a_chain_from_another_trust_domain_fails_the_handshake(harness: Harness) -> None:  # noqa: F811
    other = DevAuthority("elsewhere.example", allow=True).bundle_pem().decode()
    with pytest.raises(ssl.SSLCertVerificationError):
        await fetch(harness, "/.well-known/jwks.json", bundle=other)


async def test_a_host_name_check_alone_cannot_reach_the_broker(harness: Harness) -> None:  # noqa: F811
    """Why the example checks the SPIFFE ID: the SVID has no DNS name, so ordinary host-name
    verification against the bundle refuses the broker (the finding this example answers)."""
    context = ssl.create_default_context(cadata=harness.authority.bundle_pem().decode())
    port = int(harness.url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(ssl.SSLCertVerificationError, match="[Hh]ostname mismatch"):
        await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="taskcreds-broker.taskcreds-system.svc"
        )


async def test_the_command_prints_the_claims_or_says_why_it_refuses(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    _, token = await issued_token(harness, "agent-4")
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(harness.authority.bundle_pem())
    argv = ["--bundle", str(bundle), "--broker", harness.url, "--broker-id", harness.broker_svid.spiffe_id,
            "--issuer", ISSUER, "--namespace", NS]
    for audience, code in ((f"{NS}/my-api", 0), (f"{NS}/other-api", 1)):
        monkeypatch.setattr(sys, "stdin", io.StringIO(token + "\n"))
        assert await asyncio.to_thread(rp.main, [*argv, "--audience", audience]) == code
    out, err = capsys.readouterr()
    assert '"pod": "agent-4"' in out and "refused: InvalidAudienceError" in err and token not in out + err
