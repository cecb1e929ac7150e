"""CredentialSources: parse a (Cluster)CredentialSource into a typed view, resolve a name for a pod,
and read the Secrets a source refers to.

Resolution order (CONTRACT.md section 1): the pod namespace's ``CredentialSource`` first, then the
``ClusterCredentialSource`` of that name. Secrets of a namespaced source live in its namespace;
those of a cluster source in the operator's namespace, unless the ref names one.

:func:`parse_source` is pure; :func:`resolve_source` and :func:`read_secret_value` are the thin
I/O shells over :class:`~taskcreds.operator.cluster.Cluster`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from taskcreds.operator.cluster import Cluster
from taskcreds.operator.config import SourcesConfig
from taskcreds.operator.providers.base import ProviderError

from taskcreds import names
from taskcreds.durations import DurationError, parse_duration

__all__ = [
    "Source",
    "SourceError",
    "ProxySettings",
    "parse_proxy",
    "parse_source",
    "resolve_source",
    "source_from_ref",
    "read_secret_value",
    "secret_namespace",
    "default_files",
    "tenant_refusal",
    "provider_refusal",
    "vault_policy_refusal",
    "configure_tenant_rules",
    "tenant_rules",
    "GITHUB_DEFAULT_API_URL",
    "jwt_audiences",
    "TENANT_VAULT_AUTH_METHODS",
    "PROVIDER_BLOCKS",
    "DEFAULT_DEFAULT_TTL",
]

#: provider name -> the spec key holding its settings
PROVIDER_BLOCKS: Final = {
    "jwt": "jwt",
    "vault": "vault",
    "github-app": "githubApp",
    "kubernetes-token": "kubernetesToken",
    "secret": "secret",
}
DEFAULT_DEFAULT_TTL: Final = 900.0  # 15m, when a source names no defaultTTL
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: a lower-case DNS name (labels of 1-63 characters); a proxy host is one, or ``*.`` + one with a dot
_DNS = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token
_AUTHORITY = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")  # host[:port], no userinfo
#: headers the sidecar's proxy manages itself: a credential can never ride in them
_MANAGED_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate", "te",
     "trailer", "transfer-encoding", "upgrade", "host", "content-length"}
)
MAX_PROXY_HOSTS: Final = 64
#: ``spec.vault.auth.method`` values a namespaced CredentialSource may use: both log in with a
#: credential from a Secret of the source's own namespace. ``kubernetes`` logs in as the operator
#: itself (its own service-account token): only a ClusterCredentialSource may use it.
TENANT_VAULT_AUTH_METHODS: Final = ("token", "approle")
#: ``spec.githubApp.apiURL`` when a source names none (the github-app provider uses this one)
GITHUB_DEFAULT_API_URL: Final = "https://api.github.com"
#: the operator's ``sources`` settings (config file, chart values ``sources``), see configure_tenant_rules
_tenant_rules = SourcesConfig()


def configure_tenant_rules(rules: SourcesConfig) -> None:
    """Install the operator's ``sources`` settings (``allowedAddresses``) for :func:`tenant_refusal`.

    Process-wide, because every reader of a source (broker, admission index, revocation, the
    providers' own checks) must apply the same rules; the operator calls this once at start.
    """
    global _tenant_rules
    _tenant_rules = rules


def tenant_rules() -> SourcesConfig:
    """The ``sources`` settings :func:`tenant_refusal` applies now."""
    return _tenant_rules


class SourceError(ValueError):
    """A CredentialSource whose spec cannot be used; names the source, the field and what is accepted."""


@dataclass(frozen=True)
class ProxySettings:
    """``spec.proxy`` of a source with ``delivery: proxy``: where and how the sidecar attaches it.

    Non-secret (hosts and a header template, never a value): it travels in the broker's answer.
    Exactly one of ``header`` and ``basic_username`` is set.
    """

    hosts: tuple[str, ...]
    header: str | None = None
    basic_username: str | None = None
    allow_http: bool = False

    def to_json(self) -> dict[str, Any]:
        """The ``proxy`` block of a credential object in the broker's answer (docs/broker-api.md)."""
        return {
            "hosts": list(self.hosts),
            "header": self.header,
            "basicUsername": self.basic_username,
            "allowHttp": self.allow_http,
        }


@dataclass(frozen=True)
class Source:
    """A resolved CredentialSource or ClusterCredentialSource (non-secret: safe to log)."""

    kind: str  # names.KIND_CREDENTIAL_SOURCE | names.KIND_CLUSTER_CREDENTIAL_SOURCE
    name: str
    namespace: str | None  # None for a ClusterCredentialSource
    provider: str
    default_ttl: float
    max_ttl: float
    allowed_service_accounts: tuple[str, ...]
    allowed_namespaces: tuple[str, ...] | None  # cluster sources only
    files: tuple[str, ...]
    delivery: str
    spec: dict[str, Any] = field(repr=False, compare=False)
    proxy: ProxySettings | None = None
    """Set exactly when ``delivery`` is ``proxy``."""

    @property
    def ref(self) -> dict[str, str]:
        """What a TaskLease records to find this source again at revocation."""
        out = {"kind": self.kind, "name": self.name}
        if self.namespace is not None:
            out["namespace"] = self.namespace
        return out


def default_files(provider: str, spec: dict[str, Any]) -> tuple[str, ...]:
    """The files a provider writes when ``spec.files`` is absent (agreed per provider)."""
    if provider == "vault" and (spec.get("vault") or {}).get("mode") == "dynamic":
        return tuple((spec["vault"].get("fileMap") or {}).values()) or ("token",)
    if provider == "secret":
        ref = (spec.get("secret") or {}).get("secretRef") or {}
        return (str(ref.get("key") or "token"),)
    return ("token",)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _address_refusal(field_name: str, address: Any, cluster_may: str) -> str | None:
    """Why a namespaced source may not make the operator call ``address`` (None: it may).

    https:// only (plain http:// to loopback only: a local dev server), no user info, and within the
    operator's ``sources.allowedAddresses``. ``cluster_may`` tells the reader what a
    ClusterCredentialSource may do instead.
    """
    if not isinstance(address, str):
        return None  # the provider's own check names what is wrong with it
    try:
        parts = urlsplit(address)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return f"{field_name} {address!r} is not a URL"
    if "@" in parts.netloc:
        return f"{field_name} {address!r}: a user name or password in the address is not accepted"
    odd = any(c == "\\" or not c.isprintable() or c.isspace() for c in address)
    if parts.scheme in ("https", "http") and parts.netloc and (odd or not _AUTHORITY.fullmatch(parts.netloc)):
        # Python's urlsplit and the HTTP clients (urllib3 for hvac) must find the same host: a '\'
        # ends the host for urllib3 but not for urlsplit, so "https://evil.example\.corp.example"
        # passed a "*.corp.example" allow-list check and was sent to evil.example
        return (
            f"{field_name} {address!r}: the host part may hold only letters, digits, '-', '.', an "
            "[IPv6] literal and a :port (no '\\', '%', spaces or control characters)"
        )
    if parts.scheme == "http" and not _is_loopback(host):
        return (
            f"{field_name} {address!r}: a CredentialSource must use https:// (plain http:// only to "
            f"a loopback address such as http://127.0.0.1:8200, for local development; {cluster_may})"
        )
    if parts.scheme not in ("https", "http") or not host:
        return None  # the provider names what it accepts
    if not _tenant_rules.address_allowed(parts.scheme, host, port):
        allowed = ", ".join(_tenant_rules.allowed_addresses) or "none"
        return (
            f"{field_name} {address!r} is not among the addresses this operator lets a CredentialSource "
            f"use (its sources.allowedAddresses: {allowed}); use one of those, or ask the cluster "
            "admin for a ClusterCredentialSource"
        )
    return None


def _vault_refusal(vault: Mapping[str, Any]) -> str | None:
    """Why a namespaced source's ``spec.vault`` would borrow the operator's identity (None: it does not)."""
    auth = vault.get("auth")
    method = auth.get("method", "token") if isinstance(auth, Mapping) else "token"
    if method not in TENANT_VAULT_AUTH_METHODS:
        return (
            f"spec.vault.auth.method {method!r} is not accepted in a CredentialSource: "
            + ("it logs in to Vault as the operator itself (its own service-account token), so only a "
               "ClusterCredentialSource may use it; " if method == "kubernetes" else "")
            + "a CredentialSource must use method token (tokenSecretRef) or approle (secretIdSecretRef) "
            "with a Secret of its own namespace"
        )
    return _address_refusal(
        "spec.vault.address", vault.get("address"), "a ClusterCredentialSource may use http://"
    )


def _github_refusal(app: Mapping[str, Any]) -> str | None:
    """Why a namespaced source's ``spec.githubApp.apiURL`` may not be called (None: it may)."""
    return _address_refusal(
        "spec.githubApp.apiURL",
        app.get("apiURL") or GITHUB_DEFAULT_API_URL,
        "a ClusterCredentialSource may use http://, for example for a GitHub Enterprise test server",
    )


def _kubernetes_token_refusal(namespace: str) -> str:
    return (
        "spec.provider 'kubernetes-token' is not accepted in a CredentialSource: it would mint a token "
        "for any service account of namespace "
        f"{namespace!r} (spec.kubernetesToken.serviceAccount) with the operator's TokenRequest rights, "
        "which writing a CredentialSource does not give; only a ClusterCredentialSource may use it "
        "(the cluster admin names the namespaces in allowedNamespaces)"
    )


def jwt_audiences(spec: Mapping[str, Any], name: str, namespace: str | None) -> list[str]:
    """The ``aud`` values a jwt source mints: ``spec.jwt.audience``, else ``<namespace>/<name>`` for a
    CredentialSource and ``<name>`` for a ClusterCredentialSource. Unchecked (see :func:`tenant_refusal`)."""
    block = spec.get("jwt")
    raw = block.get("audience") if isinstance(block, Mapping) else None
    if raw is None or raw == []:
        return [f"{namespace}/{name}" if namespace is not None else name]
    return [raw] if isinstance(raw, str) else list(raw) if isinstance(raw, list) else [raw]


def _jwt_refusal(spec: Mapping[str, Any], name: str, namespace: str) -> str | None:
    prefix = f"{namespace}/"
    for audience in jwt_audiences(spec, name, namespace):
        if not isinstance(audience, str) or not audience.startswith(prefix) or audience == prefix:
            return (
                f"spec.jwt.audience {audience!r}: a CredentialSource in namespace {namespace!r} may only "
                f"mint audiences that start with {prefix!r} (for example '{prefix}{name}'), so its tokens "
                "are never accepted by a relying party of a ClusterCredentialSource or of another "
                "namespace; use a ClusterCredentialSource for any other audience"
            )
    return None


def tenant_refusal(provider: str, spec: Mapping[str, Any], name: str, namespace: str | None) -> str | None:
    """Why a namespaced CredentialSource may not be used as written (None: it may), checked before any
    network call: it must not borrow the operator's identity or the cluster's authority.

    A tenant who can write a CredentialSource in its namespace is not trusted with the operator's
    credentials: a ``vault`` source may not log in with the operator's service-account token
    (``auth.method: kubernetes``); ``vault.address`` and ``githubApp.apiURL`` must be https://
    (http:// to loopback only) and within the operator's ``sources.allowedAddresses``; a ``jwt``
    source's audiences must start with ``<namespace>/`` (the operator signs every JWT with one key);
    ``kubernetes-token`` (TokenRequest with the operator's rights) is refused. A
    ClusterCredentialSource (cluster-admin) is not limited by this; None for one.
    """
    if namespace is None:
        return None
    if provider == "kubernetes-token":
        return _kubernetes_token_refusal(namespace)
    if provider == "vault" and isinstance(spec.get("vault"), Mapping):
        return _vault_refusal(spec["vault"])
    if provider == "github-app" and isinstance(spec.get("githubApp"), Mapping):
        return _github_refusal(spec["githubApp"])
    if provider == "jwt":
        return _jwt_refusal(spec, name, namespace)
    return None


#: why a token-mode vault source may not list Vault's ``default`` policy (admission and issue say it)
VAULT_DEFAULT_POLICY_REFUSAL: Final = (
    "spec.vault.policies may not contain 'default': Vault's default policy allows "
    "auth/token/renew-self, so the agent could keep its task token alive past the expiry "
    "the broker records; grant what the task needs (e.g. read on auth/token/lookup-self) "
    "in a policy of your own"
)


def vault_policy_refusal(spec: Mapping[str, Any]) -> str | None:
    """Why a ``vault`` source in token mode may not issue with its ``policies`` (None: it may).

    Vault's ``default`` policy grants ``auth/token/renew-self``: a task token carrying it could be
    kept alive by the agent itself up to ``maxTTL``, past the expiry the broker records (and past a
    revocation that failed until then). Pure; the vault provider refuses the same at issue.
    """
    vault = spec.get("vault")
    if not isinstance(vault, Mapping) or vault.get("mode", "token") != "token":
        return None
    policies = vault.get("policies")
    if not isinstance(policies, list) or "default" not in policies:
        return None  # the provider names what is wrong with a malformed list
    return VAULT_DEFAULT_POLICY_REFUSAL


def provider_refusal(provider: str, spec: Mapping[str, Any], name: str, namespace: str | None) -> str | None:
    """Why the provider would refuse to issue from this source as written (None: it would not).

    Checked when the source is read, so admission denies the pod and the broker answers 403
    policy_denied, instead of admitting a pod whose every issue is a 502 the sidecar retries
    forever. Binds both kinds (a cluster admin's source too). ``github-app``: the provider's own
    pure :func:`~taskcreds.operator.providers.github_app.parse_settings` (``repositories`` or
    ``allRepositories: true``, non-empty ``permissions``, its other field checks). ``vault`` token
    mode: :func:`vault_policy_refusal`. The answer does not repeat the source's name.
    """
    if provider == "vault":
        return vault_policy_refusal(spec)
    if provider != "github-app":
        return None
    # imported here: the provider imports this module (tenant_refusal)
    from taskcreds.operator.providers import github_app

    try:
        github_app.parse_settings(spec, namespace, source_name=name)
    except ProviderError as exc:
        label = f"CredentialSource {namespace}/{name}" if namespace else f"ClusterCredentialSource {name}"
        return str(exc).removeprefix(f"{exc.provider}: ").removeprefix(f"{label}: ")
    return None


def _ttl(where: str, spec: dict[str, Any], key: str, default: float | None) -> float:
    raw = spec.get(key)
    if raw is None:
        if default is None:
            raise SourceError(f"{where}: spec.{key} is required: a Go-style duration such as 1h")
        return default
    try:
        return parse_duration(str(raw))
    except DurationError as exc:
        raise SourceError(f"{where}: spec.{key}: {exc}") from None


def _names(where: str, spec: dict[str, Any], key: str, *, required: bool) -> tuple[str, ...] | None:
    raw = spec.get(key)
    if raw is None:
        if required:
            raise SourceError(f"{where}: spec.{key} is required: a list of names (no wildcard)")
        return None
    if not isinstance(raw, list) or not all(isinstance(v, str) and _NAME.fullmatch(v) for v in raw):
        raise SourceError(
            f"{where}: spec.{key} must be a list of Kubernetes names (no wildcard), got {raw!r}"
        )
    return tuple(raw)


def parse_source(obj: dict[str, Any], *, issue_rules: bool = True) -> Source:
    """Check and type a CredentialSource object as the API returns it (pure).

    ``issue_rules=False`` skips the rules that guard issuing, :func:`tenant_refusal` and
    :func:`provider_refusal` (every other check stays): only for revoking a lease issued before
    those rules existed, where the caller decides what is safe (``leases._revoke_entry``): a rule
    added later must never leave a live credential unrevoked. Admission, issue and renew apply them.
    """
    meta = obj.get("metadata") or {}
    kind = obj.get("kind") or names.KIND_CREDENTIAL_SOURCE
    cluster = kind == names.KIND_CLUSTER_CREDENTIAL_SOURCE
    namespace = None if cluster else meta.get("namespace")
    where = f"{kind} {(namespace + '/') if namespace else ''}{meta.get('name')}"
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise SourceError(f"{where}: has no spec")
    if not cluster and not namespace:
        # never read as cluster-scoped: that would skip the tenant rules below
        raise SourceError(f"{where}: a {kind} needs metadata.namespace")
    provider = spec.get("provider")
    if provider not in PROVIDER_BLOCKS:
        raise SourceError(f"{where}: spec.provider {provider!r} is not one of {', '.join(PROVIDER_BLOCKS)}")
    block = PROVIDER_BLOCKS[provider]
    if provider != "jwt" and not isinstance(spec.get(block), dict):
        raise SourceError(f"{where}: provider {provider} needs spec.{block}")
    if issue_rules:
        name = str(meta.get("name"))
        refusal = tenant_refusal(provider, spec, name, namespace) or provider_refusal(
            provider, spec, name, namespace
        )
        if refusal:
            raise SourceError(f"{where}: {refusal}")
    max_ttl = _ttl(where, spec, "maxTTL", None)
    default_ttl = _ttl(where, spec, "defaultTTL", min(DEFAULT_DEFAULT_TTL, max_ttl))
    if default_ttl > max_ttl:
        raise SourceError(
            f"{where}: spec.defaultTTL {spec.get('defaultTTL')} is above spec.maxTTL {spec.get('maxTTL')}"
        )
    allowed_sa = _names(where, spec, "allowedServiceAccounts", required=True)
    allowed_ns = _names(where, spec, "allowedNamespaces", required=cluster) if cluster else None
    files = spec.get("files")
    if files is None:
        files_t = default_files(provider, spec)
    elif (
        isinstance(files, list)
        and files
        and all(isinstance(f, str) and _FILE.fullmatch(f) for f in files)
        and len(set(files)) == len(files)
    ):
        files_t = tuple(files)
    else:
        raise SourceError(
            f"{where}: spec.files must be a non-empty list of distinct file names "
            f"(letters, digits, '.', '_', '-'), got {files!r}"
        )
    delivery = spec.get("delivery") or "file"
    if delivery not in ("file", "proxy"):
        raise SourceError(f"{where}: spec.delivery {delivery!r} is not one of file, proxy")
    proxy = parse_proxy(where, spec.get("proxy"), delivery=delivery, files=files_t)
    return Source(
        kind=kind,
        name=str(meta.get("name")),
        namespace=namespace,
        provider=provider,
        default_ttl=default_ttl,
        max_ttl=max_ttl,
        allowed_service_accounts=allowed_sa or (),
        allowed_namespaces=allowed_ns,
        files=files_t,
        delivery=delivery,
        spec=spec,
        proxy=proxy,
    )


def _proxy_host(where: str, index: int, raw: Any) -> str:
    field_name = f"{where}: spec.proxy.hosts[{index}]"
    if not isinstance(raw, str):
        raise SourceError(f"{field_name} must be a string, got {type(raw).__name__}")
    host = raw.strip().lower().rstrip(".")
    wildcard = host.startswith("*.")
    name = host[2:] if wildcard else host
    if not _DNS.fullmatch(name):
        raise SourceError(
            f"{field_name} {raw!r} is not a host name: expected an exact DNS name (api.github.com) "
            "or '*.' followed by one (*.githubusercontent.com)"
        )
    if wildcard and "." not in name:
        raise SourceError(
            f"{field_name} {raw!r} would match a whole top-level domain; use at least '*.example.com'"
        )
    return host


def _proxy_header(where: str, header: Any, files: tuple[str, ...]) -> str:
    field_name = f"{where}: spec.proxy.header"
    if not isinstance(header, str):
        raise SourceError(f"{field_name} must be a string such as 'Authorization: Bearer {{token}}'")
    name, sep, template = header.partition(":")
    name, template = name.strip(), template.strip()
    if not sep or not _HEADER_NAME.fullmatch(name) or any(c in header for c in "\r\n\0"):
        raise SourceError(
            f"{field_name} {header!r} must look like 'Name: value with {{token}}' on one line"
        )
    if name.lower() in _MANAGED_HEADERS:
        raise SourceError(
            f"{field_name}: header {name!r} is managed by the proxy and cannot carry a credential"
        )
    placeholders: list[str] = []
    try:
        for _literal, placeholder, spec, conversion in string.Formatter().parse(template):
            if placeholder is None:
                continue
            if spec or conversion or not _FILE.fullmatch(placeholder):
                raise SourceError(
                    f"{field_name}: placeholder {{{placeholder}}} must be a plain file name such as {{token}}"
                )
            placeholders.append(placeholder)
    except ValueError as exc:
        raise SourceError(
            f"{field_name} {header!r} is malformed ({exc}); write literal braces as '{{{{' and '}}}}'"
        ) from None
    if not placeholders:
        raise SourceError(f"{field_name} {header!r} has no placeholder; put the credential in with {{token}}")
    unknown = [p for p in placeholders if p not in files]
    if unknown:
        raise SourceError(
            f"{field_name}: placeholder {{{unknown[0]}}} is not one of the source's files "
            f"({', '.join(files)})"
        )
    return f"{name}: {template}"


def parse_proxy(
    where: str, raw: Any, *, delivery: str, files: tuple[str, ...]
) -> ProxySettings | None:
    """Check ``spec.proxy`` against ``spec.delivery`` (pure); every error names the field."""
    if delivery != "proxy":
        if raw is not None:
            raise SourceError(
                f"{where}: spec.proxy is set but spec.delivery is {delivery!r}; "
                "set delivery: proxy, or remove spec.proxy"
            )
        return None
    if not isinstance(raw, dict):
        raise SourceError(
            f"{where}: spec.proxy is required when spec.delivery is proxy: "
            "{hosts: [api.example.com], header: 'Authorization: Bearer {token}'} or basic: {username: ...}"
        )
    unknown = sorted(set(raw) - {"hosts", "header", "basic", "allowHttp"})
    if unknown:
        raise SourceError(
            f"{where}: spec.proxy.{unknown[0]} is not a field; expected hosts, header, basic, allowHttp"
        )
    hosts_raw = raw.get("hosts")
    if not isinstance(hosts_raw, list) or not hosts_raw:
        raise SourceError(
            f"{where}: spec.proxy.hosts is required: a non-empty list of host names or '*.suffix' patterns"
        )
    if len(hosts_raw) > MAX_PROXY_HOSTS:
        raise SourceError(
            f"{where}: spec.proxy.hosts lists {len(hosts_raw)} hosts; at most {MAX_PROXY_HOSTS}"
        )
    hosts: list[str] = []
    for index, item in enumerate(hosts_raw):
        host = _proxy_host(where, index, item)
        if host not in hosts:
            hosts.append(host)
    has_header, has_basic = raw.get("header") is not None, raw.get("basic") is not None
    if has_header == has_basic:
        raise SourceError(
            f"{where}: spec.proxy needs exactly one of header (e.g. 'Authorization: Bearer {{token}}') "
            "and basic ({username: x-access-token}: HTTP Basic with the token as password)"
        )
    header = basic_username = None
    if has_header:
        header = _proxy_header(where, raw["header"], files)
    else:
        basic = raw["basic"]
        username = basic.get("username") if isinstance(basic, dict) else None
        if (
            not isinstance(username, str)
            or not username
            or ":" in username
            or any(c in username for c in "\r\n\0")
        ):
            raise SourceError(
                f"{where}: spec.proxy.basic.username must be a non-empty string without ':' or line breaks, "
                f"got {username!r}"
            )
        if "token" not in files:
            raise SourceError(
                f"{where}: spec.proxy.basic sends the file 'token' as the password, but spec.files is "
                f"({', '.join(files)}); add token or use spec.proxy.header"
            )
        basic_username = username
    allow_http = raw.get("allowHttp", False)
    if not isinstance(allow_http, bool):
        raise SourceError(f"{where}: spec.proxy.allowHttp must be true or false, got {allow_http!r}")
    return ProxySettings(tuple(hosts), header, basic_username, allow_http)


async def resolve_source(cluster: Cluster, namespace: str, name: str) -> Source | None:
    """The source a pod in ``namespace`` gets for credential ``name``: namespaced first, then cluster.

    None when neither exists; SourceError when the one found is unusable (never falls through to
    the cluster source then: a broken namespaced source must not silently widen to a cluster one).
    """
    obj = await cluster.get_credential_source(namespace, name)
    if obj is None:
        obj = await cluster.get_cluster_credential_source(name)
        if obj is None:
            return None
        obj = {**obj, "kind": names.KIND_CLUSTER_CREDENTIAL_SOURCE}
    else:
        obj = {
            **obj,
            "kind": names.KIND_CREDENTIAL_SOURCE,
            "metadata": {**(obj.get("metadata") or {}), "namespace": namespace},
        }
    return parse_source(obj)


async def source_from_ref(
    cluster: Cluster, ref: dict[str, Any], *, issue_rules: bool = True
) -> Source | None:
    """Find a source again from :attr:`Source.ref` (as recorded on a TaskLease).

    ``issue_rules=False``: see :func:`parse_source` (the revoke path of a lease issued earlier), for
    both kinds: the provider rules bind cluster sources too.
    """
    if ref.get("kind") == names.KIND_CLUSTER_CREDENTIAL_SOURCE:
        obj = await cluster.get_cluster_credential_source(str(ref.get("name")))
        if obj is None:
            return None
        return parse_source({**obj, "kind": names.KIND_CLUSTER_CREDENTIAL_SOURCE}, issue_rules=issue_rules)
    namespace = str(ref.get("namespace"))
    obj = await cluster.get_credential_source(namespace, str(ref.get("name")))
    if obj is None:
        return None
    return parse_source(
        {
            **obj,
            "kind": names.KIND_CREDENTIAL_SOURCE,
            "metadata": {**(obj.get("metadata") or {}), "namespace": namespace},
        },
        issue_rules=issue_rules,
    )


def secret_namespace(ref: dict[str, Any], source_namespace: str | None, operator_namespace: str) -> str:
    """Where a ``secretRef`` points: its own ``namespace``, else the source's, else the operator's.

    A namespaced CredentialSource may only name Secrets in its own namespace: the operator can read
    Secrets cluster-wide, so honouring another namespace would let any tenant who can write a
    CredentialSource read any Secret. Only a ClusterCredentialSource (cluster-admin) may point
    elsewhere.
    """
    wanted = ref.get("namespace")
    if source_namespace is not None and wanted and wanted != source_namespace:
        raise SourceError(
            f"secretRef {ref.get('name')!r} names namespace {wanted!r}, but a CredentialSource in "
            f"{source_namespace!r} may only use Secrets in its own namespace (use a ClusterCredentialSource)"
        )
    return str(wanted or source_namespace or operator_namespace)


async def read_secret_value(
    cluster: Cluster,
    ref: dict[str, Any] | None,
    *,
    source_namespace: str | None,
    operator_namespace: str,
    provider: str,
) -> bytes:
    """The bytes of ``ref.key`` in Secret ``ref.name``; ProviderError naming the Secret (never the value)."""
    if not isinstance(ref, dict) or not ref.get("name") or not ref.get("key"):
        raise ProviderError(provider, f"secretRef {ref!r} needs name and key", retryable=False)
    try:
        namespace = secret_namespace(ref, source_namespace, operator_namespace)
    except SourceError as exc:
        raise ProviderError(provider, str(exc), retryable=False) from None
    secret = await cluster.get_secret(namespace, str(ref["name"]))
    if secret is None:
        raise ProviderError(provider, f"Secret {namespace}/{ref['name']} not found")
    data = secret.get("data") or {}
    if ref["key"] not in data:
        raise ProviderError(
            provider,
            f"Secret {namespace}/{ref['name']} has no key {ref['key']!r} "
            f"(keys: {', '.join(sorted(data)) or 'none'})",
        )
    try:
        return base64.b64decode(data[ref["key"]], validate=True)
    except (binascii.Error, ValueError):
        raise ProviderError(
            provider, f"Secret {namespace}/{ref['name']} key {ref['key']!r} is not valid base64"
        ) from None
