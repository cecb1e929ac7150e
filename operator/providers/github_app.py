"""The ``github-app`` provider: GitHub App installation tokens scoped to a task's repositories.

The operator signs a short App JWT (RS256, ``iat`` backdated 60 s for clock skew, ``exp`` 9 min
later: a 10-minute window, GitHub's limit) with the App's private key from a Secret, and asks
``POST {apiURL}/app/installations/{installationId}/access_tokens`` for a token limited to
``repositories`` and ``permissions``.

Narrow by construction: GitHub answers a request without ``repositories`` or ``permissions`` with a
token for every repository and every permission of the installation, so a source must name its
repositories (or say ``allRepositories: true``) and at least one permission; :func:`parse_settings`
refuses it otherwise, before any network call (a source written before this rule fails closed).
Redirects are never followed: a 3xx from the API is an error naming the URL (a followed redirect
would send the request and its body to a host ``sources.allowedAddresses`` never allowed).

Lifetimes: GitHub installation tokens always live 1 hour; a shorter requested TTL cannot be asked
for. ``expiresAt`` here reports GitHub's real expiry; the broker cuts what it answers to the granted
TTL (``leases.cap_to_grant``, the real end kept as ``sourceExpiresAt``) and the sweep revokes the
token (``DELETE /installation/token``) then, as it does at task end.

Revocation needs the token itself, so the operator keeps ``lease_ref -> token`` **in memory only**
(never in a CR, an annotation or a log), in the replica that issued it. The TaskLease entry records
that replica (``target``: its pod's namespace, name, uid and a per-process id, see
:mod:`.replica`), and :meth:`revoke` on any replica decides from it:

- held here: ``DELETE /installation/token``;
- expired (the reference carries GitHub's expiry): :class:`TokenNotHeld`, "expired at <time>";
- issued by another replica whose pod still exists: :class:`~.base.HeldElsewhere` (retryable), so
  the TaskLease stays Revoking and the issuing replica revokes it (it settles entries it holds even
  while another replica holds the revocation claim, see ``leases.revoke_task``);
- the issuing pod is gone, or this pod's own process restarted since it issued: :class:`TokenNotHeld`
  saying which, and when the token expires.

The lease reference is ``ghs:<installation>:<sha256 prefix>:<expiry unix time>`` — non-secret, and
enough to say when an unheld token dies.

Renewing always issues a new token and revokes the old one (``renewable`` is false; the reference
changes): a renewal that answered the held token again would hand out a value the sweep or
another replica had just revoked, or one GitHub itself revoked (secret scanning, an org admin),
and a copied token would keep working while the task renews. The broker's grant floor
(``leases.MIN_CAPPED_GRANT``) bounds how often a pod renews, so how often it mints. When another
replica holds the old one, the replacement says so (``superseded_live``): the broker marks the old
entry superseded and the holder's sweep revokes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from taskcreds.operator.cluster import Cluster
from taskcreds.operator.providers.base import (
    HeldElsewhere,
    Issued,
    IssueRequest,
    NotRevocable,
    ProviderError,
)
from taskcreds.operator.providers.replica import Replica, replica_from_env
from taskcreds.operator.providers.vault import SecretRef, parse_secret_ref, read_secret_ref
from taskcreds.operator.sources import GITHUB_DEFAULT_API_URL, tenant_refusal

from taskcreds.logs import fields

__all__ = [
    "GitHubAppProvider",
    "GitHubAppSettings",
    "TokenNotHeld",
    "parse_settings",
    "app_jwt",
    "lease_ref_for",
    "DEFAULT_API_URL",
    "TOKEN_LIFETIME_SECONDS",
]

log = logging.getLogger(__name__)

PROVIDER = "github-app"
DEFAULT_API_URL = GITHUB_DEFAULT_API_URL
TOKEN_LIFETIME_SECONDS = 3600  # GitHub's fixed installation-token lifetime
JWT_BACKDATE_SECONDS = 60
JWT_WINDOW_SECONDS = 600  # exp - iat; GitHub refuses more than 10 minutes
MAX_REPOSITORIES = 500  # GitHub's limit on ``repositories`` in one token request
_LEVELS = ("read", "write", "admin")
_HEADERS = {
    "Accept": "application/vnd.github+json",
    "X-GitHub-Api-Version": "2022-11-28",
    "User-Agent": "taskcreds",
}


class TokenNotHeld(NotRevocable):
    """No live operator process holds the token any more: it cannot be revoked early. ``why`` says
    which case (issuer gone, issuer restarted, expired, issuer unknown) for the TaskLease."""

    def __init__(self, lease_ref: str, expires_at: datetime | None, why: str) -> None:
        when = _rfc3339(expires_at) if expires_at else "within 1 h of its issue (GitHub's fixed lifetime)"
        text = why if why.startswith("expired") else f"{why}; expires at {when}"
        super().__init__(PROVIDER, text)
        self.lease_ref = lease_ref
        self.expires_at = expires_at


# --- the spec and the JWT (pure) ------------------------------------------------------------


@dataclass(frozen=True)
class GitHubAppSettings:
    """``spec.githubApp`` of a CredentialSource, checked."""

    api_url: str
    app_id: str
    installation_id: str
    key_ref: SecretRef
    repositories: tuple[str, ...] = ()
    permissions: tuple[tuple[str, str], ...] = ()
    token_file: str = "token"
    #: ``allRepositories: true``: the token reaches every repository of the installation (said, never implied)
    all_repositories: bool = False


def _bad(message: str) -> ProviderError:
    return ProviderError(PROVIDER, message, retryable=False)


def _source_label(source_name: str, source_namespace: str | None) -> str:
    """How an error names the source: ``CredentialSource agents/github``, ``ClusterCredentialSource gh``."""
    if source_namespace is not None:
        if source_name:
            return f"CredentialSource {source_namespace}/{source_name}"
        return f"CredentialSource in namespace {source_namespace!r}"
    return f"ClusterCredentialSource {source_name}" if source_name else "ClusterCredentialSource"


def parse_settings(
    spec: Mapping[str, Any], source_namespace: str | None = None, *, source_name: str = ""
) -> GitHubAppSettings:
    """Check a CredentialSource spec for github-app; errors name the field and what is accepted.

    ``source_namespace`` (a namespaced source) also applies the tenant rules
    (:func:`~taskcreds.operator.sources.tenant_refusal`: https:// only, within the operator's
    ``sources.allowedAddresses``), here too so that no path reaches the network with such a spec.
    A source must name its repositories (or say ``allRepositories: true``) and its permissions:
    left out, GitHub would mint installation-wide tokens. ``source_name`` names it in those errors.
    """
    app = spec.get("githubApp")
    if not isinstance(app, Mapping):
        raise _bad("spec.githubApp is missing: it needs appId, installationId and privateKeySecretRef")
    if source_namespace is not None:
        refusal = tenant_refusal(PROVIDER, spec, "", source_namespace)
        if refusal:
            raise _bad(f"CredentialSource in namespace {source_namespace!r}: {refusal}")
    api_url = app.get("apiURL") or DEFAULT_API_URL
    if not isinstance(api_url, str) or not api_url.startswith(("https://", "http://")):
        raise _bad(
            f"spec.githubApp.apiURL must be an https:// URL (default {DEFAULT_API_URL}), got {api_url!r}"
        )
    ids = {}
    for name in ("appId", "installationId"):
        value = app.get(name)
        if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip().isdigit():
            raise _bad(
                f'spec.githubApp.{name} must be a number (as a string, for example "12345"), got {value!r}'
            )
        ids[name] = str(value).strip()
    if "privateKeySecretRef" not in app:
        raise _bad(
            "spec.githubApp.privateKeySecretRef is required ({name, key} of the App's private key PEM)"
        )
    key_ref = parse_secret_ref(app["privateKeySecretRef"], "spec.githubApp.privateKeySecretRef", PROVIDER)
    where = _source_label(source_name, source_namespace)
    installation = ids["installationId"]
    repositories = app.get("repositories")
    if repositories is None:
        repositories = []
    if not isinstance(repositories, list) or not all(
        isinstance(r, str) and r and "/" not in r for r in repositories
    ):
        raise _bad(
            "spec.githubApp.repositories must be a list of repository names without the owner "
            "(for example [agent-target-repo])"
        )
    if len(repositories) > MAX_REPOSITORIES:
        raise _bad(
            f"{where}: spec.githubApp.repositories names {len(repositories)} repositories; GitHub accepts "
            f"at most {MAX_REPOSITORIES} in one token (say allRepositories: true for all of them)"
        )
    all_repositories = app.get("allRepositories", False)
    if not isinstance(all_repositories, bool):
        raise _bad(f"{where}: spec.githubApp.allRepositories must be true or false, got {all_repositories!r}")
    if not repositories and not all_repositories:
        raise _bad(
            f"{where}: spec.githubApp.repositories is missing or empty: name the repositories its tokens "
            f"may reach (names without the owner, for example repositories: [agent-target-repo]), or set "
            f"allRepositories: true to give every repository of installation {installation}"
        )
    if repositories and all_repositories:
        raise _bad(
            f"{where}: spec.githubApp sets both repositories and allRepositories: true; keep one "
            "(repositories to limit the token to them, allRepositories: true for every repository)"
        )
    permissions = app.get("permissions")
    if permissions is not None and not isinstance(permissions, Mapping):
        raise _bad("spec.githubApp.permissions must map permission names to read, write or admin")
    if not permissions:
        raise _bad(
            f"{where}: spec.githubApp.permissions is missing or empty: state what its tokens may do, as "
            f"permission: read, write or admin (for example permissions: {{contents: read}}); without it "
            f"GitHub grants every permission of installation {installation}"
        )
    for name, level in permissions.items():
        if not isinstance(name, str) or level not in _LEVELS:
            raise _bad(f"spec.githubApp.permissions.{name}: {level!r} is not one of {', '.join(_LEVELS)}")
    files = spec.get("files") or []
    token_file = files[0] if isinstance(files, list) and files and isinstance(files[0], str) else "token"
    return GitHubAppSettings(
        api_url=api_url.rstrip("/"),
        app_id=ids["appId"],
        installation_id=ids["installationId"],
        key_ref=key_ref,
        repositories=tuple(repositories),
        permissions=tuple(permissions.items()),
        token_file=token_file,
        all_repositories=all_repositories,
    )


def app_jwt(app_id: str, private_key: rsa.RSAPrivateKey, now: float) -> str:
    """The App's JWT: RS256, ``iss`` = app id, ``iat`` 60 s back, ``exp`` 10 minutes after ``iat``."""
    iat = int(now) - JWT_BACKDATE_SECONDS
    return jwt.encode(
        {"iat": iat, "exp": iat + JWT_WINDOW_SECONDS, "iss": app_id}, private_key, algorithm="RS256"
    )


def lease_ref_for(installation_id: str, token: str, expires_at: datetime) -> str:
    """``ghs:<installation>:<sha256 prefix of the token>:<expiry unix time>`` — nothing secret in it."""
    digest = hashlib.sha256(token.encode()).hexdigest()[:16]
    return f"ghs:{installation_id}:{digest}:{int(expires_at.timestamp())}"


def _expiry_of(lease_ref: str) -> datetime | None:
    parts = lease_ref.split(":")
    if len(parts) == 4 and parts[0] == "ghs" and parts[3].isdigit():
        return datetime.fromtimestamp(int(parts[3]), UTC)
    return None


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


# --- the provider ---------------------------------------------------------------------------


@dataclass
class _Held:
    token: str
    api_url: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"_Held(api_url={self.api_url!r}, expires_at={_rfc3339(self.expires_at)})"


class GitHubAppProvider:
    """GitHub App installation tokens; implements :class:`~.base.Provider`."""

    name = PROVIDER
    #: what GitHub issues whatever TTL was asked: the bound of an interrupted issue's pending entry
    min_lifetime_seconds = TOKEN_LIFETIME_SECONDS

    def __init__(
        self,
        cluster: Cluster,
        *,
        operator_namespace: str = "taskcreds-system",
        timeout: float = 10.0,
        replica: Replica | None = None,
    ) -> None:
        self._cluster = cluster
        self._operator_namespace = operator_namespace
        #: this process, recorded on every entry it issues (see the module doc)
        self.replica = replica or replica_from_env(operator_namespace)
        self._uid_looked_up = bool(self.replica.uid)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._keys: dict[str, rsa.RSAPrivateKey] = {}
        self._held: dict[str, _Held] = {}
        self._revoked: dict[str, datetime] = {}  # lease_ref -> expiry, so a second revoke is success

    # -- Provider -------------------------------------------------------------------------------

    async def issue(self, request: IssueRequest) -> Issued:
        """A new installation token limited to the spec's repositories and permissions (1 h at GitHub)."""
        settings = parse_settings(
            request.source_spec, request.source_namespace, source_name=request.credential
        )
        key = await self._private_key(settings, request.source_namespace)
        # permissions always; repositories unless the source said allRepositories: true (checked above)
        body: dict[str, Any] = {"permissions": dict(settings.permissions)}
        if not settings.all_repositories:
            body["repositories"] = list(settings.repositories)
        path = f"/app/installations/{settings.installation_id}/access_tokens"
        status, answer, headers = await self._request(
            "POST", settings.api_url, path, f"Bearer {app_jwt(settings.app_id, key, time.time())}", body
        )
        if status != 201:
            raise _issue_error(status, answer, headers, settings, path)
        token, expires_at = answer.get("token"), _parse_time(answer.get("expires_at"))
        if not isinstance(token, str) or not token or expires_at is None:
            raise ProviderError(
                PROVIDER,
                f"{settings.api_url}{path} answered 201 without token and expires_at",
                retryable=True,
            )
        lease_ref = lease_ref_for(settings.installation_id, token, expires_at)
        self._hold(lease_ref, _Held(token, settings.api_url, expires_at))
        replica = await self._me()
        log.info(
            "github-app token issued",
            extra=fields(
                provider=PROVIDER,
                credential=request.credential,
                task=request.task,
                namespace=request.namespace,
                pod=request.pod,
                lease_ref=lease_ref,
                expires_at=_rfc3339(expires_at),
                repositories="all" if settings.all_repositories else list(settings.repositories),
                requested_ttl_seconds=request.ttl_seconds,
            ),
        )
        return Issued(
            files={settings.token_file: token},
            lease_ref=lease_ref,
            issued_at=datetime.now(UTC).replace(microsecond=0),
            expires_at=expires_at,
            renewable=False,
            target=replica.target(),
        )

    async def renew(self, lease_ref: str, request: IssueRequest) -> Issued:
        """Issue a new token and revoke the old one; the lease reference changes (never the held
        token again: see the module doc).

        An old token this process does not hold (another replica issued it) is left to its holder:
        the replacement comes back with ``superseded_live`` so the broker records the old entry as
        superseded, never silently live.
        """
        replacement = await self.issue(request)
        if self._expired_unheld(lease_ref):
            # dead at GitHub already (its reference carries GitHub's expiry): nothing to revoke
            log.info(
                "github-app: the replaced token had expired; nothing to revoke",
                extra=fields(
                    provider=PROVIDER, credential=request.credential, task=request.task, lease_ref=lease_ref
                ),
            )
            return replacement
        if not self._settled_here(lease_ref):
            log.info(
                "github-app: the replaced token is held by another replica; recorded as superseded for it",
                extra=fields(
                    provider=PROVIDER, credential=request.credential, task=request.task, lease_ref=lease_ref
                ),
            )
            return dataclasses.replace(replacement, superseded_live=True)
        try:
            await self.revoke(lease_ref, request.source_spec, request.source_namespace)
        except ProviderError as exc:
            # keep the old lease the caller tracks and take back the new one, so nothing escapes revocation
            with contextlib.suppress(ProviderError):
                await self.revoke(replacement.lease_ref, request.source_spec, request.source_namespace)
            raise ProviderError(
                PROVIDER,
                f"renewing {lease_ref}: the old token could not be revoked ({exc}); try again",
                retryable=True,
            ) from None
        return replacement

    def holds(self, lease_ref: str, target: Mapping[str, str] | None = None) -> bool:
        """Whether this process is the one to settle ``lease_ref``: it holds the token, or the entry
        names this pod (a process of it that restarted: only this pod can tell it is gone)."""
        if lease_ref in self._held or lease_ref in self._revoked:
            return True
        issuer = Replica.from_target(target)
        return issuer is not None and issuer.same_pod(self.replica)

    async def revoke(
        self,
        lease_ref: str,
        source_spec: dict[str, Any],
        source_namespace: str | None,
        *,
        target: Mapping[str, str] | None = None,
    ) -> None:
        """``DELETE /installation/token`` with the held token; an already-dead token is success.

        Not held here: see the module doc (expired, held by a live replica, issuer gone/restarted).
        """
        held = self._held.get(lease_ref)
        if held is None:
            await self._not_held(lease_ref, target)
            return
        if held.expires_at > datetime.now(UTC):
            status, answer, headers = await self._request(
                "DELETE", held.api_url, "/installation/token", f"Bearer {held.token}", None
            )
            # 401: GitHub no longer knows the token (revoked or expired): what we wanted
            if status not in (204, 401):
                raise ProviderError(
                    PROVIDER,
                    f"revoking {lease_ref} at {held.api_url}/installation/token: "
                    f"HTTP {status} {_message(answer)}",
                    retryable=True,
                )
        self._held.pop(lease_ref, None)
        self._revoked[lease_ref] = held.expires_at
        log.info("github-app token revoked", extra=fields(provider=PROVIDER, lease_ref=lease_ref))

    def _expired_unheld(self, lease_ref: str) -> bool:
        """Not held by this process and past the expiry its reference carries: GitHub refuses it now."""
        if lease_ref in self._held:
            return False  # revoke() forgets it cleanly
        expires_at = _expiry_of(lease_ref)
        return expires_at is not None and expires_at <= datetime.now(UTC)

    def _settled_here(self, lease_ref: str) -> bool:
        """Held or revoked by this process, or expired: revoking it here needs nobody else."""
        expires_at = _expiry_of(lease_ref)
        return (
            lease_ref in self._held
            or lease_ref in self._revoked
            or (expires_at is not None and expires_at <= datetime.now(UTC))
        )

    async def _not_held(self, lease_ref: str, target: Mapping[str, str] | None) -> None:
        """A token this process does not hold: success, HeldElsewhere or TokenNotHeld (why)."""
        if lease_ref in self._revoked:
            return  # revoked by this process already
        expires_at = _expiry_of(lease_ref)
        if expires_at is not None and expires_at <= datetime.now(UTC):
            raise TokenNotHeld(
                lease_ref, expires_at, f"expired at {_rfc3339(expires_at)} before it was revoked"
            )
        issuer = Replica.from_target(target)
        if issuer is None:
            raise TokenNotHeld(
                lease_ref, expires_at, "token not held by this operator process (issuer not recorded)"
            )
        if issuer.same_process(self.replica):
            raise TokenNotHeld(
                lease_ref, expires_at, "token no longer held by the operator process that issued it"
            )
        if issuer.same_pod(self.replica):
            raise TokenNotHeld(
                lease_ref, expires_at, f"the operator process in {issuer} that issued it has restarted"
            )
        try:
            alive = await issuer.pod_alive(self._cluster)
        except Exception as exc:  # noqa: BLE001 - cannot tell: retry, never give up on a live token
            raise ProviderError(
                PROVIDER,
                f"token held by operator replica {issuer}; "
                f"cannot tell whether it runs ({type(exc).__name__})",
                retryable=True,
            ) from None
        if alive:
            raise HeldElsewhere(
                PROVIDER,
                f"token held by operator replica {issuer}, which revokes it (until it expires at "
                f"{_rfc3339(expires_at) if expires_at else 'its 1 h lifetime'})",
                holder=str(issuer),
            )
        raise TokenNotHeld(lease_ref, expires_at, f"the operator replica {issuer} that issued it is gone")

    async def aclose(self) -> None:
        """Close the HTTP session and forget every held token."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._held.clear()

    # -- helpers --------------------------------------------------------------------------------

    async def _me(self) -> Replica:
        """This replica, with its pod uid looked up once when the environment did not give it
        (a pod of the same name recreated later is then told apart); lookup errors leave it empty."""
        if not self._uid_looked_up:
            self._uid_looked_up = True
            try:
                pod = await self._cluster.get_pod(self.replica.namespace, self.replica.pod)
            except Exception:  # noqa: BLE001 - only a refinement of the record
                pod = None
            uid = ((pod or {}).get("metadata") or {}).get("uid")
            if uid:
                self.replica = dataclasses.replace(self.replica, uid=uid)
        return self.replica

    def _hold(self, lease_ref: str, held: _Held) -> None:
        now = datetime.now(UTC)
        for ref in [r for r, h in self._held.items() if h.expires_at <= now]:
            del self._held[ref]
        for ref in [r for r, expiry in self._revoked.items() if expiry <= now]:
            del self._revoked[ref]
        self._held[lease_ref] = held

    async def _private_key(
        self, settings: GitHubAppSettings, source_namespace: str | None
    ) -> rsa.RSAPrivateKey:
        """The App key from its Secret: read each time (rotation is picked up), parsed once per key."""
        pem = await read_secret_ref(
            self._cluster,
            settings.key_ref,
            source_namespace=source_namespace,
            operator_namespace=self._operator_namespace,
            provider=PROVIDER,
        )
        digest = hashlib.sha256(pem.encode()).hexdigest()
        key = self._keys.get(digest)
        if key is None:
            try:
                loaded = serialization.load_pem_private_key(pem.encode(), password=None)
            except (ValueError, TypeError):
                loaded = None
            if not isinstance(loaded, rsa.RSAPrivateKey):
                raise _bad(
                    f"Secret {settings.key_ref.name} key {settings.key_ref.key!r} does not hold an RSA "
                    "private key in PEM (the .pem file GitHub generates for the App)"
                )
            key = self._keys[digest] = loaded
        return key

    async def _request(
        self, method: str, api_url: str, path: str, authorization: str, body: dict[str, Any] | None
    ) -> tuple[int, dict[str, Any], Mapping[str, str]]:
        """One GitHub API call; a redirect is an error, never followed (see the module doc).

        A redirected issue is not retryable (the configuration is wrong); a redirected revoke is, so
        the TaskLease keeps trying until the token is revoked or has expired.
        """
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=_HEADERS)
        try:
            async with self._session.request(
                method,
                api_url + path,
                json=body,
                headers={"Authorization": authorization},
                allow_redirects=False,
            ) as response:
                if 300 <= response.status < 400:
                    # the Location is not quoted: a server may echo what it was sent into it
                    raise ProviderError(
                        PROVIDER,
                        f"{method} {api_url}{path}: HTTP {response.status} is a redirect, and redirects are "
                        "not followed: set spec.githubApp.apiURL to the address that serves the GitHub API "
                        "itself",
                        retryable=method != "POST",
                    )
                try:
                    answer = await response.json(content_type=None)
                except ValueError:
                    answer = {}
                return response.status, answer if isinstance(answer, dict) else {}, response.headers
        except TimeoutError:
            raise ProviderError(PROVIDER, f"{method} {api_url}{path}: timed out", retryable=True) from None
        except aiohttp.ClientError as exc:
            raise ProviderError(
                PROVIDER, f"{method} {api_url}{path}: cannot connect ({type(exc).__name__})", retryable=True
            ) from None


def _message(answer: Mapping[str, Any]) -> str:
    message = answer.get("message")
    return " ".join(str(message).split())[:300] if message else ""


def _issue_error(
    status: int, answer: Mapping[str, Any], headers: Mapping[str, str], settings: GitHubAppSettings, path: str
) -> ProviderError:
    where = f"POST {settings.api_url}{path}: HTTP {status}"
    message = _message(answer)
    if status == 401:
        return _bad(
            f"{where}: GitHub refused the App JWT of app {settings.app_id} ({message}); check appId and the "
            f"private key in Secret {settings.key_ref.name} key {settings.key_ref.key!r}"
        )
    if status == 404:
        return _bad(f"{where}: installation {settings.installation_id} not found for app {settings.app_id}")
    if status == 422:
        asked = ", ".join(f"{k}: {v}" for k, v in settings.permissions) or "the installation's"
        repos = ", ".join(settings.repositories) or "all"
        return _bad(f"{where}: {message} (asked repositories: {repos}; permissions: {asked})")
    if status == 429 or (
        status == 403 and (headers.get("x-ratelimit-remaining") == "0" or "rate limit" in message.lower())
    ):
        return ProviderError(PROVIDER, f"{where}: rate limited ({message})", retryable=True)
    if status >= 500:
        return ProviderError(PROVIDER, f"{where}: GitHub failed ({message})", retryable=True)
    return _bad(f"{where}: {message}")
