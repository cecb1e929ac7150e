"""End-to-end harness on one machine: every real part of taskcreds, wired as a cluster would wire them.

- the Kubernetes API stand-in (tests/kube) with the chart's CRDs and a MutatingWebhookConfiguration
  (``clientConfig.service``, failurePolicy Fail): pods created through the API really go through
  the operator's webhook over HTTPS, checked against the caBundle the operator patched in;
- the real operator (``run_operator``) in its own thread and loop, restartable on the same ports
  (an operator restart, a broker restart);
- real OpenBao (``tests/openbao.py``) for a ``vault`` source in token mode, and the broker's own
  ``jwt`` source;
- per pod: a SPIFFE Workload API test server for the pod's SPIFFE ID, a :class:`LocalPod` (the
  kubelet's layout: tmpfs dir under /dev/shm, downward-API file refreshed after a configurable lag,
  projected token) running the injected sidecar as a real process, and an "agent" process that
  reads ``$TASKCREDS_DIR`` and prints only hashes.

Values the harness reads from the tmpfs files are kept in memory only (for the canary sweep and to
prove revocation by using them); nothing here prints or logs one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hashlib
import json
import logging
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import hvac
import hvac.exceptions

from taskcreds import names
from taskcreds.devauthority import DevAuthority, WorkloadApiServer
from taskcreds.localpod import LocalPod
from taskcreds.loop import run_loop
from tests.kube.fixtures import KubeApi
from tests.openbao import OPERATOR_POLICY, OpenBao
from tests.operator.running import webhook_configuration
from tests.ports import free_port

__all__ = [
    "Harness",
    "PodRun",
    "LAG_ROWS",
    "LagRow",
    "find_leaks",
    "encoded_forms",
    "NS",
    "SA",
    "TD",
    "OPERATOR_ID",
    "OPERATOR_TOKEN",
]

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "charts" / "taskcreds" / "crds"
TD = "taskcreds.local"
NS = "agents"
SA = "coding-agent"
OPERATOR_NS = "taskcreds-system"
OPERATOR_ID = f"spiffe://{TD}/ns/{OPERATOR_NS}/sa/taskcreds-operator"
AGENT_ID = f"spiffe://{TD}/ns/{NS}/sa/{SA}"
#: the operator's own OpenBao token, with a fixed id so a restarted dev server gets it back (re-seeded)
OPERATOR_TOKEN = "scenario-operator-" + uuid.uuid4().hex[:12]
BAO_SECRET = "openbao-operator"
POLL = 0.01

TASK_POLICY = 'path "secret/data/repo/*" { capabilities = ["read"] }'


def seed_openbao(bao: OpenBao) -> None:
    """Policies and the operator's token (again after every dev-mode restart, which forgets all)."""
    root = bao.client()
    root.sys.create_or_update_policy("taskcreds-operator", OPERATOR_POLICY)
    root.sys.create_or_update_policy("task-read", TASK_POLICY)
    root.auth.token.create(
        id=OPERATOR_TOKEN, policies=["taskcreds-operator", "task-read"], ttl="1h", no_parent=True
    )


# --- revocation lag table (printed by tests/scenarios/conftest.py) -------------------------------


@dataclass(frozen=True)
class LagRow:
    scenario: str
    reason: str
    revoked_s: float | None  # trigger -> TaskLease Revoked and finalizer released
    files_gone_s: float | None  # trigger -> no credential file left in the tmpfs dir
    note: str = ""


LAG_ROWS: list[LagRow] = []


# --- the canary sweep (pure) -------------------------------------------------------------------


def encoded_forms(value: str) -> dict[str, str]:
    """The forms a leaked value could take: raw, base64 (std, url-safe, unpadded), URL-encoded."""
    raw = value.encode()
    forms = {
        "raw": value,
        "base64": base64.b64encode(raw).decode(),
        "base64url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "urlencoded": urllib.parse.quote(value, safe=""),
        "json-escaped": json.dumps(value)[1:-1],
    }
    forms["base64-unpadded"] = forms["base64"].rstrip("=")
    distinct: dict[str, str] = {}
    for name, text in forms.items():  # one report per distinct text (raw often equals url-encoded)
        if len(text) >= 8 and text not in distinct.values():
            distinct[name] = text
    return distinct


def find_leaks(values: Iterable[str], haystacks: Mapping[str, str]) -> list[str]:
    """``"<where>: <form> of value #n"`` for every issued value found in any haystack (never the value)."""
    leaks: list[str] = []
    for n, value in enumerate(sorted(set(values))):
        for form, text in encoded_forms(value).items():
            for where, hay in haystacks.items():
                if text in hay:
                    leaks.append(f"{where}: {form} form of issued value #{n} ({len(value)} bytes)")
    return leaks


class _Capture(logging.Handler):
    """Every log record of this process (the operator's thread included), fully rendered."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{record.name} {record.levelname} {record.getMessage()} {getattr(record, 'fields', '')}"
            if record.exc_info and record.exc_info[1] is not None:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        except Exception as exc:  # noqa: BLE001 - a record that cannot render is recorded as such
            text = f"{record.name} unrenderable record: {exc!r} {record.msg!r} {record.args!r}"
        self.lines.append(text)


# --- one admitted pod, run locally --------------------------------------------------------------


@dataclass
class PodRun:
    name: str
    task: str
    credentials: tuple[str, ...]
    local: LocalPod
    creds_dir: Path
    root: Path
    workload_api: WorkloadApiServer
    log_path: Path
    probe_port: int | None = None
    local_port: int | None = None
    ready_at: float | None = None
    #: every value seen on disk: (credential, file) -> values, in order; memory only
    values: dict[tuple[str, str], list[str]] = field(default_factory=dict, repr=False)
    vault_accessors: dict[str, str | None] = field(default_factory=dict, repr=False)  # token -> accessor
    agent_outputs: list[str] = field(default_factory=list)
    agent_envs: list[dict[str, str]] = field(default_factory=list)
    partial_reads: list[str] = field(default_factory=list)
    metrics_texts: list[str] = field(default_factory=list)

    def all_values(self) -> list[str]:
        return [v for vs in self.values.values() for v in vs]

    def latest(self, credential: str, file: str = "token") -> str:
        return self.values[(credential, file)][-1]

    def sidecar_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def on_disk(self) -> set[str]:
        """Credentials with at least one readable file right now."""
        return {c for c in self.credentials if any(p.is_file() for p in (self.creds_dir / c).glob("*"))}

    def credential_files(self) -> list[Path]:
        """Credential files (and ``..`` generation dirs) still in the tmpfs dir: empty after teardown."""
        left: list[Path] = []
        if not self.creds_dir.exists():
            return left
        for entry in self.creds_dir.iterdir():
            if entry.name in self.credentials or (entry.name.startswith("..") and entry.is_dir()):
                left.append(entry)
        return left


class _NonRenewingWorkloadApi(WorkloadApiServer):
    """A Workload API that never re-issues the SVID: it expires (an agent whose SPIRE agent is stuck)."""

    async def _refresh_forever(self) -> None:
        await asyncio.Event().wait()


class Harness:
    """The cluster on one machine. Sync methods may block; async ones run on the test's loop."""

    def __init__(self, bao: OpenBao, *, kubelet_lag: float = 5.0) -> None:
        self.bao = bao
        self.kubelet_lag = kubelet_lag
        self.kube = KubeApi().start_sync()
        self.authority = DevAuthority(TD, allow=True)
        self.operator_svid = self.authority.mint_x509_svid(OPERATOR_ID, ttl=3600)
        self.ports = {"webhook": free_port(), "broker": free_port(), "metrics": free_port()}
        self.replica_id = f"scenario-op-{uuid.uuid4().hex[:6]}"
        self.capture = _Capture()
        self._old_root_level = logging.getLogger().level
        logging.getLogger().addHandler(self.capture)
        logging.getLogger().setLevel(logging.INFO)
        self.runs: list[PodRun] = []
        self.operator_metrics: list[str] = []
        self._op: dict[str, Any] | None = None
        self.operator_starts: list[float] = []  # wall-clock times the operator became ready
        bao.on_start(seed_openbao)
        self._setup_cluster()

    # --- cluster objects ---------------------------------------------------------------------
    def _setup_cluster(self) -> None:
        kube = self.kube
        kube.register_crds_from(CRDS)
        for ns in (OPERATOR_NS, NS):
            kube.ensure_namespace(ns)
        kube.put({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SA, "namespace": NS}})
        kube.put(webhook_configuration(OPERATOR_NS))
        kube.set_service_endpoint(OPERATOR_NS, "taskcreds-webhook", f"127.0.0.1:{self.ports['webhook']}")
        kube.put(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": BAO_SECRET, "namespace": NS},
                "stringData": {"token": OPERATOR_TOKEN},
            }
        )
        # normal sources (no rotation within a scenario) and fast ones (rotation scenarios)
        for name, provider, ttl, max_ttl in (
            ("api", "jwt", "1m", "1h"),
            ("bao", "vault", "1m", "1h"),
            ("api-fast", "jwt", "3s", "1h"),
            ("bao-fast", "vault", "3s", "5s"),
        ):
            spec: dict[str, Any] = {
                "provider": provider,
                "defaultTTL": ttl,
                "maxTTL": max_ttl,
                "allowedServiceAccounts": [SA],
            }
            if provider == "jwt":
                spec["jwt"] = {"audience": [f"{NS}/{name}"]}
            else:
                spec["vault"] = {
                    "address": self.bao.address,
                    "auth": {"method": "token", "tokenSecretRef": {"name": BAO_SECRET, "key": "token"}},
                    "mode": "token",
                    "policies": ["task-read"],
                }
            kube.put(
                {
                    "apiVersion": names.API_VERSION,
                    "kind": names.KIND_CREDENTIAL_SOURCE,
                    "metadata": {"name": name, "namespace": NS},
                    "spec": spec,
                }
            )

    # --- the operator, in its own thread and loop (kopf cancels every task it did not start) ---
    def start_operator(self, timeout: float = 60) -> None:
        from taskcreds.operator.config import load_config
        from taskcreds.operator.kube import connect
        from taskcreds.operator.main import OperatorParts, kopf_settings_for_taskcreds, run_operator
        from taskcreds.operator.settings import OperatorSettings

        from taskcreds.metrics import register_operator

        assert self._op is None, "the operator is already running"
        kube = self.kube
        settings = OperatorSettings(
            webhook_listen=("127.0.0.1", self.ports["webhook"]),
            broker_listen=("127.0.0.1", self.ports["broker"]),
            metrics_listen=("127.0.0.1", self.ports["metrics"]),
            webhook_service="taskcreds-webhook",
        )
        box: dict[str, Any] = {"failure": []}
        metrics = register_operator()  # a restarted process starts with fresh metrics
        svid = self.operator_svid

        async def operator_main() -> None:
            cluster = await connect(url=kube.url, token=kube.admin_token)
            kopf_settings = kopf_settings_for_taskcreds()
            kopf_settings.queueing.idle_timeout = 0.3
            kopf_settings.queueing.exit_timeout = 0.3
            kopf_settings.watching.reconnect_backoff = 0.2
            box["stop"] = asyncio.Event()
            box["loop"] = asyncio.get_running_loop()
            # the same replica id across restarts: a restarted container of the same pod, whose
            # revocation claim it takes back at once (a new id waits CLAIM_SECONDS for the old claim)
            parts = box["parts"] = OperatorParts(metrics=metrics, replica_id=self.replica_id)
            try:
                await run_operator(
                    settings,
                    load_config(None),
                    cluster=cluster,
                    svid_source=lambda: svid,
                    stop=box["stop"],
                    parts=parts,
                    kopf_login=lambda **_: kube.kopf_connection_info(),
                    kopf_settings=kopf_settings,
                    sweep_interval=0.5,
                )
            finally:
                await cluster.close()

        def thread_main() -> None:
            try:
                run_loop(operator_main())  # the loop taskcreds-operator runs on
            except BaseException as exc:  # noqa: BLE001 - surfaced by stop_operator
                box["failure"].append(exc)

        thread = threading.Thread(target=thread_main, name="operator", daemon=True)
        box["thread"] = thread
        thread.start()
        deadline = time.monotonic() + timeout
        while not ("parts" in box and box["parts"].ready.is_set()):
            assert not box["failure"], f"operator failed to start: {box['failure'][0]!r}"
            assert thread.is_alive() and time.monotonic() < deadline, "operator not ready in time"
            time.sleep(0.02)
        self._op = box
        self.operator_starts.append(time.time())

    @property
    def operator_running(self) -> bool:
        return self._op is not None

    def stop_operator(self) -> None:
        box, self._op = self._op, None
        if box is None:
            return
        with contextlib.suppress(Exception):
            self.operator_metrics.append(self.scrape(f"http://127.0.0.1:{self.ports['metrics']}/metrics"))
        box["loop"].call_soon_threadsafe(box["stop"].set)
        box["thread"].join(30)
        assert not box["thread"].is_alive(), "operator did not stop within 30 s"
        assert not box["failure"], f"operator stopped with {box['failure'][0]!r}"

    @staticmethod
    def scrape(url: str) -> str:
        import urllib.request

        with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 - loopback http
            return resp.read().decode()

    # --- pods through the API -----------------------------------------------------------------
    def pod_manifest(
        self, name: str, task: str, credentials: Iterable[str], *, labelled: bool = True, **annotations: str
    ) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": NS,
                "labels": {names.LABEL_INJECT: "true"} if labelled else {"app": "plain"},
                "annotations": {
                    names.ANNOTATION_TASK: task,
                    names.ANNOTATION_CREDENTIALS: ",".join(credentials),
                    **annotations,
                },
            },
            "spec": {
                "serviceAccountName": SA,
                "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
                "containers": [{"name": "agent", "image": "example.com/coding-agent:1"}],
            },
        }

    async def api(self) -> Any:
        """A kubernetes_asyncio ApiClient on the calling loop (close it yourself)."""
        from kubernetes_asyncio import client

        cfg = client.Configuration(host=self.kube.url)
        cfg.api_key = {"BearerToken": self.kube.admin_token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
        return client.ApiClient(cfg)

    async def create_pod(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create through the API (admission runs); returns the stored pod."""
        from kubernetes_asyncio import client

        async with await self.api() as api:
            await client.CoreV1Api(api).create_namespaced_pod(NS, manifest)
        stored = self.kube.get("v1", "Pod", NS, manifest["metadata"]["name"])
        assert stored is not None
        return stored

    async def launch(
        self,
        name: str,
        credentials: Iterable[str],
        *,
        start: bool = True,
        svid_ttl: float | None = None,
        renew_svid: bool = True,
        creds_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        **annotations: str,
    ) -> PodRun:
        """Create an opted-in pod through the API, lay it out as the kubelet would and start its sidecar.

        Fault hooks: ``start=False`` admits without starting the sidecar; ``svid_ttl`` / ``renew_svid``
        shape the pod's SPIFFE Workload API (no renewal: the SVID simply expires); ``creds_dir`` is
        the tmpfs dir to use (e.g. a small mounted tmpfs, kept by the caller); ``env`` adds sidecar env.
        """
        creds = tuple(credentials)
        task = f"task-{name}"
        stored = await self.create_pod(self.pod_manifest(name, task, creds, **annotations))
        assert stored["metadata"]["annotations"].get(names.ANNOTATION_INJECTED), "the webhook did not inject"
        from taskcreds.operator.config import load_config

        socket_dir = Path(tempfile.mkdtemp(prefix="tc-scn-", dir="/tmp"))
        api_cls = WorkloadApiServer if renew_svid else _NonRenewingWorkloadApi
        api = api_cls(
            self.authority,
            str(socket_dir / load_config(None).spiffe.socket_file),
            AGENT_ID,
            svid_ttl=svid_ttl,
        )
        api.start()
        if creds_dir is None:
            creds_dir = Path("/dev/shm") / f"tc-scn-{uuid.uuid4().hex[:10]}"
            creds_dir.mkdir()
        root = socket_dir / "pod"
        local = LocalPod(
            copy.deepcopy(stored),
            root=root,
            credentials_dir=creds_dir,
            spiffe_socket=socket_dir / load_config(None).spiffe.socket_file,
            token=lambda: self.kube.issue_pod_token(NS, name, SA),
            env_overrides={
                names.ENV_BROKER_URL: f"https://127.0.0.1:{self.ports['broker']}",
                names.ENV_BROKER_SPIFFE_ID: OPERATOR_ID,
                names.ENV_LISTEN_LOCAL: "127.0.0.1:0",
                names.ENV_LISTEN_PROBE: "127.0.0.1:0",
                names.ENV_FS_GROUP: str(os.getgid()),
                **(env or {}),
            },
        )
        run = PodRun(
            name=name,
            task=task,
            credentials=creds,
            local=local,
            creds_dir=creds_dir,
            root=socket_dir,
            workload_api=api,
            log_path=socket_dir / "sidecar.log",
        )
        self.runs.append(run)
        if start:
            self.start_sidecar(run)
        return run

    def start_sidecar(self, run: PodRun) -> None:
        """Start (or restart, as the kubelet restarts a native sidecar) the injected sidecar."""
        with open(run.log_path, "ab") as log:
            run.local.start_sidecar(stdout=log, stderr=log)
        run.probe_port = None

    async def _ports(self, run: PodRun, timeout: float = 20) -> None:  # noqa: ASYNC109 - a poll bound, not a cancel scope
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in reversed(run.sidecar_log().splitlines()):
                with contextlib.suppress(ValueError):
                    doc = json.loads(line)
                    if doc.get("msg") == "sidecar started":
                        run.probe_port, run.local_port = int(doc["probe_port"]), int(doc["local_port"])
                        return
            proc = run.local.process
            assert proc is not None and proc.poll() is None, f"sidecar exited: {run.sidecar_log()[-1500:]}"
            await asyncio.sleep(POLL)
        raise AssertionError(f"no 'sidecar started' line within {timeout}s: {run.sidecar_log()[-1500:]}")

    async def wait_ready(self, run: PodRun, timeout: float = 20) -> float:  # noqa: ASYNC109 - a poll bound, not a cancel scope
        """Poll /readyz; every 200 must find every credential file already on disk (the agent container
        starts only then). Returns seconds to ready."""
        t0 = time.monotonic()
        await self._ports(run, timeout)
        url = f"http://127.0.0.1:{run.probe_port}/readyz"
        async with aiohttp.ClientSession() as http:
            while time.monotonic() - t0 < timeout:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url) as resp:
                        if resp.status == 200:
                            missing = [c for c in run.credentials if not any((run.creds_dir / c).glob("*"))]
                            assert not missing, f"/readyz said ready while {missing} had no file on disk"
                            run.ready_at = time.monotonic()
                            self.collect(run)
                            return run.ready_at - t0
                await asyncio.sleep(POLL)
        raise AssertionError(f"sidecar not ready within {timeout}s: {run.sidecar_log()[-1500:]}")

    def collect(self, run: PodRun) -> None:
        """Read every credential file (values kept in memory only); record a missing/empty one."""
        manifest_path = run.creds_dir / names.MANIFEST_FILE
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            return
        for cred in manifest.get("credentials") or []:
            for file in cred.get("files") or []:
                path = run.creds_dir / cred["name"] / file
                try:
                    value = path.read_text()
                except FileNotFoundError:
                    if (run.creds_dir / names.MANIFEST_FILE).exists():
                        run.partial_reads.append(f"{cred['name']}/{file} listed but missing")
                    continue
                if not value:
                    run.partial_reads.append(f"{cred['name']}/{file} empty")
                    continue
                seen = run.values.setdefault((cred["name"], file), [])
                if not seen or seen[-1] != value:
                    seen.append(value)
                    if cred.get("provider") == "vault" and value not in run.vault_accessors:
                        run.vault_accessors[value] = self._accessor(value)

    def _accessor(self, token: str) -> str | None:
        try:
            return str(self.bao.client().auth.token.lookup(token)["data"]["accessor"])
        except Exception:  # noqa: BLE001 - a token OpenBao no longer knows has no accessor to find
            return None

    async def watch_values(self, run: PodRun, seconds: float) -> None:
        """Read the files as an agent would, every 20 ms, for ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.collect(run)
            await asyncio.sleep(0.02)

    # --- the agent -------------------------------------------------------------------------------
    def run_agent(self, run: PodRun) -> dict[str, str]:
        """The agent container: reads $TASKCREDS_DIR/<cred>/<file> and prints only sha256 hashes."""
        script = (
            "import hashlib, os, pathlib\n"
            "d = pathlib.Path(os.environ['TASKCREDS_DIR'])\n"
            "for c in sorted(os.environ['AGENT_CREDENTIALS'].split(',')):\n"
            "    for f in sorted(p for p in (d / c).iterdir()):\n"
            "        print(f'{c}/{f.name}', hashlib.sha256(f.read_bytes()).hexdigest())\n"
        )
        env = {
            "PATH": os.environ.get("PATH", ""),
            names.ENV_DIR: str(run.creds_dir),
            "AGENT_CREDENTIALS": ",".join(run.credentials),
        }
        run.agent_envs.append(env)
        proc = subprocess.run(  # noqa: S603 - our own interpreter
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=20, check=False
        )
        run.agent_outputs.append(proc.stdout + proc.stderr)
        assert proc.returncode == 0, f"agent failed: {proc.stderr[-500:]}"
        return dict(line.split(" ", 1) for line in proc.stdout.splitlines())

    # --- the task ends ---------------------------------------------------------------------------
    async def set_annotation(self, run: PodRun, key: str, value: str) -> float:
        """Patch the pod through the API; the downward-API file follows after ``kubelet_lag``.
        Returns the monotonic time of the patch."""
        from kubernetes_asyncio import client

        async with await self.api() as api:
            t0 = time.monotonic()
            await client.CoreV1Api(api).patch_namespaced_pod(
                run.name, NS, {"metadata": {"annotations": {key: value}}}
            )
        loop = asyncio.get_running_loop()
        loop.call_later(self.kubelet_lag, run.local.set_annotation, key, value)
        return t0

    async def delete_pod(self, run: PodRun) -> float:
        from kubernetes_asyncio import client

        async with await self.api() as api:
            t0 = time.monotonic()
            await client.CoreV1Api(api).delete_namespaced_pod(run.name, NS)
        return t0

    def lease(self, run: PodRun) -> dict[str, Any] | None:
        from taskcreds.operator.leases import lease_name

        return self.kube.get(names.API_VERSION, names.KIND_TASK_LEASE, NS, lease_name(run.name, run.task))

    async def wait_lease(self, run: PodRun, phase: str, timeout: float = 20) -> dict[str, Any]:  # noqa: ASYNC109 - a poll bound, not a cancel scope
        deadline = time.monotonic() + timeout
        lease = None
        while time.monotonic() < deadline:
            lease = self.lease(run)
            if lease is not None and (lease.get("status") or {}).get("phase") == phase:
                return lease
            await asyncio.sleep(POLL)
        raise AssertionError(f"TaskLease not {phase} within {timeout}s: {json.dumps(lease)[:1500]}")

    async def wait_revoked(self, run: PodRun, timeout: float = 20) -> dict[str, Any]:  # noqa: ASYNC109 - a poll bound, not a cancel scope
        """TaskLease Revoked with its finalizer released (the last state seen, if GC then removed it)."""
        deadline = time.monotonic() + timeout
        lease = last = None
        while time.monotonic() < deadline:
            lease = self.lease(run)
            if lease is not None:
                last = lease
                released = names.FINALIZER_REVOKE not in (lease["metadata"].get("finalizers") or [])
                if released and (lease.get("status") or {}).get("phase") == "Revoked":
                    return lease
            await asyncio.sleep(POLL)
        raise AssertionError(f"TaskLease not Revoked+released within {timeout}s: {json.dumps(last)[:2000]}")

    async def wait_files_gone(self, run: PodRun, timeout: float = 20) -> None:  # noqa: ASYNC109 - a poll bound, not a cancel scope
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not run.credential_files():
                return
            self.collect(run)
            await asyncio.sleep(POLL)
        raise AssertionError(
            f"credential files still present after {timeout}s: {run.credential_files()}; "
            f"sidecar log tail: {run.sidecar_log()[-1500:]}"
        )

    # --- proofs ----------------------------------------------------------------------------------
    def assert_vault(self, run: PodRun, credential: str, *, alive: bool, which: slice | int = -1) -> None:
        """Use the token(s) of ``credential`` (latest by default) and check they work / are refused.
        Raises with a message that names the credential and the index, never the value."""
        values = run.values[(credential, "token")]
        chosen = values[which] if isinstance(which, slice) else [values[which]]
        for n, token in enumerate(chosen):
            if self.vault_token_alive(token) != alive:
                state = "is refused" if alive else "still works"
                raise AssertionError(f"{credential}: issued OpenBao token #{n} of {len(values)} {state}")

    def vault_token_alive(self, token: str) -> bool:
        """Whether the token lives at its source (looked up by root: task tokens carry no default
        policy, so they cannot look themselves up)."""
        try:
            self.bao.client().auth.token.lookup(token)
        except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest, hvac.exceptions.Unauthorized):
            return False
        return True

    async def jwt_revoked_list(self) -> set[str]:
        """The broker's published deny list (GET /v1/jwt/revoked, no client certificate needed)."""
        ctx = ssl.create_default_context(cadata=self.authority.bundle_pem().decode())
        ctx.check_hostname = False
        url = f"https://127.0.0.1:{self.ports['broker']}/v1/jwt/revoked"
        async with aiohttp.ClientSession() as http, http.get(url, ssl=ctx) as resp:
            assert resp.status == 200, await resp.text()
            return {r["jti"] for r in (await resp.json())["revoked"]}

    @staticmethod
    def claims_of(token: str) -> dict[str, Any]:
        payload = token.split(".")[1]
        return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))

    @classmethod
    def jti_of(cls, token: str) -> str:
        return str(cls.claims_of(token)["jti"])

    async def assert_dead_at_source(
        self, run: PodRun, lease: dict[str, Any], *, reason: str | Iterable[str], check_jwt_list: bool = True
    ) -> None:
        """Every value ever issued to the pod is dead where it came from, and recorded as revoked."""
        reasons = {reason} if isinstance(reason, str) else set(reason)
        entries = lease["status"]["leases"]
        assert entries, "the TaskLease lists no lease"
        for e in entries:
            assert e.get("revokedAt"), f"lease {e.get('credential')} {e.get('leaseRef')} not revoked: {e}"
        final = [
            e for e in entries if e.get("revokeReason") not in (None, "replaced", "renewed", "expired", "superseded")
        ]
        assert final and {e["revokeReason"] for e in final} <= reasons, [
            (e["credential"], e.get("revokeReason")) for e in entries
        ]
        refs = {e["leaseRef"] for e in entries}
        revoked_jtis = await self.jwt_revoked_list() if check_jwt_list else set()
        for (cred, _file), values in run.values.items():
            provider = "vault" if cred.startswith("bao") else "jwt"
            for value in values:
                # explicit raises: an assert here could show a value in pytest's report
                if provider == "vault":
                    if self.vault_token_alive(value):
                        raise AssertionError(f"{cred}: an issued OpenBao token still works")
                    accessor = run.vault_accessors.get(value)
                    # nothing lost: the lease it came with is in the TaskLease (accessors are not secret)
                    if accessor is not None and not any(accessor in r for r in refs):
                        raise AssertionError(f"{cred}: lease {accessor} missing from the TaskLease")
                else:
                    jti = self.jti_of(value)
                    if not any(jti in r for r in refs):
                        raise AssertionError(f"{cred}: issued jti {jti} not in the TaskLease")
                    exp = self.claims_of(value)["exp"]
                    if check_jwt_list and exp > time.time() and jti not in revoked_jtis:
                        # the deny list drops expired ids: only live tokens must be on it
                        raise AssertionError(f"{cred}: live jti {jti} not on /v1/jwt/revoked")

    # --- the canary sweep ------------------------------------------------------------------------
    async def haystacks(self) -> dict[str, str]:
        """Everything a person or a program other than the agent could see."""
        hay: dict[str, str] = {}
        for run in self.runs:
            hay[f"sidecar {run.name} stdout/stderr"] = run.sidecar_log()
            hay[f"agent {run.name} output"] = "\n".join(run.agent_outputs)
            hay[f"agent {run.name} environment"] = json.dumps(run.agent_envs)
            hay[f"sidecar {run.name} env"] = json.dumps(run.local.sidecar_env())
            metrics = list(run.metrics_texts)
            if run.probe_port and run.local.process is not None and run.local.process.poll() is None:
                with contextlib.suppress(Exception):
                    metrics.append(
                        await asyncio.to_thread(self.scrape, f"http://127.0.0.1:{run.probe_port}/metrics")
                    )
            hay[f"sidecar {run.name} /metrics"] = "\n".join(metrics)
        hay["operator logs"] = "\n".join(self.capture.lines)
        op_metrics = list(self.operator_metrics)
        if self.operator_running:
            op_metrics.append(
                await asyncio.to_thread(self.scrape, f"http://127.0.0.1:{self.ports['metrics']}/metrics")
            )
        hay["operator /metrics"] = "\n".join(op_metrics)
        hay["events"] = json.dumps(self.kube.events)
        kinds = [
            ("v1", "Pod"),
            ("v1", "ConfigMap"),
            ("v1", "Event"),
            (names.API_VERSION, names.KIND_TASK_LEASE),
            (names.API_VERSION, names.KIND_CREDENTIAL_SOURCE),
        ]
        for api_version, kind in kinds:
            hay[f"{kind} objects"] = json.dumps(self.kube.list(api_version, kind))
        secrets = [s for s in self.kube.list("v1", "Secret") if s["metadata"]["name"] != BAO_SECRET]
        decoded = []
        for s in secrets:
            for v in (s.get("data") or {}).values():
                with contextlib.suppress(Exception):
                    decoded.append(base64.b64decode(v).decode(errors="replace"))
        hay["Secrets (except the operator's OpenBao token)"] = json.dumps(secrets) + "\n".join(decoded)
        return hay

    async def assert_no_leaks(self) -> None:
        values = [v for run in self.runs for v in run.all_values()]
        assert values, "the sweep has no issued value to look for: it would prove nothing"
        leaks = find_leaks(values, await self.haystacks())
        assert not leaks, "issued values outside the tmpfs files:\n" + "\n".join(leaks)

    # --- cleanup ---------------------------------------------------------------------------------
    def finish(self, run: PodRun) -> None:
        """Stop the pod's processes and remove what it laid out."""
        if run.probe_port and run.local.process is not None and run.local.process.poll() is None:
            with contextlib.suppress(Exception):
                run.metrics_texts.append(self.scrape(f"http://127.0.0.1:{run.probe_port}/metrics"))
        run.local.stop_sidecar()
        run.workload_api.stop()

    def close(self) -> None:
        for run in self.runs:
            with contextlib.suppress(Exception):
                self.finish(run)
            with contextlib.suppress(Exception):
                run.local.cleanup()
            shutil.rmtree(run.creds_dir, ignore_errors=True)
            shutil.rmtree(run.root, ignore_errors=True)
        try:
            self.stop_operator()
        finally:
            self.kube.stop_sync()
            logging.getLogger().removeHandler(self.capture)
            logging.getLogger().setLevel(self._old_root_level)


def record_lag(
    scenario: str, reason: str, t0: float, revoked_at: float | None, files_at: float | None, note: str = ""
) -> LagRow:
    row = LagRow(
        scenario,
        reason,
        None if revoked_at is None else revoked_at - t0,
        None if files_at is None else files_at - t0,
        note,
    )
    LAG_ROWS.append(row)
    return row


def utc_now() -> datetime:
    return datetime.now(UTC)


def hashes(run: PodRun) -> dict[str, str]:
    """What the agent should print: sha256 of the current value of each file."""
    return {f"{c}/{f}": hashlib.sha256(vs[-1].encode()).hexdigest() for (c, f), vs in run.values.items()}
