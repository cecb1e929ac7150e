"""Named values sets: the default install and each optional feature turned on (rendered once each)."""

from __future__ import annotations

from typing import Any

VALUES_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "cert-manager": {"webhook": {"certManager": {"enabled": True}}},
    "cert-manager-clusterissuer": {
        "webhook": {
            "certManager": {
                "enabled": True,
                "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"},
            }
        }
    },
    "monitoring": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
            "podMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "dashboard": {"enabled": True, "annotations": {"grafana_folder": "taskcreds"}},
        }
    },
    "hostpath-spiffe": {
        "spiffe": {
            "socketSource": "hostPath",
            "hostPath": "/run/spire/sockets",
            "socketFile": "agent.sock",
            "trustDomain": "example.org",
        }
    },
    "networkpolicy-off": {"networkPolicy": {"enabled": False}},
    "egress-restricted": {
        "networkPolicy": {
            "egress": {
                "restrict": True,
                "to": [
                    {
                        "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}],
                        "ports": [{"port": 6443, "protocol": "TCP"}],
                    }
                ],
            },
            "metrics": {
                "from": [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
                ]
            },
        }
    },
    "broker-relying-parties": {
        "networkPolicy": {
            "broker": {
                "extraFrom": [
                    {
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "api-gateway"}},
                        "podSelector": {
                            "matchExpressions": [{"key": "app", "operator": "In", "values": ["my-api"]}]
                        },
                    },
                    {"ipBlock": {"cidr": "10.20.0.0/16", "except": ["10.20.9.0/24"]}},
                ]
            }
        }
    },
    "secret-namespaces": {"rbac": {"secretNamespaces": ["agents", "team-b"]}},
    "token-request-cluster-wide": {"rbac": {"tokenRequest": True}},
    "token-request-namespaces": {"rbac": {"tokenRequest": True, "tokenRequestNamespaces": ["agents", "ci"]}},
    "single-replica": {"operator": {"replicas": 1}},
    "tuned": {
        "image": {"digest": "sha256:" + "a" * 64},
        "fullnameOverride": "tc",
        "operator": {
            "replicas": 3,
            "priorityClassName": "system-cluster-critical",
            "podDisruptionBudget": {"minAvailable": 2},
            "extraEnv": [{"name": "EXTRA", "value": "1"}],
            "serviceAccount": {"name": "creds-operator", "annotations": {"a": "b"}},
            "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
            "nodeSelector": {"kubernetes.io/os": "linux"},
        },
        "imagePullSecrets": ["regcred"],
        "webhook": {
            "timeoutSeconds": 5,
            "excludeNamespaces": ["kube-system", "kube-public"],
            "namespaceSelectorExpressions": [
                {"key": "taskcreds.io/agents", "operator": "In", "values": ["enabled"]}
            ],
        },
        "injection": {"strict": True, "defaultTTL": "5m"},
        "tests": {"enabled": False},
    },
}
