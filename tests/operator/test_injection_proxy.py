"""Proxy delivery at admission, reserved names on pods that claim to be injected, bounded messages.

What a user sees: the agent container's environment (proxy URL and CA-bundle paths, never a value),
the sidecar's proxy listener, warnings naming the container and variable it keeps, and denials a
person can read in one screen even when an annotation is a megabyte long.
"""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from taskcreds.operator.config import ConfigError, InjectionConfig
from taskcreds.operator.injection import mutate_pod

from taskcreds import names
from tests.operator.validation import assert_valid_pod_spec

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "fuzz" / "corpus"
CONFIG = InjectionConfig()
STRICT = InjectionConfig.from_mapping({"injection": {"strict": True}})
PROXY_URL = "http://127.0.0.1:9092"
CA_NAMES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO", "CURL_CA_BUNDLE")
URL_NAMES = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")
PROXY_NAMES = (*URL_NAMES, "NO_PROXY", "no_proxy", *CA_NAMES)


def by_proxy(*proxied: str) -> Any:
    def delivery(namespace: str, credential: str) -> tuple[str, Any]:
        return ("proxy", {"hosts": ["api.github.com"]}) if credential in proxied else ("file", None)

    return delivery


def pod(
    containers: list[dict[str, Any]] | None = None, *, annotations: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "agent-1",
            "labels": {names.LABEL_INJECT: "true"},
            "annotations": {
                names.ANNOTATION_TASK: "fix-42",
                names.ANNOTATION_CREDENTIALS: "github,db",
                **(annotations or {}),
            },
        },
        "spec": {
            "securityContext": {"fsGroup": 1000},
            "containers": containers or [{"name": "agent", "image": "agent:1"}],
            **spec,
        },
    }


def inject(
    obj: dict[str, Any], config: InjectionConfig = CONFIG, **kwargs: Any
) -> tuple[dict[str, Any], Any]:
    before = copy.deepcopy(obj)
    result = mutate_pod(obj, config, **kwargs)
    assert obj == before, "mutate_pod modified its input"
    return jsonpatch.apply_patch(obj, result.patch), result


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def container(mutated: dict[str, Any], name: str) -> dict[str, Any]:
    every = mutated["spec"]["containers"] + (mutated["spec"].get("initContainers") or [])
    return next(c for c in every if c["name"] == name)


# --- proxy delivery ---------------------------------------------------------------------------

PROXY_CASES = [
    # (case, delivery, annotations, containers, expected env per container (None: no proxy env))
    ("no index: files only", None, {}, None, {"agent": None}),
    ("every credential by file", by_proxy(), {}, None, {"agent": None}),
    (
        "one credential by proxy",
        by_proxy("github"),
        {},
        None,
        {
            "agent": {
                **{n: PROXY_URL for n in URL_NAMES},
                **{n: "/run/taskcreds/ca-bundle.crt" for n in CA_NAMES},
            }
        },
    ),
    (
        "custom mount path: the bundle is under it",
        by_proxy("db"),
        {names.ANNOTATION_MOUNT_PATH: "/secrets/tc"},
        None,
        {
            "agent": {
                "SSL_CERT_FILE": "/secrets/tc/ca-bundle.crt",
                "NO_PROXY": "localhost,127.0.0.1,::1,.svc,.cluster.local",
                "no_proxy": "localhost,127.0.0.1,::1,.svc,.cluster.local",
            }
        },
    ),
    (
        "only the selected containers",
        by_proxy("github"),
        {names.ANNOTATION_CONTAINERS: "agent"},
        [{"name": "agent", "image": "a"}, {"name": "tests", "image": "t"}],
        {"agent": {"HTTP_PROXY": PROXY_URL}, "tests": None},
    ),
    (
        "a selected init container too",
        by_proxy("github"),
        {names.ANNOTATION_CONTAINERS: "clone,agent"},
        [{"name": "agent", "image": "a"}],
        {"agent": {"HTTPS_PROXY": PROXY_URL}, "clone": {"GIT_SSL_CAINFO": "/run/taskcreds/ca-bundle.crt"}},
    ),
]


@pytest.mark.parametrize(
    ("case", "delivery", "annotations", "containers", "expected"),
    PROXY_CASES,
    ids=[c[0] for c in PROXY_CASES],
)
def test_proxy_env_follows_the_delivery(
    case: str, delivery: Any, annotations: dict[str, str], containers: Any, expected: dict[str, Any]
) -> None:
    extra = (
        {"initContainers": [{"name": "clone", "image": "git"}]} if case.startswith("a selected init") else {}
    )
    mutated, result = inject(pod(containers, annotations=annotations, **extra), delivery=delivery)
    assert result.outcome == "injected", result.message
    proxied = any(v is not None for v in expected.values())
    sidecar_env = env_of(container(mutated, names.SIDECAR_CONTAINER))
    assert (sidecar_env.get("TASKCREDS_LISTEN_PROXY") == "127.0.0.1:9092") is proxied
    for name, wanted in expected.items():
        env = env_of(container(mutated, name))
        if wanted is None:
            assert not set(PROXY_NAMES) & set(env), env
        else:
            assert set(PROXY_NAMES) <= set(env)
            assert {k: env[k] for k in wanted} == wanted
    assert_valid_pod_spec(mutated)
    again = mutate_pod(mutated, CONFIG, delivery=delivery)
    assert (again.outcome, again.patch) == ("skipped", []), "reinvocation must add nothing"


@pytest.mark.parametrize(
    ("case", "own"),
    [
        ("a corporate proxy", {"name": "HTTPS_PROXY", "value": "http://user:pw@corp:3128"}),
        ("a corporate proxy, lower case", {"name": "https_proxy", "value": "http://user:pw@corp:3128"}),
        ("its own no_proxy", {"name": "no_proxy", "value": "corp.internal"}),
        ("a CA bundle of its own", {"name": "SSL_CERT_FILE", "value": "/etc/ssl/corp.pem"}),
        (
            "a value from a ConfigMap",
            {"name": "NO_PROXY", "valueFrom": {"configMapKeyRef": {"name": "n", "key": "k"}}},
        ),
    ],
)
def test_a_variable_the_container_sets_is_kept_with_a_warning(case: str, own: dict[str, Any]) -> None:
    p = pod([{"name": "agent", "image": "a", "env": [own]}])
    mutated, result = inject(p, delivery=by_proxy("github"))
    env = [e for e in container(mutated, "agent")["env"] if e["name"] == own["name"]]
    assert env == [own], "overridden or duplicated"
    assert [w for w in result.warnings if own["name"] in w] == [
        f"container 'agent' sets {own['name']} itself, so taskcreds leaves it as it is; credentials delivered "
        f"by proxy need {own['name']}={_ours(own['name'])} "
        "in that container (remove its own value to let taskcreds set it)"
    ]
    assert "user:pw" not in " ".join(result.warnings), "a value the pod set is never repeated"
    # the other spelling is the container's choice too: ours would win in most tools (lower case first)
    twin = own["name"].swapcase() if own["name"].endswith(("_PROXY", "_proxy")) else own["name"]
    agent_env = env_of(container(mutated, "agent"))
    assert twin == own["name"] or twin not in agent_env, "the other spelling overrides the container's own"
    assert set(PROXY_NAMES) - {own["name"], twin} <= set(agent_env)
    assert_valid_pod_spec(mutated)


def _ours(name: str) -> str:
    if name in URL_NAMES:
        return PROXY_URL
    if name in ("NO_PROXY", "no_proxy"):
        return "localhost,127.0.0.1,::1,.svc,.cluster.local"
    return "/run/taskcreds/ca-bundle.crt"


def test_proxy_port_is_configurable_and_its_clash_is_warned_about() -> None:
    config = InjectionConfig.from_mapping({"sidecar": {"proxyPort": 15001}})
    p = pod([{"name": "agent", "image": "a", "ports": [{"containerPort": 15001}]}])
    mutated, result = inject(p, config, delivery=by_proxy("github"))
    agent_env = env_of(container(mutated, "agent"))
    assert {agent_env[n] for n in URL_NAMES} == {"http://127.0.0.1:15001"}
    assert env_of(container(mutated, names.SIDECAR_CONTAINER))["TASKCREDS_LISTEN_PROXY"] == "127.0.0.1:15001"
    assert any("declares port 15001" in w and "sidecar.proxyPort" in w for w in result.warnings)
    # without proxy delivery the port is not the sidecar's, so no warning
    assert not any("15001" in w for w in inject(p, config)[1].warnings)
    with pytest.raises(ConfigError, match="localPort and proxyPort are both 9091"):
        InjectionConfig.from_mapping({"sidecar": {"proxyPort": 9091}})


def test_proxy_env_holds_paths_and_a_loopback_url_only() -> None:
    mutated, _ = inject(pod(), delivery=by_proxy("github", "db"))
    env = env_of(container(mutated, "agent"))
    for name in PROXY_NAMES:
        value = env[name]
        assert value.startswith(("/run/taskcreds/", "http://127.0.0.1:", "localhost,")), (name, value)


# --- reserved names on a pod that claims to be injected (fuzz finding) --------------------------

RESERVED_CASES = [
    (
        "regular container named like the sidecar, injected claimed",
        {names.ANNOTATION_INJECTED: "0.1.0"},
        {"containers": [{"name": "agent", "image": "a"}, {"name": names.SIDECAR_CONTAINER, "image": "x"}]},
        "denied",
    ),
    (
        "ephemeral container named like the sidecar, injected claimed",
        {names.ANNOTATION_INJECTED: "0.1.0"},
        {"ephemeralContainers": [{"name": names.SIDECAR_CONTAINER, "image": "x"}]},
        "denied",
    ),
    (
        "regular container named like the sidecar, not injected",
        {},
        {"containers": [{"name": "agent", "image": "a"}, {"name": names.SIDECAR_CONTAINER, "image": "x"}]},
        "denied",
    ),
    (
        "our own init sidecar, injected claimed",
        {names.ANNOTATION_INJECTED: "0.1.0"},
        {"init": True},
        "injected",
    ),
]


@pytest.mark.parametrize(
    ("case", "annotations", "spec", "outcome"), RESERVED_CASES, ids=[c[0] for c in RESERVED_CASES]
)
def test_reserved_container_names(
    case: str, annotations: dict[str, str], spec: dict[str, Any], outcome: str
) -> None:
    p = pod(annotations=annotations)
    if spec.pop("init", False):
        p["spec"]["initContainers"] = [{"name": names.SIDECAR_CONTAINER, "image": "ours"}]
    p["spec"].update(spec)
    result = mutate_pod(p, CONFIG)
    assert result.outcome == outcome, result.message
    if outcome == "denied":
        assert f"already has a container named '{names.SIDECAR_CONTAINER}'" in (result.message or "")
        assert "reserves" in (result.message or "")
    else:  # completed without a second sidecar
        mutated = jsonpatch.apply_patch(p, result.patch)
        every = mutated["spec"]["containers"] + mutated["spec"]["initContainers"]
        assert [c["name"] for c in every].count(names.SIDECAR_CONTAINER) == 1


def test_the_fuzz_corpus_pod_is_denied() -> None:
    review = json.loads((CORPUS / "preinjected-regular-sidecar-name.denied.json").read_text())
    result = mutate_pod(review["request"]["object"], CONFIG, namespace=review["request"]["namespace"])
    assert result.outcome == "denied" and names.SIDECAR_CONTAINER in (result.message or "")


# --- bounded messages (fuzz finding) ----------------------------------------------------------

MIB = "a" * (1024 * 1024)
LIMIT = 1024

BOUNDED_CASES = [
    ("1 MiB credential name", {names.ANNOTATION_CREDENTIALS: "github,X" + MIB}, None, CONFIG, "denied"),
    ("1 MiB container name", {names.ANNOTATION_CONTAINERS: "agent,X" + MIB}, None, CONFIG, "denied"),
    ("1 MiB task id", {names.ANNOTATION_TASK: MIB + "!"}, None, CONFIG, "denied"),
    ("1 MiB ttl", {names.ANNOTATION_TTL: MIB}, None, CONFIG, "denied"),
    ("1 MiB mount path", {names.ANNOTATION_MOUNT_PATH: "/" + MIB + "/.."}, None, CONFIG, "denied"),
    (
        "1 MiB secret env name (warning)",
        {},
        [
            {
                "name": "agent",
                "image": "a",
                "env": [{"name": MIB, "valueFrom": {"secretKeyRef": {"name": MIB, "key": "k"}}}],
            }
        ],
        CONFIG,
        "injected",
    ),
    (
        "a thousand static secrets (strict)",
        {},
        [
            {
                "name": "agent",
                "image": "a",
                "envFrom": [{"secretRef": {"name": f"s-{i}"}} for i in range(1000)],
            }
        ],
        STRICT,
        "denied",
    ),
    (
        "a thousand missing containers",
        {names.ANNOTATION_CONTAINERS: ",".join(f"c-{i}" for i in range(1000))},
        None,
        CONFIG,
        "denied",
    ),
]


@pytest.mark.parametrize(
    ("case", "annotations", "containers", "config", "outcome"),
    BOUNDED_CASES,
    ids=[c[0] for c in BOUNDED_CASES],
)
def test_messages_are_bounded(
    case: str, annotations: dict[str, str], containers: Any, config: InjectionConfig, outcome: str
) -> None:
    result = mutate_pod(pod(containers, annotations=annotations), config)
    assert result.outcome == outcome, (result.message or "")[:300]
    texts = ([result.message] if result.message else []) + result.warnings
    assert texts and all(len(t) <= LIMIT for t in texts), [len(t) for t in texts]
    assert len(result.warnings) <= 8
    if annotations and "1 MiB" in case:  # the cut value still names the key and its real length
        key = next(iter(annotations))
        assert (result.message or "").startswith(key + ": ")
        assert f"({len(annotations[key])} characters)" in (result.message or "")


def test_a_thousand_static_secrets_warn_five_times_and_count_the_rest() -> None:
    c = [{"name": "agent", "image": "a", "envFrom": [{"secretRef": {"name": f"s-{i}"}} for i in range(1000)]}]
    result = mutate_pod(pod(c), CONFIG)
    secret = [w for w in result.warnings if "Secret" in w]
    assert (
        len(secret) == 6 and secret[-1] == "and 995 more static Secret references in the agent's environment"
    )
    assert all("delivery: proxy" in w for w in secret[:5])


@pytest.mark.parametrize(
    "name", ["annotation-1mib-credentials.denied.json.gz", "annotation-1mib-containers.denied.json.gz"]
)
def test_the_fuzz_corpus_megabyte_annotations_give_short_denials(name: str) -> None:
    review = json.loads(gzip.decompress((CORPUS / name).read_bytes()))
    result = mutate_pod(review["request"]["object"], CONFIG)
    assert result.outcome == "denied" and len(result.message or "") <= LIMIT
    assert "characters)" in (result.message or "")
