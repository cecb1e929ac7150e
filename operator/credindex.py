"""The operator's in-memory view of every CredentialSource and ClusterCredentialSource.

Why: the webhook must deny, at admission, a pod that asks for a credential no policy grants it
(DESIGN.md), but its hot path does no I/O. So a watch (kopf event handlers in
:mod:`taskcreds.operator.lifecycle`) feeds this index, and the webhook asks :meth:`CredentialIndex.check`
and :meth:`CredentialIndex.delivery` — a few dict lookups each.

The rules are exactly the broker's (:mod:`taskcreds.operator.broker.policy` with
:func:`taskcreds.operator.sources.resolve_source`): the namespace's ``CredentialSource`` first, then
the ``ClusterCredentialSource`` of that name; a namespaced source that does not parse is a denial
(it never falls through to the cluster one); ``allowedServiceAccounts``; ``allowedNamespaces`` for
cluster sources. The broker still enforces them at issue time: this index only lets a person
learn at ``kubectl apply`` what would otherwise surface as a sidecar that never gets ready.

Until the index has synced (:attr:`CredentialIndex.synced`: the first full list of both kinds is
in) it never denies — it fails open on the index only, because an operator that has just started
must not refuse every pod; the broker still refuses what policy does not grant.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, Literal, TypeAlias

from taskcreds.operator.annotations import shown
from taskcreds.operator.sources import Source, SourceError, parse_source

from taskcreds import names
from taskcreds.logs import fields

__all__ = ["CredentialIndex", "Delivery", "ListFn", "KINDS"]

log = logging.getLogger("taskcreds.operator.credindex")

Delivery = Literal["file", "proxy"]
#: list_kind(kind) -> every object of that kind, as the API returns them
ListFn = Callable[[str], Awaitable[list[dict[str, Any]]]]
KINDS: Final = (names.KIND_CREDENTIAL_SOURCE, names.KIND_CLUSTER_CREDENTIAL_SOURCE)
_SHOWN_NAMES: Final = 200  # allowed lists in messages are cut here: messages stay one readable line

Entry: TypeAlias = Source | SourceError
Key: TypeAlias = tuple[str, str | None, str]  # (kind, namespace or None, name)


def _key(obj: dict[str, Any], kind: str | None) -> Key:
    meta = obj.get("metadata") or {}
    kind = kind or obj.get("kind") or names.KIND_CREDENTIAL_SOURCE
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    namespace = None if kind == names.KIND_CLUSTER_CREDENTIAL_SOURCE else str(meta.get("namespace") or "")
    return kind, namespace, str(meta.get("name") or "")


def _listing(values: Iterable[str]) -> str:
    return shown(", ".join(values), _SHOWN_NAMES)


class CredentialIndex:
    """Sources by name, fed by a watch; :meth:`check` and :meth:`delivery` are pure and O(1)."""

    __slots__ = ("_namespaced", "_cluster", "_touched", "_synced")

    def __init__(self) -> None:
        self._namespaced: dict[tuple[str, str], Entry] = {}
        self._cluster: dict[str, Entry] = {}
        self._touched: set[Key] = set()  # seen by a watch event: a priming list must not undo it
        self._synced = False

    # --- feeding ---------------------------------------------------------------------------

    def update(self, obj: dict[str, Any], kind: str | None = None) -> None:
        """An object was listed, added or changed. One that does not parse is kept as broken, with why."""
        self._touched.add(self._store(obj, kind))

    def delete(self, obj: dict[str, Any], kind: str | None = None) -> None:
        """An object was deleted."""
        key = _key(obj, kind)
        self._touched.add(key)
        kind_, namespace, name = key
        if namespace is None:
            self._cluster.pop(name, None)
        else:
            self._namespaced.pop((namespace, name), None)

    def _store(self, obj: dict[str, Any], kind: str | None) -> Key:
        key = _key(obj, kind)
        kind_, namespace, name = key
        meta = obj.get("metadata") or {}
        view = {**obj, "kind": kind_, "metadata": {**meta, "namespace": namespace} if namespace else meta}
        entry: Entry
        try:
            entry = parse_source(view)
        except SourceError as exc:
            entry = exc
        if namespace is None:
            self._cluster[name] = entry
        else:
            self._namespaced[(namespace, name)] = entry
        return key

    def replace_listed(self, kind: str, objects: Iterable[dict[str, Any]]) -> None:
        """A full list of ``kind`` (priming): add what the watch has not already told us about."""
        for obj in objects:
            if _key(obj, kind) not in self._touched:
                self._store(obj, kind)

    def mark_synced(self) -> None:
        """The first full list of both kinds is in: from now on :meth:`check` may deny."""
        self._synced = True

    @property
    def synced(self) -> bool:
        """Whether the first list is in; before that :meth:`check` never denies (fail open)."""
        return self._synced

    async def prime(self, list_kind: ListFn, *, retry_delay: float = 1.0, max_delay: float = 30.0) -> None:
        """List both kinds once (retrying until the API answers), then mark the index synced."""
        delay = retry_delay
        while True:
            try:
                listed = [(kind, await list_kind(kind)) for kind in KINDS]
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the API is away: stay unsynced (fail open), try again
                log.warning(
                    "cannot list credential sources yet; admission does not check policy until it can",
                    extra=fields(error=type(exc).__name__),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)
                continue
            for kind, objects in listed:
                self.replace_listed(kind, objects)
            self.mark_synced()
            log.info("credential sources indexed", extra=fields(sources=len(self)))
            return

    def __len__(self) -> int:
        return len(self._namespaced) + len(self._cluster)

    # --- the webhook's questions (pure, no I/O) -----------------------------------------------

    def resolve(self, namespace: str, credential: str) -> Entry | None:
        """The source a pod in ``namespace`` gets for ``credential``: namespaced first, then cluster."""
        found = self._namespaced.get((namespace, credential))
        if found is not None:
            return found
        return self._cluster.get(credential)

    def check(self, namespace: str, service_account: str, credential: str) -> str | None:
        """Why ``credential`` is not granted to ``service_account`` in ``namespace`` (None: granted).

        The reason names the source and what would grant it; the caller adds the credential, the
        namespace and the service account. Never denies before :attr:`synced` (see the module doc).
        """
        if not self._synced:
            return None
        found = self._namespaced.get((namespace, credential))
        if found is None:
            found = self._cluster.get(credential)
        if found is None:
            return (
                f"there is no CredentialSource {credential!r} in namespace {namespace!r} and no "
                f"ClusterCredentialSource {credential!r}; to grant it, create one whose "
                f"allowedServiceAccounts lists {service_account!r}"
            )
        if isinstance(found, SourceError):
            return f"its source cannot be used ({found}); fix the source"
        if service_account not in found.allowed_service_accounts:
            where = f"{found.kind} {found.namespace + '/' if found.namespace else ''}{found.name}"
            return (
                f"allowedServiceAccounts of {where} is [{_listing(found.allowed_service_accounts)}]; "
                f"to grant it, add {service_account!r} there or run the pod as one of those"
            )
        allowed_ns = found.allowed_namespaces
        if allowed_ns is not None and namespace not in allowed_ns:
            return (
                f"allowedNamespaces of ClusterCredentialSource {found.name} is [{_listing(allowed_ns)}]; "
                f"to grant it, add {namespace!r} there or create a CredentialSource {credential!r} "
                f"in namespace {namespace!r}"
            )
        return None

    def __call__(self, namespace: str, service_account: str, credential: str) -> str | None:
        """The index as a ``credential_check`` for :func:`taskcreds.operator.injection.mutate_pod`."""
        return self.check(namespace, service_account, credential)

    def delivery(self, namespace: str, credential: str) -> tuple[Delivery, dict[str, Any] | None]:
        """How ``credential`` reaches a pod in ``namespace``: ``("file", None)`` or ``("proxy", spec.proxy)``.

        ``file`` when the source is unknown or broken: the pod is then denied (synced) or the
        broker refuses it anyway, and files are the contract's default.
        """
        found = self.resolve(namespace, credential)
        if found is None or isinstance(found, SourceError):
            return "file", None
        if getattr(found, "delivery", "file") != "proxy":
            return "file", None
        proxy = getattr(found, "proxy", None)
        if proxy is None:
            raw = (found.spec or {}).get("proxy")
            proxy = raw if isinstance(raw, dict) else None
        return "proxy", proxy
