"""``taskcreds``: the user-facing command (inject, webhook, demo, redact).

Each subcommand lives in the module that owns its concern; this file only parses arguments,
so ``taskcreds --help`` stays fast and a missing optional part never breaks the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from taskcreds import __version__

# subcommand -> "module:function"; the function takes the parsed args and returns an exit code
_COMMANDS = {
    "inject": "taskcreds.operator.inject_cli:run",
    "webhook": "taskcreds.operator.webhook:run_standalone",
    "demo": "taskcreds.demo:run",
    "redact": "taskcreds.sidecar.redact_cli:run",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskcreds",
        description="Short-lived, SPIFFE-authenticated, per-task credentials for coding-agent pods.",
    )
    parser.add_argument("--version", action="version", version=f"taskcreds {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("inject", help="print a pod (or workload) as the webhook would admit it")
    p.add_argument(
        "-f",
        "--filename",
        required=True,
        metavar="FILE",
        help="YAML file with one or more documents, or - for stdin",
    )
    p.add_argument("--config", metavar="FILE", help="injection configuration (YAML)")

    p = sub.add_parser("webhook", help="serve the mutating admission webhook alone (HTTPS)")
    p.add_argument("--listen", required=True, metavar="HOST:PORT")
    p.add_argument("--tls-cert", required=True, metavar="FILE")
    p.add_argument("--tls-key", required=True, metavar="FILE")
    p.add_argument("--config", metavar="FILE", help="injection configuration (YAML)")

    p = sub.add_parser("demo", help="run the whole flow on this machine, no cluster needed")
    p.add_argument(
        "--dir", metavar="DIR", help="tmpfs directory for the credentials (default under /dev/shm)"
    )
    p.add_argument(
        "--task-seconds",
        type=float,
        default=12.0,
        metavar="N",
        help="the task completes after N seconds, a finite number above 0 (default 12)",
    )
    p.add_argument(
        "--ttl",
        default="4s",
        metavar="DURATION",
        help="credential lifetime, Go-style, at most 87600h (default 4s, so rotations show)",
    )

    p = sub.add_parser("redact", help="copy stdin to stdout with this pod's credential values redacted")
    p.add_argument(
        "--url",
        default=None,
        metavar="URL",
        help="the sidecar's local endpoint (default http://127.0.0.1:9091)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, func_name = _COMMANDS[args.command].split(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:  # a part not built yet: say so, no traceback
        print(f"taskcreds {args.command}: not available in this build ({exc})", file=sys.stderr)
        return 2
    try:
        return int(func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
