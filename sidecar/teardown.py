"""Teardown: the task is over, so the credentials go, once and for good.

Order matters: the marker first (a sidecar restarted mid-teardown never fetches again), then the
broker is asked to revoke everything (best effort, short timeout, in parallel) while the files are
overwritten and unlinked, so a dead broker never delays the wipe. When the broker itself said the
task ended, it is already revoking and is not asked again.
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
    writer.mark_ended(reason)
    revoke: asyncio.Task[list[str]] | None = None
    if client is not None:
        revoke = asyncio.create_task(client.revoke_task(reason, timeout=revoke_timeout))
    writer.wipe()
    wiped_after = time.monotonic() - started
    metrics.teardown.labels(reason=reason).inc()
    metrics.ready.set(0)
    metrics.credential_expiry.clear()
    _log.info("credentials wiped", extra=fields(task=task, reason=reason, seconds=round(wiped_after, 4)))
    if revoke is not None:
        try:
            revoked = await asyncio.wait_for(revoke, revoke_timeout + 0.5)
            _log.info("broker revoked the task", extra=fields(task=task, revoked=revoked))
        except (SidecarError, TimeoutError) as exc:
            # the operator revokes on its own when the task status turns terminal or the pod goes
            _log.warning("broker revoke failed; the operator revokes on its own",
                         extra=fields(task=task, reason=reason, error=f"{type(exc).__name__}: {exc}"))
    return wiped_after
