"""Reading rendered chart objects, and small strict schemas for the CRD kinds Kubernetes' own
OpenAPI does not know (kubernetes_validate raises SchemaNotFoundError for them)."""

from __future__ import annotations

from typing import Any

from taskcreds.metrics import register_operator, register_sidecar

Obj = dict[str, Any]


def of_kind(docs: list[Obj], kind: str) -> list[Obj]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Obj], kind: str, name_suffix: str = "") -> Obj:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, (
        f"expected one {kind} named *{name_suffix}, got {[d['metadata']['name'] for d in found]}"
    )
    return found[0]


def exposed_metric_names() -> set[str]:
    """Every sample name the operator and the sidecar expose (counters with _total, histogram series)."""
    out: set[str] = set()
    for metrics in (register_operator(), register_sidecar()):
        for family in metrics.registry.collect():
            if family.type == "counter":
                out.add(family.name + "_total")
            elif family.type == "histogram":
                out.update(family.name + s for s in ("_bucket", "_sum", "_count"))
            else:
                out.add(family.name)
    return out


def _strict(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": props, "required": required or []}


_STR = {"type": "string"}
_STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
_META = _strict(
    {"name": _STR, "namespace": _STR, "labels": _STRMAP, "annotations": _STRMAP}, ["name", "namespace"]
)
_SELECTOR = _strict({"matchLabels": _STRMAP})


def _doc(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _strict(
        {"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": _META, "spec": spec},
        ["apiVersion", "kind", "metadata", "spec"],
    )


_ISSUER_REF = _strict({"name": _STR, "kind": {"enum": ["Issuer", "ClusterIssuer"]}, "group": _STR}, ["name"])

#: the subset of each CRD's schema the chart uses, with additionalProperties false (typos fail)
CRD_KIND_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": _doc(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        _strict(
            {
                "selector": _SELECTOR,
                "namespaceSelector": _strict({"matchNames": {"type": "array", "items": _STR}}),
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": _strict(
                        {
                            "port": _STR,
                            "path": _STR,
                            "scheme": {"enum": ["http", "https"]},
                            "interval": _STR,
                            "scrapeTimeout": _STR,
                        },
                        ["port"],
                    ),
                },
            },
            ["selector", "endpoints"],
        ),
    ),
    "PodMonitor": _doc(
        "monitoring.coreos.com/v1",
        "PodMonitor",
        _strict(
            {
                "selector": _SELECTOR,
                "namespaceSelector": _strict({"any": {"type": "boolean"}}),
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": _strict(
                        {
                            "targetPort": {"type": ["integer", "string"]},
                            "path": _STR,
                            "scheme": {"enum": ["http", "https"]},
                            "interval": _STR,
                        }
                    ),
                },
            },
            ["selector", "podMetricsEndpoints"],
        ),
    ),
    "PrometheusRule": _doc(
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        _strict(
            {
                "groups": {
                    "type": "array",
                    "items": _strict(
                        {
                            "name": _STR,
                            "rules": {
                                "type": "array",
                                "items": _strict(
                                    {
                                        "alert": _STR,
                                        "expr": _STR,
                                        "for": {"type": "string", "pattern": r"^\d+[smh]$"},
                                        "labels": _STRMAP,
                                        "annotations": _strict(
                                            {"summary": _STR, "description": _STR}, ["summary"]
                                        ),
                                    },
                                    ["alert", "expr", "labels", "annotations"],
                                ),
                            },
                        },
                        ["name", "rules"],
                    ),
                },
            },
            ["groups"],
        ),
    ),
    "Certificate": _doc(
        "cert-manager.io/v1",
        "Certificate",
        _strict(
            {
                "secretName": _STR,
                "isCA": {"type": "boolean"},
                "commonName": _STR,
                "duration": _STR,
                "renewBefore": _STR,
                "privateKey": _strict(
                    {
                        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                        "size": {"type": "integer"},
                        "rotationPolicy": {"enum": ["Always", "Never"]},
                    }
                ),
                "usages": {
                    "type": "array",
                    "items": {
                        "enum": ["server auth", "digital signature", "key encipherment", "cert sign", "crl sign"]
                    },
                },
                "dnsNames": {"type": "array", "items": _STR, "minItems": 1},
                "issuerRef": _ISSUER_REF,
            },
            ["secretName", "issuerRef"],
        ),
    ),
    "Issuer": _doc(
        "cert-manager.io/v1",
        "Issuer",
        {
            "oneOf": [
                _strict({"selfSigned": _strict({})}, ["selfSigned"]),
                _strict({"ca": _strict({"secretName": _STR}, ["secretName"])}, ["ca"]),
            ]
        },
    ),
}
