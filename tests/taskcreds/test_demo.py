"""`taskcreds demo`: the whole flow as a person runs it — a real process, its output and what it leaves."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm (tmpfs)")

# anything that looks like a credential value: a JWT, or a long base64/url-safe run
VALUE_SHAPES = re.compile(r"eyJ[A-Za-z0-9_-]{10,}|[A-Za-z0-9+/_-]{60,}")


def demo(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "taskcreds.cli", "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def sidecars_running(directory: Path) -> list[str]:
    """Sidecar processes of this demo (their TASKCREDS_DIR is under ``directory``), wherever parented.

    Other tests may run sidecars on this machine at the same time: those are not this demo's.
    """
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "taskcreds-sidecar" not in args and "sidecar.main" not in args:
                continue
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        dirs = [e.split(b"=", 1)[1].decode(errors="replace") for e in env if e.startswith(b"TASKCREDS_DIR=")]
        if any(d == str(directory) or d.startswith(f"{directory}/") for d in dirs):
            out.append(f"{proc.name} {args}")
    return out


def test_demo_shows_issuance_rotation_revocation_and_wipe_and_leaves_nothing() -> None:
    directory = Path("/dev/shm") / f"taskcreds-test-demo-{uuid.uuid4().hex[:8]}"
    proc = demo("--dir", str(directory), "--task-seconds", "7", "--ttl", "3s")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    stages = [m.group(1) for m in re.finditer(r"^\[\s*[\d.]+s\]\s+(\S+)", out, re.MULTILINE)]
    for stage in (
        "admission",
        "identity",
        "issuance",
        "ready",
        "rotation",
        "task",
        "revocation",
        "teardown",
        "done",
    ):
        assert stage in stages, f"no {stage} line in:\n{out}"
    assert (
        stages.index("issuance")
        < stages.index("rotation")
        < stages.index("revocation")
        < stages.index("teardown")
    )
    assert "[REDACTED:llm-api]" in out
    assert not VALUE_SHAPES.search(out), "the demo printed something shaped like a credential value"
    assert not directory.exists(), "the demo created the directory and must remove it"
    assert sidecars_running(directory) == []


def test_ctrl_c_in_the_middle_still_revokes_and_wipes() -> None:
    directory = Path("/dev/shm") / f"taskcreds-test-demo-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    try:
        proc = demo("--dir", str(directory), "--task-seconds", "60", "--ttl", "30s")
        deadline = time.monotonic() + 30
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "] ready" in line or time.monotonic() > deadline:
                break
        assert any("] ready" in line for line in lines), "".join(lines)
        assert any((directory / "llm-api").iterdir())
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 130, rest
        assert "interrupted: revoking and wiping" in rest
        assert directory.exists() and list(directory.iterdir()) == [], (
            "a directory the user named is left empty"
        )
        assert sidecars_running(directory) == []
    finally:
        if directory.exists():
            for entry in directory.iterdir():
                entry.unlink()
            directory.rmdir()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        pytest.param(["--ttl", "soon"], 2, "taskcreds demo: --ttl: 'soon' is not a Go-style duration", id="ttl-words"),
        pytest.param(["--ttl", "100000000000h"], 2,
                     "taskcreds demo: --ttl: '100000000000h' is longer than the maximum 87600h (10 years)",
                     id="ttl-over-the-maximum (hung: OverflowError in the jwt provider, review L2)"),
        pytest.param(["--task-seconds", "0"], 2, "taskcreds demo: --task-seconds 0.0: must be a number more than 0",
                     id="task-seconds-zero"),
        pytest.param(["--task-seconds", "nan"], 2, "taskcreds demo: --task-seconds nan: must be", id="task-seconds-nan"),
        pytest.param(["--task-seconds", "inf"], 2, "taskcreds demo: --task-seconds inf: must be",
                     id="task-seconds-inf (ran forever)"),
        pytest.param(["--dir", "{file}"], 1, "taskcreds demo: --dir {file} is not a directory: give an empty or new",
                     id="dir-is-a-regular-file (was a NotADirectoryError traceback, review L1)"),
        pytest.param(["--dir", "{file}/sub"], 1, "taskcreds demo: --dir {file}/sub: Not a directory: give",
                     id="dir-below-a-regular-file"),
    ],
)
def test_bad_arguments_say_what_is_wrong_in_one_line(args: list[str], code: int, message: str) -> None:
    file = Path("/dev/shm") / f"taskcreds-test-demo-file-{uuid.uuid4().hex[:8]}"
    file.write_text("not a directory")
    try:
        proc = demo(*(a.format(file=file) for a in args))
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == code, out
        assert out.splitlines()[-1].startswith(message.format(file=file)), out
        assert "Traceback" not in out
        assert file.read_text() == "not a directory", "a refused --dir is left as it was"
    finally:
        file.unlink()


@pytest.mark.parametrize("below", [pytest.param("", id="new directory"),
                                   pytest.param("a/b", id="new directory with missing parents (they were left behind)")])
def test_a_directory_not_on_tmpfs_is_refused_and_leaves_nothing(below: str) -> None:
    top = Path.cwd() / f".tmp-demo-{uuid.uuid4().hex[:6]}"  # the repo's disk, not tmpfs
    target = top / below if below else top
    try:
        proc = demo("--dir", str(target))
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 1
        assert "not on tmpfs" in out
        assert not top.exists(), "every directory the refused run made is removed"
    finally:
        for d in (target, *target.parents):
            if d == top.parent:
                break
            if d.exists():
                d.rmdir()


def test_a_non_empty_directory_is_refused_and_nothing_in_it_is_touched() -> None:
    """Regression: a refused --dir must keep every file that was there (an early build emptied it)."""
    directory = Path("/dev/shm") / f"taskcreds-test-demo-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    keep = directory / "someone-elses-file"
    keep.write_text("keep me")
    (directory / "sub").mkdir()
    try:
        proc = demo("--dir", str(directory))
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 1
        assert "not empty" in out
        assert keep.read_text() == "keep me"
        assert (directory / "sub").is_dir()
    finally:
        keep.unlink()
        (directory / "sub").rmdir()
        directory.rmdir()
