"""Which operator replica issued a credential, and whether that replica can still revoke it.

Some credentials can be revoked only with something the issuing process holds in memory (a GitHub
installation token: revocation needs the token itself, which is never stored in a CR). With the
chart's two replicas, the replica that revokes is often not the one that issued, so the TaskLease
entry records the issuer as non-secret facts (``Issued.target``): its pod's namespace, name and uid
and a per-process instance id. Another replica then knows whom to wait for, and when waiting is
pointless: the issuing pod is gone (or replaced by another of the same name), or — seen by the
issuing pod itself — its process restarted and lost what it held.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from taskcreds.operator.cluster import Cluster

from taskcreds import names

__all__ = ["Replica", "replica_from_env", "POD_UID_ENV"]

#: the operator pod's uid (downward API ``metadata.uid``); optional: looked up by name when unset
POD_UID_ENV: Final = names.ENV_POD_UID
_KEYS = ("replicaNamespace", "replica", "replicaUID", "replicaInstance")


@dataclass(frozen=True)
class Replica:
    """One operator process: its pod (namespace, name, uid when known) and a per-process id."""

    namespace: str
    pod: str
    uid: str = ""
    instance: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def target(self) -> dict[str, str]:
        """The entry's record of this replica (non-secret)."""
        return dict(zip(_KEYS, (self.namespace, self.pod, self.uid, self.instance), strict=True))

    @classmethod
    def from_target(cls, target: Mapping[str, str] | None) -> Replica | None:
        """The replica an entry names, or None for an entry that names none (issued before this
        was recorded)."""
        if not target or not target.get("replica"):
            return None
        return cls(
            namespace=target.get("replicaNamespace") or "",
            pod=target["replica"],
            uid=target.get("replicaUID") or "",
            instance=target.get("replicaInstance") or "",
        )

    def same_pod(self, other: Replica) -> bool:
        """Same pod (a restarted process in it counts: same pod, another instance)."""
        return (
            self.namespace == other.namespace
            and self.pod == other.pod
            and (not self.uid or not other.uid or self.uid == other.uid)
        )

    def same_process(self, other: Replica) -> bool:
        return self.same_pod(other) and self.instance == other.instance

    async def pod_alive(self, cluster: Cluster) -> bool:
        """Whether this replica's pod exists (with its uid, when recorded). Cluster errors propagate."""
        pod = await cluster.get_pod(self.namespace, self.pod)
        if pod is None:
            return False
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            return True  # terminating: its process may still run its sweep; retried until it is gone
        return not self.uid or (pod.get("metadata") or {}).get("uid") == self.uid

    def __str__(self) -> str:
        return f"{self.namespace}/{self.pod}"


def replica_from_env(default_namespace: str = "taskcreds-system") -> Replica:
    """This process: ``HOSTNAME`` (the pod name in Kubernetes), ``TASKCREDS_NAMESPACE``, and the
    pod uid from ``TASKCREDS_POD_UID`` when the chart passes it (else looked up by the provider)."""
    return Replica(
        namespace=os.environ.get(names.ENV_OPERATOR_NAMESPACE) or default_namespace,
        pod=os.environ.get("HOSTNAME") or "operator",
        uid=os.environ.get(POD_UID_ENV, ""),
    )
