"""What ships beside the chart: the Dockerfile (cannot be built here: no container engine, so it is
linted), kind-config.yaml and the CredentialSource examples."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from taskcreds import names
from taskcreds.durations import parse_duration
from tests.chart.helm import CHART, NAMESPACE, REPO, Helm
from tests.chart.kinds import one

DOCKERFILE = (REPO / "Dockerfile").read_text()
EXAMPLES = sorted((REPO / "examples" / "credentialsources").glob("*.yaml"))


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_base_is_a_pinned_python_311_slim() -> None:
    steps = instructions(DOCKERFILE)
    args = dict(a.split("=", 1) for i, a in steps if i == "ARG" and "=" in a)
    bases = [a.split()[0] for i, a in steps if i == "FROM"]
    assert len(bases) == 2, "a build stage and a runtime stage"
    for base in bases:
        image = args.get(base.strip("${}"), base)
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image), image
    assert "latest" not in DOCKERFILE


def test_dockerfile_runs_as_uid_65532_with_the_operator_as_default_command() -> None:
    steps = instructions(DOCKERFILE)
    users = [a for i, a in steps if i == "USER"]
    assert users and users[-1].split(":")[0] == "65532"
    last_from = max(n for n, (i, _) in enumerate(steps) if i == "FROM")
    assert any(i == "USER" for i, _ in steps[last_from:]), "USER must be set in the runtime stage"
    assert [a for i, a in steps if i == "CMD"] == ['["taskcreds-operator"]']
    assert not [a for i, a in steps if i == "ENTRYPOINT"]
    # installs the project from this tree, as wheels built in the first stage
    assert any(i == "RUN" and "pip wheel" in a for i, a in steps)
    assert any(i == "RUN" and "--no-index" in a for i, a in steps)


def test_dockerfile_copies_every_source_package_and_dockerignore_keeps_them() -> None:
    copied = {a.split()[0] for i, a in instructions(DOCKERFILE) if i == "COPY"}
    assert {"pyproject.toml", "taskcreds", "operator", "sidecar"} <= copied
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "tests"} <= ignored
    assert not ({"taskcreds", "operator", "sidecar", "pyproject.toml", "README.md"} & ignored)


def test_chart_image_is_what_the_dockerfile_serves() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == ">=1.29.0-0" and chart["apiVersion"] == "v2"
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'version = "{chart["appVersion"]}"' in pyproject
    assert "taskcreds-operator" in pyproject and "taskcreds-sidecar" in pyproject


def test_kind_config_is_one_control_plane_one_worker_on_a_pinned_recent_node() -> None:
    config = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [n["role"] for n in config["nodes"]]
    assert sorted(roles) == ["control-plane", "worker"]
    for node in config["nodes"]:
        match = re.fullmatch(r"kindest/node:v1\.(\d+)\.\d+@sha256:[0-9a-f]{64}", node["image"])
        assert match and int(match.group(1)) >= 31, node["image"]


# --- examples --------------------------------------------------------------------------------

PROVIDER_KEYS = {
    "jwt": "jwt",
    "vault": "vault",
    "github-app": "githubApp",
    "kubernetes-token": "kubernetesToken",
    "secret": "secret",
}
SPEC_KEYS = {
    "provider",
    "defaultTTL",
    "maxTTL",
    "allowedServiceAccounts",
    "allowedNamespaces",
    "files",
    "delivery",
    "proxy",
    *PROVIDER_KEYS.values(),
}
SETTINGS_KEYS = {
    "jwt": {"audience", "claims"},
    "vault": {"address", "caSecretRef", "auth", "mode", "policies", "path", "fileMap"},
    "githubApp": {
        "apiURL",
        "appId",
        "installationId",
        "privateKeySecretRef",
        "repositories",
        "allRepositories",
        "permissions",
    },
    "kubernetesToken": {"serviceAccount", "audiences"},
    "secret": {"secretRef"},
}


def example_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, d) for p in EXAMPLES for d in yaml.safe_load_all(p.read_text()) if d]


def sources() -> list[tuple[str, dict[str, Any]]]:
    return [(f, d) for f, d in example_docs() if d["apiVersion"] == names.API_VERSION]


def test_there_is_an_example_per_provider_plus_spire_and_openbao() -> None:
    assert {d["spec"]["provider"] for _, d in sources()} == set(names.PROVIDERS)
    kinds = {d["kind"] for _, d in example_docs()}
    assert {"ClusterSPIFFEID", names.KIND_CREDENTIAL_SOURCE, names.KIND_CLUSTER_CREDENTIAL_SOURCE} <= kinds
    assert "openbao.yaml" in {p.name for p in EXAMPLES}


@pytest.mark.parametrize(
    ("file", "doc"), sources(), ids=[f"{f}:{d['metadata']['name']}" for f, d in sources()]
)
def test_credential_source_examples_use_the_agreed_shape(file: str, doc: dict[str, Any]) -> None:
    spec = doc["spec"]
    assert set(spec) <= SPEC_KEYS, set(spec) - SPEC_KEYS
    assert spec["provider"] in names.PROVIDERS
    settings_key = PROVIDER_KEYS[spec["provider"]]
    assert set(spec) & set(PROVIDER_KEYS.values()) == {settings_key}, "exactly the provider's own settings"
    assert set(spec[settings_key]) <= SETTINGS_KEYS[settings_key]
    assert spec["allowedServiceAccounts"] and "*" not in spec["allowedServiceAccounts"]
    assert parse_duration(spec["defaultTTL"]) <= parse_duration(spec["maxTTL"])
    if doc["kind"] == names.KIND_CLUSTER_CREDENTIAL_SOURCE:
        assert spec["allowedNamespaces"] and "namespace" not in doc["metadata"]
    else:
        assert "allowedNamespaces" not in spec and doc["metadata"]["namespace"]


def test_spiffe_id_template_of_the_example_matches_the_chart_default() -> None:
    chart_template = yaml.safe_load((CHART / "values.yaml").read_text())["spiffe"]["idTemplate"]
    for _, doc in example_docs():
        if doc["kind"] == "ClusterSPIFFEID":
            spire = doc["spec"]["spiffeIDTemplate"]
            assert (
                spire.replace("{{ .TrustDomain }}", "{trust_domain}")
                .replace("{{ .PodMeta.Namespace }}", "{namespace}")
                .replace("{{ .PodSpec.ServiceAccountName }}", "{serviceaccount}")
                == chart_template
            )


def test_builtin_kinds_in_examples_are_valid_kubernetes() -> None:
    checked = 0
    for _, doc in example_docs():
        if doc["apiVersion"] in ("v1", "apps/v1"):
            kubernetes_validate.validate(doc, "1.31", strict=True)
            checked += 1
    assert checked >= 3


def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted((CHART / "crds").glob("*.yaml")) if (CHART / "crds").is_dir() else []:
        for crd in yaml.safe_load_all(path.read_text()):
            if crd and crd.get("kind") == "CustomResourceDefinition":
                for version in crd["spec"]["versions"]:
                    out[(crd["spec"]["names"]["kind"], version["name"])] = version["schema"][
                        "openAPIV3Schema"
                    ]
    return out


def test_the_shape_checked_here_is_the_crds_own() -> None:
    """The key lists above are what the CRDs define, so a field added to a CRD (githubApp's
    allRepositories) is allowed in the examples, and one the CRDs lack is never allowed."""
    schemas = _crd_schemas()
    if not schemas:
        pytest.skip("charts/taskcreds/crds/ holds no CRD yet")
    spec_keys: set[str] = set()
    for kind in (names.KIND_CREDENTIAL_SOURCE, names.KIND_CLUSTER_CREDENTIAL_SOURCE):
        spec = schemas[(kind, names.CRD_VERSION)]["properties"]["spec"]["properties"]
        spec_keys |= set(spec)
        for key, allowed in SETTINGS_KEYS.items():
            assert set(spec[key]["properties"]) == allowed, (kind, key)
    assert spec_keys == SPEC_KEYS


def test_examples_validate_against_the_chart_crds_when_present() -> None:
    """crds/ belongs to the CRD manifests' owner; once it exists, every example must pass its schema."""
    import jsonschema

    schemas = _crd_schemas()
    if not schemas:
        pytest.skip("charts/taskcreds/crds/ holds no CRD yet")

    def to_jsonschema(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
        if isinstance(node, list):
            return [to_jsonschema(v) for v in node]
        return node

    for file, doc in sources():
        schema = schemas.get((doc["kind"], names.CRD_VERSION))
        assert schema is not None, f"no CRD for {doc['kind']} {names.CRD_VERSION} in charts/taskcreds/crds"
        jsonschema.validate(doc, to_jsonschema(schema)), file


def test_examples_dir_is_what_docs_point_to() -> None:
    install = (REPO / "docs" / "install.md").read_text()
    for path in EXAMPLES:
        assert f"examples/credentialsources/{path.name}" in install, path.name
    assert Path(REPO / "scripts" / "kind-e2e.sh").exists()


def test_spire_example_gives_the_operator_the_dns_name_of_the_jwt_issuer(helm: Helm) -> None:
    """The operator's ClusterSPIFFEID selects the chart's operator pods and carries the DNS name of
    the default jwt issuer (the broker Service), so relying parties can verify it by host name."""
    docs = helm.template({})
    pod = one(docs, "Deployment", "-operator")["spec"]["template"]
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    host = urlsplit(env[names.ENV_JWT_ISSUER]).hostname
    service = one(docs, "Service", "-broker")
    assert host == f"{service['metadata']['name']}.{NAMESPACE}.svc"
    operator_ids = [
        d for _, d in example_docs() if d["kind"] == "ClusterSPIFFEID" and "dnsNameTemplates" in d["spec"]
    ]
    assert len(operator_ids) == 1
    spec = operator_ids[0]["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert spec["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": NAMESPACE}
    names_for_ns = [t.replace("{{ .PodMeta.Namespace }}", NAMESPACE) for t in spec["dnsNameTemplates"]]
    assert host in names_for_ns, (host, names_for_ns)

