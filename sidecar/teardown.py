"""Teardown: the task is over, so the credentials go, once and for good.

Order matters: the marker first (a sidecar restarted mid-teardown never fetches again), then the
broker is asked to revoke everything (best effort, short timeout, in parallel) while the files are
overwritten and unlinked, so a dead broker never delays the wipe. When the broker itself said the
task ended, it is already revoking and is not asked again.

On a full volume the marker cannot be written before the wipe (it is the one new file teardown
makes): then the wipe goes first, frees the space, and the marker follows. The wipe itself creates
nothing and unlinks every file even where overwriting it fails.
"""

from __future__ import annotations

import asyncio
import logging
import time

from taskcreds.sidecar.client import BrokerClient
from taskcreds.sidecar.errors import SidecarError
from taskcreds.sidecar.writer import CredentialWriter

from taskcreds.logs import fields
from taskcreds.metrics import SidecarMetrics

__all__ = ["teardown"]

_log = logging.getLogger("taskcreds.sidecar.teardown")


async def teardown(reason: str, *, writer: CredentialWriter, metrics: SidecarMetrics, task: str,
                   client: BrokerClient | None = None, revoke_timeout: float = 2.0) -> float:
    """Mark ended, revoke (best effort) and wipe; returns the seconds the wipe took to complete.

    ``client`` None: do not call the broker (it told us the task ended, or was never reached).
    """
    started = time.monotonic()
    marker_error: OSError | None = None
    try:
        writer.mark_ended(reason)
    except OSError as exc:
        marker_error = exc  # e.g. ENOSPC: wipe first, then try again
    revoke: asyncio.Task[list[str]] | None = None
    if client is not None:
        revoke = asyncio.create_task(client.revoke_task(reason, timeout=revoke_timeout))
    wipe_error: OSError | None = None
    try:
        writer.wipe()
    except OSError as exc:
        wipe_error = exc  # raised at the end: revoke and metrics go on
    if marker_error is not None:
        first = f"{type(marker_error).__name__}: {marker_error.strerror}"
        try:
            writer.mark_ended(reason)
            _log.warning("teardown marker written after the wipe: the volume was full",
                         extra=fields(task=task, reason=reason, error=first))
        except OSError as exc:
            _log.error("cannot write the teardown marker: a restarted sidecar would fetch again "
                       "(the broker refuses once the task status is terminal)", extra=fields(
                           task=task, reason=reason, error=f"{type(exc).__name__}: {exc.strerror}"))
    wiped_after = time.monotonic() - started
    metrics.teardown.labels(reason=reason).inc()
    metrics.ready.set(0)
    metrics.credential_expiry.clear()
    if wipe_error is None:
        _log.info("credentials wiped", extra=fields(task=task, reason=reason, seconds=round(wiped_after, 4)))
    if revoke is not None:
        try:
            revoked = await asyncio.wait_for(revoke, revoke_timeout + 0.5)
            _log.info("broker revoked the task", extra=fields(task=task, revoked=revoked))
        except (SidecarError, TimeoutError) as exc:
            # the operator revokes on its own when the task status turns terminal or the pod goes
            _log.warning("broker revoke failed; the operator revokes on its own",
                         extra=fields(task=task, reason=reason, error=f"{type(exc).__name__}: {exc}"))
    if wipe_error is not None:
        raise wipe_error
    return wiped_after
