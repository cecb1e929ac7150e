"""``taskcreds-sidecar``: read the environment, check the directory, run until the pod ends.

Exit codes: 0 after SIGTERM/SIGINT (credentials torn down), 2 for a bad environment variable,
1 when the credential directory is unusable (not tmpfs/ramfs, planted entries) or a listener
cannot bind. The egress proxy (``TASKCREDS_LISTEN_PROXY``) starts later, once the broker's first
answer names a proxy-delivered credential; if it cannot bind, ``/readyz`` stays 503 saying why.
Every refusal is one line on stderr, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from taskcreds.sidecar.client import BrokerClient
from taskcreds.sidecar.config import SidecarConfig, from_env
from taskcreds.sidecar.errors import ConfigError, WriterError
from taskcreds.sidecar.redact import Redactor
from taskcreds.sidecar.runner import Runner
from taskcreds.sidecar.server import start_servers
from taskcreds.sidecar.writer import CredentialWriter

from taskcreds.logs import fields, setup_logging
from taskcreds.loop import loop_name, run_loop
from taskcreds.metrics import register_sidecar

__all__ = ["main", "run"]

_log = logging.getLogger("taskcreds.sidecar")


def _fail(code: int, message: str) -> int:
    print(f"taskcreds-sidecar: {message}", file=sys.stderr, flush=True)
    return code


async def run(config: SidecarConfig, writer: CredentialWriter) -> int:
    """Run the sidecar until SIGTERM/SIGINT; returns the exit code."""
    from taskcreds.sidecar.identity import IdentitySource  # py-spiffe loads only when needed

    metrics = register_sidecar()
    redactor = Redactor()
    runner: Runner | None = None

    def on_update(*args: object) -> None:
        if runner is not None:
            runner.on_svid_update(*args)

    identity = IdentitySource(config.spiffe_socket, on_update=on_update)
    client = BrokerClient(url=config.broker_url, broker_spiffe_id=config.broker_spiffe_id,
                          token_file=config.token_file, task=config.task, identity=identity)
    runner = Runner(config, identity=identity, client=client, writer=writer, redactor=redactor,
                    metrics=metrics)
    try:
        servers = await start_servers(local=config.listen_local, probe=config.listen_probe,
                                      readiness=runner.readiness, metrics=metrics, redactor=redactor)
    except OSError as exc:
        return _fail(1, f"cannot listen ({config.listen_local[0]}:{config.listen_local[1]}, "
                        f"{config.listen_probe[0]}:{config.listen_probe[1]}): {exc.strerror or exc}")
    _log.info("sidecar started", extra=fields(
        task=config.task, pod=f"{config.pod_namespace}/{config.pod_name}",
        credentials=list(config.credentials),
        local_port=servers.local_port, probe_port=servers.probe_port, dir=config.dir, loop=loop_name()))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.request_stop)
    try:
        return await runner.run()
    finally:
        if runner.proxy is not None:  # started by the runner once a credential has delivery proxy
            await runner.proxy.close()
        await servers.close()
        await client.close()
        await identity.close()
        writer.close()


def main() -> None:
    try:
        config = from_env(os.environ)
    except ConfigError as exc:
        sys.exit(_fail(2, str(exc)))
    setup_logging(config.log_level)
    writer = CredentialWriter(config.dir, fs_group=config.fs_group, task=config.task)
    try:
        writer.prepare()
    except (WriterError, OSError) as exc:
        sys.exit(_fail(1, str(exc)))
    sys.exit(run_loop(run(config, writer)))


if __name__ == "__main__":  # pragma: no cover
    main()
