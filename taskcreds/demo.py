"""``taskcreds demo``: the whole flow on one machine, with embedded defaults and no cluster.

Built from the same pieces a cluster runs — the pure admission mutation, the broker over SPIFFE
mutual TLS, the ``jwt`` provider, the TaskLease revocation engine and lifecycle rules, and the real
``taskcreds-sidecar`` process started from the injected container — with three local stand-ins:
an in-memory Kubernetes API (:mod:`taskcreds.operator.memcluster`), the SPIFFE development
authority (:mod:`taskcreds.devauthority`) and a local kubelet (:mod:`taskcreds.localpod`).

It prints a timeline of what happens and never a credential value.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import jsonpatch

from taskcreds import names
from taskcreds.durations import DurationError, format_duration, parse_duration
from taskcreds.loop import run_loop

__all__ = ["run", "Demo", "DEMO_NAMESPACE", "DEMO_POD"]

DEMO_NAMESPACE = "agents"
DEMO_POD = "agent-demo"
DEMO_SERVICE_ACCOUNT = "coding-agent"
DEMO_TASK = "fix-issue-42"
DEMO_TRUST_DOMAIN = "taskcreds.local"
OPERATOR_ID = f"spiffe://{DEMO_TRUST_DOMAIN}/ns/taskcreds-system/sa/taskcreds-operator"
#: two broker-signed JWT credentials with their own audiences: what a task needs from two services
DEMO_CREDENTIALS = {"llm-api": "https://llm.example", "issue-tracker": "https://issues.example"}


class DemoError(Exception):
    """The demo cannot run here; the message says why and what to do."""


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the sidecar binds: TIME_WAIT is fine
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _is_tmpfs(path: Path) -> bool:
    from taskcreds.sidecar.writer import check_in_memory

    try:
        check_in_memory(path)
    except Exception:
        return False
    return True


class Timeline:
    """Prints ``[+seconds] stage  message`` lines: what a person watching the flow wants to know."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.t0 = time.monotonic()

    def __call__(self, stage: str, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.2f}s] {stage:<11} {message}", file=self.out, flush=True)


class Demo:
    """One run of the demo; :meth:`run` returns the exit code."""

    def __init__(
        self,
        *,
        directory: Path | None,
        task_seconds: float,
        ttl: str,
        out: TextIO = sys.stdout,
        local_port: int = names.SIDECAR_LOCAL_PORT,
    ) -> None:
        self.task_seconds = task_seconds
        self.ttl = ttl
        self.out = out
        self.say = Timeline(out)
        self.local_port = local_port
        # remove the directory at the end only if this run created it
        self._made: list[Path] = []  # directories this run created, deepest first: removed at the end
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        self.directory = directory or base / f"taskcreds-demo-{os.getpid()}"
        self.scratch = Path(tempfile.mkdtemp(prefix="taskcreds-demo-"))
        self.stack = contextlib.AsyncExitStack()
        self.pod_runner: Any = None
        self.cluster: Any = None
        self.rotations = 0
        self.using_dir = False  # set once the directory passed its checks: only then is it cleaned

    # --- setup --------------------------------------------------------------------------------
    def _sources(self, ttl_seconds: float) -> list[dict[str, Any]]:
        max_ttl = format_duration(max(3600.0, ttl_seconds))
        return [
            {
                "apiVersion": names.API_VERSION,
                # cluster-scoped: only a ClusterCredentialSource may mint an audience that does not
                # start with its namespace ("agents/..."), such as a service's URL
                "kind": names.KIND_CLUSTER_CREDENTIAL_SOURCE,
                "metadata": {"name": name},
                "spec": {
                    "provider": "jwt",
                    "defaultTTL": self.ttl,
                    "maxTTL": max_ttl,
                    "allowedServiceAccounts": [DEMO_SERVICE_ACCOUNT],
                    "allowedNamespaces": [DEMO_NAMESPACE],
                    "jwt": {"audience": [audience]},
                },
            }
            for name, audience in DEMO_CREDENTIALS.items()
        ]

    def _agent_pod(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": DEMO_POD,
                "namespace": DEMO_NAMESPACE,
                "labels": {names.LABEL_INJECT: "true"},
                "annotations": {
                    names.ANNOTATION_TASK: DEMO_TASK,
                    names.ANNOTATION_CREDENTIALS: ",".join(DEMO_CREDENTIALS),
                    names.ANNOTATION_TTL: self.ttl,
                },
            },
            "spec": {
                "serviceAccountName": DEMO_SERVICE_ACCOUNT,
                "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
                "containers": [{"name": "agent", "image": "example.com/coding-agent:1.0"}],
            },
        }

    async def run(self) -> int:
        from taskcreds.devauthority import DevAuthority, WorkloadApiServer
        from taskcreds.localpod import LocalPod
        from taskcreds.metrics import register_operator
        from taskcreds.operator import leases
        from taskcreds.operator.broker.server import BrokerServer, make_broker_app
        from taskcreds.operator.broker.settings import BrokerSettings
        from taskcreds.operator.config import load_config
        from taskcreds.operator.injection import mutate_pod
        from taskcreds.operator.lifecycle import TaskLifecycle
        from taskcreds.operator.memcluster import MemCluster
        from taskcreds.operator.providers.registry import make_providers
        from taskcreds.operator.taskstatus import TaskStatusHub

        ttl_seconds = parse_duration(self.ttl)
        print(
            "taskcreds demo: one agent pod, one task, on this machine, no cluster. Values are never printed.",
            file=self.out,
        )
        if self.directory.exists() and not self.directory.is_dir():
            raise DemoError(f"--dir {self.directory} is not a directory: give an empty or new directory")
        try:
            if self.directory.exists() and any(self.directory.iterdir()):
                raise DemoError(f"--dir {self.directory} is not empty: give an empty or new directory")
            self._made = [p for p in (self.directory, *self.directory.parents) if not p.exists()]
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # unreadable, a file on the path, read-only file system, ...
            raise DemoError(
                f"--dir {self.directory}: {exc.strerror or exc}: give an empty or new directory"
            ) from None
        if not _is_tmpfs(self.directory):
            self._remove_made()
            raise DemoError(
                f"--dir {self.directory} is not on tmpfs or ramfs; credentials only go to memory "
                "(try a directory under /dev/shm)"
            )
        self.using_dir = True
        if not _port_free(self.local_port):
            raise DemoError(f"127.0.0.1:{self.local_port} is in use: the sidecar's local endpoint needs it")
        print(
            f"  credentials go to {self.directory} (tmpfs); credential lifetime {self.ttl}; "
            f"the task completes after {self.task_seconds:g}s\n",
            file=self.out,
        )

        metrics = register_operator()
        authority = DevAuthority(DEMO_TRUST_DOMAIN, allow=True)
        operator_svid = authority.mint_x509_svid(OPERATOR_ID, ttl=3600)

        # the cluster: ClusterCredentialSources granted to the agent's service account in its namespace
        cluster = self.cluster = MemCluster()
        for source in self._sources(ttl_seconds):
            cluster.put_source(source)

        # admission: the same pure mutation the webhook serves
        config = load_config(None)
        pod = self._agent_pod()
        result = mutate_pod(pod, config)
        if result.outcome != "injected":
            raise DemoError(f"admission did not inject the demo pod: {result.outcome}: {result.message}")
        pod = jsonpatch.apply_patch(pod, result.patch)
        stored = cluster.put_pod(pod)
        added = [op["path"] for op in result.patch]
        self.say(
            "admission",
            f"pod {DEMO_NAMESPACE}/{DEMO_POD} admitted with {len(added)} patch operations: "
            f"native sidecar {names.SIDECAR_CONTAINER}, in-memory volume "
            f"{names.VOLUME_CREDENTIALS}, SPIFFE socket, pod-bound token",
        )

        # the broker and the lifecycle, as in the operator
        settings = BrokerSettings(namespace="taskcreds-system", trust_domain=DEMO_TRUST_DOMAIN)
        providers = make_providers(cluster, settings)
        hub = TaskStatusHub()
        app = make_broker_app(
            cluster=cluster,
            providers=providers,
            settings=settings,
            metrics=metrics,
            trust_domain=DEMO_TRUST_DOMAIN,
            hub=hub,
        )
        broker = BrokerServer(app, lambda: operator_svid)
        broker_port = await broker.start("127.0.0.1", 0)
        self.stack.push_async_callback(broker.stop)
        lifecycle = TaskLifecycle(
            revoke=partial(leases.revoke_pod_task, cluster, providers, metrics=metrics),
            status_sink=hub.update,
        )
        self.stack.push_async_callback(lifecycle.close)
        watcher = asyncio.ensure_future(self._watch(cluster, lifecycle))
        self.stack.callback(watcher.cancel)
        self.say("broker", f"listening on https://127.0.0.1:{broker_port} as {OPERATOR_ID} (mutual TLS)")

        # identity: a Workload API for the pod, as SPIRE's agent would serve it
        agent_id = f"spiffe://{DEMO_TRUST_DOMAIN}/ns/{DEMO_NAMESPACE}/sa/{DEMO_SERVICE_ACCOUNT}"
        socket_path = self.scratch / "spiffe" / config.spiffe.socket_file
        workload_api = WorkloadApiServer(authority, str(socket_path), agent_id)
        workload_api.start()
        self.stack.callback(workload_api.stop)
        self.say("identity", f"SPIFFE Workload API up: the sidecar will prove it is {agent_id}")

        # the kubelet: volumes, downward-API file, projected token, then the sidecar process
        meta = stored["metadata"]
        token = cluster.issue_pod_token(DEMO_NAMESPACE, DEMO_SERVICE_ACCOUNT, DEMO_POD, meta["uid"])
        sidecar_log = self.scratch / "sidecar.log"
        self.pod_runner = LocalPod(
            copy.deepcopy(stored),
            root=self.scratch / "pod",
            credentials_dir=self.directory,
            spiffe_socket=socket_path,
            token=lambda: token,
            env_overrides={
                names.ENV_BROKER_URL: f"https://127.0.0.1:{broker_port}",
                names.ENV_BROKER_SPIFFE_ID: OPERATOR_ID,
                names.ENV_LISTEN_LOCAL: f"127.0.0.1:{self.local_port}",
                names.ENV_LISTEN_PROBE: "127.0.0.1:0",
                names.ENV_FS_GROUP: str(os.getgid()),
            },
        )
        log_file = open(sidecar_log, "wb")  # closed by the exit stack
        self.stack.callback(log_file.close)
        self.pod_runner.start_sidecar(stdout=log_file, stderr=log_file)
        self.stack.callback(self.pod_runner.stop_sidecar)
        self.say("sidecar", f"started from the injected container (pid {self.pod_runner.process.pid})")

        async with aiohttp.ClientSession() as http:
            await self._wait_ready(http, sidecar_log)
            await self._show_agent(http)
            await self._run_task(http)
            await self._end_task(cluster, leases.lease_name(DEMO_POD, DEMO_TASK))
        return 0

    # --- stages -------------------------------------------------------------------------------
    async def _watch(self, cluster: Any, lifecycle: Any) -> None:
        selector = f"{names.LABEL_INJECT}=true"
        async for event_type, pod in cluster.watch_pods(DEMO_NAMESPACE, selector):
            await lifecycle.on_pod_event(event_type, pod)

    def _manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.directory / names.MANIFEST_FILE).read_text())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _log_tail(sidecar_log: Path, lines: int = 8) -> str:
        """The sidecar's last log lines (its logs never carry a value, by design)."""
        with contextlib.suppress(OSError):
            tail = sidecar_log.read_text(errors="replace").strip().splitlines()[-lines:]
            return "\n  ".join(["its last log lines:", *tail]) if tail else "it logged nothing"
        return "its log is unreadable"

    async def _wait_ready(self, http: aiohttp.ClientSession, sidecar_log: Path) -> None:
        url = f"http://127.0.0.1:{self.local_port}/readyz"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.pod_runner.process.poll() is not None:
                raise DemoError(
                    f"the sidecar exited with code {self.pod_runner.process.returncode}; "
                    f"{self._log_tail(sidecar_log)}"
                )
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as resp:
                    if resp.status == 200:
                        break
            await asyncio.sleep(0.05)
        else:
            raise DemoError(f"the sidecar was not ready within 30 s; {self._log_tail(sidecar_log)}")
        manifest = self._manifest() or {"credentials": []}
        for cred in manifest["credentials"]:
            self.say(
                "issuance",
                f"{cred['name']} ({cred['provider']}) written to "
                f"$TASKCREDS_DIR/{cred['name']}/{','.join(cred['files'])}, mode 0440, "
                f"expires {cred['expiresAt']}",
            )
        self.say("ready", "/readyz answers 200: every credential is on disk; the agent container may start")
        self._expiry = {c["name"]: c["expiresAt"] for c in manifest["credentials"]}

    async def _show_agent(self, http: aiohttp.ClientSession) -> None:
        name = next(iter(DEMO_CREDENTIALS))
        token_path = self.directory / name / "token"
        value = token_path.read_text()
        self.say(
            "agent",
            f"reads $TASKCREDS_DIR/{name}/token: a {len(value)}-byte JWT "
            f"for {DEMO_CREDENTIALS[name]} (its env holds only the path)",
        )
        text = f"curl -H 'Authorization: Bearer {value}' {DEMO_CREDENTIALS[name]}/v1/chat"
        async with http.post(f"http://127.0.0.1:{self.local_port}/v1/redact", data=text.encode()) as resp:
            redacted = await resp.text()
        if value in redacted:
            raise DemoError("the redactor let a credential value through")
        self.say("redact", f"agent output through /v1/redact: {redacted!r}")
        print(
            f"{'':21}(try it yourself while the task runs: "
            f'echo "..." | taskcreds redact, or POST to http://127.0.0.1:{self.local_port}/v1/redact)',
            file=self.out,
        )

    async def _run_task(self, http: aiohttp.ClientSession) -> None:
        end = self.say.t0 + self.task_seconds
        while time.monotonic() < end:
            manifest = self._manifest()
            for cred in (manifest or {}).get("credentials", []):
                before = self._expiry.get(cred["name"])
                if before is not None and cred["expiresAt"] != before:
                    self.rotations += 1
                    self.say(
                        "rotation",
                        f"{cred['name']} refreshed before expiry: new credential on disk, "
                        f"expires {cred['expiresAt']} (swapped atomically)",
                    )
                self._expiry[cred["name"]] = cred["expiresAt"]
            await asyncio.sleep(0.1)

    async def _end_task(self, cluster: Any, lease_name: str) -> None:
        self.say("task", f"the agent's harness sets {names.ANNOTATION_TASK_STATUS}=completed")
        seen = time.monotonic()
        cluster.set_annotation(DEMO_NAMESPACE, DEMO_POD, names.ANNOTATION_TASK_STATUS, "completed")
        self.pod_runner.set_annotation(names.ANNOTATION_TASK_STATUS, "completed")
        lease: dict[str, Any] | None = None
        while time.monotonic() - seen < 15:
            lease = await cluster.get_task_lease(DEMO_NAMESPACE, lease_name)
            if lease is None or (lease.get("status") or {}).get("phase") == "Revoked":
                break
            await asyncio.sleep(0.005)
        lag_ms = (time.monotonic() - seen) * 1000
        entries = ((lease or {}).get("status") or {}).get("leases") or []
        revoked = [e for e in entries if e.get("revokedAt")]
        phase = ((lease or {}).get("status") or {}).get("phase", "gone")
        self.say(
            "revocation",
            f"operator revoked at their source {len(revoked)} of the {len(entries)} "
            f"credentials issued during the task (reason completed) in {lag_ms:.0f} ms; "
            f"TaskLease {DEMO_NAMESPACE}/{lease_name} is {phase}",
        )
        jwt_ids = [e for e in entries if e.get("provider") == "jwt" and e.get("revokedAt")]
        if jwt_ids:
            self.say(
                "revocation",
                f"all {len(jwt_ids)} jwt ids are on the broker's revocation list "
                "(GET /v1/jwt/revoked) for relying parties; their short lifetime bounds them",
            )
        while time.monotonic() - seen < 15:
            if self._no_credential_files():
                break
            await asyncio.sleep(0.02)
        else:
            raise DemoError("the sidecar did not wipe the credential files within 15 s")
        self.say(
            "teardown",
            f"sidecar overwrote and unlinked every credential file "
            f"({(time.monotonic() - seen) * 1000:.0f} ms after completion); "
            f"{self.directory} holds no credential",
        )
        code = self.pod_runner.stop_sidecar()
        self.say(
            "done",
            f"{self.rotations} rotations; sidecar stopped (exit {code}); "
            "everything revoked, wiped and cleaned up",
        )

    def _no_credential_files(self) -> bool:
        for name in DEMO_CREDENTIALS:
            if (self.directory / name).exists():
                return False
        for entry in self.directory.iterdir():
            if entry.name.startswith("..") and entry.is_dir():
                return False
        return True

    async def close(self) -> None:
        """Stop everything, revoking first if the task did not end (Ctrl-C, an error)."""
        if self.cluster is not None and self.pod_runner is not None:
            with contextlib.suppress(Exception):
                pod = await self.cluster.get_pod(DEMO_NAMESPACE, DEMO_POD)
                status = ((pod or {}).get("metadata", {}).get("annotations") or {}).get(
                    names.ANNOTATION_TASK_STATUS
                )
                if pod is not None and status not in names.TERMINAL_STATUSES:
                    self.cluster.set_annotation(
                        DEMO_NAMESPACE, DEMO_POD, names.ANNOTATION_TASK_STATUS, "cancelled"
                    )
                    from taskcreds.operator import leases

                    lease_name = leases.lease_name(DEMO_POD, DEMO_TASK)
                    for _ in range(200):
                        lease = await self.cluster.get_task_lease(DEMO_NAMESPACE, lease_name)
                        if lease is None or (lease.get("status") or {}).get("phase") == "Revoked":
                            break
                        await asyncio.sleep(0.01)
        if self.pod_runner is not None:
            self.pod_runner.stop_sidecar()  # SIGTERM: the sidecar revokes and wipes on its own too
        await self.stack.aclose()
        if self.pod_runner is not None:
            self.pod_runner.cleanup()
        shutil.rmtree(self.scratch, ignore_errors=True)
        if self.using_dir:
            self._clean_directory()

    def _clean_directory(self) -> None:
        """Remove what this run put in the directory — the sidecar's layout and markers — and the
        directory itself only if this run created it and it is then empty. Never anything else."""
        from taskcreds.sidecar.writer import ENDED_MARKER, STARTED_MARKER, CredentialWriter

        with contextlib.suppress(Exception):
            CredentialWriter(self.directory).wipe()
        for marker in (ENDED_MARKER, STARTED_MARKER):
            with contextlib.suppress(OSError):
                (self.directory / marker).unlink()
        self._remove_made()

    def _remove_made(self) -> None:
        """Remove the directories this run created (``--dir`` and missing parents), deepest first;
        rmdir fails, and keeps everything, where anything else is in one."""
        for made in self._made:
            try:
                made.rmdir()
            except OSError:
                return
        self._made = []


async def _main(args: Any) -> int:
    directory = Path(args.dir).resolve() if args.dir else None
    demo = Demo(directory=directory, task_seconds=float(args.task_seconds), ttl=args.ttl)
    loop = asyncio.get_running_loop()
    current = asyncio.current_task()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, current.cancel)  # type: ignore[union-attr]
    try:
        return await demo.run()
    except asyncio.CancelledError:
        print("\ninterrupted: revoking and wiping before exit", file=sys.stderr)
        return 130
    finally:
        await asyncio.shield(demo.close())


def run(args: Any) -> int:
    """``taskcreds demo`` (see taskcreds/cli.py for the arguments)."""
    try:
        parse_duration(args.ttl)
    except DurationError as exc:
        print(f"taskcreds demo: --ttl: {exc}", file=sys.stderr)
        return 2
    if not math.isfinite(args.task_seconds) or args.task_seconds <= 0:
        print(f"taskcreds demo: --task-seconds {args.task_seconds}: must be a number more than 0",
              file=sys.stderr)
        return 2
    os.environ.setdefault(names.ENV_DEV_AUTHORITY, "1")
    try:
        return run_loop(_main(args))
    except DemoError as exc:
        print(f"taskcreds demo: {exc}", file=sys.stderr)
        return 1
