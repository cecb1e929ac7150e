"""Soak: many short-lived agent pods with churn and short TTLs against one real operator.

    .venv/bin/python -m tests.soak                       # the full soak: 500 pods, 10 minutes
    .venv/bin/python -m tests.soak --pods 60 --duration 25 --concurrency 15

What runs (every part real except the kubelet and the cluster):

- the Kubernetes API stand-in (tests/kube) in this process, with the chart's CRDs, a
  MutatingWebhookConfiguration (failurePolicy Fail) and a ``jwt`` CredentialSource;
- one taskcreds-operator (``run_operator``: webhook + broker + kopf lifecycle + sweep) in a child
  process (:mod:`tests.soak.child`), so its RSS, fds, threads and loop tasks are its own;
- per pod, in this process: the pod created through the API (so the operator's webhook injects it
  over HTTPS), a pod-bound token, an X.509-SVID from the dev authority, and a simulated sidecar:
  the real :class:`taskcreds.sidecar.client.BrokerClient` issuing with the pod's TTL (2-4 s),
  renewing at 2/3 of each lifetime and holding the task-status long-poll.

Churn: pods arrive at a steady rate, each lives so that about ``--concurrency`` are live at once, and
ends one of three ways in turn: task-status ``completed``, ``failed`` (then the pod is deleted, as a
Job's cleanup would), or the pod deleted outright. One extra "long runner" lives for the whole soak
at the shortest TTL to show what renewals do to its TaskLease (one entry per renewal; entries
revoked and expired over 5 minutes ago are dropped since fe9bb09).

Measured: operator RSS every few seconds (first vs last third of the load), open fds, threads and
asyncio tasks of the operator's loop before and after (after every pod ended and every TaskLease was
collected), the operator's per-pod tables, TaskLeases left or not Revoked, revocation lag (annotation
patch or pod delete -> TaskLease Revoked with its finalizer released, or gone), issuance and renewal
latency, admission latency, and every error. Printed as a markdown table; exit 1 when a bound breaks.

No credential value is printed, logged or kept beyond the client objects that received it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import ssl
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskcreds import names
from taskcreds.devauthority import DevAuthority
from taskcreds.svid import X509SvidMaterial, client_context
from tests.kube.fixtures import KubeApi
from tests.operator.running import webhook_configuration

__all__ = ["SoakParams", "Bounds", "SoakResult", "run_soak", "main", "markdown"]

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "charts" / "taskcreds" / "crds"
TD = "taskcreds.local"
NS = "agents"
SA = "coding-agent"
OPERATOR_NS = "taskcreds-system"
OPERATOR_ID = f"spiffe://{TD}/ns/{OPERATOR_NS}/sa/taskcreds-operator"
AGENT_ID = f"spiffe://{TD}/ns/{NS}/sa/{SA}"
SOURCE = "api"
ENDINGS = ("completed", "failed", "deleted")
POLL = 0.01
LONG_RUNNER = "soak-long-runner"
ETCD_LIMIT = 1_572_864  # bytes: etcd's default request size limit, the ceiling for one object


@dataclass(frozen=True)
class SoakParams:
    pods: int = 500
    duration: float = 600.0
    """Seconds from the first arrival to the last pod's planned end."""
    concurrency: int = 50
    """Pods live at once, on average (Little's law sets each pod's lifetime)."""
    ttls: tuple[int, ...] = (2, 3, 4)
    """Credential TTLs in seconds, taken in turn (the pod's ``taskcreds.io/ttl``)."""
    sample_every: float = 5.0
    idle_timeout: float = 5.0
    """kopf's per-object worker idle timeout (its default; the drain waits past it)."""
    long_runner: bool = True
    seed: int = 7


@dataclass(frozen=True)
class Bounds:
    """What "stable" and "no leak" mean, checked by ``python -m tests.soak`` and the CI test alike."""

    leases_left: int = 0
    """TaskLeases still present, or not Revoked, once every pod ended and was deleted."""
    stuck: int = 0
    """Pods whose TaskLease was not Revoked within ``lag_timeout``."""
    errors: int = 0
    """Failed issues, renewals, long-polls or pod creations while the task was running."""
    fd_growth: int = 4
    """Open fds of the operator, after vs before, not counting its pooled Kubernetes API connections."""
    api_connections: int = 130
    """Open connections to the Kubernetes API after the run: kubernetes_asyncio's pool (limit 100)
    plus kopf's session and watches. Idle keep-alive connections stay until their timeout: bounded,
    not a leak, so they have their own bound."""
    thread_growth: int = 8
    """The loop's default executor (DNS lookups, file reads) keeps up to min(32, cpus + 4) threads."""
    task_growth: int = 2
    """asyncio tasks of the operator's loop, after vs before."""
    table_growth: int = 0
    """Per-pod entries left in the operator's lifecycle tables (latest, ended, deadlines)."""
    operator_errors: int = 0
    """ERROR records the operator logged (a failed sweep, a revocation left to the sweep)."""
    lag_p99: float = 5.0
    """Seconds, revocation lag p99: generous on purpose (2 shared cores, other suites running); what it
    catches is revocation falling back to the 30 s sweep, or stalling."""
    lag_timeout: float = 30.0
    rss_growth_mb: float = 24.0
    """Median RSS of the last third of the load minus that of the first third (MB)."""


@dataclass
class PodRecord:
    name: str
    ending: str
    ttl: int
    admit_s: float | None = None
    issue_s: float | None = None
    renewals: int = 0
    lag_s: float | None = None
    sidecar_told_s: float | None = None
    lease_entries: int = 0
    lease_bytes: int = 0
    renew_s: list[float] = field(default_factory=list, repr=False)


def _slope(points: list[tuple[float, float]], *, flat: float) -> float:
    """Least-squares slope of y over x; ``flat`` when every x is the same."""
    try:
        return statistics.linear_regression([x for x, _ in points], [y for _, y in points]).slope
    except statistics.StatisticsError:
        return flat


@dataclass
class SoakResult:
    params: SoakParams
    bounds: Bounds
    wall_s: float = 0.0
    pods: list[PodRecord] = field(default_factory=list)
    renew_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    refused_after_end: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    late_renewals: int = 0
    reissued: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)
    samples: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    load_window: tuple[float, float] = (0.0, 0.0)
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    leases_left: int = 0
    leases_not_revoked: int = 0
    stuck: list[str] = field(default_factory=list)
    long_runner: dict[str, Any] = field(default_factory=dict)
    peak_live: int = 0

    # --- figures ---------------------------------------------------------------------------------
    def lags(self) -> list[float]:
        return [p.lag_s for p in self.pods if p.lag_s is not None]

    def rss_thirds(self) -> tuple[float, float, float]:
        """(first third median, last third median, slope MB/min over the load) of the operator's RSS."""
        start, end = self.load_window
        load = [(t, s["rss_kb"] / 1024) for t, s in self.samples if start <= t <= end]
        if len(load) < 3:
            return (float("nan"),) * 3
        third = (end - start) / 3
        first = [m for t, m in load if t <= start + third]
        last = [m for t, m in load if t >= end - third]
        slope = _slope(load, flat=0.0)
        return statistics.median(first or [load[0][1]]), statistics.median(last or [load[-1][1]]), slope * 60

    def rss_per_live_pod(self) -> float:
        """MB of operator RSS per running pod: least squares over the samples up to the most pods.

        What sizes the operator (docs/install.md): its memory follows the pods running at once.
        """
        ramp = [(float(s["live_pods"]), s["rss_kb"] / 1024) for _, s in self.samples if "live_pods" in s]
        if ramp:
            most = max(live for live, _ in ramp)
            ramp = ramp[: max(i for i, (live, _) in enumerate(ramp) if live == most) + 1]
        if len(ramp) < 3:
            return float("nan")
        return _slope(ramp, flat=float("nan"))

    def checks(self) -> dict[str, str | None]:
        """Each bound by name: None when it held, else what broke, in words."""
        b, out = self.bounds, {}

        def check(name: str, broken: bool, message: str) -> None:
            out[name] = message if broken else None

        def grew(key: str) -> int:
            return int(self.after.get(key, 0)) - int(self.before.get(key, 0))

        left = self.leases_left + self.leases_not_revoked
        check(
            "leases left",
            left > b.leases_left,
            f"{self.leases_left} TaskLeases left, {self.leases_not_revoked} not Revoked (bound {b.leases_left})",
        )
        check(
            "revocations stuck",
            len(self.stuck) > b.stuck,
            f"{len(self.stuck)} TaskLeases not Revoked within {b.lag_timeout:g} s: {self.stuck[:5]}",
        )
        check(
            "errors",
            sum(self.errors.values()) > b.errors,
            f"errors while tasks ran: {dict(self.errors)}; first: {self.error_samples[:3]}",
        )
        for key, name, bound in (
            ("own_fds", "file descriptors", b.fd_growth),
            ("tasks", "loop tasks", b.task_growth),
            ("threads", "threads", b.thread_growth),
        ):
            check(
                name,
                grew(key) > bound,
                f"operator {name} grew by {grew(key)} (before "
                f"{self.before.get(key)}, after {self.after.get(key)}; bound {bound})",
            )
        tables = {k: grew(k) for k in ("lifecycle_latest", "lifecycle_ended", "lifecycle_deadlines")}
        check(
            "lifecycle tables",
            max(tables.values()) > b.table_growth,
            f"the operator's lifecycle tables hold entries after every pod ended: {tables}",
        )
        conns = int(self.after.get("api_conns", 0))
        check(
            "api connections",
            conns > b.api_connections,
            f"{conns} open Kubernetes API connections after the run (bound {b.api_connections})",
        )
        lags = self.lags()
        check(
            "revocation lag",
            not lags or not pct(lags, 0.99) <= b.lag_p99,
            f"revocation lag p99 {pct(lags, 0.99):.3f} s above {b.lag_p99:g} s"
            if lags
            else "no revocation lag measured: the soak proved nothing",
        )
        first, last, _ = self.rss_thirds()
        check(
            "rss",
            not last - first <= b.rss_growth_mb,
            f"operator RSS grew {last - first:.1f} MB from the first to the last third (bound {b.rss_growth_mb:g} MB)",
        )
        logged = {
            k: v for k, v in (self.after.get("warnings") or {}).items() if k.startswith(("ERROR", "CRITICAL"))
        }
        check(
            "operator errors logged",
            sum(logged.values()) > b.operator_errors,
            f"the operator logged errors: {logged}; first: {(self.after.get('warning_samples') or [])[:3]}",
        )
        ran = sum(1 for x in self.pods if x.name != LONG_RUNNER)
        check("every pod ran", ran < self.params.pods, f"only {ran} of {self.params.pods} pods ran")
        return out

    def failures(self) -> list[str]:
        """Every bound this run broke, in words."""
        return [m for m in self.checks().values() if m]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat)."""
    fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields_[11]) + int(fields_[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))]


class _Identity:
    """A sidecar's SVID as BrokerClient wants it (the real sidecar's IdentitySource, minus rotation)."""

    def __init__(self, svid: X509SvidMaterial) -> None:
        self._context = client_context(svid)

    def ssl_context(self) -> ssl.SSLContext:
        return self._context


class _Operator:
    """The child process running the operator; stats over a pipe, one request at a time."""

    def __init__(self, kube: KubeApi, svid: X509SvidMaterial, idle_timeout: float) -> None:
        from tests.soak.child import operator_child

        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(
            target=operator_child,
            args=(child_conn, kube.url, kube.admin_token, svid, idle_timeout),
            daemon=True,
            name="soak-operator",
        )
        self._lock = asyncio.Lock()
        self.ports: dict[str, int] = {}

    async def start(self, within: float = 90.0) -> None:
        self.process.start()
        if not await asyncio.to_thread(self._conn.poll, within):
            raise RuntimeError(f"the operator process said nothing within {within:g} s")
        kind, detail = self._conn.recv()
        if kind != "ready":
            raise RuntimeError(f"the operator process did not start: {detail}")
        self.ports = detail

    async def stats(self, deep: bool = False) -> dict[str, Any]:
        """RSS, fds, threads, loop tasks, per-pod tables; ``deep`` adds object counts by type."""
        async with self._lock:
            self._conn.send("deep-stats" if deep else "stats")
            if not await asyncio.to_thread(self._conn.poll, 30):
                raise RuntimeError("the operator process did not answer 'stats' within 30 s")
            stats = dict(self._conn.recv())
        api = sum(
            v for k, v in (stats.get("fd_kinds") or {}).items() if k.startswith("client conn to kube-api")
        )
        stats["api_conns"], stats["own_fds"] = api, stats["fds"] - api
        return stats

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self._conn.close()


def _setup_cluster(kube: KubeApi) -> None:
    kube.register_crds_from(CRDS)
    for ns in (OPERATOR_NS, NS):
        kube.ensure_namespace(ns)
    kube.put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SA, "namespace": NS}})
    kube.put(webhook_configuration(OPERATOR_NS, timeout=10))
    kube.put(
        {
            "apiVersion": names.API_VERSION,
            "kind": names.KIND_CREDENTIAL_SOURCE,
            "metadata": {"name": SOURCE, "namespace": NS},
            "spec": {"provider": "jwt", "defaultTTL": "3s", "maxTTL": "1h", "allowedServiceAccounts": [SA]},
        }
    )


def _pod(name: str, task: str, ttl: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {names.LABEL_INJECT: "true", "app": "soak-agent"},
            "annotations": {
                names.ANNOTATION_TASK: task,
                names.ANNOTATION_CREDENTIALS: SOURCE,
                names.ANNOTATION_TTL: f"{ttl}s",
            },
        },
        "spec": {
            "serviceAccountName": SA,
            "securityContext": {"fsGroup": 1000, "runAsUser": 1000},
            "containers": [{"name": "agent", "image": "example.com/agent:1"}],
        },
    }


class _Soak:
    """One soak run: the driver's state. Methods run on the driver's loop."""

    def __init__(self, params: SoakParams, bounds: Bounds) -> None:
        self.p, self.b = params, bounds
        self.result = SoakResult(params, bounds)
        self.rng = random.Random(params.seed)  # noqa: S311 - lifetimes, not secrets
        self.kube = KubeApi().start_sync()
        self.authority = DevAuthority(TD, allow=True)
        self.tokens = Path("/dev/shm") / f"taskcreds-soak-{uuid.uuid4().hex[:10]}"
        self.tokens.mkdir(mode=0o700)
        self.operator: _Operator | None = None
        self.api: Any = None
        self.live = 0
        self.t0 = time.monotonic()

    def close(self) -> None:
        if self.operator is not None:
            self.operator.stop()
        self.kube.stop_sync()
        shutil.rmtree(self.tokens, ignore_errors=True)

    # --- set-up ----------------------------------------------------------------------------------
    async def start(self) -> None:
        from kubernetes_asyncio import client

        _setup_cluster(self.kube)
        self.operator = _Operator(
            self.kube, self.authority.mint_x509_svid(OPERATOR_ID, ttl=24 * 3600), self.p.idle_timeout
        )
        await self.operator.start()
        self.kube.set_service_endpoint(
            OPERATOR_NS, "taskcreds-webhook", f"127.0.0.1:{self.operator.ports['webhook']}"
        )
        self.api = await self.kube.kubernetes_asyncio_client()
        core = client.CoreV1Api(self.api)
        # the webhook answers once its source index is primed: a dry run until it injects
        deadline = time.monotonic() + 30
        while True:
            try:
                made = await core.create_namespaced_pod(NS, _pod("soak-warmup", "warmup", 3), dry_run="All")
                if (made.metadata.annotations or {}).get(names.ANNOTATION_INJECTED):
                    break
            except client.ApiException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the operator's webhook never injected a dry-run pod within 30 s")
            await asyncio.sleep(0.1)  # noqa: ASYNC110 - polling the API stand-in's store, no event to wait on

    # --- one pod ---------------------------------------------------------------------------------
    async def agent(
        self, i: int, life: float, ending: str, ttl: int, name: str | None = None, task: str | None = None
    ) -> None:
        """One pod from creation to collection; every failure is counted, none ends the soak."""
        from kubernetes_asyncio import client as k8s

        name = name or f"soak-{i:04d}"
        task = task or f"task-{i}"
        rec = PodRecord(name=name, ending=ending, ttl=ttl)
        self.result.pods.append(rec)
        core = k8s.CoreV1Api(self.api)
        self.live += 1
        self.result.peak_live = max(self.result.peak_live, self.live)
        created = False
        try:
            started = time.monotonic()
            made = await core.create_namespaced_pod(NS, _pod(name, task, ttl))
            created = True
            rec.admit_s = time.monotonic() - started
            if not (made.metadata.annotations or {}).get(names.ANNOTATION_INJECTED):
                self.result.errors["pod not injected"] += 1
            deleted = await self.sidecar(rec, task, life, core)
            created = not deleted
        except Exception as exc:  # noqa: BLE001 - one pod's failure is a counted error, not the soak's end
            self.result.errors[f"driver: {type(exc).__name__}"] += 1
            self._sample_error(f"{name} driver: {type(exc).__name__}: {str(exc)[:240]}")
        finally:
            self.live -= 1
            if created:  # the Job's cleanup: the pod goes, its TaskLease is collected
                with contextlib.suppress(Exception):
                    await core.delete_namespaced_pod(name, NS)

    def _sample_error(self, text: str) -> None:
        if len(self.result.error_samples) < 10:
            self.result.error_samples.append(text)

    async def sidecar(self, rec: PodRecord, task: str, life: float, core: Any) -> bool:
        """The simulated sidecar for ``life`` seconds, then the task's end; True when the pod was deleted."""
        from taskcreds.operator.leases import lease_name
        from taskcreds.sidecar.client import BrokerClient
        from taskcreds.sidecar.errors import BrokerError, NotFound, TaskTerminal

        name, ended = rec.name, asyncio.Event()
        token_file = self.tokens / name
        token_file.write_text(self.kube.issue_pod_token(NS, name, SA))
        client = BrokerClient(
            url=f"https://127.0.0.1:{self.operator.ports['broker']}",  # type: ignore[union-attr]
            broker_spiffe_id=OPERATOR_ID,
            token_file=str(token_file),
            task=task,
            identity=_Identity(self.authority.mint_x509_svid(AGENT_ID, ttl=3600)),
        )
        told: asyncio.Future[float] = asyncio.get_running_loop().create_future()

        def fail(what: str, exc: BaseException) -> None:
            bucket = self.result.refused_after_end if ended.is_set() else self.result.errors
            bucket[f"{what}: {type(exc).__name__}"] += 1
            if not ended.is_set():
                self._sample_error(f"{name} {what}: {type(exc).__name__}: {str(exc)[:240]}")

        def due(cred: Any) -> float:  # renew at 2/3 of the lifetime, counted from receipt
            return time.monotonic() + (cred.expires_at - cred.issued_at).total_seconds() * 2 / 3

        async def renew_forever(creds: dict[str, tuple[Any, float]]) -> None:
            expired: set[str] = set()
            while True:
                cname, (cred, at) = min(creds.items(), key=lambda kv: kv[1][1])
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                t = time.monotonic()
                try:
                    if cname in expired:  # as the real sidecar: a lease gone at the broker -> issue anew
                        expired.discard(cname)
                        self.result.reissued += 1
                        new = next(c for c in (await client.issue([cname])).credentials if c.name == cname)
                    else:
                        new = await client.renew(cname, cred.lease_ref)
                except TaskTerminal:
                    return
                except NotFound as exc:
                    if ended.is_set():
                        fail("renew", exc)
                        return
                    # the lease expired (and the sweep revoked it) before this renewal landed: a late
                    # renewal, not a broken one; the next round issues anew, as runner.py does
                    self.result.late_renewals += 1
                    expired.add(cname)
                    creds[cname] = (cred, time.monotonic() + 0.1)
                    continue
                except BrokerError as exc:
                    fail("renew", exc)
                    if ended.is_set():
                        return
                    creds[cname] = (cred, time.monotonic() + 0.5)
                    continue
                self.result.renew_s.append(time.monotonic() - t)
                rec.renew_s.append(self.result.renew_s[-1])
                rec.renewals += 1
                creds[cname] = (new, due(new))

        async def watch_status() -> None:
            known: str | None = None
            while True:
                try:
                    status = await client.wait_status(known, 30.0)
                except TaskTerminal:
                    break
                except BrokerError as exc:
                    fail("status long-poll", exc)
                    if ended.is_set():
                        return
                    await asyncio.sleep(0.5)
                    continue
                known = status.status
                if status.terminal:
                    break
            if not told.done():
                told.set_result(time.monotonic())

        sidecar: list[asyncio.Task[None]] = []
        try:
            t = time.monotonic()
            try:
                result = await client.issue()
                rec.issue_s = time.monotonic() - t
                creds = {c.name: (c, due(c)) for c in result.credentials}
                sidecar.append(asyncio.create_task(renew_forever(creds)))
            except BrokerError as exc:
                fail("issue", exc)
            sidecar.append(asyncio.create_task(watch_status()))
            await asyncio.sleep(life)
            lease_obj = self.kube.get(names.API_VERSION, names.KIND_TASK_LEASE, NS, lease_name(name, task))
            if lease_obj is not None:
                rec.lease_entries = len((lease_obj.get("status") or {}).get("leases") or [])
                rec.lease_bytes = len(json.dumps(lease_obj, separators=(",", ":")))
            # the task ends
            t_end = time.monotonic()
            ended.set()
            if rec.ending == "deleted":
                await core.delete_namespaced_pod(name, NS)
            else:
                patch = {"metadata": {"annotations": {names.ANNOTATION_TASK_STATUS: rec.ending}}}
                await core.patch_namespaced_pod(name, NS, patch)
            if rec.issue_s is not None:
                rec.lag_s = await self.wait_revoked(lease_name(name, task), t_end)
                if rec.lag_s is None:
                    self.result.stuck.append(name)
            with contextlib.suppress(TimeoutError):
                rec.sidecar_told_s = await asyncio.wait_for(asyncio.shield(told), 10) - t_end
        finally:
            for s in sidecar:
                s.cancel()
            await asyncio.gather(*sidecar, return_exceptions=True)
            await client.close()
            with contextlib.suppress(OSError):
                token_file.unlink()
        return rec.ending == "deleted"

    async def wait_revoked(self, lease: str, t_end: float) -> float | None:
        """Seconds from ``t_end`` until the TaskLease is Revoked with its finalizer released (or gone:
        it can only go once the finalizer is released, which only follows revocation)."""
        while time.monotonic() - t_end < self.b.lag_timeout:
            obj = self.kube.get(names.API_VERSION, names.KIND_TASK_LEASE, NS, lease)
            if obj is None:
                return time.monotonic() - t_end
            released = names.FINALIZER_REVOKE not in (obj["metadata"].get("finalizers") or [])
            if released and (obj.get("status") or {}).get("phase") == "Revoked":
                return time.monotonic() - t_end
            await asyncio.sleep(POLL)
        return None

    # --- the run ---------------------------------------------------------------------------------
    async def sample_forever(self, long_lease: str | None) -> None:
        while True:
            stats = await self.operator.stats()  # type: ignore[union-attr]
            stats["live_pods"] = self.live
            if long_lease:
                obj = self.kube.get(names.API_VERSION, names.KIND_TASK_LEASE, NS, long_lease)
                if obj is not None:
                    stats["long_entries"] = len((obj.get("status") or {}).get("leases") or [])
                    stats["long_bytes"] = len(json.dumps(obj, separators=(",", ":")))
            self.result.samples.append((time.monotonic() - self.t0, stats))
            await asyncio.sleep(self.p.sample_every)

    async def run(self) -> SoakResult:
        from taskcreds.operator.leases import lease_name

        p = self.p
        await self.start()
        # the baseline once kopf's start-up settles: the same task count twice, half a second apart
        settle, last = time.monotonic() + 15, -1
        while time.monotonic() < settle:
            count = (await self.operator.stats())["tasks"]  # type: ignore[union-attr]
            if count == last:
                break
            last = count
            await asyncio.sleep(0.5)
        self.result.before = await self.operator.stats(deep=True)  # type: ignore[union-attr]
        cpu0 = (_cpu_seconds(self.operator.process.pid or 0), _cpu_seconds(os.getpid()))  # type: ignore[union-attr]
        # Little's law: arrivals over A, each living W, A + W = duration, concurrency = pods / A * W
        arrive_over = p.duration / (1 + p.concurrency / p.pods)
        life = p.concurrency * arrive_over / p.pods
        self.t0 = time.monotonic()
        long_lease = lease_name(LONG_RUNNER, "task-long") if p.long_runner else None
        sampler = asyncio.create_task(self.sample_forever(long_lease))
        agents: list[asyncio.Task[None]] = []
        if p.long_runner:
            agents.append(
                asyncio.create_task(
                    self.agent(-1, p.duration, "completed", min(p.ttls), name=LONG_RUNNER, task="task-long")
                )
            )
        for i in range(p.pods):
            await asyncio.sleep(max(0.0, self.t0 + i * arrive_over / p.pods - time.monotonic()))
            jittered = life * self.rng.uniform(0.7, 1.3)
            agents.append(
                asyncio.create_task(self.agent(i, jittered, ENDINGS[i % 3], p.ttls[i % len(p.ttls)]))
            )
        await asyncio.gather(*agents)
        self.result.load_window = (0.0, time.monotonic() - self.t0)
        # drain: every TaskLease collected, kopf's idle per-object workers gone
        deadline = time.monotonic() + self.b.lag_timeout
        while self.kube.list(names.API_VERSION, names.KIND_TASK_LEASE, NS):  # the store has no event to await
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(p.idle_timeout + 1.5)
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        self.result.after = await self.operator.stats(deep=True)  # type: ignore[union-attr]
        self.result.cpu_s = {
            "operator": _cpu_seconds(self.operator.process.pid or 0) - cpu0[0],  # type: ignore[union-attr]
            "driver": _cpu_seconds(os.getpid()) - cpu0[1],
        }
        left = self.kube.list(names.API_VERSION, names.KIND_TASK_LEASE)
        self.result.leases_left = len(left)
        self.result.leases_not_revoked = sum(
            1 for o in left if (o.get("status") or {}).get("phase") != "Revoked"
        )
        long = next((r for r in self.result.pods if r.name == LONG_RUNNER), None)
        if long is not None:
            decile = max(1, len(long.renew_s) // 10)
            self.result.long_runner = {
                "ttl": long.ttl,
                "seconds": p.duration,
                "renewals": long.renewals,
                "entries": long.lease_entries,
                "bytes": long.lease_bytes,
                "renew_p50_first_decile": pct(long.renew_s[:decile], 0.5),
                "renew_p50_last_decile": pct(long.renew_s[-decile:], 0.5),
            }
        await self.api.close()
        return self.result


async def run_soak(params: SoakParams, bounds: Bounds | None = None) -> SoakResult:
    """Run one soak on the running loop; always stops the operator and the API stand-in."""
    soak = _Soak(params, bounds or Bounds())
    started = time.monotonic()
    try:
        result = await soak.run()
    finally:
        await asyncio.to_thread(soak.close)
    result.wall_s = time.monotonic() - started
    return result


def markdown(r: SoakResult) -> str:
    """The soak's figures as a markdown table, then any broken bound."""
    p, b = r.params, r.bounds
    lags = r.lags()
    issues = [x.issue_s for x in r.pods if x.issue_s is not None]
    admits = [x.admit_s for x in r.pods if x.admit_s is not None]
    told = [x.sidecar_told_s for x in r.pods if x.sidecar_told_s is not None]
    first, last, slope = r.rss_thirds()
    by_ending = {e: [x.lag_s for x in r.pods if x.ending == e and x.lag_s is not None] for e in ENDINGS}
    peak_rss = max((s["rss_kb"] for _, s in r.samples), default=0) / 1024
    ms = lambda v: f"{v * 1000:.0f} ms"  # noqa: E731
    rows = [
        (
            "pods (ended: completed / failed / deleted)",
            f"{len(r.pods)} ({' / '.join(str(sum(1 for x in r.pods if x.ending == e)) for e in ENDINGS)})",
            "",
        ),
        (
            "run",
            f"{r.wall_s:.0f} s wall, load {r.load_window[1]:.0f} s, peak {r.peak_live} live pods, TTL {'/'.join(map(str, p.ttls))} s",
            "",
        ),
        ("credentials issued / renewed", f"{len(issues)} / {len(r.renew_s)}", ""),
        (
            "operator RSS, first third -> last third (median)",
            f"{first:.1f} -> {last:.1f} MB (+{last - first:.1f}), slope {slope:+.2f} MB/min, peak {peak_rss:.1f} MB",
            f"growth <= {b.rss_growth_mb:g} MB",
        ),
        (
            "operator RSS per running pod (fit up to the most pods)",
            f"{r.rss_per_live_pod():.2f} MB",
            "",
        ),
        ("operator open fds, before -> after (all)", f"{r.before.get('fds')} -> {r.after.get('fds')}", ""),
        (
            "operator fds except Kubernetes API connections",
            f"{r.before.get('own_fds')} -> {r.after.get('own_fds')}",
            f"growth <= {b.fd_growth}",
        ),
        (
            "operator Kubernetes API connections, before -> peak -> after",
            f"{r.before.get('api_conns')} -> {max((s.get('api_conns', 0) for _, s in r.samples), default=0)} -> {r.after.get('api_conns')}",
            f"<= {b.api_connections} (pools)",
        ),
        (
            "operator loop asyncio tasks, before -> after",
            f"{r.before.get('tasks')} -> {r.after.get('tasks')}",
            f"growth <= {b.task_growth}",
        ),
        (
            "operator fds by kind, after",
            ", ".join(f"{k}: {v}" for k, v in sorted((r.after.get("fd_kinds") or {}).items())),
            "",
        ),
        (
            "operator threads, before -> after",
            f"{r.before.get('threads')} -> {r.after.get('threads')}",
            f"growth <= {b.thread_growth}",
        ),
        (
            "lifecycle tables (latest/ended/deadlines) after",
            f"{r.after.get('lifecycle_latest')}/{r.after.get('lifecycle_ended')}/{r.after.get('lifecycle_deadlines')}",
            f"growth <= {b.table_growth}",
        ),
        (
            "status hub entries / rate buckets after",
            f"{r.after.get('hub_entries')} / {r.after.get('rate_buckets')}",
            "hub forgets 600 s after deletion",
        ),
        (
            "TaskLeases left / not Revoked at the end",
            f"{r.leases_left} / {r.leases_not_revoked}",
            f"<= {b.leases_left}",
        ),
        (
            "TaskLeases not Revoked within the timeout",
            f"{len(r.stuck)}",
            f"<= {b.stuck} ({b.lag_timeout:g} s)",
        ),
        (
            "revocation lag p50 / p99 / max",
            f"{ms(pct(lags, 0.5))} / {ms(pct(lags, 0.99))} / {ms(max(lags, default=float('nan')))}",
            f"p99 <= {b.lag_p99:g} s",
        ),
    ]
    for e in ENDINGS:
        rows.append(
            (
                f"  lag p50 / p99, ended by {e}",
                f"{ms(pct(by_ending[e], 0.5))} / {ms(pct(by_ending[e], 0.99))}",
                "",
            )
        )
    rows += [
        (
            "sidecar long-poll told, p50 / p99",
            f"{ms(pct(told, 0.5))} / {ms(pct(told, 0.99))} ({len(told)} pods)",
            "",
        ),
        ("issuance p50 / p99 (new mTLS session)", f"{ms(pct(issues, 0.5))} / {ms(pct(issues, 0.99))}", ""),
        ("late renewals (lease expired first) / re-issued", f"{r.late_renewals} / {r.reissued}", ""),
        (
            "CPU seconds: operator process / driver (API stand-in + sidecars)",
            f"{r.cpu_s.get('operator', 0):.0f} / {r.cpu_s.get('driver', 0):.0f}",
            "",
        ),
        ("renewal p50 / p99", f"{ms(pct(r.renew_s, 0.5))} / {ms(pct(r.renew_s, 0.99))}", ""),
        ("admission (pod create through the webhook) p99", ms(pct(admits, 0.99)), ""),
        ("errors while tasks ran", f"{sum(r.errors.values())} {dict(r.errors) or ''}", f"<= {b.errors}"),
        (
            "refusals after the task ended (expected)",
            f"{sum(r.refused_after_end.values())} {dict(r.refused_after_end) or ''}",
            "",
        ),
        ("first errors", "; ".join(r.error_samples) or "none", ""),
        (
            "operator warnings logged",
            f"{sum((r.after.get('warnings') or {}).values())} {r.after.get('warnings') or ''}",
            "",
        ),
    ]
    typical = [x for x in r.pods if x.lease_entries and x.name != LONG_RUNNER]
    if typical:
        rows.append(
            (
                "TaskLease at task end, typical pod: entries / bytes (max)",
                f"{max(x.lease_entries for x in typical)} / {max(x.lease_bytes for x in typical)}",
                "",
            )
        )
    if r.long_runner:
        lr = r.long_runner
        per = lr["bytes"] / max(1, lr["entries"])
        hours = ETCD_LIMIT / per * lr["ttl"] * (2 / 3) / 3600 if lr["entries"] else float("nan")
        series = [(t, s_["long_entries"]) for t, s_ in r.samples if "long_entries" in s_]
        if series:
            half = next((n for t, n in series if t >= lr["seconds"] / 2), series[-1][1])
            rows.append(
                (
                    "long runner TaskLease entries: at half time / peak / at the end",
                    f"{half} / {max(n for _, n in series)} / {series[-1][1]} (sampled)",
                    "",
                )
            )
        rows.append(
            (
                "long runner TaskLease: entries / bytes",
                f"{lr['entries']} entries, {lr['bytes']} bytes after {lr['seconds']:.0f} s at TTL {lr['ttl']} s ({per:.0f} B/entry; 1.5 MiB would take ~{hours:.1f} h without compaction); renewal p50 first -> last decile {ms(lr['renew_p50_first_decile'])} -> {ms(lr['renew_p50_last_decile'])}",
                "entries revoked+expired > 5 min are dropped (fe9bb09)",
            )
        )
    grown = {k: v - (r.before.get("types") or {}).get(k, 0) for k, v in (r.after.get("types") or {}).items()}
    top = sorted(((v, k) for k, v in grown.items() if v > 0), reverse=True)[:6]
    rows.append(
        (
            "operator objects grown most, by type (after - before)",
            ", ".join(f"{k} +{v}" for v, k in top) or "none",
            "",
        )
    )
    out = ["| measure | value | bound |", "|---|---|---|"]
    out += [f"| {a} | {v} | {bd} |" for a, v, bd in rows]
    fails = r.failures()
    out.append("")
    out.append(
        "**All bounds held.**" if not fails else "**Bounds broken:**\n" + "\n".join(f"- {f}" for f in fails)
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.soak``: run, print the table, exit 1 when a bound breaks."""
    ap = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=SoakParams.pods)
    ap.add_argument("--duration", type=float, default=SoakParams.duration, help="seconds (default 600)")
    ap.add_argument("--concurrency", type=int, default=SoakParams.concurrency, help="pods live at once")
    ap.add_argument("--sample-every", type=float, default=SoakParams.sample_every)
    ap.add_argument("--json", help="also write every sample and figure here")
    args = ap.parse_args(argv)
    params = SoakParams(
        pods=args.pods, duration=args.duration, concurrency=args.concurrency, sample_every=args.sample_every
    )
    print(
        f"soak: {params.pods} pods over {params.duration:g} s, ~{params.concurrency} live; this takes a while",
        flush=True,
    )
    result = asyncio.run(run_soak(params))
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "params": params.__dict__,
                    "samples": result.samples,
                    "before": result.before,
                    "after": result.after,
                    "pods": [x.__dict__ for x in result.pods],
                    "failures": result.failures(),
                },
                default=str,
                indent=1,
            )
        )
    return 1 if result.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
