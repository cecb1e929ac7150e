import subprocess
import sys

from taskcreds import cli


def test_help_lists_every_contract_command() -> None:
    out = subprocess.run([sys.executable, "-m", "taskcreds.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("inject", "webhook", "demo", "redact"):
        assert command in out.stdout


def test_unknown_command_is_a_usage_error_not_a_traceback() -> None:
    out = subprocess.run([sys.executable, "-m", "taskcreds.cli", "bogus"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "invalid choice" in out.stderr
    assert "Traceback" not in out.stderr


def test_parser_accepts_contract_flags() -> None:
    args = cli.build_parser().parse_args(
        ["webhook", "--listen", "127.0.0.1:8443", "--tls-cert", "c", "--tls-key", "k"]
    )
    assert args.listen == "127.0.0.1:8443"
    args = cli.build_parser().parse_args(
        ["demo", "--dir", "/dev/shm/x", "--task-seconds", "8", "--ttl", "3s"]
    )
    assert (args.dir, args.task_seconds, args.ttl) == ("/dev/shm/x", 8.0, "3s")
