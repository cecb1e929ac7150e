"""The canary sweep itself must be able to fail: it finds a value in every form and every place.

The scenarios call :meth:`Harness.assert_no_leaks` at their end; a sweep that cannot see a leak
would make all of them pass vacuously. Here a real issued value is planted on purpose in each place
the sweep searches, in each encoding, and each one must be reported by location, never by value.
"""

from __future__ import annotations

import base64
import logging
import urllib.parse

import pytest

from taskcreds import names
from tests.scenarios.harness import NS, Harness, find_leaks

VALUE = "tc-canary-value-0123456789"


@pytest.mark.parametrize(
    ("haystack", "expected"),
    [
        pytest.param("no value here", None, id="clean text"),
        pytest.param(f"Bearer {VALUE}", "raw", id="raw in a log line"),
        pytest.param(base64.b64encode(VALUE.encode()).decode(), "base64", id="base64"),
        pytest.param(
            base64.urlsafe_b64encode(VALUE.encode()).decode().rstrip("="), "base64url", id="base64url"
        ),
        pytest.param(
            base64.b64encode(VALUE.encode()).decode().rstrip("="),
            "base64url",
            id="base64 unpadded (the same text as base64url here)",
        ),
        pytest.param('{"v": "' + VALUE + '"}', "raw", id="inside JSON"),
        pytest.param(VALUE[:-1], None, id="a prefix is not the value"),
    ],
)
def test_find_leaks_forms(haystack: str, expected: str | None) -> None:
    leaks = find_leaks([VALUE], {"place": haystack})
    forms = {leak.split(": ")[1].split(" form")[0] for leak in leaks}
    if expected is None:
        assert leaks == []
    else:
        assert expected in forms, leaks
    assert all(VALUE not in leak for leak in leaks)  # a report names the place, never the value


def test_find_leaks_url_encoded_value_with_reserved_characters() -> None:
    value = "s.a+b/c=d"  # a token shape with characters URL encoding changes
    leaks = find_leaks([value], {"query string": "x=" + urllib.parse.quote(value, safe="")})
    assert leaks == ["query string: urlencoded form of issued value #0 (9 bytes)"]


async def test_sweep_finds_a_planted_value_everywhere_it_searches(cluster: Harness) -> None:
    """Plant a stand-in value (not an issued one, so the real flow stays clean) in each place."""
    from kubernetes_asyncio import client

    run = await cluster.launch("canary", ("api", "bao"))
    await cluster.wait_ready(run)
    planted = "tc-planted-" + base64.b32encode(b"canary-sweep-check").decode().lower()
    encoded = base64.b64encode(planted.encode()).decode()
    async with await cluster.api() as api:
        core = client.CoreV1Api(api)
        await core.patch_namespaced_pod(
            run.name,
            NS,
            {"metadata": {"annotations": {"example.com/leak": urllib.parse.quote(planted, safe="")}}},
        )
        await core.create_namespaced_config_map(NS, {"metadata": {"name": "leak"}, "data": {"v": planted}})
        await core.create_namespaced_secret(NS, {"metadata": {"name": "leak"}, "data": {"v": encoded}})
        await core.create_namespaced_event(
            NS,
            {
                "metadata": {"name": "leak"},
                "involvedObject": {"kind": "Pod", "namespace": NS, "name": run.name},
                "reason": "Leak",
                "message": encoded,
                "type": "Normal",
            },
        )
    logging.getLogger("taskcreds.operator").warning("oops %s", planted)
    with open(run.log_path, "a") as log:  # the sidecar's stdout
        log.write(f"token={planted}\n")
    run.agent_outputs.append(planted)

    leaks = find_leaks([planted], await cluster.haystacks())
    places = {leak.split(":")[0] for leak in leaks}
    assert places >= {
        "Pod objects",
        "ConfigMap objects",
        "Secrets (except the operator's OpenBao token)",
        "events",
        "Event objects",
        "operator logs",
        f"sidecar {run.name} stdout/stderr",
        f"agent {run.name} output",
    }, sorted(places)

    # the real values: the task ends, and none of them is anywhere but the (now wiped) files
    await cluster.set_annotation(run, names.ANNOTATION_TASK_STATUS, "completed")
    lease = await cluster.wait_revoked(run)
    await cluster.wait_files_gone(run)
    await cluster.assert_dead_at_source(run, lease, reason="completed")
    cluster.finish(run)
    await cluster.assert_no_leaks()
