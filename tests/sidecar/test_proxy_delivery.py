"""Proxy delivery end to end: the real broker (MemCluster), a real SPIFFE Workload API, the sidecar
as a real process, and ``git clone`` through the sidecar's egress proxy to a token-protected git
server. The proxy credential never reaches the directory the agent sees; git succeeds only because
the sidecar attached the token."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import urllib.error
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from taskcreds.sidecar.client import IssuedCredential
from taskcreds.sidecar.proxy import RouteError
from taskcreds.sidecar.runner import egress_denied, route_for
from taskcreds.sidecar.writer import CA_BUNDLE, CredentialWriter

from taskcreds import names
from tests.fakes.git_server import GitServer, TestCA, make_bare_repo
from tests.operator.test_broker_harness import NS, SA, Harness, source
from tests.ports import free_port
from tests.sidecar.conftest import SidecarProcess, sidecar_env
from tests.sidecar.test_proxy import urllib_get

GIT_HOST = "git.test.local"
OTHER_HOST = "elsewhere.test.local"
POD = "agent-0"
TASK = "task-1"
# made at test time (a token-shaped literal in the repository would look like a leak)
GIT_TOKEN = "ghs_" + secrets.token_hex(18)  # in the Secret only; never on the agent's disk
GIT_TOKEN_2 = "ghs_" + secrets.token_hex(18)
FILE_VALUE = "file-delivered-canary-value-4c2d"


@pytest.fixture
async def broker() -> AsyncIterator[Harness]:
    """The real broker on loopback with one proxy source (git, Basic) and one file source."""
    h = Harness()
    h.cluster.put_source(source(
        "gitcred", "secret", secret={"secretRef": {"name": "git-token", "key": "token"}}, files=["token"],
        delivery="proxy", proxy={"hosts": [GIT_HOST], "basic": {"username": "x-access-token"}}))
    h.cluster.put_secret(NS, "git-token", {"token": GIT_TOKEN})
    h.cluster.put_source(source("legacy", "secret", secret={"secretRef": {"name": "legacy", "key": "token"}}))
    h.cluster.put_secret(NS, "legacy", {"token": FILE_VALUE})
    await h.start()
    yield h
    await h.close()


@pytest.fixture
async def git(tmp_path: Path) -> AsyncIterator[GitServer]:
    root = tmp_path / "repos"
    root.mkdir()
    await asyncio.to_thread(make_bare_repo, root)
    server = GitServer(TestCA(), GIT_TOKEN, root, (GIT_HOST, "127.0.0.1"))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[SidecarProcess]]:
    procs: list[SidecarProcess] = []
    yield procs
    for proc in procs:
        proc.stop()


def _files(directory: Path) -> dict[str, bytes]:
    """Every regular file under the directory, hidden generations included, with its bytes."""
    out = {}
    for dirpath, _dirs, files in os.walk(directory):
        for name in files:
            path = Path(dirpath) / name
            if not path.is_symlink():
                out[str(path.relative_to(directory))] = path.read_bytes()
    return out


def _forms(value: str) -> list[bytes]:
    """The value and the Basic header it travels in."""
    return [value.encode(), base64.b64encode(f"x-access-token:{value}".encode())]


async def _git(args: list[str], *, proxy_port: int, cafile: Path, home: Path) -> tuple[int, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",  # no credential from anywhere but the proxy
        "HTTPS_PROXY": f"http://127.0.0.1:{proxy_port}",
        "GIT_SSL_CAINFO": str(cafile),
    }
    proc = await asyncio.create_subprocess_exec(
        "git", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return int(proc.returncode or 0), (out + err).decode(errors="replace")


async def test_git_clone_through_the_sidecar_proxy_with_a_credential_the_agent_never_holds(
        broker: Harness, git: GitServer, workload_api: Any, shm_dir: Path, tmp_path: Path,
        started: list[SidecarProcess]) -> None:
    pod = broker.add_pod(POD, task=TASK, credentials="gitcred,legacy")
    meta = pod["metadata"]
    token_file = tmp_path / "sa-token"
    token_file.write_text(broker.cluster.issue_pod_token(NS, SA, POD, meta["uid"], (names.TOKEN_AUDIENCE,)))
    api = workload_api(authority=broker.authority)
    podinfo = tmp_path / "podinfo"
    podinfo.mkdir()
    (podinfo / names.PODINFO_ANNOTATIONS_FILE).write_text(
        f'{names.ANNOTATION_EGRESS}="deny"\n{names.ANNOTATION_TASK}="{TASK}"\n')
    upstream_ca = git.ca.write_pem(tmp_path)
    proxy_port = free_port()
    env = sidecar_env(directory=shm_dir, broker_url=broker.url, token_file=token_file,
                      socket_uri=api.socket_uri, credentials="gitcred,legacy", **{
                          names.ENV_TASK: TASK, names.ENV_POD_NAME: POD, names.ENV_POD_UID: meta["uid"],
                          names.ENV_TTL: "3s", names.ENV_PODINFO_DIR: str(podinfo),
                          names.ENV_LISTEN_PROXY: f"127.0.0.1:{proxy_port}",
                          names.ENV_PROXY_UPSTREAM_CA: str(upstream_ca),
                          names.ENV_PROXY_RESOLVE: f"{GIT_HOST}=127.0.0.1:{git.port}"})
    sc = SidecarProcess(env, tmp_path / "sidecar.log")
    started.append(sc)
    await sc.wait_for(lambda: sc.readyz() == 200, 15, "ready")

    # ready means: the file credential is on disk and the proxy listens holding the proxy credential
    ready = json.loads(sc.get("/readyz")[1])
    assert ready["proxy"] == {"listening": True, "credentials": ["gitcred"], "port": proxy_port}
    assert (shm_dir / "legacy" / "token").read_text() == FILE_VALUE
    assert not (shm_dir / "gitcred").exists()
    disk = _files(shm_dir)
    leaks = [path for path, data in disk.items() for form in _forms(GIT_TOKEN) if form in data]
    assert leaks == [], "the proxy credential reached the agent's directory"
    manifest = json.loads((shm_dir / names.MANIFEST_FILE).read_text())
    entries = {c["name"]: c for c in manifest["credentials"]}
    assert entries["gitcred"]["delivery"] == "proxy" and entries["gitcred"]["hosts"] == [GIT_HOST]
    assert "files" not in entries["gitcred"] and entries["legacy"]["files"] == ["token"]
    bundle = shm_dir / CA_BUNDLE
    assert b"PRIVATE KEY" not in bundle.read_bytes() and oct(bundle.stat().st_mode & 0o777) == "0o444"
    cafile = tmp_path / "bundle-copy.crt"  # teardown removes the bundle; later checks still need it
    cafile.write_bytes(bundle.read_bytes())

    # git clone works only because the sidecar attached the token
    home = tmp_path / "home"
    home.mkdir()
    code, output = await _git(["clone", "-q", f"https://{GIT_HOST}/repo.git", str(tmp_path / "clone")],
                              proxy_port=proxy_port, cafile=cafile, home=home)
    assert code == 0, output
    assert (tmp_path / "clone" / "README.md").read_text() == "hello from the test upstream\n"
    assert git.saw_token
    assert GIT_TOKEN not in output

    # deny mode (taskcreds.io/egress: deny): an unmatched host is refused
    with pytest.raises(urllib.error.URLError, match="403"):
        await asyncio.to_thread(urllib_get, f"https://{OTHER_HOST}/", proxy_port=proxy_port, cafile=cafile)

    # rotation: the owner rotates the Secret; the next request after the sidecar's refresh carries it
    broker.cluster.put_secret(NS, "git-token", {"token": GIT_TOKEN_2})
    git.token = GIT_TOKEN_2

    async def ls_remote() -> bool:
        code, _ = await _git(["ls-remote", f"https://{GIT_HOST}/repo.git"], proxy_port=proxy_port,
                             cafile=cafile, home=home)
        return code == 0

    for _ in range(60):
        if await ls_remote():
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"the rotated token was never attached:\n{sc.logs()[-2000:]}")
    assert git.saw_token
    assert not any(form in data for data in _files(shm_dir).values() for form in _forms(GIT_TOKEN_2))

    # the redactor knows proxy values too: they were issued to the pod
    status, redacted = await asyncio.to_thread(_post, sc.local + "/v1/redact", f"x {GIT_TOKEN} y {GIT_TOKEN_2}")
    assert status == 200 and redacted.count("[REDACTED:gitcred]") == 2, redacted
    metrics = sc.get("/metrics")[1].decode()
    assert 'taskcreds_sidecar_proxy_requests_total{credential="gitcred",host="git.test.local",result="forwarded"}' \
        in metrics
    assert 'result="denied"' in metrics

    # teardown: matched hosts get 403 "task has ended", nothing is left on disk
    broker.hub.update(broker.cluster.set_annotation(NS, POD, names.ANNOTATION_TASK_STATUS, "completed"))
    await sc.wait_for(lambda: not (shm_dir / "legacy").exists(), 5, "teardown")
    seen = len(git.seen_auth)
    status, body = await asyncio.to_thread(
        urllib_get_status, f"https://{GIT_HOST}/repo.git/info/refs?service=git-upload-pack", proxy_port, cafile)
    assert status == 403 and b"task has ended" in body
    assert len(git.seen_auth) == seen, "nothing went upstream after teardown"
    assert not (shm_dir / CA_BUNDLE).exists()
    assert await sc.aterminate() == 0
    logs = sc.logs()
    for value in (GIT_TOKEN, GIT_TOKEN_2, FILE_VALUE):
        assert value not in logs and value not in metrics


def _post(url: str, text: str) -> tuple[int, str]:
    import urllib.request

    request = urllib.request.Request(url, data=text.encode(), method="POST")  # noqa: S310 (http://127.0.0.1)
    with urllib.request.urlopen(request, timeout=5) as r:  # noqa: S310
        return r.status, r.read().decode()


def urllib_get_status(url: str, proxy_port: int, cafile: Path) -> tuple[int, bytes]:
    try:
        return urllib_get(url, proxy_port=proxy_port, cafile=cafile)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --- pieces, without processes ---------------------------------------------------------------------
EGRESS = [
    ("deny", f'{names.ANNOTATION_EGRESS}="deny"\n', True),
    ("deny, any case", f'{names.ANNOTATION_EGRESS}="Deny"\n', True),
    ("allow", f'{names.ANNOTATION_EGRESS}="allow"\n', False),
    ("absent", f'{names.ANNOTATION_TASK}="t"\n', False),
    ("anything else", f'{names.ANNOTATION_EGRESS}="block"\n', False),
    ("unreadable file", 'not a valid line\n', False),
    ("no file", None, False),
]


@pytest.mark.parametrize(("case", "content", "deny"), EGRESS, ids=[e[0] for e in EGRESS])
def test_egress_annotation(tmp_path: Path, case: str, content: str | None, deny: bool) -> None:
    if content is not None:
        (tmp_path / names.PODINFO_ANNOTATIONS_FILE).write_text(content)
    assert egress_denied(str(tmp_path)) is deny
    assert egress_denied(None) is False


def _cred(proxy: dict[str, Any] | None) -> IssuedCredential:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return IssuedCredential(name="gh", provider="secret", lease_ref="r", issued_at=now, expires_at=now,
                            renewable=False, static=True, delivery="proxy", files={"token": "v"}, proxy=proxy)


def test_routes_come_from_the_broker_proxy_block() -> None:
    route = route_for(_cred({"hosts": ["api.github.com"], "header": "Authorization: Bearer {token}",
                             "basicUsername": None, "allowHttp": True}))
    assert (route.credential, route.hosts, route.header_name, route.allow_http) == (
        "gh", ("api.github.com",), "Authorization", True)
    for broken in (None, {"hosts": []}, {"hosts": ["a.example"]}):
        with pytest.raises(RouteError):
            route_for(_cred(broken))


def test_a_restarted_sidecar_accepts_and_wipes_its_ca_bundle(shm_dir: Path) -> None:
    (shm_dir / CA_BUNDLE).write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    (shm_dir / f".{CA_BUNDLE}.tmp123").write_bytes(b"half-written")
    writer = CredentialWriter(str(shm_dir), task="t")
    try:
        writer.prepare()  # no refusal: the bundle is the sidecar's own
        assert sorted(p.name for p in shm_dir.iterdir()) == []
        (shm_dir / CA_BUNDLE).write_bytes(b"-----BEGIN CERTIFICATE-----\n")
        writer.wipe()
        assert not (shm_dir / CA_BUNDLE).exists()
    finally:
        writer.close()
    os.mkdir(shm_dir / CA_BUNDLE)  # a directory of that name is not ours: refused
    with pytest.raises(Exception, match="not created by taskcreds"):
        CredentialWriter(str(shm_dir), task="t").prepare()


CONFIG = [
    ("resolve without '='", {names.ENV_PROXY_RESOLVE: "git.test.local:127.0.0.1:443"}, names.ENV_PROXY_RESOLVE),
    ("resolve without a port", {names.ENV_PROXY_RESOLVE: "git.test.local=127.0.0.1"}, names.ENV_PROXY_RESOLVE),
    ("proxy listen not HOST:PORT", {names.ENV_LISTEN_PROXY: "9092"}, names.ENV_LISTEN_PROXY),
    ("a credential named like the CA bundle", {names.ENV_CREDENTIALS: "ca-bundle.crt"}, names.ENV_CREDENTIALS),
]


@pytest.mark.parametrize(("case", "extra", "key"), CONFIG, ids=[c[0] for c in CONFIG])
def test_proxy_config_refusals_name_the_variable(case: str, extra: dict[str, str], key: str) -> None:
    from taskcreds.sidecar.config import from_env
    from taskcreds.sidecar.errors import ConfigError

    env = sidecar_env(directory=Path("/dev/shm/x"), broker_url="https://b:1", token_file=Path("/t"),
                      socket_uri="unix:///s", **extra)
    with pytest.raises(ConfigError, match=key):
        from_env(env)


def test_proxy_config_defaults_and_hooks() -> None:
    from taskcreds.sidecar.config import from_env

    base = sidecar_env(directory=Path("/dev/shm/x"), broker_url="https://b:1", token_file=Path("/t"),
                       socket_uri="unix:///s")
    base.pop(names.ENV_LISTEN_PROXY, None)
    config = from_env(base)
    assert config.listen_proxy == ("127.0.0.1", names.SIDECAR_PROXY_PORT) and config.proxy_resolve == {}
    hooked = from_env({**base, names.ENV_PROXY_RESOLVE: "Git.Test.Local=127.0.0.1:8443, a.b=10.0.0.1:443"})
    assert hooked.proxy_resolve == {"git.test.local": ("127.0.0.1", 8443), "a.b": ("10.0.0.1", 443)}


async def test_a_changed_proxy_block_mid_task_updates_the_running_proxy(shm_dir: Path) -> None:
    """A renewal or new issuance with another ``proxy`` block: same listener, new routes; an
    unusable block leaves the previous routes in place (logged, never half-applied)."""
    from taskcreds.sidecar.config import from_env
    from taskcreds.sidecar.runner import ProxyDelivery, Runner

    from taskcreds.metrics import register_sidecar

    config = from_env({
        **sidecar_env(directory=shm_dir, broker_url="https://b:1", token_file=Path("/t"),
                      socket_uri="unix:///s", credentials="gh"),
        names.ENV_LISTEN_PROXY: f"127.0.0.1:{free_port()}",
    })
    metrics = register_sidecar()
    delivery = ProxyDelivery(config, metrics)
    runner = Runner(config, identity=None, client=None, writer=None, redactor=None,  # type: ignore[arg-type]
                    metrics=metrics, proxy=delivery)
    header = "Authorization: Bearer {token}"
    try:
        runner.credentials["gh"] = _cred({"hosts": [GIT_HOST], "header": header})
        await runner._ensure_proxy()
        port, listener = delivery.port, delivery.proxy
        assert port is not None and listener is not None
        assert [r.hosts for r in listener.routes] == [(GIT_HOST,)]

        runner.credentials["gh"] = _cred({"hosts": [GIT_HOST, OTHER_HOST], "header": header})
        await runner._ensure_proxy()
        assert (delivery.port, delivery.proxy) == (port, listener), "the listener was not restarted"
        assert [r.hosts for r in listener.routes] == [(GIT_HOST, OTHER_HOST)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"CONNECT {OTHER_HOST}:443 HTTP/1.1\r\n\r\n".encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200"), "intercepted"
        writer.close()

        runner.credentials["gh"] = _cred({"hosts": []})  # unusable: refused, previous routes stay
        await runner._ensure_proxy()
        assert [r.hosts for r in listener.routes] == [(GIT_HOST, OTHER_HOST)]
    finally:
        await delivery.close()
