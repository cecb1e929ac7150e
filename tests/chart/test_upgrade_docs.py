"""docs/install.md "Upgrading" gives a jq query that lists the sources this release refuses
(github-app without a scope, vault token mode with the ``default`` policy). It must list exactly the
sources the operator refuses: when it reads them (admission, the broker's 403) and, behind that, the
real providers (the issue fails and nothing reaches the server)."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from taskcreds.operator.memcluster import MemCluster
from taskcreds.operator.providers.base import IssueRequest, Provider, ProviderError
from taskcreds.operator.providers.github_app import GitHubAppProvider
from taskcreds.operator.providers.vault import VaultProvider
from taskcreds.operator.sources import SourceError, parse_source

from taskcreds import names
from tests.chart.helm import REPO
from tests.fakes.github import new_private_key_pem

NS = "agents"
UPGRADING = (lambda text: text[text.index("### Upgrading") : text.index("### Permissions")])(
    (REPO / "docs" / "install.md").read_text()
)


def doc_query() -> str:
    """The jq program of the `kubectl get credentialsources,...| jq -r '...'` block."""
    start = UPGRADING.index("kubectl get credentialsources,clustercredentialsources")
    program = UPGRADING[start:].split("jq -r '", 1)[1]
    return program[: program.index("'\n")]


def jq(program: str, data: Any) -> list[str]:
    """The lines ``jq -r`` prints, as `kubectl ... -o json | jq -r` would."""
    out = subprocess.run(
        ["jq", "-r", program], input=json.dumps(data), capture_output=True, text=True, check=True, timeout=10
    )
    return out.stdout.splitlines()


GITHUB = {
    "appId": "12345",
    "installationId": "678",
    "privateKeySecretRef": {"name": "github-app", "key": "private-key.pem"},
    "repositories": ["agent-target-repo"],
    "permissions": {"contents": "read"},
}
VAULT = {
    "auth": {"method": "token", "tokenSecretRef": {"name": "vault-operator", "key": "token"}},
    "mode": "token",
    "policies": ["repo-read"],
}

#: name -> (provider, settings changed from the defaults above (None: left out), refused)
CASES: dict[str, tuple[str, dict[str, Any], bool]] = {
    "github scoped": ("github-app", {}, False),
    "github every repository, said": ("github-app", {"allRepositories": True, "repositories": None}, False),
    "github without permissions": ("github-app", {"permissions": None}, True),
    "github with empty permissions": ("github-app", {"permissions": {}}, True),
    "github without repositories": ("github-app", {"repositories": None}, True),
    "github with empty repositories": ("github-app", {"repositories": []}, True),
    "github allRepositories false": ("github-app", {"repositories": None, "allRepositories": False}, True),
    "vault token mode": ("vault", {}, False),
    "vault token mode with default": ("vault", {"policies": ["repo-read", "default"]}, True),
    "vault mode left out, with default": ("vault", {"mode": None, "policies": ["default"]}, True),
    "vault dynamic": (
        "vault",
        {"mode": "dynamic", "policies": None, "path": "database/creds/readonly"},
        False,
    ),
}


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every request 500 and remembers its path: anything recorded was sent."""

    seen: list[str]

    def _answer(self) -> None:
        self.seen.append(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b'{"errors": ["test server"], "message": "test server"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def source(name: str, provider: str, changes: dict[str, Any], address: str) -> dict[str, Any]:
    settings = dict(GITHUB if provider == "github-app" else VAULT)
    settings.update(changes)
    settings = {k: v for k, v in settings.items() if v is not None}
    key = "githubApp" if provider == "github-app" else "vault"
    settings["apiURL" if provider == "github-app" else "address"] = address
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND_CREDENTIAL_SOURCE,
        "metadata": {"name": name.replace(" ", "-").replace(",", ""), "namespace": NS},
        "spec": {
            "provider": provider,
            "defaultTTL": "15m",
            "maxTTL": "1h",
            "allowedServiceAccounts": ["agent"],
            key: settings,
        },
    }


async def refused_by_the_operator(doc: dict[str, Any], cluster: MemCluster) -> bool:
    """Issue from ``doc`` with the real provider: refused when it fails and sent nothing."""
    provider: Provider
    if doc["spec"]["provider"] == "github-app":
        provider = GitHubAppProvider(cluster, timeout=3)
    else:
        provider = VaultProvider(cluster, timeout=3)
    request = IssueRequest(
        credential=doc["metadata"]["name"],
        source_spec=doc["spec"],
        source_namespace=NS,
        namespace=NS,
        pod="agent-0",
        pod_uid="uid-1",
        service_account="agent",
        task="fix-42",
        ttl_seconds=900,
    )
    try:
        await provider.issue(request)
    except ProviderError:
        return True
    finally:
        await provider.aclose()
    raise AssertionError("the test server answers 500: nothing can be issued")


def refused_when_read(doc: dict[str, Any]) -> bool:
    """What admission and the broker go by: the source as read (:func:`parse_source`)."""
    try:
        parse_source(doc)
    except SourceError:
        return True
    return False


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
async def test_the_upgrade_query_lists_exactly_the_sources_the_operator_refuses(
    server: tuple[str, list[str]],
) -> None:
    address, seen = server
    cluster = MemCluster()
    cluster.put_secret(NS, "github-app", {"private-key.pem": new_private_key_pem()})
    cluster.put_secret(NS, "vault-operator", {"token": "vault-operator-token-canary"})
    docs = {case: source(case, p, changes, address) for case, (p, changes, _) in CASES.items()}
    refused = set()
    for case, doc in docs.items():
        before = len(seen)
        failed = await refused_by_the_operator(doc, cluster)
        if failed and len(seen) == before:
            refused.add(case)
    assert refused == {case for case, (_, _, expected) in CASES.items() if expected}, "the cases' truth"
    assert {case for case, doc in docs.items() if refused_when_read(doc)} == refused

    listed = jq(doc_query(), {"items": list(docs.values())})
    by_line = {f"{d['kind']} {NS}/{d['metadata']['name']}": case for case, d in docs.items()}
    assert {by_line[line] for line in listed if line} == refused
