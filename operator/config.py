"""The injection configuration: what the webhook puts into an opted-in pod.

The Helm chart renders this YAML into a ConfigMap and points ``TASKCREDS_CONFIG`` at it;
``taskcreds inject --config`` reads the same file. Every key has a safe default, so no file at
all is a valid configuration. Keys are camelCase, as in every Kubernetes manifest::

    sidecar:   {image, imagePullPolicy, resources: {requests, limits}, probePort, localPort, proxyPort}
    spiffe:    {socketSource: csi|hostPath, hostPath, socketFile, trustDomain}
    broker:    {url, spiffeId}
    injection: {mountPath, tmpfsSizeLimit, strict, defaultTTL, tokenExpirationSeconds}
    sources:   {allowedAddresses}

Errors are :class:`ConfigError` with one line per problem, each naming the key, the value and
what would be accepted. The models are frozen: the webhook reads them on its hot path and
never copies them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from taskcreds.operator.annotations import normal_path

from taskcreds import names
from taskcreds.durations import DurationError, parse_duration

__all__ = [
    "ConfigError",
    "InjectionConfig",
    "SidecarConfig",
    "SpiffeConfig",
    "BrokerConfig",
    "InjectionSettings",
    "SourcesConfig",
    "AddressPattern",
    "Resources",
    "load_config",
    "config_from_env",
    "parse_quantity",
    "QuantityError",
    "DEFAULT_IMAGE",
]

DEFAULT_IMAGE = "ghcr.io/taskcreds/taskcreds:0.1.0"

# Kubernetes resource.Quantity: a decimal number, then a binary (Ki..Ei), decimal (n..E) or
# exponent suffix. Written here (not kubernetes_asyncio.utils) so the webhook and the CLI need not
# import a whole API client to read "48Mi".
_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_SUFFIX = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
QUANTITY_ACCEPTED = "a Kubernetes quantity such as 10m, 48Mi, 1Gi or 0.5"
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")
_IMAGE = re.compile(r"^[^\s]+$")


class ConfigError(ValueError):
    """An injection configuration the webhook cannot use.

    ``problems`` holds one readable line per problem (``spiffe.socketSource: 'nfs' is not one of
    csi, hostPath``); ``source`` names the file when there is one.
    """

    def __init__(self, problems: list[str] | tuple[str, ...], source: str | None = None) -> None:
        self.problems = tuple(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__("\n".join(prefix + p for p in self.problems))


class QuantityError(ValueError):
    """A string that is not a Kubernetes quantity."""


def parse_quantity(text: object) -> Decimal:
    """``"48Mi"`` -> ``Decimal(50331648)``; raises QuantityError naming the value otherwise."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise QuantityError(f"{text!r} is not {QUANTITY_ACCEPTED}")
    match = _QUANTITY.fullmatch(str(text).strip() if isinstance(text, str) else str(text))
    if not match:
        raise QuantityError(f"{text!r} is not {QUANTITY_ACCEPTED}")
    number, suffix = match.group(1), match.group(2) or ""
    try:
        if suffix[:1] in ("e", "E"):
            return Decimal(number) * (Decimal(10) ** int(suffix[1:]))
        return Decimal(number) * _SUFFIX[suffix]
    except (InvalidOperation, OverflowError, ValueError) as exc:
        raise QuantityError(f"{text!r} is not {QUANTITY_ACCEPTED}") from exc


def _absolute_path(value: str) -> str:
    if not value.startswith("/") or ".." in value.split("/") or normal_path(value) == "/":
        raise ValueError(
            f"{value!r} is not an absolute path below / without '..' (for example /run/taskcreds)"
        )
    return normal_path(value)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)


Quantity = str


class Resources(_Model):
    """Container resources in the Kubernetes shape; requests must not exceed limits."""

    requests: dict[str, Quantity] = Field(default_factory=lambda: {"cpu": "10m", "memory": "48Mi"})
    limits: dict[str, Quantity] = Field(default_factory=lambda: {"cpu": "200m", "memory": "96Mi"})

    @field_validator("requests", "limits", mode="before")
    @classmethod
    def _quantities(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            out = {}
            for key, qty in value.items():
                if isinstance(qty, (int, float)) and not isinstance(qty, bool):
                    qty = str(qty)  # YAML `cpu: 1` is the quantity "1"
                try:
                    if parse_quantity(qty) < 0:
                        raise QuantityError(f"{qty!r} is negative")
                except QuantityError as exc:
                    raise ValueError(f"{key}: {exc}") from None
                out[key] = qty
            return out
        return value

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Resources:
        for key, request in self.requests.items():
            limit = self.limits.get(key)
            if limit is not None and parse_quantity(request) > parse_quantity(limit):
                raise ValueError(
                    f"requests.{key} {request!r} is above limits.{key} {limit!r}; "
                    "accepted: a request no larger than its limit"
                )
        return self

    @cached_property
    def as_dict(self) -> dict[str, dict[str, str]]:
        """The Kubernetes ``resources`` object (computed once; callers copy before mutating)."""
        out: dict[str, dict[str, str]] = {}
        if self.requests:
            out["requests"] = dict(self.requests)
        if self.limits:
            out["limits"] = dict(self.limits)
        return out


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"{value!r} is not a TCP port (1-65535)")
    return value


class SidecarConfig(_Model):
    """The native sidecar container the webhook adds."""

    image: str = DEFAULT_IMAGE
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    resources: Resources = Field(default_factory=Resources)
    probe_port: int = names.SIDECAR_PROBE_PORT
    """All interfaces: /healthz, /readyz, /metrics for the kubelet and Prometheus."""
    local_port: int = names.SIDECAR_LOCAL_PORT
    """127.0.0.1 only: adds POST /v1/redact for the agent."""
    proxy_port: int = 9092
    """127.0.0.1 only: the egress proxy for credentials with ``delivery: proxy`` (HTTPS_PROXY)."""

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not _IMAGE.match(value):
            raise ValueError(f"{value!r} is not a container image reference (for example {DEFAULT_IMAGE})")
        return value

    @field_validator("probe_port", "local_port", "proxy_port")
    @classmethod
    def _ports(cls, value: int) -> int:
        return _port(value)

    @model_validator(mode="after")
    def _distinct_ports(self) -> SidecarConfig:
        ports = {"probePort": self.probe_port, "localPort": self.local_port, "proxyPort": self.proxy_port}
        seen: dict[int, str] = {}
        for key, port in ports.items():
            if port in seen:
                raise ValueError(f"{seen[port]} and {key} are both {port}; accepted: different ports")
            seen[port] = key
        return self


class SpiffeConfig(_Model):
    """Where the sidecar finds the SPIFFE Workload API."""

    socket_source: Literal["csi", "hostPath"] = "csi"
    host_path: str = "/run/spire/agent-sockets"
    """Node directory holding the agent socket; used only when socketSource is hostPath."""
    socket_file: str = "spire-agent.sock"
    trust_domain: str = "cluster.local"

    @field_validator("host_path")
    @classmethod
    def _host_path(cls, value: str) -> str:
        return _absolute_path(value)

    @field_validator("socket_file")
    @classmethod
    def _socket_file(cls, value: str) -> str:
        if not value or "/" in value or value in (".", ".."):
            raise ValueError(f"{value!r} is not a file name (for example spire-agent.sock)")
        return value

    @field_validator("trust_domain")
    @classmethod
    def _trust_domain(cls, value: str) -> str:
        if not _TRUST_DOMAIN.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a SPIFFE trust domain (lowercase letters, digits, '.', '-', '_')"
            )
        return value


class BrokerConfig(_Model):
    """How the sidecar reaches the broker, and whom it expects to find there."""

    url: str = "https://taskcreds-broker.taskcreds-system.svc:8444"
    spiffe_id: str = "spiffe://cluster.local/ns/taskcreds-system/sa/taskcreds-operator"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            parts = None
        if parts is None or parts.scheme != "https" or not parts.hostname:
            raise ValueError(
                f"{value!r} is not an https:// URL (for example "
                "https://taskcreds-broker.taskcreds-system.svc:8444)"
            )
        return value

    @field_validator("spiffe_id")
    @classmethod
    def _spiffe_id(cls, value: str) -> str:
        parts = urlsplit(value)
        if (
            parts.scheme != "spiffe"
            or not _TRUST_DOMAIN.fullmatch(parts.netloc or "-/")
            or not parts.path.startswith("/")
            or parts.query
            or parts.fragment
        ):
            raise ValueError(f"{value!r} is not a SPIFFE ID (spiffe://<trust domain>/<path>)")
        return value


class InjectionSettings(_Model):
    """What the webhook puts into the pod beyond the sidecar itself."""

    mount_path: str = names.DEFAULT_MOUNT_PATH
    """Default for pods without taskcreds.io/mount-path."""
    tmpfs_size_limit: Quantity = "1Mi"
    strict: bool = False
    """Deny (instead of warn about) static secrets in the agent containers' environment."""
    default_ttl: str = Field("15m", alias="defaultTTL")
    """Credential lifetime when neither the pod's ttl annotation nor the source's defaultTTL sets one."""
    token_expiration_seconds: int = 3600
    """Lifetime of the sidecar's projected service-account token (the kubelet rotates it)."""

    @field_validator("mount_path")
    @classmethod
    def _mount_path(cls, value: str) -> str:
        return _absolute_path(value)

    @field_validator("tmpfs_size_limit", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        try:
            if parse_quantity(value) <= 0:
                raise QuantityError(f"{value!r} must be larger than zero")
        except QuantityError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("default_ttl")
    @classmethod
    def _ttl(cls, value: str) -> str:
        try:
            parse_duration(value)
        except DurationError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("token_expiration_seconds")
    @classmethod
    def _token_expiration(cls, value: int) -> int:
        if not 600 <= value <= 2**32 - 1:
            raise ValueError(
                f"{value!r} is outside 600..4294967295 (Kubernetes' bounds for a projected token)"
            )
        return value

    @cached_property
    def default_ttl_seconds(self) -> float:
        return parse_duration(self.default_ttl)


_DEFAULT_PORTS = {"https": 443, "http": 80}
#: a lower-case DNS name (labels of 1-63 characters)
_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
)
ADDRESS_PATTERN_ACCEPTED = (
    "'*' (any address), or scheme://host[:port] with scheme https or http, host a DNS name, "
    "'*.' followed by one (any name below it), or an IP address, and port a number or '*' "
    "(default: the scheme's own, 443 or 80); no path, user name or query"
)


def _normal_host(host: str) -> str:
    return host.lower().rstrip(".")


@dataclass(frozen=True)
class AddressPattern:
    """One entry of ``sources.allowedAddresses``: which server addresses a namespaced CredentialSource
    may make the operator call (``https://vault.example.com:8200``, ``https://*.corp.example``)."""

    scheme: str | None  # None: any
    host: str | None  # None: any; "*.suffix": any name below suffix; else exact (lower case)
    port: int | None  # None: any

    @classmethod
    def parse(cls, text: str) -> AddressPattern:
        """``text`` as a pattern; ValueError naming it and what is accepted."""
        bad = ValueError(f"{text!r} is not an address pattern; accepted: {ADDRESS_PATTERN_ACCEPTED}")
        if text == "*":
            return cls(None, None, None)
        scheme, sep, rest = text.partition("://")
        if not sep or scheme not in _DEFAULT_PORTS or not rest or any(c in rest for c in "/?#@ "):
            raise bad
        if rest.startswith("["):  # [v6]:port
            host, close, tail = rest[1:].partition("]")
            if not close or (tail and not tail.startswith(":")):
                raise bad
            port_text = tail[1:] if tail else None
        else:
            host, colon, port_text_raw = rest.partition(":")
            port_text = port_text_raw if colon else None
        host = _normal_host(host)
        wildcard = host.startswith("*.")
        name = host[2:] if wildcard else host
        try:
            ipaddress.ip_address(name)
            is_ip = True
        except ValueError:
            is_ip = False
        if not (is_ip and not wildcard) and not (_DNS_NAME.fullmatch(name) and (not wildcard or "." in name)):
            raise bad
        if port_text is None:
            port: int | None = _DEFAULT_PORTS[scheme]
        elif port_text == "*":
            port = None
        elif port_text.isdigit() and 1 <= int(port_text) <= 65535:
            port = int(port_text)
        else:
            raise bad
        return cls(scheme, host, port)

    def matches(self, scheme: str, host: str, port: int | None) -> bool:
        """Whether an address (its scheme, host and port; port None: the scheme's default) fits."""
        port = port if port is not None else _DEFAULT_PORTS.get(scheme)
        host = _normal_host(host)
        if self.scheme is not None and scheme != self.scheme:
            return False
        if self.port is not None and port != self.port:
            return False
        if self.host is None:
            return True
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        try:  # an IP written two ways (::1 and 0:0::1) is the same address
            return ipaddress.ip_address(host) == ipaddress.ip_address(self.host)
        except ValueError:
            return host == self.host


def _address_pattern(text: str) -> str:
    AddressPattern.parse(text)  # ValueError: the entry is named by its index
    return text


class SourcesConfig(_Model):
    """What a namespaced CredentialSource may make the operator reach (ClusterCredentialSources are
    cluster-admin's: not limited by this). See docs/install.md, "what a namespace may do"."""

    allowed_addresses: tuple[Annotated[str, AfterValidator(_address_pattern)], ...] = ("*",)
    """Patterns (:class:`AddressPattern`) for ``spec.vault.address`` and ``spec.githubApp.apiURL`` of
    namespaced sources; ``["*"]`` (default) allows any, ``[]`` none."""

    @cached_property
    def patterns(self) -> tuple[AddressPattern, ...]:
        return tuple(AddressPattern.parse(text) for text in self.allowed_addresses)

    def address_allowed(self, scheme: str, host: str, port: int | None) -> bool:
        """Whether some pattern lets a namespaced source use this address."""
        return any(p.matches(scheme, host, port) for p in self.patterns)


class InjectionConfig(_Model):
    """The whole injection configuration (the chart's ConfigMap)."""

    sidecar: SidecarConfig = Field(default_factory=SidecarConfig)
    spiffe: SpiffeConfig = Field(default_factory=SpiffeConfig)
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    injection: InjectionSettings = Field(default_factory=lambda: InjectionSettings())  # type: ignore[call-arg]  # aliased default; no pydantic mypy plugin
    sources: SourcesConfig = Field(default_factory=SourcesConfig)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, source: str | None = None) -> InjectionConfig:
        """Validate parsed YAML; raises ConfigError with one line per problem."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(
                [
                    f"the configuration is a {type(data).__name__}; accepted: a mapping with "
                    "keys sidecar, spiffe, broker, injection, sources"
                ],
                source,
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError([_describe(err) for err in exc.errors()], source) from None


def _model_at(loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, Any]:
    """The model class holding the last key of ``loc``, and that field's annotation (or None)."""
    model: Any = InjectionConfig
    annotation: Any = None
    for i, key in enumerate(loc):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None, None
        field = next((f for n, f in model.model_fields.items() if key in (n, f.alias)), None)
        if field is None:
            return (model, None) if i == len(loc) - 1 else (None, None)
        annotation = field.annotation
        if i < len(loc) - 1:
            model = annotation
    return model, annotation


def _describe(err: Any) -> str:
    """One pydantic error -> ``dotted.key: 'value' is not <accepted>``."""
    loc = tuple(err["loc"])
    where = ".".join(str(p) for p in loc) or "(top level)"
    value = err.get("input")
    kind = err["type"]
    if kind == "extra_forbidden":
        model, _ = _model_at(loc)
        keys = ", ".join(f.alias or n for n, f in model.model_fields.items()) if model else "?"
        return f"{where}: unknown key; accepted keys here: {keys}"
    if kind == "literal_error":
        _, annotation = _model_at(loc)
        choices = ", ".join(str(c) for c in get_args(annotation)) or err["ctx"]["expected"]
        return f"{where}: {value!r} is not one of {choices}"
    if kind == "value_error":
        return f"{where}: {err['ctx']['error']}"
    if kind == "model_type" or kind == "dict_type":
        return f"{where}: {value!r} is not a mapping"
    if kind.startswith(("int_", "bool_", "string_")):
        wanted = {"int": "a whole number", "bool": "true or false", "string": "a string"}[kind.split("_")[0]]
        return f"{where}: {value!r} is not {wanted}"
    return f"{where}: {value!r}: {err['msg']}"


def load_config(path: str | None) -> InjectionConfig:
    """Read the injection config YAML at ``path`` (None: the built-in defaults)."""
    if path is None:
        return InjectionConfig()
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError([f"cannot read the injection config: {exc.strerror or exc}"], path) from None
    except UnicodeDecodeError:
        raise ConfigError(["the injection config is not UTF-8 text"], path) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError([f"not valid YAML{at}: {problem}"], path) from None
    return InjectionConfig.from_mapping(data, path)


def config_from_env(environ: Mapping[str, str]) -> InjectionConfig:
    """The operator's config: the file named by TASKCREDS_CONFIG if set, else the defaults."""
    return load_config(environ.get(names.ENV_CONFIG_FILE) or None)
