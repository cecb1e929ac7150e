"""The CRDs' CEL rules on a real API server: the same tables the stand-in is tested with
(tests/operator/test_crds.py), so the stand-in's CEL (tests/kube/cel.py) is checked against the real
thing. Server-side dry runs: nothing is stored. Skipped without a cluster (tests/e2e/conftest.py).
"""

from __future__ import annotations

from typing import Any

import pytest
from taskcreds.operator.leases import task_lease_body

from taskcreds import names
from tests.operator.test_crds import CEL_REFUSED, VALID_SPECS, _source, refused_spec


def _create(kube: Any, namespace: str, spec: dict[str, Any], *, dry_run: bool = True) -> dict[str, Any]:
    body = _source(names.KIND_CREDENTIAL_SOURCE, spec)
    body["metadata"]["namespace"] = namespace
    return kube.CustomObjectsApi().create_namespaced_custom_object(
        names.CRD_GROUP,
        names.CRD_VERSION,
        namespace,
        names.PLURAL_CREDENTIAL_SOURCES,
        body,
        dry_run="All" if dry_run else None,
    )


@pytest.mark.parametrize("case", sorted(VALID_SPECS))
def test_valid_sources_are_accepted(kube: Any, release: dict[str, str], agent_namespace: str, case: str) -> None:
    _create(kube, agent_namespace, VALID_SPECS[case])


@pytest.mark.parametrize(("case", "spec", "message"), CEL_REFUSED, ids=[c[0] for c in CEL_REFUSED])
def test_cel_rules_refuse_with_their_message(
    kube: Any, release: dict[str, str], agent_namespace: str, case: str, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(kube.exceptions.ApiException) as refused:
        _create(kube, agent_namespace, refused_spec(spec))
    assert refused.value.status == 422, (case, refused.value.body)
    assert message in refused.value.body, (case, refused.value.body)


def test_task_lease_spec_is_immutable(kube: Any, release: dict[str, str], agent_namespace: str) -> None:
    custom = kube.CustomObjectsApi()
    args = (names.CRD_GROUP, names.CRD_VERSION, agent_namespace, names.PLURAL_TASK_LEASES)
    body = task_lease_body({"metadata": {"name": "agent-e2e", "namespace": agent_namespace, "uid": "u"}}, "t")
    body["metadata"].pop("ownerReferences")  # no such pod: the garbage collector would take it at once
    body["metadata"].pop("finalizers")
    created = custom.create_namespaced_custom_object(*args, body)
    name = created["metadata"]["name"]
    try:
        with pytest.raises(kube.exceptions.ApiException) as refused:
            custom.patch_namespaced_custom_object(*args, name, {"spec": {"task": "another"}})
        assert refused.value.status == 422 and "spec is immutable" in refused.value.body
    finally:
        custom.delete_namespaced_custom_object(*args, name)
