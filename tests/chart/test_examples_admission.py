"""Every example agent workload is admitted by a cluster that has every example CredentialSource
applied, and the files its containers read are files those sources write.

Why: the examples are what people copy first; a workload the webhook refuses with them (a credential
no example defines, a service account no source allows) or a path that never appears is the first
thing they hit. The admission decision is the webhook's own: ``mutate_pod`` with the operator's
:class:`CredentialIndex` as policy (as ``taskcreds.operator.main`` wires it).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml
from taskcreds.operator.config import InjectionConfig
from taskcreds.operator.credindex import CredentialIndex
from taskcreds.operator.injection import MutationResult, mutate_pod
from taskcreds.operator.injection.workloads import pod_template
from taskcreds.operator.sources import Source

from taskcreds import names
from tests.chart.helm import REPO

EXAMPLES = REPO / "examples"


def example_index() -> CredentialIndex:
    """The webhook's policy view of a cluster with every examples/credentialsources/*.yaml applied."""
    index = CredentialIndex()
    for path in sorted((EXAMPLES / "credentialsources").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in (names.KIND_CREDENTIAL_SOURCE, names.KIND_CLUSTER_CREDENTIAL_SOURCE):
                index.update(doc, doc["kind"])
    index.mark_synced()
    return index


def example_workloads() -> list[tuple[str, dict[str, Any]]]:
    """(file:kind/name, document) for every example object whose pods opt in to injection."""
    out = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            template, _ = pod_template(doc) if isinstance(doc, dict) else (None, "")
            if template is None:
                continue
            if (template.get("metadata") or {}).get("labels", {}).get(names.LABEL_INJECT) != "true":
                continue  # never reaches the webhook (e.g. the OpenBao dev server)
            meta = doc["metadata"]
            out.append((f"{path.relative_to(EXAMPLES)}:{doc['kind']}/{meta.get('name') or meta['generateName']}", doc))
    return out


WORKLOADS = example_workloads()
INDEX = example_index()


def admit(doc: dict[str, Any], index: CredentialIndex) -> MutationResult:
    """What the webhook answers for a pod of ``doc`` (the pod itself, or one made from its template)."""
    template, _ = pod_template(doc)
    assert template is not None
    pod = {"apiVersion": "v1", "kind": "Pod", **copy.deepcopy(template)}
    return mutate_pod(
        pod,
        InjectionConfig(),
        namespace=doc["metadata"]["namespace"],
        credential_check=index.check,
        delivery=index.delivery,
    )


def test_the_shipped_agent_workloads_are_all_found() -> None:
    """Discovery cannot silently find nothing: the two documented workloads are among the cases."""
    found = {case.split(":")[0] for case, _ in WORKLOADS}
    assert {"agent-pod.yaml", "agent-deployment.yaml"} <= found


@pytest.mark.parametrize(("case", "doc"), WORKLOADS, ids=[c for c, _ in WORKLOADS])
def test_example_workload_is_admitted_with_the_example_sources(case: str, doc: dict[str, Any]) -> None:
    result = admit(doc, INDEX)
    assert (result.outcome, result.message) == ("injected", None), f"{case}: {result.message}"


@pytest.mark.parametrize(("case", "doc"), WORKLOADS, ids=[c for c, _ in WORKLOADS])
def test_the_same_workload_under_another_service_account_is_denied(case: str, doc: dict[str, Any]) -> None:
    """Control: the index really decides (a service account no example source allows is refused)."""
    doc = copy.deepcopy(doc)
    template, _ = pod_template(doc)
    assert template is not None
    template["spec"]["serviceAccountName"] = "nobody-allows-this"
    result = admit(doc, INDEX)
    assert result.outcome == "denied", case
    assert "nobody-allows-this" in (result.message or "") and "allowedServiceAccounts" in (result.message or "")


def _read_path(mount: str) -> re.Pattern[str]:
    """`$TASKCREDS_DIR/<credential>/<file>`, `${TASKCREDS_DIR}/...` or `<mount path>/...`."""
    root = r"(?:\$\{?" + names.ENV_DIR + r"\}?|" + re.escape(mount) + ")"
    return re.compile(root + r"/(?P<cred>[A-Za-z0-9._-]+)/(?P<file>[A-Za-z0-9._-]+)")


@pytest.mark.parametrize(("case", "doc"), WORKLOADS, ids=[c for c, _ in WORKLOADS])
def test_files_the_containers_read_are_files_their_sources_write(case: str, doc: dict[str, Any]) -> None:
    """`$TASKCREDS_DIR/<credential>/<file>` (or the mount path spelled out) in env, command or args
    names a requested credential and one of its source's files."""
    template, _ = pod_template(doc)
    assert template is not None
    annotations = template["metadata"]["annotations"]
    mount = annotations.get(names.ANNOTATION_MOUNT_PATH, names.DEFAULT_MOUNT_PATH).rstrip("/")
    requested = [c.strip() for c in annotations[names.ANNOTATION_CREDENTIALS].split(",")]
    spec = template["spec"]
    text = yaml.safe_dump(
        [
            {k: c.get(k) for k in ("env", "command", "args")}
            for c in spec.get("initContainers", []) + spec["containers"]
        ]
    )
    reads = [(m["cred"], m["file"]) for m in _read_path(mount).finditer(text)]
    for credential, file in reads:
        assert credential in requested, f"{case} reads {credential}/{file} but asks only for {requested}"
        source = INDEX.resolve(doc["metadata"]["namespace"], credential)
        assert isinstance(source, Source), f"{case}: {credential}: {source}"
        assert file in source.files, f"{case} reads {credential}/{file}; {source.name} writes {list(source.files)}"
    if case.startswith("agent-pod.yaml"):
        assert {("github", "token"), ("llm-api", "api-key")} <= set(reads), reads
