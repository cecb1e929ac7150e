"""The jwt provider: ES256 tokens a relying party can verify from the JWKS, keys kept in a Secret and
rotated without breaking tokens already out, and an honest deny list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.providers.base import IssueRequest, ProviderError
from taskcreds.operator.providers.jwt import SECRET_KEY, JwtProvider


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def request(ttl: int = 600, *, source_namespace: str | None = "team-a", **spec: Any) -> IssueRequest:
    return IssueRequest(
        credential="api",
        source_spec={"provider": "jwt", "jwt": spec},
        source_namespace=source_namespace,
        namespace="team-a",
        pod="agent-1",
        pod_uid="u1",
        service_account="agent",
        task="fix-42",
        ttl_seconds=ttl,
    )


def provider(mem: MemCluster, clock: Clock, **kw: Any) -> JwtProvider:
    return JwtProvider(
        mem,
        secret_namespace="taskcreds-system",
        secret_name="jwt-keys",
        issuer="https://taskcreds.example",
        now=clock,
        **kw,
    )


def verify(token: str, jwks: dict[str, Any], audience: str) -> dict[str, Any]:
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks["keys"] if k["kid"] == kid)
    return jwt.decode(
        token, jwt.algorithms.ECAlgorithm.from_jwk(key), algorithms=["ES256"], audience=audience
    )


async def test_claims_and_lifetime() -> None:
    mem, clock = MemCluster(), Clock()
    p = provider(mem, clock)
    issued = await p.issue(request(ttl=300, audience=["team-a/my-api"], claims={"scope": "read"}))
    claims = verify(issued.files["token"], p.jwks(), "team-a/my-api")
    assert claims["iss"] == "https://taskcreds.example"
    assert claims["sub"] == "system:taskcreds:team-a:agent-1"
    assert (claims["task"], claims["pod"], claims["namespace"], claims["credential"]) == (
        "fix-42",
        "agent-1",
        "team-a",
        "api",
    )
    assert claims["exp"] - claims["iat"] == 300 and claims["nbf"] == claims["iat"]
    assert claims["scope"] == "read" and claims["jti"] in issued.lease_ref
    assert claims["source_kind"] == "CredentialSource"
    assert jwt.get_unverified_header(issued.files["token"])["alg"] == "ES256"
    assert issued.expires_at - issued.issued_at == timedelta(seconds=300)
    assert "token" not in repr(issued) or issued.files["token"] not in repr(issued)
    with pytest.raises(jwt.InvalidAudienceError):
        verify(issued.files["token"], p.jwks(), "other-api")


@pytest.mark.parametrize(
    ("source_namespace", "audience", "kind"),
    [
        pytest.param("team-a", "team-a/api", "CredentialSource", id="CredentialSource: <namespace>/<name>"),
        pytest.param(None, "api", "ClusterCredentialSource", id="ClusterCredentialSource: <name>"),
    ],
)
async def test_default_audience_and_source_kind(source_namespace: str | None, audience: str, kind: str) -> None:
    p = provider(MemCluster(), Clock())
    issued = await p.issue(request(source_namespace=source_namespace))
    claims = verify(issued.files["token"], p.jwks(), audience)
    assert (claims["aud"], claims["source_kind"]) == (audience, kind)


@pytest.mark.parametrize("claim", ["sub", "exp", "task", "iss", "source_kind"])
async def test_reserved_claims_refused(claim: str) -> None:
    p = provider(MemCluster(), Clock())
    with pytest.raises(ProviderError, match=f"reserved claims {claim}"):
        await p.issue(request(claims={claim: "x"}))


async def test_keys_created_once_and_shared_across_replicas() -> None:
    mem, clock = MemCluster(), Clock()
    first = provider(mem, clock)
    token = (await first.issue(request())).files["token"]
    secret = mem.secrets[("taskcreds-system", "jwt-keys")]
    assert list(secret["data"]) == [SECRET_KEY]
    second = provider(mem, clock)  # another replica: adopts the stored key
    await second.ensure_keys()
    assert second.jwks() == first.jwks()
    verify(token, second.jwks(), "team-a/api")


async def test_rotation_keeps_old_key_until_its_tokens_expire() -> None:
    mem, clock = MemCluster(), Clock()
    p = provider(mem, clock, rotate_every=3600, max_token_ttl=900, reload_every=0)
    old_token = (await p.issue(request(ttl=900))).files["token"]
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    clock.now += timedelta(seconds=3600)
    new_token = (await p.issue(request(ttl=900))).files["token"]
    new_kid = jwt.get_unverified_header(new_token)["kid"]
    assert new_kid != old_kid
    assert {k["kid"] for k in p.jwks()["keys"]} == {old_kid, new_kid}  # old tokens still verify
    clock.now += timedelta(seconds=901)
    await p.ensure_keys(force_reload=True)
    assert {k["kid"] for k in p.jwks()["keys"]} == {new_kid}  # pruned once nothing it signed is valid


async def test_explicit_rotate() -> None:
    mem, clock = MemCluster(), Clock()
    p = provider(mem, clock)
    await p.ensure_keys()
    kid = await p.rotate()
    token = (await p.issue(request())).files["token"]
    assert jwt.get_unverified_header(token)["kid"] == kid and len(p.jwks()["keys"]) == 2


async def test_revoke_is_a_deny_list_and_renew_replaces() -> None:
    clock = Clock()
    p = provider(MemCluster(), clock)
    issued = await p.issue(request())
    renewed = await p.renew(issued.lease_ref, request())
    assert renewed.lease_ref != issued.lease_ref
    jti = issued.lease_ref.split(":")[1]
    assert p.is_revoked(jti)
    with pytest.raises(jwt.InvalidTokenError, match="revoked"):
        p.verify(issued.files["token"], "team-a/api")
    p.verify(renewed.files["token"], "team-a/api")
    await p.revoke(issued.lease_ref, {}, None)  # idempotent
    assert [r["jti"] for r in p.revoked()] == [jti]
    clock.now += timedelta(hours=1)
    assert p.revoked() == []  # expired tokens need no deny entry
    with pytest.raises(ProviderError, match="not jwt"):
        await p.revoke("garbage", {}, None)


async def test_corrupt_key_secret_is_named() -> None:
    mem = MemCluster()
    mem.put_secret("taskcreds-system", "jwt-keys", {SECRET_KEY: "not json"})
    with pytest.raises(ProviderError, match="delete it to have a new one made"):
        await provider(mem, Clock()).issue(request())


async def test_deny_list_is_rebuilt_from_the_task_leases_on_another_replica_or_after_a_restart() -> None:
    """The in-memory deny list of one replica is not the record: the TaskLeases are."""
    from taskcreds.operator import leases

    clock = Clock()
    mem = MemCluster()
    pod = mem.put_pod({"metadata": {"name": "agent-1", "namespace": "team-a",
                                    "annotations": {"taskcreds.io/task": "fix-42"}}, "spec": {}})
    first = provider(mem, clock)
    issued = await first.issue(request())
    entry = leases.lease_entry("api", "jwt", {"kind": "CredentialSource", "name": "api", "namespace": "team-a"},
                               issued)
    await leases.record_issued(mem, pod, "fix-42", [entry])
    await leases.revoke_task(mem, {"jwt": first}, "team-a", leases.lease_name("agent-1", "fix-42"),
                             "completed", metrics=None)
    jti = issued.lease_ref.split(":")[1]
    restarted = provider(mem, clock)  # another replica, or this one after a restart
    await restarted.issue(request())  # loads the shared signing keys from their Secret
    assert restarted.revoked() == []
    await restarted.sync_revoked(max_age=0)
    assert [r["jti"] for r in restarted.revoked()] == [jti]
    with pytest.raises(jwt.InvalidTokenError, match="revoked"):
        restarted.verify(issued.files["token"], "team-a/api")


@pytest.mark.parametrize(
    ("audience", "source_namespace", "refused"),
    [
        pytest.param(["shared-api"], "team-b", True, id="namespaced: a cluster source's audience"),
        pytest.param(["team-a/api"], "team-b", True, id="namespaced: another namespace's audience"),
        pytest.param(["team-b/api", "shared-api"], "team-b", True, id="namespaced: one bad audience of two"),
        pytest.param("team-b", "team-b", True, id="namespaced: the bare namespace"),
        pytest.param(["team-b/"], "team-b", True, id="namespaced: the prefix alone"),
        pytest.param(["team-bb/api"], "team-b", True, id="namespaced: a longer namespace's prefix"),
        pytest.param(["team-b/api"], "team-b", False, id="namespaced: its own prefix"),
        pytest.param("team-b/api", "team-b", False, id="namespaced: one audience as a string"),
        pytest.param(["shared-api"], None, False, id="cluster source: any audience"),
    ],
)
async def test_a_credential_source_mints_only_audiences_of_its_namespace(
    audience: list[str] | str, source_namespace: str | None, refused: bool
) -> None:
    """A tenant cannot get a token a relying party of a cluster source or of another namespace accepts."""
    p = provider(MemCluster(), Clock())
    req = request(audience=audience, source_namespace=source_namespace)
    if refused:
        with pytest.raises(ProviderError, match=r"spec\.jwt\.audience .*may only mint audiences that start "
                           r"with 'team-b/'") as caught:
            await p.issue(req)
        assert not caught.value.retryable
        assert p.jwks() == {"keys": []}  # refused before anything was signed (or a key made)
    else:
        issued = await p.issue(req)
        first = audience if isinstance(audience, str) else audience[0]
        assert verify(issued.files["token"], p.jwks(), first)["aud"] == first
