"""`helm upgrade` never upgrades crds/: an operator started against an older TaskLease CRD (whose
structural schema prunes status.leases[] fields added since: target, supersededAt, intent, pending)
says so in one ERROR naming the command and stays unready (fail closed) instead of silently losing
those fields; it checks again in the background (also after an API outage at startup) and becomes
ready once the check passes, without a restart."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from taskcreds.operator import leases, main
from taskcreds.operator.kube import connect
from taskcreds.operator.main import (
    CRD_APPLY_COMMAND,
    LEASE_FIELDS,
    TASK_LEASE_CRD,
    check_task_lease_crd,
    task_lease_crd_problem,
)
from taskcreds.operator.providers.base import Issued

from taskcreds import names
from tests.kube.fixtures import KubeApi
from tests.operator.running import Replica
from tests.operator.test_main import OPERATOR_ID, prepare_cluster

CRDS = Path(__file__).resolve().parents[2] / "charts" / "taskcreds" / "crds"


def current_crd() -> dict[str, Any]:
    return yaml.safe_load((CRDS / "tasklease.yaml").read_text())


def lease_item_properties(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == names.CRD_VERSION]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    return status["properties"]["leases"]["items"]["properties"]


def old_crd(*drop: str) -> dict[str, Any]:
    """The chart's TaskLease CRD as the previous release had it: without ``drop`` on lease entries."""
    crd = copy.deepcopy(current_crd())
    for field in drop:
        del lease_item_properties(crd)[field]
    return crd


def unserved(crd: dict[str, Any]) -> dict[str, Any]:
    for version in crd["spec"]["versions"]:
        version["served"] = False
    return crd


@pytest.mark.parametrize(
    ("case", "crd", "needles"),
    [
        ("the chart's CRD", current_crd(), None),
        ("before target and supersededAt", old_crd("target", "supersededAt"), ["older", "target, supersededAt"]),
        ("before supersededAt", old_crd("supersededAt"), ["older", "no supersededAt"]),
        ("before pending entries", old_crd("intent", "pending"), ["older", "no intent, pending"]),
        ("before pending (intent kept)", old_crd("pending"), ["older", "no pending"]),
        ("before sourceExpiresAt", old_crd("sourceExpiresAt"), ["older", "no sourceExpiresAt"]),
        ("version not served", unserved(current_crd()), ["does not serve", names.CRD_VERSION]),
        ("no CRD", None, ["does not exist"]),
    ],
)
def test_what_makes_a_task_lease_crd_unfit(case: str, crd: dict[str, Any] | None, needles: list[str] | None) -> None:
    problem = task_lease_crd_problem(crd)
    if needles is None:
        assert problem is None, case
    else:
        assert problem is not None and TASK_LEASE_CRD in problem, case
        for needle in needles:
            assert needle in problem, (case, problem)


def test_the_check_knows_every_lease_field_the_chart_and_the_operator_write() -> None:
    """A field added to lease entries (and the chart's CRD) without adding it to the check let a CRD
    from the build before pass, which then pruned it from every write (review: intent, pending)."""
    now = datetime.now(UTC)
    source = {"kind": "CredentialSource", "name": "s", "namespace": "team-a"}
    pending = leases.pending_entry(
        "tok", "jwt", source, "INTENT", 600, target={"replica": "r"}, now=now, source_floor_seconds=3600
    )
    issued = Issued(files={"token": "x"}, lease_ref="jwt:INTENT:1", issued_at=now, expires_at=now)
    written = set(pending) | set(leases.lease_entry("tok", "jwt", source, issued, "INTENT", source_expires_at=now))
    assert set(LEASE_FIELDS) == set(lease_item_properties(current_crd()))
    assert written <= set(LEASE_FIELDS), written - set(LEASE_FIELDS)


@pytest.mark.parametrize(
    ("case", "crd", "expected"),
    [
        ("the chart's CRD", current_crd(), None),
        ("the previous release's CRD", old_crd("target", "supersededAt"), "is older than this operator"),
        ("no CRD at all", None, "does not exist"),
    ],
)
async def test_the_check_reads_the_crd_from_the_api(
    kube_api: KubeApi, case: str, crd: dict[str, Any] | None, expected: str | None
) -> None:
    if crd is not None:
        kube_api.register_crd(crd)
    cluster = await connect(url=kube_api.url, token=kube_api.admin_token)
    try:
        problem = await check_task_lease_crd(cluster, attempts=1)
    finally:
        await cluster.close()
    assert (problem is None) if expected is None else (problem is not None and expected in problem), (case, problem)


async def crd_error(replica: Replica, caplog: pytest.LogCaptureFixture, deadline: float) -> logging.LogRecord:
    """The one log record about the TaskLease CRD, once the replica has logged it."""
    while not (found := [r for r in caplog.records if "TaskLease CRD" in r.getMessage()]):
        assert not replica.failure and time.monotonic() < deadline, "no ERROR about the CRD"
        await asyncio.sleep(0.05)
    (record,) = found
    return record


async def test_an_operator_on_an_old_crd_logs_the_command_and_stays_unready(
    kube_api: KubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    kube_api.register_crd(old_crd("target", "supersededAt"))  # prepare_cluster keeps it: helm's behaviour
    authority, _ = prepare_cluster(kube_api)
    replica = Replica(kube_api, authority.mint_x509_svid(OPERATOR_ID), kube_api.admin_token)
    caplog.set_level(logging.ERROR, logger="taskcreds.operator")
    replica.start()
    try:
        record = await crd_error(replica, caplog, time.monotonic() + 30)
        assert record.levelno == logging.ERROR and CRD_APPLY_COMMAND in record.getMessage()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{replica.ports['metrics']}/readyz") as resp:
                assert resp.status == 503
        assert not replica.ready
    finally:
        await asyncio.to_thread(replica.stop)
    assert not replica.thread.is_alive() and not replica.failure


async def apply_current_crd(kube_api: KubeApi) -> None:
    """What an admin runs (CRD_APPLY_COMMAND): the chart's CRD replaces the installed one via the API."""
    from kubernetes_asyncio import client

    api = await kube_api.kubernetes_asyncio_client()
    try:
        ext = client.ApiextensionsV1Api(api)
        installed = await ext.read_custom_resource_definition(TASK_LEASE_CRD)
        crd = current_crd()
        crd["metadata"]["resourceVersion"] = installed.metadata.resource_version
        await ext.replace_custom_resource_definition(TASK_LEASE_CRD, crd)
    finally:
        await api.close()


def failing_crd_reads(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[int]:
    """The API server answering 503 to the first ``failures`` CRD reads (an outage at startup); the
    reads after that reach the stand-in. Returns the count of reads so far."""
    real = main._read_crd
    reads = [0]

    async def read(api: Any, name: str) -> dict[str, Any] | None:
        reads[0] += 1
        if reads[0] <= failures:
            raise main._ApiStatus(503)
        return await real(api, name)

    monkeypatch.setattr(main, "_read_crd", read)
    return reads


@pytest.mark.parametrize(
    ("case", "old", "failures", "in_error", "not_in_error"),
    [
        pytest.param(
            "API outage at startup", False, 9, "cannot read the TaskLease CRD", CRD_APPLY_COMMAND, id="outage"
        ),
        pytest.param(
            "old CRD, then applied", True, 0, CRD_APPLY_COMMAND, "cannot read", id="old-crd-applied"
        ),
    ],
)
async def test_a_replica_becomes_ready_once_the_crd_check_passes_without_a_restart(
    kube_api: KubeApi,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    old: bool,
    failures: int,
    in_error: str,
    not_in_error: str,
) -> None:
    """Before: after ~6 failed reads (or on an old CRD) the replica stayed unready until restarted."""
    monkeypatch.setattr(main, "CRD_CHECK_INTERVAL", 0.05)
    monkeypatch.setattr(main, "CRD_RECHECK_INTERVAL", 0.3)
    reads = failing_crd_reads(monkeypatch, failures)
    if old:
        kube_api.register_crd(old_crd("intent", "pending"))
    authority, _ = prepare_cluster(kube_api)
    replica = Replica(kube_api, authority.mint_x509_svid(OPERATOR_ID), kube_api.admin_token)
    caplog.set_level(logging.ERROR, logger="taskcreds.operator")
    replica.start()
    try:
        deadline = time.monotonic() + 30
        record = await crd_error(replica, caplog, deadline)
        assert record.levelno == logging.ERROR and in_error in record.getMessage(), (case, record.getMessage())
        assert not_in_error not in record.getMessage(), case
        assert "no restart needed" in record.getMessage(), case
        assert not replica.ready, case
        if old:
            await asyncio.sleep(0.7)  # rechecked meanwhile, still old: unready, no second ERROR
            assert not replica.ready, case
            await apply_current_crd(kube_api)
        while not replica.ready:
            assert not replica.failure and time.monotonic() < deadline, (case, "never became ready")
            await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{replica.ports['metrics']}/readyz") as resp:
                assert resp.status == 200, case
        assert reads[0] > max(failures, main.CRD_CHECK_ATTEMPTS if failures else 2), case
        assert len([r for r in caplog.records if "TaskLease CRD" in r.getMessage()]) == 1, case
    finally:
        await asyncio.to_thread(replica.stop)
    assert not replica.thread.is_alive() and not replica.failure
