"""The chart as an admin meets it: it lints, every object is valid Kubernetes on every supported
version, and the settings that matter for safety hold for every values set."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from taskcreds.operator.broker.settings import BrokerSettings
from taskcreds.operator.config import InjectionConfig, load_config
from taskcreds.operator.main import stop_seconds
from taskcreds.operator.settings import OperatorSettings

from taskcreds import names
from tests.chart.helm import CHART, NAMESPACE, Helm
from tests.chart.kinds import CRD_KIND_SCHEMAS, exposed_metric_names, of_kind, one
from tests.chart.values_sets import VALUES_SETS

K8S_VERSIONS = ["1.29", "1.30", "1.31", "1.32", "1.33", "1.34", "1.35"]
SETS = list(VALUES_SETS)


def render(helm: Helm, name: str) -> list[dict[str, Any]]:
    return helm.template(VALUES_SETS[name])


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# --- lint and schemas ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SETS)
def test_helm_lint_strict_passes(helm: Helm, name: str) -> None:
    proc = helm.run("lint", "--strict", str(CHART), "--namespace", NAMESPACE, values=VALUES_SETS[name])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("name", SETS)
def test_every_object_is_valid_kubernetes_on_every_supported_version(helm: Helm, name: str) -> None:
    docs = render(helm, name)
    checked = 0
    for doc in docs:
        if doc["kind"] in CRD_KIND_SCHEMAS:
            continue  # no OpenAPI schema in Kubernetes for CRD kinds: see the next test
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
            checked += 1
    assert checked >= 12 * len(K8S_VERSIONS)


@pytest.mark.parametrize("name", ["monitoring", "cert-manager", "cert-manager-clusterissuer"])
def test_crd_kind_objects_match_their_schemas(helm: Helm, name: str) -> None:
    docs = [d for d in render(helm, name) if d["kind"] in CRD_KIND_SCHEMAS]
    assert docs, "this values set should render CRD-kind objects"
    for doc in docs:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(doc, "1.35", strict=True)
        jsonschema.validate(doc, CRD_KIND_SCHEMAS[doc["kind"]])


def test_optional_objects_appear_only_when_turned_on(helm: Helm) -> None:
    def kinds(name: str) -> set[str]:
        return {d["kind"] for d in render(helm, name)}

    assert kinds("default").isdisjoint(
        {"ServiceMonitor", "PodMonitor", "PrometheusRule", "Certificate", "Issuer"}
    )
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds("monitoring")
    assert {"Certificate", "Issuer"} <= kinds("cert-manager")
    assert "Issuer" not in kinds("cert-manager-clusterissuer")
    assert "NetworkPolicy" in kinds("default") and "NetworkPolicy" not in kinds("networkpolicy-off")
    assert not [d for d in render(helm, "tuned") if d["kind"] == "Pod"], (
        "tests.enabled=false keeps the test pod out"
    )
    dashboards = [d for d in render(helm, "monitoring") if d["metadata"]["name"].endswith("-dashboard")]
    assert len(dashboards) == 1 and not [
        d for d in render(helm, "default") if d["metadata"]["name"].endswith("-dashboard")
    ]


@pytest.mark.parametrize("name", SETS)
def test_namespaced_objects_live_in_the_release_namespace(helm: Helm, name: str) -> None:
    cluster_kinds = {
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
        "CustomResourceDefinition",
    }
    for doc in render(helm, name):
        ns = doc["metadata"].get("namespace")
        if doc["kind"] in cluster_kinds:
            assert ns is None, doc["metadata"]["name"]
        elif doc["kind"] == "Role" or doc["kind"] == "RoleBinding":
            rbac = VALUES_SETS[name].get("rbac", {})
            assert ns in [NAMESPACE, *rbac.get("secretNamespaces", []), *rbac.get("tokenRequestNamespaces", [])]
        else:
            assert ns == NAMESPACE, f"{doc['kind']} {doc['metadata']['name']}"


# --- the webhook ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SETS)
def test_webhook_is_fail_closed_and_scoped_to_opted_in_pods(helm: Helm, name: str) -> None:
    docs = render(helm, name)
    config = one(docs, "MutatingWebhookConfiguration")
    (hook,) = config["webhooks"]
    assert hook["failurePolicy"] == "Fail"
    assert 1 <= hook["timeoutSeconds"] <= 5
    assert hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["matchPolicy"] == "Equivalent"
    assert hook["objectSelector"] == {"matchLabels": {names.LABEL_INJECT: "true"}}
    assert hook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    excluded = [
        e
        for e in hook["namespaceSelector"]["matchExpressions"]
        if e["key"] == "kubernetes.io/metadata.name" and e["operator"] == "NotIn"
    ]
    assert len(excluded) == 1 and {NAMESPACE, "kube-system"} <= set(excluded[0]["values"])
    # the API server calls the webhook Service on the port that reaches the operator's webhook port
    service_ref = hook["clientConfig"]["service"]
    service = one(docs, "Service", "-webhook")
    assert service_ref == {
        "name": service["metadata"]["name"],
        "namespace": NAMESPACE,
        "path": "/mutate",
        "port": service["spec"]["ports"][0]["port"],
    }
    assert service["spec"]["ports"][0]["port"] == 443


def test_ca_bundle_is_left_to_the_operator_or_to_cert_manager(helm: Helm) -> None:
    default = one(render(helm, "default"), "MutatingWebhookConfiguration")
    assert "caBundle" not in default["webhooks"][0]["clientConfig"]
    assert "cert-manager.io/inject-ca-from" not in default["metadata"].get("annotations", {})

    docs = render(helm, "cert-manager")
    config = one(docs, "MutatingWebhookConfiguration")
    certificates = {c["metadata"]["name"]: c for c in of_kind(docs, "Certificate")}
    issuers = {i["metadata"]["name"]: i for i in of_kind(docs, "Issuer")}
    (leaf,) = [c for c in certificates.values() if not c["spec"].get("isCA")]
    (ca,) = [c for c in certificates.values() if c["spec"].get("isCA")]
    # self-signed Issuer -> CA Certificate -> CA Issuer -> serving certificate: renewing the serving
    # certificate never changes the CA the API server trusts
    assert "selfSigned" in issuers[ca["spec"]["issuerRef"]["name"]]["spec"]
    ca_issuer = issuers[leaf["spec"]["issuerRef"]["name"]]
    assert ca_issuer["spec"] == {"ca": {"secretName": ca["spec"]["secretName"]}}
    assert ca["spec"]["privateKey"]["rotationPolicy"] == "Never", "a CA renewal must keep its key"
    assert "dnsNames" not in ca["spec"] and {"cert sign"} <= set(ca["spec"]["usages"])
    # caBundle comes from the CA Certificate, not from the leaf
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{NAMESPACE}/{ca['metadata']['name']}"
    )
    service = one(docs, "Service", "-webhook")["metadata"]["name"]
    assert f"{service}.{NAMESPACE}.svc" in leaf["spec"]["dnsNames"]
    assert leaf["spec"]["secretName"] != ca["spec"]["secretName"]
    # the operator reads the pair cert-manager writes, from the Secret it names
    container = operator_container(docs)
    env = env_of(container)
    assert env[names.ENV_WEBHOOK_SECRET] == leaf["spec"]["secretName"]
    pod = one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "webhook-certs")
    assert volume["secret"]["secretName"] == leaf["spec"]["secretName"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "webhook-certs")
    assert env[names.ENV_WEBHOOK_CERT_DIR] == mount["mountPath"] and mount["readOnly"] is True

    # with an issuer of the admin's, no chart CA: the serving certificate's ca.crt is injected
    docs = render(helm, "cert-manager-clusterissuer")
    clusterissuer = one(docs, "Certificate")
    assert not of_kind(docs, "Issuer")
    assert clusterissuer["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    annotations = one(docs, "MutatingWebhookConfiguration")["metadata"]["annotations"]
    assert annotations["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{clusterissuer['metadata']['name']}"


def test_webhook_excludes_extra_namespaces_and_keeps_extra_selectors(helm: Helm) -> None:
    (hook,) = one(render(helm, "tuned"), "MutatingWebhookConfiguration")["webhooks"]
    exprs = hook["namespaceSelector"]["matchExpressions"]
    assert exprs[0]["values"] == [NAMESPACE, "kube-system", "kube-public"]
    assert {"key": "taskcreds.io/agents", "operator": "In", "values": ["enabled"]} in exprs
    assert hook["timeoutSeconds"] == 5


# --- the operator Deployment ------------------------------------------------------------------


@pytest.mark.parametrize("name", SETS)
def test_operator_runs_locked_down(helm: Helm, name: str) -> None:
    docs = render(helm, name)
    deploy = one(docs, "Deployment", "-operator")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is True
    container = operator_container(docs)
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    resources = container["resources"]
    assert set(resources["requests"]) >= {"cpu", "memory"} and set(resources["limits"]) >= {"cpu", "memory"}
    # everything writable is memory-backed
    for volume in pod["volumes"]:
        if "emptyDir" in volume:
            assert volume["emptyDir"]["medium"] == "Memory", volume["name"]


def test_operator_defaults_survive_a_node_drain(helm: Helm) -> None:
    docs = render(helm, "default")
    deploy = one(docs, "Deployment", "-operator")
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deploy["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert (
        term["podAffinityTerm"]["labelSelector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    )
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == deploy["spec"]["selector"]


@pytest.mark.parametrize("name", SETS)
def test_readiness_is_readyz_and_a_stopping_replica_drains_within_its_grace_period(
    helm: Helm, name: str
) -> None:
    """/healthz answers as soon as the process runs; only /readyz waits for the webhook's certificate
    and the broker, and turns 503 at SIGTERM (tests/operator/test_main.py). A readiness probe on
    /healthz let a rollout remove the old replica before the new one could admit anything."""
    docs = render(helm, name)
    container = operator_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"webhook": 8443, "broker": 8444, "metrics": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    plain = {k: v for k, v in env_of(container).items() if isinstance(v, str)}
    assert plain[names.ENV_DRAIN_SECONDS] == "5", "the variable the operator reads"
    drain = OperatorSettings.from_env(plain).drain_seconds
    assert drain == 5
    pod = one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= drain + stop_seconds(BrokerSettings())
    assert "lifecycle" not in container, "the operator drains itself: a preStop sleep would double the wait"


@pytest.mark.parametrize("name", SETS)
def test_services_reach_the_operator_ports(helm: Helm, name: str) -> None:
    docs = render(helm, name)
    deploy = one(docs, "Deployment", "-operator")
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    container = operator_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for suffix, service_port, target in (
        ("-webhook", 443, "webhook"),
        ("-broker", 8444, "broker"),
        ("-metrics", 8080, "metrics"),
    ):
        service = one(docs, "Service", suffix)
        (port,) = service["spec"]["ports"]
        assert (port["port"], port["targetPort"]) == (service_port, target)
        assert target in ports
        assert service["spec"]["selector"].items() <= pod_labels.items()


@pytest.mark.parametrize("name", SETS)
def test_operator_environment_is_what_the_operator_reads(helm: Helm, name: str) -> None:
    """The env the chart sets parses with the operator's own settings and names the chart's objects."""
    docs = render(helm, name)
    container = operator_container(docs)
    env = env_of(container)
    assert env[names.ENV_OPERATOR_NAMESPACE] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    plain = {k: v for k, v in env.items() if isinstance(v, str)}
    settings = OperatorSettings.from_env({**plain, names.ENV_OPERATOR_NAMESPACE: NAMESPACE})
    assert settings.webhook_listen == ("0.0.0.0", 8443)
    assert settings.broker_listen == ("0.0.0.0", 8444)
    assert settings.metrics_listen == ("0.0.0.0", 8080)
    assert settings.webhook_configuration == one(docs, "MutatingWebhookConfiguration")["metadata"]["name"]
    assert settings.webhook_service == one(docs, "Service", "-webhook")["metadata"]["name"]
    assert settings.jwt_issuer.startswith("https://")
    # the config file is where the ConfigMap is mounted
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert Path(settings.config_file or "").parent == Path(mount["mountPath"])
    # the Workload API socket is in the mounted SPIFFE volume
    spiffe_mount = next(m for m in container["volumeMounts"] if m["name"] == "spiffe-workload-api")
    socket = env[names.ENV_SPIFFE_SOCKET]
    assert socket.startswith(f"unix://{spiffe_mount['mountPath']}/") and spiffe_mount["readOnly"] is True
    # self-managed certs: the operator writes them itself, no cert dir from outside
    cert_manager = VALUES_SETS[name].get("webhook", {}).get("certManager", {}).get("enabled", False)
    assert (names.ENV_WEBHOOK_CERT_DIR in env) == cert_manager


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("default", {"csi": {"driver": names.SPIFFE_CSI_DRIVER, "readOnly": True}}),
        ("hostpath-spiffe", {"hostPath": {"path": "/run/spire/sockets", "type": "Directory"}}),
    ],
)
def test_spiffe_socket_reaches_the_operator(helm: Helm, name: str, expected: dict[str, Any]) -> None:
    docs = render(helm, name)
    pod = one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "spiffe-workload-api")
    assert {k: v for k, v in volume.items() if k != "name"} == expected


# --- the injection config ------------------------------------------------------------------------


def rendered_config(docs: list[dict[str, Any]], tmp_path: Path) -> tuple[dict[str, Any], InjectionConfig]:
    text = one(docs, "ConfigMap", "-config")["data"]["config.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return yaml.safe_load(text), load_config(str(path))


@pytest.mark.parametrize("name", SETS)
def test_injection_config_parses_and_points_at_the_broker(helm: Helm, name: str, tmp_path: Path) -> None:
    docs = render(helm, name)
    raw, config = rendered_config(docs, tmp_path)
    assert {k: set(v) for k, v in raw.items()} == {
        "sidecar": {"image", "imagePullPolicy", "resources", "probePort", "localPort", "proxyPort"},
        "spiffe": {"socketSource", "hostPath", "socketFile", "trustDomain"},
        "broker": {"url", "spiffeId"},
        "injection": {"mountPath", "tmpfsSizeLimit", "strict", "defaultTTL", "tokenExpirationSeconds"},
        "sources": {"allowedAddresses"},
    }
    broker = one(docs, "Service", "-broker")
    assert config.broker.url == (
        f"https://{broker['metadata']['name']}.{NAMESPACE}.svc:{broker['spec']['ports'][0]['port']}"
    )
    service_account = one(docs, "ServiceAccount")["metadata"]["name"]
    deploy = one(docs, "Deployment", "-operator")
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == service_account
    assert (
        config.broker.spiffe_id
        == f"spiffe://{config.spiffe.trust_domain}/ns/{NAMESPACE}/sa/{service_account}"
    )
    # the sidecar runs the same build as the operator
    assert config.sidecar.image == operator_container(docs)["image"]


def test_injection_config_carries_the_values(helm: Helm, tmp_path: Path) -> None:
    _, config = rendered_config(render(helm, "tuned"), tmp_path)
    assert config.injection.strict is True and config.injection.default_ttl == "5m"
    assert config.sidecar.image == "ghcr.io/taskcreds/taskcreds@sha256:" + "a" * 64
    assert config.broker.spiffe_id.endswith("/sa/creds-operator")
    _, config = rendered_config(render(helm, "hostpath-spiffe"), tmp_path)
    assert (
        config.spiffe.socket_source,
        config.spiffe.host_path,
        config.spiffe.socket_file,
        config.spiffe.trust_domain,
    ) == ("hostPath", "/run/spire/sockets", "agent.sock", "example.org")
    assert config.broker.spiffe_id.startswith("spiffe://example.org/")


@pytest.mark.parametrize(
    ("values", "allowed"),
    [
        pytest.param({}, ("*",), id="default: any address, as before the setting existed"),
        pytest.param({"sources": {"allowedAddresses": ["https://vault.corp.example:8200", "https://api.github.com"]}},
                     ("https://vault.corp.example:8200", "https://api.github.com"), id="a list"),
        pytest.param({"sources": {"allowedAddresses": []}}, (), id="empty: no server (not the default)"),
    ],
)
def test_allowed_addresses_reach_the_operator(
    helm: Helm, tmp_path: Path, values: dict[str, Any], allowed: tuple[str, ...]
) -> None:
    _, config = rendered_config(helm.template(values), tmp_path)
    assert config.sources.allowed_addresses == allowed


def test_config_change_rolls_the_operator(helm: Helm) -> None:
    def checksum(values: dict[str, Any]) -> str:
        deploy = one(helm.template(values), "Deployment", "-operator")
        return deploy["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum({}) != checksum({"injection": {"defaultTTL": "5m"}})


# --- network policy ---------------------------------------------------------------------------


def test_network_policy_opens_only_the_three_ports_to_the_right_peers(helm: Helm) -> None:
    docs = render(helm, "default")
    policy = one(docs, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"], "egress stays open by default"
    assert policy["spec"]["podSelector"] == one(docs, "Deployment", "-operator")["spec"]["selector"]
    by_port = {rule["ports"][0]["port"]: rule for rule in policy["spec"]["ingress"]}
    assert set(by_port) == {8443, 8444, 8080}
    assert "from" not in by_port[8443], "the API server's address is not known: webhook open"
    broker_peers = by_port[8444]["from"]
    assert {
        "namespaceSelector": {},
        "podSelector": {"matchLabels": {names.LABEL_INJECT: "true"}},
    } in broker_peers
    test_pod = next(d for d in docs if d["kind"] == "Pod")
    other = [p for p in broker_peers if "namespaceSelector" not in p]
    assert other and other[0]["podSelector"]["matchLabels"].items() <= test_pod["metadata"]["labels"].items()
    assert by_port[8080]["from"] == [{"namespaceSelector": {}}]


def test_network_policy_restricts_egress_and_metrics_when_asked(helm: Helm) -> None:
    policy = one(render(helm, "egress-restricted"), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    egress = policy["spec"]["egress"]
    assert {p["port"] for p in egress[0]["ports"]} == {53}
    assert egress[1]["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    metrics = next(r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == 8080)
    assert metrics["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


def test_network_policy_lets_jwt_relying_parties_reach_the_broker_when_listed(helm: Helm) -> None:
    """networkPolicy.broker.extraFrom adds peers to the broker rule only, after the built-in ones."""
    default = one(render(helm, "default"), "NetworkPolicy")["spec"]["ingress"]
    policy = one(render(helm, "broker-relying-parties"), "NetworkPolicy")["spec"]["ingress"]
    extra = VALUES_SETS["broker-relying-parties"]["networkPolicy"]["broker"]["extraFrom"]
    by_port = {rule["ports"][0]["port"]: rule for rule in policy}
    default_by_port = {rule["ports"][0]["port"]: rule for rule in default}
    assert by_port[8444]["from"] == default_by_port[8444]["from"] + extra
    assert by_port[8443] == default_by_port[8443] and by_port[8080] == default_by_port[8080]


# --- observability -----------------------------------------------------------------------------

_METRIC = re.compile(r"\b(taskcreds_[a-z_]+)\b")


def test_alerts_use_metrics_the_code_exports(helm: Helm) -> None:
    rule = one(render(helm, "monitoring"), "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    exported = exposed_metric_names()
    used = {m for r in alerts.values() for m in _METRIC.findall(r["expr"])}
    assert used and used <= exported, used - exported
    # the alerts the issue asks for, each on the metric that shows it
    expects = {
        "TaskcredsWebhookErrors": "taskcreds_admission_requests_total",
        "TaskcredsRevocationFailures": "taskcreds_revocation_failures_total",
        "TaskcredsSidecarNotReady": "taskcreds_sidecar_ready",
        "TaskcredsSidecarRefreshFailing": "taskcreds_sidecar_refresh_total",
        "TaskcredsWebhookCertificateExpiring": "taskcreds_webhook_certificate_expiry_timestamp_seconds",
    }
    for alert, metric in expects.items():
        assert metric in alerts[alert]["expr"], alert
    assert "14 * 86400" in alerts["TaskcredsWebhookCertificateExpiring"]["expr"]


def test_dashboard_is_grafana_json_over_exported_metrics(helm: Helm) -> None:
    cm = one(render(helm, "monitoring"), "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["taskcreds.json"])
    assert dashboard["uid"] and dashboard["title"] == "taskcreds"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels) >= 10
    exported = exposed_metric_names()
    used = {m for p in panels for t in p["targets"] for m in _METRIC.findall(t["expr"])}
    assert used <= exported, used - exported
    operator_metrics = {m for m in exported if not m.startswith("taskcreds_sidecar_")}
    # every operator metric family has a panel (histograms through their _bucket series)
    families = {re.sub(r"_(bucket|sum|count)$", "", m) for m in operator_metrics}
    shown = {re.sub(r"_(bucket|sum|count)$", "", m) for m in used}
    assert families <= shown, families - shown
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24


def test_service_monitor_scrapes_the_metrics_service(helm: Helm) -> None:
    docs = render(helm, "monitoring")
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service", "-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    # the selector must not also match the webhook or broker Services
    for other in ("-webhook", "-broker"):
        labels = one(docs, "Service", other)["metadata"]["labels"]
        assert not monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pods = one(docs, "PodMonitor")
    assert pods["spec"]["selector"] == {"matchLabels": {names.LABEL_INJECT: "true"}}
    assert pods["spec"]["podMetricsEndpoints"][0]["targetPort"] == names.SIDECAR_PROBE_PORT


# --- helm test -----------------------------------------------------------------------------------


def test_helm_test_pod_checks_both_services_over_tls(helm: Helm) -> None:
    docs = render(helm, "default")
    pod = next(d for d in docs if d["kind"] == "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    script = container["args"][0]
    compile(script, "helm-test", "exec")  # it is valid Python
    for suffix in ("-webhook", "-broker"):
        service = one(docs, "Service", suffix)
        url = f"https://{service['metadata']['name']}.{NAMESPACE}.svc:{service['spec']['ports'][0]['port']}/healthz"
        assert url in script
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volume = pod["spec"]["volumes"][0]
    assert volume["secret"]["secretName"] == env_of(operator_container(docs))[names.ENV_WEBHOOK_SECRET]
    # the webhook never sees it: its namespace is excluded
    assert NAMESPACE == pod["metadata"]["namespace"]


def test_notes_tell_how_to_opt_in_and_check(helm: Helm) -> None:
    proc = helm.run("install", "taskcreds", str(CHART), "--namespace", NAMESPACE, "--dry-run=client")
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    for needle in (
        "helm test taskcreds",
        f'{names.LABEL_INJECT}: "true"',
        names.ANNOTATION_TASK,
        names.ANNOTATION_CREDENTIALS,
        f"{names.ANNOTATION_TASK_STATUS}=completed",
        "svc/taskcreds-metrics",
        "kubectl get taskleases",
        "networkPolicy.broker.extraFrom",
        "https://taskcreds-broker.taskcreds-system.svc:8444/.well-known/jwks.json",
        "taskcreds-jwt-keys, taskcreds-jwt-keys-revoked, taskcreds-webhook-tls",
        "scale\ndeploy/taskcreds-operator to 0",
    ):
        assert needle in notes, needle
    assert " &\n" not in notes, "a backgrounded port-forward races the next command"
