"""The injection config: defaults that work with no file, and errors a person can fix."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from taskcreds.operator.config import (
    ConfigError,
    InjectionConfig,
    QuantityError,
    config_from_env,
    load_config,
    parse_quantity,
)

REPO = Path(__file__).resolve().parents[2]

CHART_SHAPE = """
sidecar:
  image: ghcr.io/taskcreds/taskcreds:0.1.0
  imagePullPolicy: IfNotPresent
  resources: {requests: {cpu: 10m, memory: 48Mi}, limits: {cpu: 200m, memory: 96Mi}}
  probePort: 9090
  localPort: 9091
  proxyPort: 9092
spiffe:
  socketSource: csi
  hostPath: /run/spire/agent-sockets
  socketFile: spire-agent.sock
  trustDomain: cluster.local
broker:
  url: https://taskcreds-broker.taskcreds-system.svc:8444
  spiffeId: spiffe://cluster.local/ns/taskcreds-system/sa/taskcreds-operator
injection:
  mountPath: /run/taskcreds
  tmpfsSizeLimit: 1Mi
  strict: false
  defaultTTL: 15m
  tokenExpirationSeconds: 3600
sources:
  allowedAddresses: ["*"]
"""


def test_no_file_gives_the_documented_defaults() -> None:
    config = load_config(None)
    assert config == InjectionConfig()
    assert yaml.safe_load(CHART_SHAPE) == config.model_dump(by_alias=True, mode="json")


@pytest.mark.parametrize(
    "text",
    ["", "# only a comment\n", "{}\n", "sidecar: {}\n"],
    ids=["empty", "comment", "empty-map", "empty-section"],
)
def test_empty_files_mean_defaults(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert load_config(str(path)) == InjectionConfig()


def test_the_chart_shape_and_the_example_load(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CHART_SHAPE)
    assert load_config(str(path)) == InjectionConfig()
    assert load_config(str(REPO / "examples" / "injection-config.yaml")) == InjectionConfig()


def test_every_key_is_read() -> None:
    config = InjectionConfig.from_mapping(
        {
            "sidecar": {
                "image": "registry.local/tc:dev",
                "imagePullPolicy": "Always",
                "probePort": 19090,
                "localPort": 19091,
                "resources": {"requests": {"cpu": 1, "memory": "64Mi"}, "limits": {}},
            },
            "spiffe": {
                "socketSource": "hostPath",
                "hostPath": "/run/spire/sockets/",
                "socketFile": "agent.sock",
                "trustDomain": "example.org",
            },
            "broker": {"url": "https://broker.example:443", "spiffeId": "spiffe://example.org/broker"},
            "injection": {
                "mountPath": "/creds",
                "tmpfsSizeLimit": "4Mi",
                "strict": True,
                "defaultTTL": "1h",
                "tokenExpirationSeconds": 600,
            },
        }
    )
    assert config.sidecar.image_pull_policy == "Always"
    assert config.sidecar.resources.as_dict == {"requests": {"cpu": "1", "memory": "64Mi"}}
    assert config.spiffe.host_path == "/run/spire/sockets"
    assert config.injection.strict is True
    assert config.injection.default_ttl_seconds == 3600


def test_snake_case_names_work_from_python() -> None:
    assert InjectionConfig.from_mapping({"injection": {"mount_path": "/x"}}).injection.mount_path == "/x"


def test_config_is_frozen() -> None:
    with pytest.raises(ValueError, match="frozen"):
        InjectionConfig().injection.strict = True  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "line"),
    [
        pytest.param(
            {"spiffe": {"socketSource": "nfs"}},
            "spiffe.socketSource: 'nfs' is not one of csi, hostPath",
            id="unknown-socket-source",
        ),
        pytest.param(
            {"sidecar": {"imagePullPolicy": "Sometimes"}},
            "sidecar.imagePullPolicy: 'Sometimes' is not one of Always, IfNotPresent, Never",
            id="pull-policy",
        ),
        pytest.param(
            {"sidecar": {"imagePolicy": "x"}},
            "sidecar.imagePolicy: unknown key; accepted keys here: image, "
            "imagePullPolicy, resources, probePort, localPort",
            id="typo-key",
        ),
        pytest.param(
            {"webhook": {}},
            "webhook: unknown key; accepted keys here: sidecar, spiffe, broker, injection, sources",
            id="unknown-section",
        ),
        pytest.param(
            {"sidecar": {"probePort": 70000}},
            "sidecar.probePort: 70000 is not a TCP port (1-65535)",
            id="port-range",
        ),
        pytest.param(
            {"sidecar": {"probePort": "http"}},
            "sidecar.probePort: 'http' is not a whole number",
            id="port-type",
        ),
        pytest.param(
            {"sidecar": {"localPort": 9090}}, "probePort and localPort are both 9090", id="same-ports"
        ),
        pytest.param(
            {"sidecar": {"image": "has space"}},
            "sidecar.image: 'has space' is not a container image",
            id="image",
        ),
        pytest.param(
            {"sidecar": {"resources": {"requests": {"memory": "lots"}}}},
            "sidecar.resources.requests: memory: 'lots' is not a Kubernetes quantity",
            id="quantity",
        ),
        pytest.param(
            {"sidecar": {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "500m"}}}},
            "requests.cpu '2' is above limits.cpu '500m'",
            id="request-above-limit",
        ),
        pytest.param(
            {"spiffe": {"hostPath": "run/spire"}},
            "spiffe.hostPath: 'run/spire' is not an absolute path",
            id="relative-host-path",
        ),
        pytest.param(
            {"spiffe": {"socketFile": "a/b.sock"}},
            "spiffe.socketFile: 'a/b.sock' is not a file name",
            id="socket-file-path",
        ),
        pytest.param(
            {"spiffe": {"trustDomain": "Example.ORG"}},
            "spiffe.trustDomain: 'Example.ORG' is not a SPIFFE trust domain",
            id="trust-domain",
        ),
        pytest.param(
            {"broker": {"url": "http://broker:8444"}},
            "broker.url: 'http://broker:8444' is not an https:// URL",
            id="plain-http",
        ),
        pytest.param(
            {"broker": {"url": "https://"}}, "broker.url: 'https://' is not an https:// URL", id="no-host"
        ),
        pytest.param(
            {"broker": {"spiffeId": "spiffe:/x"}},
            "broker.spiffeId: 'spiffe:/x' is not a SPIFFE ID",
            id="spiffe-id",
        ),
        pytest.param(
            {"injection": {"mountPath": "/run/../etc"}},
            "injection.mountPath: '/run/../etc' is not an absolute path",
            id="dotdot-mount",
        ),
        pytest.param(
            {"injection": {"mountPath": "/"}},
            "injection.mountPath: '/' is not an absolute path below /",
            id="root-mount",
        ),
        pytest.param(
            {"injection": {"mountPath": "//"}},
            "injection.mountPath: '//' is not an absolute path below /",
            id="root-mount-two-slashes",
        ),
        pytest.param(
            {"injection": {"tmpfsSizeLimit": "0"}},
            "injection.tmpfsSizeLimit: '0' must be larger than zero",
            id="zero-size",
        ),
        pytest.param(
            {"injection": {"defaultTTL": "15 minutes"}},
            "injection.defaultTTL: '15 minutes' is not a Go-style duration such as 90s, 15m or 1h30m",
            id="ttl",
        ),
        pytest.param(
            {"injection": {"tokenExpirationSeconds": 60}},
            "injection.tokenExpirationSeconds: 60 is outside 600..4294967295",
            id="token-too-short",
        ),
        pytest.param(
            {"injection": {"strict": "perhaps"}},
            "injection.strict: 'perhaps' is not true or false",
            id="strict-bool",
        ),
        pytest.param({"injection": "strict"}, "injection: 'strict' is not a mapping", id="section-not-map"),
    ],
)
def test_bad_values_name_key_value_and_what_is_accepted(data: dict, line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        InjectionConfig.from_mapping(data)
    assert any(line in problem for problem in caught.value.problems), caught.value.problems
    assert "\n" not in caught.value.problems[0]
    assert "Traceback" not in str(caught.value) and "pydantic" not in str(caught.value)


def test_every_problem_gets_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("sidecar: {probePort: 0}\nbroker: {url: 'ftp://x'}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"{path}: ") for line in lines)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(None, "cannot read the injection config", id="missing-file"),
        pytest.param("sidecar: [unclosed\n", "not valid YAML at line", id="bad-yaml"),
        pytest.param("- a\n- b\n", "the configuration is a list; accepted: a mapping", id="not-a-mapping"),
        pytest.param(b"\xff\xfe", "not UTF-8", id="binary"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path: Path, content: str | bytes | None, expected: str) -> None:
    path = tmp_path / "config.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=expected) as caught:
        load_config(str(path))
    assert str(path) in str(caught.value)


def test_operator_reads_the_file_named_by_its_environment(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("injection: {strict: true}\n")
    assert config_from_env({"TASKCREDS_CONFIG": str(path)}).injection.strict is True
    assert config_from_env({}) == InjectionConfig()
    assert config_from_env({"TASKCREDS_CONFIG": ""}) == InjectionConfig()
    with pytest.raises(ConfigError, match="nope.yaml"):
        config_from_env({"TASKCREDS_CONFIG": str(tmp_path / "nope.yaml")})


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("48Mi", Decimal(48 * 2**20)),
        ("10m", Decimal("0.010")),
        ("1", Decimal(1)),
        ("0.5", Decimal("0.5")),
        ("1e3", Decimal(1000)),
        ("2k", Decimal(2000)),
        ("1Gi", Decimal(2**30)),
        (".5", Decimal("0.5")),
    ],
)
def test_quantities_parse_like_kubernetes(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "Mi", "1 Mi", "1MB", "one", "1.2.3", True, None])
def test_non_quantities_are_refused(text: object) -> None:
    with pytest.raises(QuantityError, match="is not a Kubernetes quantity"):
        parse_quantity(text)


# --- sources.allowedAddresses: which servers a namespaced CredentialSource may make the operator call

# name -> (patterns, address, allowed?)
_ADDRESSES = {
    "default allows any": (("*",), "https://anything.example:1234", True),
    "empty allows none": ((), "https://vault.example.com", False),
    "exact host, default port": (("https://vault.example.com",), "https://vault.example.com/", True),
    "exact host, default port written": (("https://vault.example.com",), "https://vault.example.com:443", True),
    "exact host, other port": (("https://vault.example.com",), "https://vault.example.com:8200", False),
    "exact host and port": (("https://vault.example.com:8200",), "https://vault.example.com:8200", True),
    "any port": (("https://vault.example.com:*",), "https://vault.example.com:8200", True),
    "host names are case-insensitive": (("https://Vault.Example.com",), "https://VAULT.example.com.", True),
    "another host": (("https://vault.example.com",), "https://vault.example.com.evil.test", False),
    "scheme must match": (("https://vault.example.com",), "http://vault.example.com:443", False),
    "wildcard covers names below": (("https://*.corp.example",), "https://a.b.corp.example", True),
    "wildcard not the name itself": (("https://*.corp.example",), "https://corp.example", False),
    "wildcard not a look-alike": (("https://*.corp.example",), "https://evilcorp.example", False),
    "IPv6 literal": (("http://[::1]:8200",), "http://[0:0::1]:8200", True),
    "IPv4 literal": (("https://10.0.0.7:8200",), "https://10.0.0.8:8200", False),
    "one of several": (("https://a.example", "https://b.example"), "https://b.example", True),
}


@pytest.mark.parametrize("case", list(_ADDRESSES))
def test_allowed_addresses_match(case: str) -> None:
    from urllib.parse import urlsplit

    patterns, address, allowed = _ADDRESSES[case]
    config = InjectionConfig.from_mapping({"sources": {"allowedAddresses": list(patterns)}})
    parts = urlsplit(address)
    assert config.sources.address_allowed(parts.scheme, parts.hostname or "", parts.port) is allowed


@pytest.mark.parametrize(
    "pattern",
    ["vault.example.com", "ftp://vault.example.com", "https://vault.example.com/v1", "https://u@vault.example.com",
     "https://*", "https://*.com", "https://vault.example.com:0", "https://vault.example.com:http",
     "https://", "https://bad_name.example", "*.example.com", "https://[::1"],
)
def test_bad_address_patterns_name_the_entry_and_what_is_accepted(pattern: str) -> None:
    with pytest.raises(ConfigError) as caught:
        InjectionConfig.from_mapping({"sources": {"allowedAddresses": ["https://ok.example", pattern]}})
    assert str(caught.value) == (
        f"sources.allowedAddresses.1: {pattern!r} is not an address pattern; accepted: '*' (any address), "
        "or scheme://host[:port] with scheme https or http, host a DNS name, '*.' followed by one (any name "
        "below it), or an IP address, and port a number or '*' (default: the scheme's own, 443 or 80); "
        "no path, user name or query"
    )
