"""CredentialSources: typed reading, resolution order, and Secret references."""

from __future__ import annotations

from typing import Any

import pytest
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.providers.base import ProviderError
from taskcreds.operator.sources import (
    SourceError,
    default_files,
    parse_source,
    read_secret_value,
    resolve_source,
    secret_namespace,
    source_from_ref,
)

from taskcreds import names


def obj(spec: dict[str, Any], *, cluster: bool = False) -> dict[str, Any]:
    if cluster:
        return {"kind": names.KIND_CLUSTER_CREDENTIAL_SOURCE, "metadata": {"name": "github"}, "spec": spec}
    return {
        "kind": names.KIND_CREDENTIAL_SOURCE,
        "metadata": {"name": "github", "namespace": "agents"},
        "spec": spec,
    }


BASE = {"provider": "jwt", "maxTTL": "1h", "allowedServiceAccounts": ["coding-agent"]}


def test_parse_defaults() -> None:
    s = parse_source(obj(BASE))
    assert (s.provider, s.default_ttl, s.max_ttl, s.files, s.delivery) == (
        "jwt",
        900,
        3600,
        ("token",),
        "file",
    )
    assert s.ref == {"kind": "CredentialSource", "name": "github", "namespace": "agents"}
    assert parse_source(obj({**BASE, "maxTTL": "5m"})).default_ttl == 300  # default never above max


@pytest.mark.parametrize(
    ("provider", "spec", "files"),
    [
        ("jwt", {}, ("token",)),
        ("github-app", {"githubApp": {}}, ("token",)),
        ("kubernetes-token", {"kubernetesToken": {}}, ("token",)),
        ("vault", {"vault": {"mode": "token"}}, ("token",)),
        (
            "vault",
            {"vault": {"mode": "dynamic", "fileMap": {"username": "user", "password": "pass"}}},
            ("user", "pass"),
        ),
        ("secret", {"secret": {"secretRef": {"name": "x", "key": "api-key"}}}, ("api-key",)),
    ],
)
def test_default_files_per_provider(provider: str, spec: dict[str, Any], files: tuple[str, ...]) -> None:
    assert default_files(provider, spec) == files


BAD = [
    ("unknown provider", {**BASE, "provider": "ldap"}, False, "spec.provider 'ldap'"),
    ("provider block missing", {**BASE, "provider": "vault"}, False, "needs spec.vault"),
    ("maxTTL missing", {k: v for k, v in BASE.items() if k != "maxTTL"}, False, "spec.maxTTL is required"),
    ("maxTTL garbled", {**BASE, "maxTTL": "1 hour"}, False, "spec.maxTTL"),
    ("default above max", {**BASE, "defaultTTL": "2h"}, False, "above spec.maxTTL"),
    (
        "no service accounts",
        {k: v for k, v in BASE.items() if k != "allowedServiceAccounts"},
        False,
        "allowedServiceAccounts is required",
    ),
    ("wildcard", {**BASE, "allowedServiceAccounts": ["*"]}, False, "no wildcard"),
    ("cluster source without namespaces", BASE, True, "allowedNamespaces is required"),
    ("bad file name", {**BASE, "files": ["a/b"]}, False, "spec.files"),
    ("duplicate files", {**BASE, "files": ["a", "a"]}, False, "spec.files"),
    ("bad delivery", {**BASE, "delivery": "env"}, False, "spec.delivery"),
]


@pytest.mark.parametrize(("case", "spec", "cluster", "message"), BAD, ids=[b[0] for b in BAD])
def test_parse_refusals_name_the_field(case: str, spec: dict[str, Any], cluster: bool, message: str) -> None:
    with pytest.raises(SourceError) as info:
        parse_source(obj(spec, cluster=cluster))
    assert message in str(info.value)
    assert "github" in str(info.value)


async def test_resolution_prefers_the_namespace() -> None:
    mem = MemCluster()
    mem.put_source(
        {
            "kind": names.KIND_CLUSTER_CREDENTIAL_SOURCE,
            "metadata": {"name": "github"},
            "spec": {**BASE, "allowedNamespaces": ["agents"], "maxTTL": "2h"},
        }
    )
    found = await resolve_source(mem, "agents", "github")
    assert (
        found is not None and found.kind == names.KIND_CLUSTER_CREDENTIAL_SOURCE and found.namespace is None
    )
    mem.put_source(obj(BASE))
    found = await resolve_source(mem, "agents", "github")
    assert found is not None and found.kind == names.KIND_CREDENTIAL_SOURCE and found.max_ttl == 3600
    assert await resolve_source(mem, "agents", "nope") is None
    again = await source_from_ref(mem, found.ref)
    assert again == found


async def test_broken_namespaced_source_does_not_fall_through() -> None:
    mem = MemCluster()
    mem.put_source(
        {
            "kind": names.KIND_CLUSTER_CREDENTIAL_SOURCE,
            "metadata": {"name": "github"},
            "spec": {**BASE, "allowedNamespaces": ["agents"]},
        }
    )
    mem.put_source(obj({**BASE, "maxTTL": "soon"}))
    with pytest.raises(SourceError):
        await resolve_source(mem, "agents", "github")


@pytest.mark.parametrize(
    ("ref", "source_ns", "expected"),
    [
        ({"name": "s", "key": "k"}, "agents", "agents"),
        ({"name": "s", "key": "k"}, None, "taskcreds-system"),
        ({"name": "s", "key": "k", "namespace": "vault"}, None, "vault"),
    ],
)
def test_secret_namespace(ref: dict[str, str], source_ns: str | None, expected: str) -> None:
    assert secret_namespace(ref, source_ns, "taskcreds-system") == expected


async def test_read_secret_value_errors_never_show_values() -> None:
    mem = MemCluster()
    mem.put_secret("agents", "s", {"k": "the-value"})
    assert (
        await read_secret_value(
            mem,
            {"name": "s", "key": "k"},
            source_namespace="agents",
            operator_namespace="op",
            provider="secret",
        )
        == b"the-value"
    )
    for ref, message in [
        ({"name": "s", "key": "other"}, "has no key 'other' (keys: k)"),
        ({"name": "missing", "key": "k"}, "Secret agents/missing not found"),
        ({"name": "s"}, "needs name and key"),
    ]:
        with pytest.raises(ProviderError) as info:
            await read_secret_value(
                mem, ref, source_namespace="agents", operator_namespace="op", provider="secret"
            )
        assert message in str(info.value) and "the-value" not in str(info.value)


@pytest.mark.parametrize(
    "ref",
    [
        {"name": "db-root", "key": "password", "namespace": "kube-system"},
        {"name": "other-tenant", "key": "token", "namespace": "team-b"},
    ],
)
def test_a_namespaced_source_cannot_reach_secrets_of_another_namespace(ref: dict[str, str]) -> None:
    """The operator reads Secrets cluster-wide: a tenant's CredentialSource must not borrow that."""
    with pytest.raises(SourceError, match="only use Secrets in its own namespace"):
        secret_namespace(ref, "agents", "taskcreds-system")
    assert secret_namespace({**ref, "namespace": "agents"}, "agents", "taskcreds-system") == "agents"


async def test_the_secret_provider_refuses_a_cross_namespace_ref_without_reading_it() -> None:
    from taskcreds.operator.memcluster import MemCluster
    from taskcreds.operator.providers.base import ProviderError
    from taskcreds.operator.sources import read_secret_value

    mem = MemCluster()
    mem.put_secret("kube-system", "db-root", {"password": "hunter2-canary"})
    with pytest.raises(ProviderError) as err:
        await read_secret_value(
            mem,
            {"name": "db-root", "key": "password", "namespace": "kube-system"},
            source_namespace="agents",
            operator_namespace="taskcreds-system",
            provider="secret",
        )
    assert not err.value.retryable
    assert "hunter2-canary" not in str(err.value)


async def test_namespaced_source_may_not_read_another_namespace() -> None:
    mem = MemCluster()
    mem.put_secret("kube-system", "admin", {"token": "cluster-admin-token"})
    with pytest.raises(ProviderError) as info:
        await read_secret_value(
            mem,
            {"name": "admin", "key": "token", "namespace": "kube-system"},
            source_namespace="agents",
            operator_namespace="op",
            provider="secret",
        )
    assert "may only use Secrets in its own namespace" in str(info.value)
    assert "cluster-admin-token" not in str(info.value)
