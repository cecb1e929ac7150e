"""TaskLeases: the durable record of every credential issued for a task, and the revocation engine.

One TaskLease per (pod, task), owned by the pod and carrying the finalizer ``taskcreds.io/revoke``.
The broker writes a *pending* entry (a random ``intent``, no leaseRef yet) before it asks the source,
and resolves it into the real entry after, before handing the value to the sidecar: an operator crash
between the source's answer and that write leaves the pending entry, which the sweep (after
:data:`PENDING_GRACE`) or the task end revokes by its intent where the provider can (jwt: the intent
is the ``jti``) and otherwise records not revocable, saying when the credential expires at the
latest (its TTL is then the bound). When the task ends, :func:`revoke_task` revokes every lease at its source
and only then releases the finalizer. All state lives in the TaskLease (never in memory), writes
are guarded by resourceVersion, so it is idempotent and safe to re-run after a restart or from
two replicas at once.

Status shape (no value ever)::

    status:
      phase: Active | Revoking | Revoked
      reason: completed            # why the task's leases are revoked
      leases:
      - credential: github
        provider: github-app
        source: {kind: CredentialSource, name: github, namespace: agents}
        leaseRef: "ghs:1234:7f3a"
        issuedAt / expiresAt / revokedAt: RFC 3339
        sourceExpiresAt: RFC 3339  # only when the source honours it longer than granted (see cap_to_grant)
        revokeReason: completed
        static: false
        target: {address: ..., replica: ...}  # where revocation goes (non-secret; Issued.target)
        supersededAt: RFC 3339     # renewed by a replica that could not revoke it: its holder does
        intent: "Qm9..."           # the issue's random id (jwt: the jti), written before the source call
        pending: true              # only while the source is asked: leaseRef "pending:<intent>:<exp>"
        notRevocable: "why"        # when the source cannot revoke it (static secret, bound token)
        lastError: "why the last attempt failed"
        attempts: 2
      compactedLeases: 12          # entries dropped once revoked and long expired (see compact_entries)

A long task with short TTLs renews many times and each new value is a new entry: entries that are
revoked (the sweep revokes expired ones with reason ``expired``) and expired more than
:data:`COMPACT_AFTER` ago are dropped when the next one is recorded, so the list (``maxItems`` in the
CRD) stays bounded; each drop is logged with its leaseRef, so issuance stays traceable.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import re
import secrets
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from taskcreds.operator.cluster import AlreadyExists, Cluster, ClusterError, Conflict, NotFound
from taskcreds.operator.endings import parse_timestamp, task_ending
from taskcreds.operator.providers.base import (
    HeldElsewhere,
    Issued,
    NotRevocable,
    PendingRevoker,
    Provider,
    ProviderError,
)
from taskcreds.operator.sources import Source, source_from_ref, tenant_refusal

from taskcreds import names
from taskcreds.logs import fields
from taskcreds.metrics import OperatorMetrics

__all__ = [
    "lease_name",
    "task_lease_body",
    "lease_entry",
    "cap_to_grant",
    "dies_by",
    "CAP_SLACK",
    "MIN_CAPPED_GRANT",
    "ReplacedGone",
    "granted_nothing",
    "pending_entry",
    "new_intent",
    "PENDING_GRACE",
    "PendingReaped",
    "ensure_task_lease",
    "record_issued",
    "record_ended",
    "find_entry",
    "compact_entries",
    "COMPACT_AFTER",
    "revoke_task",
    "revoke_pod_task",
    "revoke_expired",
    "find_orphaned_leases",
    "sweep_leases",
    "PodView",
    "SweepCounts",
    "POD_VIEW_TRUST",
    "count_active",
    "RevokeOutcome",
    "LeaseEnded",
    "TooManyLive",
    "live_entries",
    "check_live_limit",
    "LeaseBusy",
    "owned_by",
    "Backoff",
    "format_time",
    "LABEL_POD_UID",
]

log = logging.getLogger("taskcreds.leases")

ACTIVE: Final = "Active"
#: how long a replica's claim on revoking a TaskLease holds before another replica may take over
CLAIM_SECONDS: Final = 30.0
#: this replica's name in revocation claims (every replica sees every pod event; one revokes): its
#: pod name when there is one, so a restarted container resumes its own claims at once; the same
#: name for the lifecycle's revocations and the broker's (``OperatorParts.replica_id``)
REPLICA_ID: Final = os.environ.get("HOSTNAME") or f"op-{uuid.uuid4().hex[:8]}"
REVOKING: Final = "Revoking"
#: how long after expiry a revoked entry stays on an Active TaskLease (clock skew, relying parties'
#: leeway on ``exp``): past it the value is dead everywhere and its entry may be dropped
COMPACT_AFTER: Final = timedelta(minutes=5)
REVOKED: Final = "Revoked"
#: how long a pending entry (written before the source is asked) may stay unresolved on an Active
#: TaskLease before the sweep takes its issue for cut short and revokes it (reason ``interrupted``):
#: well above a source's answer (providers time out at 10 s) plus one TaskLease write (15 s)
PENDING_GRACE: Final = timedelta(seconds=60)
#: label on every TaskLease (ones written before it have only the ownerReference): the pod's uid, so
#: ``kubectl get taskleases -l taskcreds.io/pod-uid=<uid>`` lists every task a pod ran
LABEL_POD_UID: Final = f"{names.PREFIX}/pod-uid"
#: how far a source's expiry may pass the granted end before the lease is cut there (the whole-second
#: rounding of times and a source's own clock): below it the source's expiry is reported as it is
CAP_SLACK: Final = timedelta(seconds=1)
#: the shortest grant of a credential cut by :func:`cap_to_grant` (its source honours it longer
#: anyway: GitHub 1 h, a TokenRequest 10 min). Without it a pod asking a 2 s TTL refreshes every
#: ~1.3 s, and each refresh mints at the source (a github-app token and its DELETE; a TokenRequest,
#: a Secret create and delete): one pod could spend a GitHub App installation's shared hourly API
#: budget. 5 min: a pod refreshes (and mints) at most about every 3.3 min (<= ~18 mints an hour per
#: credential), and a cut value lives at its source at most max(granted TTL, 5 min) + one sweep
#: interval. Never above the source's maxTTL (the broker passes the smaller).
MIN_CAPPED_GRANT: Final = timedelta(minutes=5)
_INVALID = re.compile(r"[^a-z0-9-]")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(value: datetime) -> str:
    """RFC 3339 UTC with whole seconds, as the API and docs/broker-api.md write times."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LeaseBusy(ClusterError):
    """The TaskLease's name is held by a previous pod of the same name, still being revoked (retry)."""


class TooManyLive(Exception):
    """Recording would put more than the allowed live leases of one credential on a TaskLease."""

    def __init__(
        self,
        credential: str,
        live: int,
        limit: int,
        next_expiry: datetime | None,
        *,
        undelivered: int = 0,
        last_error: str | None = None,
    ) -> None:
        text = f"credential {credential!r} has {live} live leases (at most {limit})"
        if undelivered:
            text += f", {undelivered} of them granted nothing and waiting to be revoked at the source"
        super().__init__(text)
        self.credential, self.live, self.limit, self.next_expiry = credential, live, limit, next_expiry
        #: live leases the task was granted nothing of (:func:`granted_nothing`): they cannot be
        #: renewed, only revoked by the sweep; ``last_error`` is the last provider error on them
        self.undelivered, self.last_error = undelivered, last_error


def granted_nothing(entry: Mapping[str, Any]) -> bool:
    """Whether the entry records a lease the task was never handed (an issue or renewal whose value
    could be neither delivered nor given back): its granted end is its issue time."""
    issued, granted = parse_timestamp(entry.get("issuedAt")), parse_timestamp(entry.get("expiresAt"))
    return issued is not None and granted is not None and granted <= issued and not entry.get("pending")


def live_entries(entries: list[dict[str, Any]], credential: str, now: datetime) -> list[dict[str, Any]]:
    """Entries of ``credential`` whose value may still work: not revoked, not superseded (a renewal
    replaced it; its holder revokes it), not dead at its source (:func:`dies_by`). A lease cut to
    its grant still works at its source after ``expiresAt`` until the sweep revokes it (30 s, or
    until ``sourceExpiresAt`` while revoking fails): it counts until then."""
    out = []
    for entry in entries:
        if entry.get("credential") != credential or entry.get("revokedAt") or entry.get("supersededAt"):
            continue
        dies = dies_by(entry)
        if dies is None or dies > now:
            out.append(entry)
    return out


#: when a lease cut to its grant and past it, not yet revoked, is expected to stop counting: the
#: sweep (every 30 s, ``main.SWEEP_INTERVAL``) revokes it, so a refused issue may retry then
RETRY_AFTER_CUT: Final = timedelta(seconds=30)


def _frees_at(entry: Mapping[str, Any], now: datetime) -> datetime | None:
    """When a live entry should stop counting: its granted end while ahead; past it (a cut lease
    the sweep has yet to revoke) the next sweep, never after the source's own end (:func:`dies_by`)."""
    granted, dies = parse_timestamp(entry.get("expiresAt")), dies_by(entry)
    if granted is not None and granted > now:
        return granted
    if dies is None:
        return None
    return min(dies, now + RETRY_AFTER_CUT)


def check_live_limit(
    entries: list[dict[str, Any]], adding: list[dict[str, Any]], limit: int, now: datetime
) -> None:
    """TooManyLive when adding ``adding`` would leave more than ``limit`` live leases of a credential
    (:func:`live_entries`); its ``next_expiry`` is when one should stop counting (:func:`_frees_at`)."""
    for credential in dict.fromkeys(e["credential"] for e in adding):
        live = live_entries(entries, credential, now)
        if len(live) + sum(1 for e in adding if e["credential"] == credential) > limit:
            expiries = [t for t in (_frees_at(e, now) for e in live) if t is not None]
            stuck = [e for e in live if granted_nothing(e)]
            errors = [str(e["lastError"]) for e in stuck if e.get("lastError")]
            raise TooManyLive(
                credential, len(live), limit, min(expiries) if expiries else None,
                undelivered=len(stuck), last_error=errors[-1] if errors else None,
            )


class ReplacedGone(Exception):
    """A renewal's record would update an entry someone revoked or superseded after the renewal
    started (the sweep, another replica's renewal): nothing written. The caller revokes what the
    renewal produced when it is a new lease, and answers 404 so the sidecar issues anew."""

    def __init__(self, lease_ref: str, why: str) -> None:
        super().__init__(f"lease {lease_ref!r} was {why} while it was being renewed")
        self.lease_ref, self.why = lease_ref, why


class PendingReaped(ClusterError):
    """The pending entry of an issue is gone or revoked (the sweep took the issue for cut short, or a
    person edited the TaskLease): the credential must be revoked again, not handed out."""


class LeaseEnded(Exception):
    """The TaskLease is Revoking/Revoked: the task is over, nothing may be added to it."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the task's leases are revoked ({reason})")
        self.reason = reason


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff between revocation rounds."""

    attempts: int = 5
    base: float = 0.05
    cap: float = 2.0

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.base * (2**attempt))


@dataclass
class RevokeOutcome:
    """What one :func:`revoke_task` run achieved. ``done``: every lease revoked or not revocable."""

    lease: str
    done: bool
    revoked: list[str] = field(default_factory=list)  # credentials revoked at their source in this run
    not_revocable: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    claimed_by: str | None = None  # another replica holds the revocation claim: it revokes, not us


# --- pure builders ---------------------------------------------------------------------------------
def lease_name(pod: str, task: str) -> str:
    """``<pod>-<10 hex of sha256(task)>``: stable per (pod, task), a valid object name.

    A pod recreated under the same name (a StatefulSet's) meets its predecessor's TaskLease until
    that one is revoked and collected: :func:`owned_by` tells them apart.
    """
    digest = hashlib.sha256(task.encode()).hexdigest()[:10]
    base = _INVALID.sub("-", pod.lower())[:240].strip("-") or "pod"
    return f"{base}-{digest}"


def task_lease_body(pod: Mapping[str, Any], task: str) -> dict[str, Any]:
    """A new TaskLease for ``task`` of ``pod``: owned by the pod, with the revoke finalizer."""
    meta = pod["metadata"]
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND_TASK_LEASE,
        "metadata": {
            "name": lease_name(meta["name"], task),
            "namespace": meta["namespace"],
            "labels": {"app.kubernetes.io/managed-by": "taskcreds", LABEL_POD_UID: meta["uid"]},
            "finalizers": [names.FINALIZER_REVOKE],
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": False,
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "spec": {"task": task, "pod": meta["name"], "podUID": meta["uid"]},
    }


def lease_entry(
    credential: str,
    provider: str,
    source_ref: Mapping[str, str],
    issued: Issued,
    intent: str | None = None,
    *,
    source_expires_at: datetime | None = None,
) -> dict[str, Any]:
    """The TaskLease's record of one issued credential: references and times, never the value.

    ``target`` (when the provider gives one) is where it must be revoked — the source as it was at
    issue, and for in-memory holders the issuing replica — so a later edit of the source or another
    replica revoking cannot send the revocation elsewhere. ``source_expires_at``: the source's own
    expiry of a lease cut to its grant (:func:`cap_to_grant`); ``expiresAt`` is then the granted end.
    """
    entry: dict[str, Any] = {
        "credential": credential,
        "provider": provider,
        "source": dict(source_ref),
        "leaseRef": issued.lease_ref,
        "issuedAt": format_time(issued.issued_at),
        "expiresAt": format_time(issued.expires_at),
        "renewable": issued.renewable,
        "static": issued.static,
    }
    if source_expires_at is not None:
        entry["sourceExpiresAt"] = format_time(source_expires_at)
    if issued.target:
        entry["target"] = {str(k): str(v) for k, v in issued.target.items()}
    if intent:  # resolves the pending entry of that intent (record_issued)
        entry["intent"] = intent
    return entry


def cap_to_grant(
    issued: Issued,
    ttl_seconds: float,
    asked_at: datetime,
    *,
    slack: timedelta = CAP_SLACK,
    floor: timedelta = MIN_CAPPED_GRANT,
) -> tuple[Issued, datetime | None]:
    """What the task may hold: ``issued`` cut to its grant, and the source's own expiry when later.

    Some sources issue for longer than asked and cannot be told otherwise (GitHub: 1 h always; a
    Kubernetes TokenRequest: 10 minutes at least). The task was granted ``ttl_seconds`` (requested,
    defaulted, capped by ``maxTTL``) from when the source was asked (``asked_at``, or the issue time
    when later): a revocable lease that outlives that is reported as ending at the granted end (the
    sidecar refreshes before it and removes the file at it) and revoked there by the sweep
    (:func:`revoke_expired`); the second value, the source's expiry, is recorded as
    ``sourceExpiresAt`` so a failing revocation is retried until the value is dead at its source.

    A lease that is cut is granted at least ``floor`` (:data:`MIN_CAPPED_GRANT`): its value works at
    the source that long anyway, and a shorter grant only makes the pod refresh — mint at the
    source — faster. A lease the source ends within the grant is left alone (no floor: nothing
    honours it longer). A static value (nobody can cut it) keeps its own expiry: never claim a
    shorter life than the source honours for something that cannot be revoked. Pure.
    """
    if issued.static:
        return issued, None
    start = max(issued.issued_at, asked_at)
    granted = (start + timedelta(seconds=float(ttl_seconds))).replace(microsecond=0)
    if issued.expires_at <= granted + slack:
        return issued, None
    granted = max(granted, (start + floor).replace(microsecond=0))
    if issued.expires_at <= granted + slack:  # the floor reaches the source's own end: nothing to cut
        return issued, None
    return replace(issued, expires_at=granted), issued.expires_at


def dies_by(entry: Mapping[str, Any]) -> datetime | None:
    """When the entry's value is dead at its source without a revocation: the later of ``expiresAt``
    (what the task was granted) and ``sourceExpiresAt`` (what the source honours, when longer)."""
    times = [parse_timestamp(entry.get(key)) for key in ("expiresAt", "sourceExpiresAt")]
    known = [t for t in times if t is not None]
    return max(known) if known else None


def new_intent() -> str:
    """A fresh random id for one issue (a jwt's ``jti``; safe in a leaseRef: no ``:``)."""
    return secrets.token_urlsafe(16)


def pending_entry(
    credential: str,
    provider: str,
    source_ref: Mapping[str, str],
    intent: str,
    ttl_seconds: float,
    *,
    target: Mapping[str, str] | None,
    now: datetime,
    source_floor_seconds: float = 0,
) -> dict[str, Any]:
    """The record of an issue about to ask its source: revocable by ``intent`` if the operator stops.

    ``expiresAt`` bounds what the task is granted: ``now`` + the granted TTL + :data:`PENDING_GRACE`
    (an answer later than the grace finds the entry reaped and is revoked). A source that issues for
    at least ``source_floor_seconds`` whatever was asked (GitHub: 1 h) bounds the value itself by
    that: ``sourceExpiresAt`` (:func:`dies_by`), the time said for one that cannot be found again.
    The leaseRef ``pending:<intent>:<unix time the value dies by>`` is unique and tells the jwt deny
    list the jti. ``target`` names the issuing replica.
    """
    expires = now + timedelta(seconds=float(ttl_seconds)) + PENDING_GRACE
    dies = now + timedelta(seconds=max(float(ttl_seconds), float(source_floor_seconds))) + PENDING_GRACE
    entry: dict[str, Any] = {
        "credential": credential,
        "provider": provider,
        "source": dict(source_ref),
        "leaseRef": f"pending:{intent}:{int(dies.timestamp())}",
        "intent": intent,
        "pending": True,
        "issuedAt": format_time(now),
        "expiresAt": format_time(expires),
    }
    if dies > expires:
        entry["sourceExpiresAt"] = format_time(dies)
    if target:
        entry["target"] = {str(k): str(v) for k, v in target.items()}
    return entry


def owned_by(lease: Mapping[str, Any] | None, pod_uid: str) -> bool:
    """Whether a TaskLease belongs to the pod with this uid (not to a predecessor of the same name)."""
    owners = ((lease or {}).get("metadata") or {}).get("ownerReferences") or []
    return any(o.get("uid") == pod_uid for o in owners)


def find_entry(lease: Mapping[str, Any] | None, credential: str, lease_ref: str) -> dict[str, Any] | None:
    """The entry of ``credential`` with ``lease_ref`` on a TaskLease, if any."""
    for entry in ((lease or {}).get("status") or {}).get("leases") or []:
        if entry.get("credential") == credential and entry.get("leaseRef") == lease_ref:
            return dict(entry)
    return None


def compact_entries(
    entries: list[dict[str, Any]], now: datetime, keep_for: timedelta = COMPACT_AFTER
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split entries into (kept, dropped): dropped are revoked, not static, expired before now - keep_for.

    Unrevoked entries stay (the sweep must revoke them first, which also keeps ``leases_active``
    right), static ones stay (their value does not expire), and so do entries with unreadable times.
    One recorded not revocable stays until its value dies at its source (:func:`dies_by`), which
    may be after the granted end.
    """
    kept, dropped = [], []
    cutoff = now - keep_for
    for entry in entries:
        expires = dies_by(entry) if entry.get("notRevocable") else parse_timestamp(entry.get("expiresAt"))
        if entry.get("revokedAt") and not entry.get("static") and expires is not None and expires < cutoff:
            dropped.append(entry)
        else:
            kept.append(entry)
    return kept, dropped


def count_active(leases: list[dict[str, Any]]) -> dict[str, int]:
    """Unrevoked entries per provider across TaskLeases (to set ``leases_active`` after a restart)."""
    out: dict[str, int] = {}
    for lease in leases:
        for entry in (lease.get("status") or {}).get("leases") or []:
            if not entry.get("revokedAt") and not entry.get("pending"):
                out[entry["provider"]] = out.get(entry["provider"], 0) + 1
    return out


def _pod_ref(lease: Mapping[str, Any]) -> dict[str, Any]:
    meta = lease.get("metadata") or {}
    owners = meta.get("ownerReferences") or [{}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "namespace": meta.get("namespace"),
            "name": (lease.get("spec") or {}).get("pod"),
            "uid": owners[0].get("uid"),
        },
    }


def _rv(lease: Mapping[str, Any]) -> dict[str, Any]:
    return {"resourceVersion": lease["metadata"]["resourceVersion"]}


# --- issuance side ---------------------------------------------------------------------------------
async def ensure_task_lease(cluster: Cluster, pod: Mapping[str, Any], task: str) -> dict[str, Any]:
    """Get the pod's TaskLease for ``task``, creating it (phase Active) when missing."""
    meta = pod["metadata"]
    name = lease_name(meta["name"], task)
    lease = await cluster.get_task_lease(meta["namespace"], name)
    if lease is None:
        try:
            lease = await cluster.create_task_lease(meta["namespace"], task_lease_body(pod, task))
        except AlreadyExists:
            lease = await cluster.get_task_lease(meta["namespace"], name)
            if lease is None:
                raise ClusterError(
                    f"TaskLease {meta['namespace']}/{name} vanished while being created"
                ) from None
    if not owned_by(lease, meta["uid"]):
        raise LeaseBusy(
            f"TaskLease {meta['namespace']}/{name} still belongs to a previous pod named "
            f"{meta['name']!r} and is being revoked; retry shortly"
        )
    if not (lease.get("status") or {}).get("phase"):
        try:
            lease = await cluster.patch_task_lease(
                meta["namespace"],
                name,
                {"metadata": _rv(lease), "status": {"phase": ACTIVE, "leases": []}},
                subresource="status",
            )
        except Conflict:
            lease = await cluster.get_task_lease(meta["namespace"], name) or lease
    return lease


async def record_issued(
    cluster: Cluster,
    pod: Mapping[str, Any],
    task: str,
    entries: list[dict[str, Any]],
    *,
    attempts: int = 3,
    replace: Mapping[str, dict[str, Any]] | None = None,
    max_live: int | None = None,
    drop_intents: Collection[str] = (),
    strict: bool = True,
    known: dict[str, Any] | None = None,
    now: Callable[[], datetime] = _utcnow,
) -> dict[str, Any]:
    """Append ``entries`` to the task's TaskLease (or, with ``replace``, update entries by leaseRef;
    a None value there removes that key).

    An entry carrying an ``intent`` (and not itself pending) takes the place of the pending entry of
    that intent (:func:`pending_entry`), in the same write; pending entries of ``drop_intents`` are
    removed (their issue failed or was revoked again). When the pending entry is gone or revoked,
    ``strict`` raises PendingReaped (nothing written: revoke the credential), otherwise the entry is
    appended. ``known``: the TaskLease as last written, to spare a read (re-read on conflict).

    Entries revoked and long expired are dropped on the way (:func:`compact_entries`), counted in
    ``status.compactedLeases``. With ``max_live``, raises TooManyLive (nothing written) when that
    would leave more live leases of one credential (:func:`live_entries`); checked on the same
    resourceVersion as the write, so concurrent issues cannot pass it together.

    A ``replace`` that would land on an entry already revoked or superseded (the sweep or another
    replica got there after the renewal started) raises ReplacedGone, nothing written: updating it
    would answer a renewal with a value that is dead, or a second live replacement of one lease.

    Raises LeaseEnded when the task's leases are already being revoked (the caller must then
    revoke what it issued), ClusterError when it cannot record (the caller revokes and answers 503).
    """
    last: Exception | None = None
    for attempt in range(max(1, attempts)):
        if attempt == 0 and known is not None and owned_by(known, pod["metadata"]["uid"]):
            lease = known
        else:
            lease = await ensure_task_lease(cluster, pod, task)
        status = lease.get("status") or {}
        if status.get("phase") in (REVOKING, REVOKED):
            raise LeaseEnded(status.get("reason") or "revoked")
        current = [dict(e) for e in status.get("leases") or []]
        for entry in current:
            ended = entry.get("revokedAt") or entry.get("supersededAt")
            if replace and entry.get("leaseRef") in replace and ended:
                why = (f"revoked ({entry.get('revokeReason') or 'no reason recorded'})"
                       if entry.get("revokedAt") else "superseded by another renewal")
                raise ReplacedGone(entry["leaseRef"], why)
        if replace:  # a None value removes the key (a renewal no longer cut to its grant)
            current = [
                {k: v for k, v in {**e, **replace[e["leaseRef"]]}.items() if v is not None}
                if e.get("leaseRef") in replace else e
                for e in current
            ]
        current, adding = _resolve_pending(current, entries, drop_intents, strict=strict)
        current, dropped = compact_entries(current, now())
        if max_live is not None:
            check_live_limit(current, adding, max_live, now())
        new_status: dict[str, Any] = {"phase": ACTIVE, "leases": current + adding}
        if dropped:
            new_status["compactedLeases"] = int(status.get("compactedLeases") or 0) + len(dropped)
        try:
            written = await cluster.patch_task_lease(
                lease["metadata"]["namespace"],
                lease["metadata"]["name"],
                {"metadata": _rv(lease), "status": new_status},
                subresource="status",
            )
        except Conflict as exc:
            last = exc
            continue
        for gone in dropped:
            log.info(
                "expired lease dropped from the TaskLease",
                extra=fields(
                    namespace=lease["metadata"]["namespace"],
                    lease=lease["metadata"]["name"],
                    credential=gone.get("credential"),
                    lease_ref=gone.get("leaseRef"),
                    expired_at=gone.get("expiresAt"),
                ),
            )
        return written
    raise ClusterError(f"could not record on the TaskLease after {attempts} conflicting writes: {last}")


def _resolve_pending(
    current: list[dict[str, Any]],
    entries: list[dict[str, Any]],
    drop_intents: Collection[str],
    *,
    strict: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(current with pending entries resolved or dropped, entries still to append)."""
    resolving = {e["intent"]: e for e in entries if e.get("intent") and not e.get("pending")}
    out: list[dict[str, Any]] = []
    resolved: set[int] = set()
    for entry in current:
        intent = entry.get("intent")
        if entry.get("pending") and not entry.get("revokedAt") and intent:
            if intent in resolving:
                resolved.add(id(resolving[intent]))
                out.append(resolving.pop(intent))
                continue
            if intent in drop_intents:
                continue
        out.append(entry)
    if resolving and strict:
        raise PendingReaped(
            f"the pending entry of {len(resolving)} issue(s) is gone or revoked (the issue took longer "
            f"than {PENDING_GRACE.total_seconds():g} s, or the TaskLease was edited)"
        )
    return out, [e for e in entries if id(e) not in resolved]


async def record_ended(cluster: Cluster, pod: Mapping[str, Any], task: str, reason: str) -> dict[str, Any]:
    """Mark the task's TaskLease Revoking with ``reason`` (creating it if needed): no more issuance."""
    while True:
        lease = await ensure_task_lease(cluster, pod, task)
        status = lease.get("status") or {}
        if status.get("phase") in (REVOKING, REVOKED):
            return lease
        try:
            return await cluster.patch_task_lease(
                lease["metadata"]["namespace"],
                lease["metadata"]["name"],
                {"metadata": _rv(lease), "status": {"phase": REVOKING, "reason": reason}},
                subresource="status",
            )
        except Conflict:
            continue
        except NotFound:
            # collected under us: its finalizer was released, so its task was revoked already
            return lease


# --- revocation engine -----------------------------------------------------------------------------
async def _revoke_entry(
    cluster: Cluster, providers: Mapping[str, Provider], entry: dict[str, Any]
) -> tuple[str, str | None]:
    """Revoke one lease at its source: ("revoked"|"not_revocable"|"failed"|"deferred", message).

    "deferred": only another live replica can revoke it (HeldElsewhere); retried like a failure.
    """
    provider = providers.get(entry.get("provider", ""))
    if provider is None:
        return "failed", f"provider {entry.get('provider')!r} is not available in this operator"
    pending = bool(entry.get("pending"))
    if pending and not isinstance(provider, PendingRevoker):
        # an issue cut short (operator stopped): its credential, if any, cannot be found without the
        # leaseRef the source answered with. It dies by its expiry: said so on the entry
        return "not_revocable", (
            f"outcome unknown (operator stopped mid-issue); expires by {_dies_by_text(entry)}"
        )
    source_ref = entry.get("source") or {}
    try:
        # the tenant rules (sources.tenant_refusal) guard issue and renew; a lease issued before they
        # existed must still be revoked, so they are applied here by _refused_revocation instead
        source = await source_from_ref(cluster, source_ref, issue_rules=False)
    except Exception as exc:  # an unusable source spec: retried (someone may fix it)
        return "failed", f"source {source_ref.get('name')!r} unusable: {exc}"
    refused = _refused_revocation(entry, source)
    if refused is not None:
        return "not_revocable", refused
    # a deleted source still gets its revoke call: providers that need no settings (jwt) succeed,
    # the others fail visibly and are retried once the source is back
    spec: dict[str, Any] = source.spec if source is not None else {}
    namespace = source.namespace if source is not None else source_ref.get("namespace")
    try:
        if pending:
            expires_by = dies_by(entry) or _utcnow()
            await provider.revoke_pending(entry.get("intent") or "", expires_by, spec, namespace)  # type: ignore[attr-defined]
        elif entry.get("target"):
            await provider.revoke(entry["leaseRef"], spec, namespace, target=entry["target"])  # type: ignore[call-arg]
        else:
            await provider.revoke(entry["leaseRef"], spec, namespace)
    except NotRevocable as exc:
        return "not_revocable", str(exc)
    except HeldElsewhere as exc:
        return "deferred", str(exc)
    except ProviderError as exc:
        return "failed", str(exc)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a provider bug must not stop the other revocations
        return "failed", f"{entry.get('provider')}: {type(exc).__name__}"
    return "revoked", None


def _refused_revocation(entry: Mapping[str, Any], source: Source | None) -> str | None:
    """Why a lease of a namespaced source that the tenant rules now refuse cannot be revoked (None: it
    can, or the source is not refused).

    Only ``vault`` is refused here. A ``jwt`` revocation only deny-lists the jti (no spec, no
    network); a ``kubernetes-token`` one deletes the binding Secret the operator made; a
    ``github-app`` one sends the token back to the server that minted it: all always done. A ``vault``
    revocation would log in at the source's address: with ``auth.method: kubernetes`` as the operator
    itself — sending its service-account token to an address a tenant chose (the recorded one was
    chosen by the same tenant, so matching it proves nothing) — and with plain http:// in the clear;
    the vault provider refuses both, so it is recorded not revocable at once, saying what to do.
    """
    if source is None or source.namespace is None or entry.get("provider") != "vault":
        return None
    refusal = tenant_refusal(source.provider, source.spec, source.name, source.namespace)
    if refusal is None:
        return None
    where = (entry.get("target") or {}).get("address") or "its server"
    return (
        f"not revoked: {source.kind} {source.namespace}/{source.name} was accepted when this lease was "
        f"issued but is refused now ({refusal}); the operator will not log in there to revoke it. Revoke "
        f"{entry.get('leaseRef')} at {where} by hand, or it ends at its expiry {_dies_by_text(entry)}"
    )[:1000]


def _dies_by_text(entry: Mapping[str, Any]) -> str:
    """:func:`dies_by` as written on the entry (RFC 3339), or what the entry says when unreadable."""
    when = dies_by(entry)
    return format_time(when) if when is not None else str(entry.get("expiresAt"))


def _past_expiry(
    entry: Mapping[str, Any], result: tuple[str, str | None], now: datetime
) -> tuple[str, str | None]:
    """A revocation still failing once the value is dead at its source is over: recorded not
    revocable, saying so and why it failed (retrying forever helps nobody). Dead means past
    :func:`dies_by`: a lease cut to its grant whose revocation fails after the granted end but before
    the source's own expiry (``sourceExpiresAt``) is still live there, so it is retried."""
    outcome, message = result
    expires = dies_by(entry)
    if outcome not in ("failed", "deferred") or expires is None or expires >= now:
        return result
    return "not_revocable", f"expired at {format_time(expires)} before it could be revoked: {message}"[:1000]


async def _revoke_entries(
    cluster: Cluster,
    providers: Mapping[str, Provider],
    lease: dict[str, Any],
    pending: list[dict[str, Any]],
    reason: str,
    *,
    metrics: OperatorMetrics | None,
    now: Callable[[], datetime],
    outcome: RevokeOutcome,
) -> dict[str, dict[str, Any]]:
    """Revoke ``pending`` entries concurrently; the per-leaseRef status changes to record."""
    results = await asyncio.gather(*(_revoke_entry(cluster, providers, e) for e in pending))
    results = [_past_expiry(e, r, now()) for e, r in zip(pending, results, strict=True)]
    changes: dict[str, dict[str, Any]] = {}
    stamp = format_time(now())
    failures = []
    for entry, (result, message) in zip(pending, results, strict=True):
        provider = entry.get("provider", "unknown")
        where = fields(
            namespace=lease["metadata"]["namespace"],
            lease=lease["metadata"]["name"],
            credential=entry.get("credential"),
            provider=provider,
            lease_ref=entry.get("leaseRef"),
            reason=reason,
        )
        if result == "deferred":  # its holder revokes it: said on the entry, not a failure
            outcome.failed.append(entry["credential"])
            if entry.get("lastError") != message:
                changes[entry["leaseRef"]] = {"lastError": message}
            log.info(
                "revocation left to the replica holding it",
                extra={"fields": {**where["fields"], "why": message}},
            )
            continue
        if result == "failed":
            outcome.failed.append(entry["credential"])
            failures.append(f"{entry['credential']} ({message})")
            changes[entry["leaseRef"]] = {
                "lastError": message,
                "attempts": int(entry.get("attempts") or 0) + 1,
            }
            if metrics is not None:
                metrics.revocation_failures.labels(provider=provider).inc()
            log.warning(
                "revocation failed; will retry", extra={"fields": {**where["fields"], "error": message}}
            )
            continue
        changes[entry["leaseRef"]] = {"revokedAt": stamp, "revokeReason": reason, "lastError": None}
        if result == "not_revocable":
            changes[entry["leaseRef"]]["notRevocable"] = message
            outcome.not_revocable.append(entry["credential"])
            log.info(
                "lease cannot be revoked at its source", extra={"fields": {**where["fields"], "why": message}}
            )
        else:
            outcome.revoked.append(entry["credential"])
            if metrics is not None:
                metrics.credentials_revoked.labels(provider=provider, reason=reason).inc()
            log.info("lease revoked at its source", extra=where)
        if metrics is not None and not entry.get("pending"):  # pending ones are not counted (count_active)
            metrics.leases_active.labels(provider=provider).dec()
    if failures:
        try:
            await cluster.emit_event(
                _pod_ref(lease),
                "RevocationFailed",
                "could not revoke at the source, retrying: " + "; ".join(failures)[:900],
                "Warning",
            )
        except ClusterError:
            pass
    return changes


async def _write_changes(
    cluster: Cluster,
    lease: dict[str, Any],
    changes: Mapping[str, dict[str, Any]],
    status_extra: dict[str, Any],
) -> dict[str, Any]:
    """Apply per-entry changes onto the freshest TaskLease (re-read on conflict)."""
    namespace, name = lease["metadata"]["namespace"], lease["metadata"]["name"]
    while True:
        entries = []
        for entry in (lease.get("status") or {}).get("leases") or []:
            change = changes.get(entry.get("leaseRef"))
            if change and not entry.get("revokedAt"):
                entry = {k: v for k, v in {**entry, **change}.items() if v is not None}
            entries.append(entry)
        try:
            return await cluster.patch_task_lease(
                namespace,
                name,
                {"metadata": _rv(lease), "status": {**status_extra, "leases": entries}},
                subresource="status",
            )
        except Conflict:
            fresh = await cluster.get_task_lease(namespace, name)
            if fresh is None:
                raise NotFound(f"TaskLease {namespace}/{name} vanished") from None
            lease = fresh


async def _release_finalizer(cluster: Cluster, lease: dict[str, Any]) -> None:
    namespace, name = lease["metadata"]["namespace"], lease["metadata"]["name"]
    while names.FINALIZER_REVOKE in (lease["metadata"].get("finalizers") or []):
        kept = [f for f in lease["metadata"]["finalizers"] if f != names.FINALIZER_REVOKE]
        try:
            await cluster.patch_task_lease(namespace, name, {"metadata": {**_rv(lease), "finalizers": kept}})
            return
        except Conflict:
            fresh = await cluster.get_task_lease(namespace, name)
            if fresh is None:
                return
            lease = fresh
        except NotFound:
            return


async def revoke_task(
    cluster: Cluster,
    providers: Mapping[str, Provider],
    namespace: str,
    lease_name: str,
    reason: str,
    *,
    metrics: OperatorMetrics | None,
    seen_at: float | None = None,
    backoff: Backoff = Backoff(),
    now: Callable[[], datetime] = _utcnow,
    sleep: Callable[[float], Any] = asyncio.sleep,
    replica: str = REPLICA_ID,
    claim_seconds: float = CLAIM_SECONDS,
) -> RevokeOutcome:
    """Revoke every unrevoked lease of a TaskLease at its source; durable and idempotent.

    One replica revokes: the first to move the TaskLease to Revoking records itself as
    ``status.revoker`` and renews that claim on every attempt; others return at once
    (``claimed_by`` set) unless the claim is older than ``claim_seconds``.

    Marks the TaskLease Revoking (first reason wins), revokes concurrently, records each result,
    retries failures with capped exponential backoff (lastError on the lease, a Warning Event on
    the pod, ``revocation_failures_total``), then marks it Revoked and releases the finalizer once
    every lease is revoked or declared not revocable. When attempts run out the outcome says
    ``done=False`` and the TaskLease stays Revoking for the sweep to finish. Cluster errors
    propagate: nothing is lost, a re-run picks up from the TaskLease.
    """
    outcome = RevokeOutcome(lease=f"{namespace}/{lease_name}", done=False)
    lease = await cluster.get_task_lease(namespace, lease_name)
    if lease is None:
        outcome.done = True
        return outcome
    # claim the revocation: every replica sees the same pod event, one revokes at the source; a
    # claim not renewed within CLAIM_SECONDS (its replica died) is taken over by the next caller
    while True:
        status = lease.get("status") or {}
        if status.get("phase") == REVOKED:
            break
        claim = status.get("revoker") or {}
        claimed_at = parse_timestamp(claim.get("at"))
        held_by_other = (
            status.get("phase") == REVOKING
            and claim.get("id") not in (None, replica)
            and claimed_at is not None
            and (now() - claimed_at).total_seconds() < claim_seconds
        )
        if held_by_other:
            outcome.claimed_by = claim.get("id")
            return await _settle_held_here(
                cluster, providers, lease, reason, metrics=metrics, now=now, outcome=outcome
            )
        try:
            lease = await cluster.patch_task_lease(
                namespace,
                lease_name,
                {
                    "metadata": _rv(lease),
                    "status": {
                        "phase": REVOKING,
                        "reason": status.get("reason") or reason,
                        "revoker": {"id": replica, "at": format_time(now())},
                    },
                },
                subresource="status",
            )
            break
        except NotFound:
            return _collected(outcome)
        except Conflict:
            fresh = await cluster.get_task_lease(namespace, lease_name)
            if fresh is None:
                return _collected(outcome)
            lease = fresh
    reason = (lease.get("status") or {}).get("reason") or reason
    for attempt in range(max(1, backoff.attempts)):
        pending = [e for e in (lease.get("status") or {}).get("leases") or [] if not e.get("revokedAt")]
        if not pending:
            break
        if attempt:
            await sleep(backoff.delay(attempt - 1))
        outcome.failed.clear()
        changes = await _revoke_entries(
            cluster, providers, lease, pending, reason, metrics=metrics, now=now, outcome=outcome
        )
        renew_claim = {"revoker": {"id": replica, "at": format_time(now())}}
        try:
            lease = await _write_changes(cluster, lease, changes, renew_claim)
        except NotFound:
            return _collected(outcome)
    pending = [e for e in (lease.get("status") or {}).get("leases") or [] if not e.get("revokedAt")]
    if pending:
        outcome.failed = sorted({e["credential"] for e in pending})
        return outcome
    if (lease.get("status") or {}).get("phase") != REVOKED:
        try:
            revoked = {"phase": REVOKED, "revokedAt": format_time(now())}
            lease = await _write_changes(cluster, lease, {}, revoked)
        except NotFound:
            return _collected(outcome)
    await _release_finalizer(cluster, lease)
    outcome.done = True
    if metrics is not None and seen_at is not None:
        metrics.revocation_lag.observe(max(0.0, time.monotonic() - seen_at))
    log.info(
        "task leases revoked",
        extra=fields(
            namespace=namespace,
            lease=lease_name,
            reason=reason,
            revoked=outcome.revoked,
            not_revocable=outcome.not_revocable,
        ),
    )
    return outcome


def _held_here(providers: Mapping[str, Provider], entry: Mapping[str, Any]) -> bool:
    holds = getattr(providers.get(entry.get("provider", "")), "holds", None)
    return bool(holds and holds(entry.get("leaseRef", ""), entry.get("target")))


async def _settle_held_here(
    cluster: Cluster,
    providers: Mapping[str, Provider],
    lease: dict[str, Any],
    reason: str,
    *,
    metrics: OperatorMetrics | None,
    now: Callable[[], datetime],
    outcome: RevokeOutcome,
) -> RevokeOutcome:
    """Another replica holds the claim: revoke only the entries this replica alone can settle
    (it holds them in memory — see ``providers.replica``), which the claimant waits for. When
    none is left pending, finish the TaskLease too (idempotent with the claimant finishing it)."""
    status = lease.get("status") or {}
    pending = [e for e in status.get("leases") or [] if not e.get("revokedAt")]
    mine = [e for e in pending if _held_here(providers, e)]
    if not mine:
        return outcome
    reason = status.get("reason") or reason
    changes = await _revoke_entries(
        cluster, providers, lease, mine, reason, metrics=metrics, now=now, outcome=outcome
    )
    try:
        lease = await _write_changes(cluster, lease, changes, {})
    except NotFound:
        return _collected(outcome)
    if any(not e.get("revokedAt") for e in (lease.get("status") or {}).get("leases") or []):
        return outcome
    try:
        lease = await _write_changes(cluster, lease, {}, {"phase": REVOKED, "revokedAt": format_time(now())})
    except NotFound:
        return _collected(outcome)
    await _release_finalizer(cluster, lease)
    outcome.done = not outcome.failed
    return outcome


def _collected(outcome: RevokeOutcome) -> RevokeOutcome:
    """The TaskLease went while we revoked: done. A TaskLease is deleted only once its finalizer is
    released, and that follows only the revocation of every lease on it (another call's, under
    churn: a pod's terminal status and its deletion both revoke) or a person removing it by hand."""
    outcome.done = not outcome.failed
    if outcome.failed:  # it went by hand while these still failed: nothing is left to retry from
        log.warning(
            "task lease deleted while revocations were failing",
            extra=fields(lease=outcome.lease, failed=sorted(outcome.failed)),
        )
    else:
        log.info("task lease already revoked and collected", extra=fields(lease=outcome.lease))
    return outcome


async def revoke_pod_task(
    cluster: Cluster,
    providers: Mapping[str, Provider],
    pod: Mapping[str, Any],
    reason: str,
    seen_at: float | None = None,
    *,
    metrics: OperatorMetrics | None,
    backoff: Backoff = Backoff(),
    replica: str = REPLICA_ID,
) -> RevokeOutcome | None:
    """Revoke the task named on ``pod`` (the lifecycle handlers' RevokeFn, with the first args bound).

    Records the ending even when nothing was issued yet, so the task is refused from now on.
    Returns None for a pod without a task annotation (nothing to revoke).
    """
    meta = pod.get("metadata") or {}
    task = (meta.get("annotations") or {}).get(names.ANNOTATION_TASK)
    if not task or not meta.get("uid"):
        return None
    name = lease_name(meta["name"], task)
    existing = await cluster.get_task_lease(meta["namespace"], name)
    if existing is not None and not owned_by(existing, meta["uid"]):
        # another pod's of the same name. A successor's, when its owner is the pod the API has now:
        # this is a late event (or a handler's retry) for a pod that is gone, and must not end the
        # new pod's task. Otherwise a predecessor's: an orphan, revoked now.
        if await _owner_pod(cluster, existing) is not None:
            return RevokeOutcome(lease=f"{meta['namespace']}/{name}", done=True)
        return await revoke_task(
            cluster,
            providers,
            meta["namespace"],
            name,
            "pod_deleted",
            metrics=metrics,
            seen_at=seen_at,
            backoff=backoff,
        )
    if meta.get("deletionTimestamp") is None and reason != "pod_deleted":
        await record_ended(cluster, pod, task, reason)
    return await revoke_task(
        cluster, providers, meta["namespace"], name, reason,
        metrics=metrics, seen_at=seen_at, backoff=backoff, replica=replica,
    )


async def revoke_expired(
    cluster: Cluster,
    providers: Mapping[str, Provider],
    *,
    metrics: OperatorMetrics | None,
    namespace: str | None = None,
    now: Callable[[], datetime] = _utcnow,
    pending_grace: timedelta = PENDING_GRACE,
) -> int:
    """On Active TaskLeases, revoke leases past their expiresAt (reason ``expired``), superseded
    ones a renewal could not revoke (reason ``superseded``: only the replica holding such a lease can,
    so on the others it stays pending with lastError saying who), and pending entries older than
    ``pending_grace`` (reason ``interrupted``: an operator stopped between asking the source and
    recording the answer); returns how many were settled.

    A lease cut to its grant (:func:`cap_to_grant`: ``sourceExpiresAt`` later than ``expiresAt``)
    is thus killed at its source within one sweep interval after the granted end; a failure is
    retried by each sweep until ``sourceExpiresAt`` (:func:`_past_expiry`)."""
    total = 0
    current = now()
    for lease in await cluster.list_task_leases(namespace):
        status = lease.get("status") or {}
        if status.get("phase") != ACTIVE:
            continue
        unrevoked = [e for e in status.get("leases") or [] if not e.get("revokedAt")]
        expired = [e for e in unrevoked if (parse_timestamp(e.get("expiresAt")) or current) < current]
        superseded = [e for e in unrevoked if e.get("supersededAt") and e not in expired]
        interrupted = [
            e for e in unrevoked
            if e.get("pending") and e not in expired
            and (parse_timestamp(e.get("issuedAt")) or current) + pending_grace < current
        ]
        if not expired and not superseded and not interrupted:
            continue
        outcome = RevokeOutcome(lease=lease["metadata"]["name"], done=False)
        changes: dict[str, dict[str, Any]] = {}
        sorts = ((expired, "expired"), (superseded, "superseded"), (interrupted, "interrupted"))
        for pending, reason in sorts:
            if pending:
                changes.update(await _revoke_entries(
                    cluster, providers, lease, pending, reason, metrics=metrics, now=now, outcome=outcome
                ))
        if not changes:
            continue
        try:
            await _write_changes(cluster, lease, changes, {})
        except NotFound:
            # collected since the list (its task ended meanwhile): its finalizer was released only after
            # every lease on it was revoked, so there is nothing to record; the rest of the sweep goes on
            pass
        total += len(outcome.revoked) + len(outcome.not_revocable)
    return total


#: how long the sweep trusts what the pod watch (or its own GET) last said about a pod before it
#: GETs the pod again: a safety net, the worst-case extra delay before a pod that went away (or
#: ended) without any event or re-list telling this replica is revoked (see :class:`PodView`)
POD_VIEW_TRUST: Final = 900.0
#: listing events (kopf's type None) further apart than this start a new list: a re-list
LISTING_GAP: Final = 5.0


def _owner_uid(lease: Mapping[str, Any]) -> str | None:
    return (((lease.get("metadata") or {}).get("ownerReferences") or [{}])[0]).get("uid")


def _slim_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What :func:`task_ending` reads of a pod, and nothing else (the view holds one per live pod)."""
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    kept = (names.ANNOTATION_TASK_STATUS, names.ANNOTATION_MAX_DURATION)
    return {
        "metadata": {
            "creationTimestamp": meta.get("creationTimestamp"),
            "deletionTimestamp": meta.get("deletionTimestamp"),
            "annotations": {k: annotations[k] for k in kept if k in annotations},
        },
        "status": {"phase": (pod.get("status") or {}).get("phase")},
    }


@dataclass
class SweepCounts:
    """What one :func:`sweep_leases` run did (logged at DEBUG; :attr:`PodView.last_sweep` for tests)."""

    leases: int = 0  # TaskLeases listed
    pod_gets: int = 0  # pods read from the API
    answered_by_view: int = 0  # pods the view vouched for: GETs saved
    revocations: int = 0  # revoke_task runs started


@dataclass
class _Seen:
    namespace: str
    name: str
    pod: dict[str, Any]  # _slim_pod
    learned_at: float  # monotonic
    fresh_until: float  # monotonic


class PodView:
    """What this replica last learned about each opted-in pod whose task runs, so that the sweep need
    not GET every such pod every interval.

    Fed by the lifecycle's pod event handler (:meth:`observe`: every watch event of an opted-in pod)
    and by the sweep's own GETs (:meth:`confirm`). It can only *save* a GET, never decide a
    revocation: the sweep skips the GET of a TaskLease's pod only when the view holds that pod, with
    the owner's uid and name, learned less than ``trust_for`` seconds ago, and its task has not ended
    by what the view holds (:meth:`vouches`). Anything else — unknown (a fresh start), another uid,
    ended, or stale — goes to the GET, which decides exactly as without a view.

    A pod deleted while the watch was down: kopf resumes a broken watch from its resourceVersion, and
    the API replays what was missed, DELETED included. Only after a ``410 Gone`` (or a restart of
    the watch) does kopf list again instead, and a pod deleted in that gap gets no event at all. So a
    list (events of type None, :meth:`observe` with ``listing``) makes every entry learned before it
    untrusted until the list (or a GET) brings it again: a pod missing from the list is read at the
    next sweep. Besides, the garbage collector marks the TaskLease of a deleted pod for deletion, and
    the sweep revokes such a lease without any pod lookup. As a safety net against any gap not
    covered by these, an entry is trusted for ``trust_for`` at most after it was last learned.

    Bounds (sweep interval 30 s): a pod deleted or ended while its events reached this replica, or
    one whose TaskLease the garbage collector marked: the next sweep, as without a view. One missed in
    a watch gap: the first sweep after kopf's re-list. Anything else: ``trust_for`` + one interval
    after the pod was last seen (15.5 min by default). Each live pod costs at most one GET per
    ``trust_for`` (jittered by ``jitter``, so pods learned at once are not re-read at once) — not
    one per sweep.

    Memory: one small entry per live opted-in pod (uid, name, the annotations and phase
    :func:`task_ending` reads). Entries go on a DELETED or ending event, when the pod's TaskLease is
    Revoked, when a GET finds the pod gone or replaced, and when stale (:meth:`prune`, each sweep).
    Uids that ended are remembered for ``trust_for`` so that a GET answered before the ending event
    cannot bring them back.
    """

    def __init__(
        self,
        *,
        trust_for: float = POD_VIEW_TRUST,
        jitter: float = 0.25,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.trust_for = trust_for
        self.jitter = jitter
        self._monotonic = monotonic
        self._pods: dict[str, _Seen] = {}  # by uid
        self._by_name: dict[tuple[str, str], str] = {}  # (namespace, name) -> uid
        self._gone: dict[str, float] = {}  # uid -> when it ended or went (monotonic)
        self._listed_from = float("-inf")  # when the latest list began: entries older are untrusted
        self._last_listing = float("-inf")
        self.last_sweep = SweepCounts()

    def __len__(self) -> int:
        return len(self._pods)

    def __contains__(self, uid: object) -> bool:
        return uid in self._pods

    def observe(self, pod: Mapping[str, Any], *, live: bool, listing: bool = False) -> None:
        """One watch event: ``live`` when the pod's task runs on (not deleted, not ended); ``listing``
        when it comes from a list (kopf's event type None) rather than the watch stream."""
        if listing:
            now = self._monotonic()
            if now - self._last_listing > LISTING_GAP:
                self._listed_from = now  # a new list: whatever it does not bring again may be gone
            self._last_listing = now
        uid = (pod.get("metadata") or {}).get("uid")
        if not uid:
            return
        if not live:
            self.forget(uid, ended=True)
            return
        self._learn(pod, uid)

    def confirm(self, pod: Mapping[str, Any]) -> None:
        """The sweep's GET found this pod, with its task running: trust it again for ``trust_for``."""
        uid = (pod.get("metadata") or {}).get("uid")
        if uid:
            self._learn(pod, uid)

    def forget(self, uid: str | None, *, ended: bool = False) -> None:
        """Drop a pod; ``ended``: its task is over for good (no later answer may bring it back)."""
        if not uid:
            return
        if ended:
            self._gone[uid] = self._monotonic()
        seen = self._pods.pop(uid, None)
        if seen is not None and self._by_name.get((seen.namespace, seen.name)) == uid:
            del self._by_name[(seen.namespace, seen.name)]

    def vouches(self, lease: Mapping[str, Any], now: datetime) -> bool:
        """Whether the view alone says this TaskLease's pod is there, the same pod, its task running."""
        seen = self._pods.get(_owner_uid(lease) or "")
        if seen is None or seen.fresh_until <= self._monotonic() or seen.learned_at < self._listed_from:
            return False
        meta = lease.get("metadata") or {}
        if (seen.namespace, seen.name) != (meta.get("namespace"), (lease.get("spec") or {}).get("pod")):
            return False
        return task_ending(seen.pod, now=now) is None

    def prune(self) -> int:
        """Drop stale entries (a GET decides for them anyway) and old ended uids; how many went."""
        now = self._monotonic()
        stale = [uid for uid, seen in self._pods.items() if seen.fresh_until <= now]
        for uid in stale:
            self.forget(uid)
        for uid in [u for u, at in self._gone.items() if at + self.trust_for <= now]:
            del self._gone[uid]
        return len(stale)

    def _learn(self, pod: Mapping[str, Any], uid: str) -> None:
        if uid in self._gone:
            return  # ended or deleted: an older answer must not revive it
        meta = pod.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        previous = self._by_name.get(key)
        if previous is not None and previous != uid:
            self.forget(previous)  # a name is one pod's at a time: the predecessor is gone
        trust = self.trust_for * (1.0 - self.jitter * random.random())  # noqa: S311 - spreading, not secrecy
        now = self._monotonic()
        self._pods[uid] = _Seen(key[0], key[1], _slim_pod(pod), now, now + trust)
        self._by_name[key] = uid


async def _owner_pod(cluster: Cluster, lease: Mapping[str, Any]) -> dict[str, Any] | None:
    """The TaskLease's pod as the API has it now (one GET); None when it is gone or was replaced
    by another pod of the same name (another uid), or when the TaskLease itself is being deleted."""
    meta = lease["metadata"]
    if meta.get("deletionTimestamp"):
        return None
    pod = await cluster.get_pod(meta["namespace"], (lease.get("spec") or {}).get("pod", ""))
    if pod is None or (pod.get("metadata") or {}).get("uid") != _owner_uid(lease):
        return None
    return pod


async def find_orphaned_leases(cluster: Cluster, namespace: str | None = None) -> list[dict[str, Any]]:
    """TaskLeases not yet Revoked whose pod is gone (or replaced by one with another uid)."""
    out = []
    for lease in await cluster.list_task_leases(namespace):
        if (lease.get("status") or {}).get("phase") == REVOKED:
            continue
        if await _owner_pod(cluster, lease) is None:
            out.append(lease)
    return out


async def _sweep_reason(
    cluster: Cluster,
    lease: Mapping[str, Any],
    now: datetime,
    view: PodView | None = None,
    counts: SweepCounts | None = None,
) -> str | None:
    """Why the sweep must (re)run revocation of this TaskLease, or None to leave it alone.

    Revoking (or Revoked with the finalizer still on): finish it, no pod lookup. A TaskLease being
    deleted (the garbage collector's doing once its pod went): ``pod_deleted``, no pod lookup. A pod
    the ``view`` vouches for (:meth:`PodView.vouches`): left alone, no pod lookup. Otherwise one GET
    of its pod — the same the orphan check always made: gone or replaced is ``pod_deleted``; a task
    that has ended (terminal status, finished phase, deadline: :func:`task_ending`) gets its reason.
    That catches an ending the lifecycle handler saw but could not record (an API error before the
    TaskLease reached Revoking) and one it never saw.
    """
    counts = counts if counts is not None else SweepCounts()
    status = lease.get("status") or {}
    phase = status.get("phase")
    if phase == REVOKED and view is not None:
        view.forget(_owner_uid(lease))  # its task is over: nothing left for the view to save
    if phase == REVOKING or (
        phase == REVOKED and names.FINALIZER_REVOKE in (lease["metadata"].get("finalizers") or [])
    ):
        return status.get("reason") or "pod_deleted"
    if phase == REVOKED:
        return None
    if lease["metadata"].get("deletionTimestamp"):
        return "pod_deleted"
    if view is not None and view.vouches(lease, now):
        counts.answered_by_view += 1
        return None
    counts.pod_gets += 1
    pod = await _owner_pod(cluster, lease)
    if pod is None:
        if view is not None:
            view.forget(_owner_uid(lease), ended=True)
        return "pod_deleted"
    reason = task_ending(pod, now=now)
    if view is not None:
        if reason is None:
            view.confirm(pod)
        else:
            view.forget(_owner_uid(lease), ended=True)
    return reason


async def sweep_leases(
    cluster: Cluster,
    providers: Mapping[str, Provider],
    *,
    metrics: OperatorMetrics | None,
    namespace: str | None = None,
    backoff: Backoff = Backoff(),
    replica: str = REPLICA_ID,
    now: Callable[[], datetime] = _utcnow,
    view: PodView | None = None,
) -> list[RevokeOutcome]:
    """The periodic sweep: finish Revoking leases, revoke Active ones whose task ended or whose pod is
    gone (pod_deleted), and revoke expired leases.

    One list of TaskLeases, and a pod GET only for an Active one whose pod the ``view`` does not
    vouch for (without a view: one per Active TaskLease). With the lifecycle feeding the view, a
    steady state costs no pod GET per sweep; each live pod is re-read at most once per
    ``view.trust_for`` (see :class:`PodView` for the bounds on revoking a deletion never seen).
    What it did is logged at DEBUG and kept in ``view.last_sweep``.

    An API error on one TaskLease is logged and the sweep goes on with the others; the next sweep
    retries it (the sweep's interval is its backoff). Failing to list at all raises: the caller
    retries at the next interval.
    """
    outcomes = []
    counts = SweepCounts()
    if view is not None:
        view.prune()
    listed = await cluster.list_task_leases(namespace)
    counts.leases = len(listed)
    for lease in listed:
        key = (lease["metadata"]["namespace"], lease["metadata"]["name"])
        try:
            reason = await _sweep_reason(cluster, lease, now(), view, counts)
            if reason is None:
                continue
            counts.revocations += 1
            outcome = await revoke_task(
                cluster, providers, key[0], key[1], reason, metrics=metrics, backoff=backoff, now=now,
                replica=replica,
            )
        except NotFound:
            continue  # collected since the list: released (so revoked) by whoever finished it
        except ClusterError as exc:
            log.warning(
                "sweep could not revoke this TaskLease; the next sweep retries",
                extra=fields(namespace=key[0], lease=key[1], error=str(exc)),
            )
            continue
        outcomes.append(outcome)
    if view is not None:
        view.last_sweep = counts
    log.debug(
        "lease sweep",
        extra=fields(
            task_leases=counts.leases,
            pod_gets=counts.pod_gets,
            answered_by_pod_view=counts.answered_by_view,
            revocations=counts.revocations,
            pod_view_size=len(view) if view is not None else None,
        ),
    )
    await revoke_expired(cluster, providers, metrics=metrics, namespace=namespace, now=now)
    if metrics is not None:
        active = count_active([lease for lease in await cluster.list_task_leases(namespace)])
        for provider in set(providers) | set(active):
            metrics.leases_active.labels(provider=provider).set(active.get(provider, 0))
    return outcomes
