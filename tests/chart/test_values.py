"""values.yaml and values.schema.json: typos and wrong types fail `helm install` with a message
naming the key; every key is documented; the schema and the defaults describe the same keys."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskcreds import names
from tests.chart.helm import CHART, Helm, HelmError

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES_TEXT = (CHART / "values.yaml").read_text()
DEFAULTS = yaml.safe_load(VALUES_TEXT)

# (case, values, what the error must name)
REJECTED: list[tuple[str, dict[str, Any], list[str]]] = [
    ("unknown top-level key", {"replicas": 3}, ["additional properties 'replicas' not allowed"]),
    ("typo in a nested key", {"operator": {"replicaz": 3}}, ["/operator", "'replicaz'"]),
    (
        "typo deep inside",
        {"webhook": {"certManager": {"enable": True}}},
        ["/webhook/certManager", "'enable'"],
    ),
    ("wrong type", {"operator": {"replicas": "two"}}, ["/operator/replicas", "integer"]),
    ("zero replicas", {"operator": {"replicas": 0}}, ["/operator/replicas", "minimum"]),
    ("webhook timeout above 5", {"webhook": {"timeoutSeconds": 10}}, ["/webhook/timeoutSeconds", "maximum"]),
    ("failurePolicy misspelled", {"webhook": {"failurePolicy": "fail"}}, ["/webhook/failurePolicy", "Fail"]),
    ("unknown socket source", {"spiffe": {"socketSource": "host"}}, ["/spiffe/socketSource", "csi"]),
    ("relative hostPath", {"spiffe": {"hostPath": "run/spire"}}, ["/spiffe/hostPath"]),
    (
        "SPIFFE ID template without namespace",
        {"spiffe": {"idTemplate": "spiffe://x/sa/{serviceaccount}"}},
        ["/spiffe/idTemplate"],
    ),
    ("TTL not a Go duration", {"injection": {"defaultTTL": "15 minutes"}}, ["/injection/defaultTTL"]),
    (
        "token shorter than Kubernetes allows",
        {"injection": {"tokenExpirationSeconds": 60}},
        ["/injection/tokenExpirationSeconds", "minimum"],
    ),
    ("allowed address with a path", {"sources": {"allowedAddresses": ["https://vault.example/v1"]}},
     ["/sources/allowedAddresses/0"]),
    ("allowed address without scheme", {"sources": {"allowedAddresses": ["vault.example"]}},
     ["/sources/allowedAddresses/0"]),
    ("allowed addresses as a string", {"sources": {"allowedAddresses": "*"}}, ["/sources/allowedAddresses", "array"]),
    ("digest that is a tag", {"image": {"digest": "latest"}}, ["/image/digest"]),
    ("pull policy", {"image": {"pullPolicy": "Sometimes"}}, ["/image/pullPolicy"]),
    (
        "secretNamespaces as a string",
        {"rbac": {"secretNamespaces": "agents"}},
        ["/rbac/secretNamespaces", "array"],
    ),
    ("invalid namespace name", {"rbac": {"secretNamespaces": ["Team_A"]}}, ["/rbac/secretNamespaces/0"]),
    ("boolean as a string", {"networkPolicy": {"enabled": "yes"}}, ["/networkPolicy/enabled", "boolean"]),
    (
        "broker peer that is a whole ingress rule",
        {"networkPolicy": {"broker": {"extraFrom": [{"from": [{"podSelector": {}}], "ports": [{"port": 8444}]}]}}},
        ["/networkPolicy/broker/extraFrom/0", "'from'"],
    ),
    (
        "empty broker peer",
        {"networkPolicy": {"broker": {"extraFrom": [{}]}}},
        ["/networkPolicy/broker/extraFrom/0", "minProperties"],
    ),
    (
        "broker peer selector with a misspelled key",
        {"networkPolicy": {"broker": {"extraFrom": [{"podSelector": {"matchLabel": {"app": "api"}}}]}}},
        ["/networkPolicy/broker/extraFrom/0/podSelector", "'matchLabel'"],
    ),
    (
        "broker peer ipBlock without cidr",
        {"networkPolicy": {"broker": {"extraFrom": [{"ipBlock": {"except": ["10.0.0.0/8"]}}]}}},
        ["/networkPolicy/broker/extraFrom/0/ipBlock", "cidr"],
    ),
    (
        "broker peers as a map",
        {"networkPolicy": {"broker": {"extraFrom": {"podSelector": {}}}}},
        ["/networkPolicy/broker/extraFrom", "array"],
    ),
    (
        "error ratio above 1",
        {"metrics": {"prometheusRule": {"webhookErrorRatio": 2}}},
        ["/metrics/prometheusRule/webhookErrorRatio"],
    ),
    (
        "issuerRef without kind",
        {"webhook": {"certManager": {"enabled": True, "issuerRef": {"name": "ca"}}}},
        ["/webhook/certManager/issuerRef", "kind"],
    ),
    (
        "unknown resource name",
        {"operator": {"resources": {"limits": {"cpus": "1"}}}},
        ["/operator/resources/limits", "'cpus'"],
    ),
    ("probe port out of range", {"sidecar": {"probePort": 70000}}, ["/sidecar/probePort", "maximum"]),
]


@pytest.mark.parametrize(
    ("values", "needles"), [(v, n) for _, v, n in REJECTED], ids=[c for c, _, _ in REJECTED]
)
def test_schema_rejects_with_a_message_naming_the_key(
    helm: Helm, values: dict[str, Any], needles: list[str]
) -> None:
    with pytest.raises(HelmError) as info:
        helm.template(values)
    message = str(info.value)
    assert "values don't meet the specifications of the schema" in message
    assert "Traceback" not in message and "goroutine" not in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"


def test_defaults_satisfy_the_schema(helm: Helm) -> None:
    assert helm.template(DEFAULTS)  # explicit defaults == no values


def _schema_keys(schema: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        out.add(path)
        if sub.get("additionalProperties") is False:
            out |= _schema_keys(sub, path + ".")
        elif "$ref" in sub and sub["$ref"] == "#/$defs/resources":
            continue
    return out


def _value_keys(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        out.add(path)
        sub = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and sub.get("additionalProperties") is False:
            out |= _value_keys(value, sub, path + ".")
    return out


def test_every_schema_key_has_a_default_in_values_yaml() -> None:
    optional_objects = (
        "webhook.certManager.issuerRef.",  # empty by default: the chart makes an Issuer
        "operator.peering",  # removed, accepted and ignored for one release (helm upgrade --reuse-values)
    )
    schema_keys = {k for k in _schema_keys(SCHEMA) - {"global"} if not k.startswith(optional_objects)}
    assert schema_keys == _value_keys(DEFAULTS, SCHEMA)


def test_every_object_in_the_schema_is_closed() -> None:
    """additionalProperties false everywhere, except maps of labels and Kubernetes pass-through types."""
    open_ok = {
        "global",
        "commonLabels",
        "annotations",
        "podAnnotations",
        "podLabels",
        "nodeSelector",
        "labels",
        "affinity",
    }

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, key
            elif (
                node.get("type") == "object"
                and key not in open_ok
                and "additionalProperties" not in node
                and key not in ("items",)
            ):
                pytest.fail(f"{key}: an object without properties must be a known pass-through")
            for k, v in node.items():
                walk(v, k if k not in ("properties", "$defs") else key)
        elif isinstance(node, list):
            for item in node:
                walk(item, key)

    walk(SCHEMA, "")


def test_every_key_in_values_yaml_is_commented() -> None:
    """Every leaf key has a `# --` comment (helm-docs style) right above it or above one of its parent
    keys (a documented map such as `resources:` covers its cpu/memory entries). Plain `#` comments
    introduce sections and document nothing."""
    key_line = re.compile(r"^(\s*)([A-Za-z][\w.-]*):(\s.*)?$")
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    missing = []
    comment_block: list[str] = []
    for number, line in enumerate(VALUES_TEXT.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            comment_block.append(stripped)
            continue
        match = key_line.match(line)
        if match:
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            own = any(c.startswith("# --") for c in comment_block)
            documented = own or any(doc for _, doc in stack)
            if (match.group(3) or "").strip() and not documented:
                missing.append(f"line {number}: {stripped}")
            stack.append((indent, own))
        comment_block = []
    assert not missing, "values.yaml keys without a comment:\n" + "\n".join(missing)


# --- values the schema accepts but that would break at runtime: the templates refuse them ---------

# (case, values, what the error must name)
REFUSED_AT_RENDER: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "PDB minAvailable equal to replicas",
        {"operator": {"replicas": 2, "podDisruptionBudget": {"minAvailable": 2}}},
        ["operator.podDisruptionBudget.minAvailable=2", "operator.replicas=2", "below replicas"],
    ),
    (
        "PDB minAvailable above replicas",
        {"operator": {"podDisruptionBudget": {"minAvailable": 3}}},
        ["operator.podDisruptionBudget.minAvailable=3", "podDisruptionBudget.enabled=false"],
    ),
    ("mount path /", {"injection": {"mountPath": "/"}}, ['injection.mountPath="/"', "other than /"]),
    ("mount path //", {"injection": {"mountPath": "//"}}, ['injection.mountPath="//"', "other than /"]),
    ("mount path with ..", {"injection": {"mountPath": "/run/../etc"}}, ["injection.mountPath", "'..'"]),
    ("mount path /etc", {"injection": {"mountPath": "/etc"}}, ['"/etc" overlaps', names.SIDECAR_PODINFO_PATH]),
    (
        "mount path /var/run/secrets",
        {"injection": {"mountPath": "/var/run/secrets"}},
        ["overlaps", names.SIDECAR_TOKEN_PATH, "deny every opted-in pod"],
    ),
    (
        "mount path inside the sidecar's token dir",
        {"injection": {"mountPath": names.SIDECAR_TOKEN_PATH + "/creds/"}},
        ["overlaps", names.SIDECAR_TOKEN_PATH],
    ),
    (
        "mount path the SPIFFE socket dir",
        {"injection": {"mountPath": names.SIDECAR_SPIFFE_PATH}},
        ["overlaps", names.SIDECAR_SPIFFE_PATH],
    ),
    (
        "grace period shorter than drain + the stop's worst case",
        {"operator": {"drainSeconds": 20, "terminationGracePeriodSeconds": 84}},
        ["operator.terminationGracePeriodSeconds=84", "operator.drainSeconds=20", "at least", "+ 65 (85)"],
    ),
    (
        "operator webhook and metrics on one port",
        {"operator": {"ports": {"webhook": 8080}}},
        ["operator.ports webhook=8080 broker=8444 metrics=8080", "must differ"],
    ),
    (
        "sidecar probe and local on one port",
        {"sidecar": {"probePort": 9091}},
        ["sidecar probePort=9091 localPort=9091 proxyPort=9092", "three distinct ports"],
    ),
    (
        "token namespaces without tokenRequest",
        {"rbac": {"tokenRequestNamespaces": ["agents"]}},
        ["rbac.tokenRequestNamespaces", "rbac.tokenRequest=true"],
    ),
]


@pytest.mark.parametrize(
    ("values", "needles"),
    [(v, n) for _, v, n in REFUSED_AT_RENDER],
    ids=[c for c, _, _ in REFUSED_AT_RENDER],
)
def test_values_that_would_break_at_runtime_are_refused_naming_the_value(
    helm: Helm, values: dict[str, Any], needles: list[str]
) -> None:
    with pytest.raises(HelmError) as info:
        helm.template(values)
    message = str(info.value)
    assert "execution error" in message and "accepted" in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"


@pytest.mark.parametrize(
    "mount_path", ["/run/taskcreds", "/etc/agent-creds", "/var/run/secrets-other", "/workspace/.creds"]
)
def test_mount_paths_the_webhook_accepts_render(helm: Helm, mount_path: str) -> None:
    """The chart's rule is the webhook's (operator/injection/mutate.py _overlaps_sidecar): no more."""
    from taskcreds.operator.injection.mutate import _overlaps_sidecar

    assert not _overlaps_sidecar(mount_path)
    assert helm.template({"injection": {"mountPath": mount_path}})


def test_sidecar_paths_in_the_chart_are_the_sidecars() -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    line = next(x for x in helpers.splitlines() if "$sidecar := list" in x)
    listed = set(re.findall(r'"(/[^"]+)"', line))
    assert listed == {names.SIDECAR_PODINFO_PATH, names.SIDECAR_TOKEN_PATH, names.SIDECAR_SPIFFE_PATH}


@pytest.mark.parametrize(
    ("replicas", "pdb"),
    [(1, None), (2, {"minAvailable": 1}), (3, {"minAvailable": 1})],
    ids=["one replica: no PDB", "two", "three"],
)
def test_a_pdb_never_blocks_node_drains(helm: Helm, replicas: int, pdb: dict[str, Any] | None) -> None:
    docs = helm.template({"operator": {"replicas": replicas}})
    found = [d["spec"] for d in docs if d["kind"] == "PodDisruptionBudget"]
    if pdb is None:
        assert found == []
    else:
        (spec,) = found
        assert spec["minAvailable"] == pdb["minAvailable"] < replicas


@pytest.mark.parametrize("drain", [0, 5, 30])
def test_the_grace_period_minimum_is_the_operators_worst_case_stop(helm: Helm, drain: int) -> None:
    """The chart's minimum terminationGracePeriodSeconds is drainSeconds + the operator's own worst case
    after the drain (operator/main.py stop_seconds, from the broker's record/undo timeouts): one second
    less is refused, exactly that renders."""
    from taskcreds.operator.broker.settings import BrokerSettings
    from taskcreds.operator.main import stop_seconds

    minimum = drain + math.ceil(stop_seconds(BrokerSettings()))
    assert helm.template({"operator": {"drainSeconds": drain, "terminationGracePeriodSeconds": minimum}})
    with pytest.raises(HelmError, match=f"at least drainSeconds \\+ {minimum - drain} \\({minimum}\\)"):
        helm.template({"operator": {"drainSeconds": drain, "terminationGracePeriodSeconds": minimum - 1}})


PREVIOUS_VALUES = Path(__file__).with_name("previous_values.yaml")


@pytest.mark.parametrize(
    ("case", "reuse", "extra", "refused"),
    [
        ("--reset-then-reuse-values, peering set by the user", False,
         {"operator": {"peering": {"enabled": True, "name": "taskcreds"}}}, None),
        ("--reuse-values with the grace raised", True, {"operator": {"terminationGracePeriodSeconds": 70}}, None),
        ("--reuse-values as is: only the grace period is refused, saying what to set", True, {},
         "operator.terminationGracePeriodSeconds=30 is too short"),
    ],
)
def test_upgrading_from_the_previous_chart_with_its_values(
    helm: Helm, tmp_path: Path, case: str, reuse: bool, extra: dict[str, Any], refused: str | None
) -> None:
    """The previous chart had operator.peering (removed): its values must still pass the schema.

    --reuse-values renders the new templates with the previous release's values *instead of* the new
    defaults, emulated by a copy of the chart whose values.yaml is the previous one."""
    chart = CHART
    if reuse:
        chart = tmp_path / "taskcreds"
        shutil.copytree(CHART, chart)
        shutil.copy(PREVIOUS_VALUES, chart / "values.yaml")
    proc = helm.run("template", "taskcreds", str(chart), "--namespace", "taskcreds-system", values=extra)
    if refused is None:
        assert proc.returncode == 0, (case, proc.stderr)
        assert "peering" not in proc.stdout.lower(), "removed: ignored, never rendered"
        assert "KopfPeering" not in proc.stdout
    else:
        assert proc.returncode != 0 and refused in proc.stderr, (case, proc.stderr)
        assert "peering" not in proc.stderr, "never the schema error on operator.peering"
