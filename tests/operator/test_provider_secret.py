"""The secret provider: a static passthrough, said to be static, never claiming to revoke."""

from __future__ import annotations

from typing import Any

import pytest
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.providers.base import IssueRequest, NotRevocable, ProviderError
from taskcreds.operator.providers.secret import SecretProvider


def request(
    ref: dict[str, Any],
    *,
    source_namespace: str | None = "team-a",
    files: list[str] | None = None,
) -> IssueRequest:
    spec: dict[str, Any] = {"provider": "secret", "secret": {"secretRef": ref}}
    if files:
        spec["files"] = files
    return IssueRequest(
        credential="legacy",
        source_spec=spec,
        source_namespace=source_namespace,
        namespace="team-a",
        pod="agent-1",
        pod_uid="u1",
        service_account="agent",
        task="t",
        ttl_seconds=600,
    )


@pytest.fixture
def mem() -> MemCluster:
    m = MemCluster()
    m.put_secret("team-a", "legacy-token", {"token": "s3cret", "bin": b"\xff\xfe"})
    m.put_secret("taskcreds-system", "shared", {"key": "cluster-value"})
    return m


async def test_passthrough_is_static(mem: MemCluster) -> None:
    p = SecretProvider(mem, operator_namespace="taskcreds-system")
    issued = await p.issue(request({"name": "legacy-token", "key": "token"}))
    assert issued.files == {"token": "s3cret"} and issued.static and not issued.renewable
    assert issued.lease_ref == "secret:team-a/legacy-token#token" and "s3cret" not in issued.lease_ref
    named = await p.issue(request({"name": "legacy-token", "key": "token"}, files=["api-key"]))
    assert named.files == {"api-key": "s3cret"}


async def test_cluster_source_reads_the_operator_namespace(mem: MemCluster) -> None:
    p = SecretProvider(mem, operator_namespace="taskcreds-system")
    issued = await p.issue(request({"name": "shared", "key": "key"}, source_namespace=None))
    assert issued.files == {"key": "cluster-value"}


async def test_renew_rereads(mem: MemCluster) -> None:
    p = SecretProvider(mem, operator_namespace="taskcreds-system")
    first = await p.issue(request({"name": "legacy-token", "key": "token"}))
    mem.put_secret("team-a", "legacy-token", {"token": "rotated"})
    again = await p.renew(first.lease_ref, request({"name": "legacy-token", "key": "token"}))
    assert again.files == {"token": "rotated"}


async def test_revoke_says_it_cannot(mem: MemCluster) -> None:
    p = SecretProvider(mem, operator_namespace="taskcreds-system")
    with pytest.raises(NotRevocable, match="cannot be revoked"):
        await p.revoke("secret:team-a/legacy-token#token", {}, "team-a")


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ({"name": "nope", "key": "token"}, "Secret team-a/nope not found"),
        ({"name": "legacy-token", "key": "other"}, "has no key 'other'"),
        ({"name": "legacy-token", "key": "bin"}, "is not UTF-8"),
    ],
)
async def test_errors_name_the_secret_never_the_value(
    mem: MemCluster, ref: dict[str, str], message: str
) -> None:
    with pytest.raises(ProviderError) as info:
        await SecretProvider(mem, operator_namespace="x").issue(request(ref))
    assert message in str(info.value) and "s3cret" not in str(info.value)
