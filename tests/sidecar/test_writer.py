"""The credential directory: kubelet-style atomic sets on tmpfs, modes, group, refusals, wipe."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from taskcreds.sidecar.errors import NotInMemoryFilesystem, UnsafeEntry, UnsafeName
from taskcreds.sidecar.teardown import teardown
from taskcreds.sidecar.writer import ENDED_MARKER, CredentialFiles, CredentialWriter

from taskcreds.metrics import register_sidecar
from taskcreds.names import MANIFEST_FILE

EXPIRES = datetime(2026, 11, 29, 10, 15, tzinfo=UTC)


def creds(generation: int, names: tuple[str, ...] = ("github", "db")) -> list[CredentialFiles]:
    out = []
    for name in names:
        files = {"token": f"{name}-value-{generation}"} if name != "db" else \
            {"username": f"user-{generation}", "password": f"db-value-{generation}"}
        out.append(CredentialFiles(name, "vault" if name == "db" else "github-app",
                                   EXPIRES + timedelta(seconds=generation), files))
    return out


@pytest.fixture
def writer(shm_dir: Path) -> Iterator[CredentialWriter]:
    w = CredentialWriter(str(shm_dir), task="task-1", grace=0.0)
    w.prepare()
    yield w
    w.close()


def test_layout_matches_the_kubelets(shm_dir: Path, writer: CredentialWriter) -> None:
    writer.write(creds(1))
    entries = {p.name for p in shm_dir.iterdir()}
    generations = [e for e in entries if e.startswith("..2")]
    assert len(generations) == 1 and generations[0].startswith("..20")
    assert {"..data", "github", "db", "taskcreds.json"} <= entries
    assert os.readlink(shm_dir / "..data") == generations[0]
    assert os.readlink(shm_dir / "github") == "..data/github"
    assert os.readlink(shm_dir / "taskcreds.json") == "..data/taskcreds.json"
    assert (shm_dir / "github" / "token").read_text() == "github-value-1"
    assert (shm_dir / "db" / "password").read_text() == "db-value-1"
    for path in (shm_dir / "github" / "token", shm_dir / "db" / "username", shm_dir / "taskcreds.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o440


def test_manifest_lists_names_files_and_expiry_never_values(shm_dir: Path, writer: CredentialWriter) -> None:
    writer.write(creds(7))
    raw = (shm_dir / "taskcreds.json").read_text()
    assert "value-7" not in raw and "user-7" not in raw
    doc = json.loads(raw)
    assert doc["credentials"] == [
        {"name": "github", "provider": "github-app", "files": ["token"], "expiresAt": "2026-11-29T10:15:07Z"},
        {"name": "db", "provider": "vault", "files": ["password", "username"], "expiresAt": "2026-11-29T10:15:07Z"},
    ]


def test_a_rotation_replaces_the_set_and_removes_dropped_credentials(shm_dir: Path, writer: CredentialWriter) -> None:
    writer.write(creds(1))
    first = os.readlink(shm_dir / "..data")
    writer.write(creds(2, ("db",)))
    assert not (shm_dir / first).exists(), "old generation removed after the swap"
    assert not os.path.lexists(shm_dir / "github"), "a credential no longer in the set disappears"
    assert (shm_dir / "db" / "password").read_text() == "db-value-2"
    assert json.loads((shm_dir / "taskcreds.json").read_text())["credentials"][0]["name"] == "db"


def test_retired_generation_kept_for_the_grace_period_then_shredded(shm_dir: Path) -> None:
    w = CredentialWriter(str(shm_dir), grace=60.0)
    w.prepare()
    w.write(creds(1))
    old = os.readlink(shm_dir / "..data")
    held = os.open(shm_dir / old / "github" / "token", os.O_RDONLY)  # a reader that opened the old set
    w.write(creds(2))
    assert (shm_dir / old / "github" / "token").exists() and w.pending_retired == 1
    w.collect(force=True)
    assert not (shm_dir / old).exists()
    # overwritten with zeros before the unlink: what a late reader still holds is gone too
    assert os.pread(held, 64, 0) == b"\0" * len("github-value-1")
    os.close(held)
    w.close()


def test_group_readable_by_fs_group_only(shm_dir: Path) -> None:
    os.chmod(shm_dir, 0o755)  # noqa: S103 - deliberate: other users may traverse; the files' own modes must stop them
    w = CredentialWriter(str(shm_dir), fs_group=1000, grace=0.0)
    w.prepare()
    w.write(creds(1))
    token = shm_dir / "github" / "token"
    assert token.stat().st_gid == 1000 and stat.S_IMODE(token.stat().st_mode) == 0o440
    as_member = subprocess.run(["cat", str(token)], user=1000, group=1000, extra_groups=[],
                               capture_output=True, text=True)
    assert as_member.returncode == 0 and as_member.stdout == "github-value-1"
    as_stranger = subprocess.run(["cat", str(token)], user=1001, group=1001, extra_groups=[],
                                 capture_output=True, text=True)
    assert as_stranger.returncode != 0 and "Permission denied" in as_stranger.stderr
    w.close()


def test_without_fs_group_other_users_cannot_read(shm_dir: Path, writer: CredentialWriter) -> None:
    os.chmod(shm_dir, 0o755)  # noqa: S103 - deliberate: other users may traverse; the files' own modes must stop them
    writer.write(creds(1))
    result = subprocess.run(["cat", str(shm_dir / "github" / "token")], user=1000, group=1000, extra_groups=[],
                            capture_output=True)
    assert result.returncode != 0


_READER = r"""
import os, sys, time
root, stop = sys.argv[1], sys.argv[2]
snapshots = errors = 0
while not os.path.exists(stop):
    try:
        fd = os.open(os.path.join(root, "..data"), os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        continue
    try:
        values = []
        for rel in ("github/token", "db/username", "db/password"):
            with open(rel, opener=lambda p, f: os.open(p, f, dir_fd=fd)) as f:
                values.append(f.read())
    except FileNotFoundError:
        errors += 1  # the generation was retired under us: try again, never mixed
        continue
    finally:
        os.close(fd)
    gens = {v.rsplit("-", 1)[-1] for v in values}
    if len(gens) != 1 or any(not v for v in values):
        print("MIXED", values, flush=True)
        sys.exit(1)
    snapshots += 1
print("OK", snapshots, errors)
"""


def test_concurrent_reader_never_sees_a_partial_or_mixed_set(shm_dir: Path) -> None:
    w = CredentialWriter(str(shm_dir), grace=0.05)
    w.prepare()
    w.write(creds(0))
    stop = Path(tempfile.mkdtemp()) / "stop"
    reader = subprocess.Popen([sys.executable, "-c", _READER, str(shm_dir), str(stop)],
                              stdout=subprocess.PIPE, text=True)
    try:
        for generation in range(1, 121):
            w.write(creds(generation))
            threading.Event().wait(0.004)
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=20)
        w.collect(force=True)
        w.close()
    assert reader.returncode == 0, out
    assert out.startswith("OK") and int(out.split()[1]) > 20, out
    assert (shm_dir / "github" / "token").read_text() == "github-value-120"
    assert len([p for p in shm_dir.iterdir() if p.name.startswith("..2")]) == 1


def test_refuses_a_directory_not_on_tmpfs(tmp_path: Path) -> None:
    assert not str(tmp_path).startswith("/dev/shm")
    w = CredentialWriter(str(tmp_path))
    with pytest.raises(NotInMemoryFilesystem, match="not on tmpfs or ramfs"):
        w.prepare()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("planted", ["github", "taskcreds.json", "..data", "notes.txt"],
                         ids=["credential name", "manifest name", "data link", "unknown name"])
def test_refuses_planted_symlinks_and_never_follows_them(shm_dir: Path, tmp_path: Path, planted: str) -> None:
    target = tmp_path / "victim"
    target.mkdir()
    os.symlink(target, shm_dir / planted)
    w = CredentialWriter(str(shm_dir))
    with pytest.raises(UnsafeEntry, match="not created by taskcreds"):
        w.prepare()
    assert list(target.iterdir()) == []


def test_a_symlink_planted_after_start_is_not_replaced(shm_dir: Path, tmp_path: Path,
                                                       writer: CredentialWriter) -> None:
    writer.write(creds(1, ("db",)))
    os.symlink(tmp_path, shm_dir / "github")
    before = os.readlink(shm_dir / "..data")
    with pytest.raises(UnsafeEntry):
        writer.write(creds(2))
    assert os.readlink(shm_dir / "..data") == before, "nothing half-written"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("credential", "file_name"), [
    ("../escape", "token"), ("github", "../../etc/passwd"), ("github", ".hidden"), ("github", "a\0b"),
    (".data", "token"), ("github", ".."), ("github", "")],
    ids=["credential path", "file path", "hidden file", "nul", "hidden credential", "dotdot", "empty"])
def test_rejects_names_that_could_escape(shm_dir: Path, writer: CredentialWriter, credential: str,
                                         file_name: str) -> None:
    bad = CredentialFiles(credential, "secret", EXPIRES, {file_name: "v"})
    with pytest.raises(UnsafeName):
        writer.write([bad])
    assert sorted(p.name for p in shm_dir.iterdir()) == []


def test_wipe_leaves_no_credential_file(shm_dir: Path, writer: CredentialWriter) -> None:
    writer.write(creds(1))
    writer.write(creds(2))
    writer.mark_ended("completed")
    writer.wipe()
    assert sorted(p.name for p in shm_dir.iterdir()) == [ENDED_MARKER]
    assert writer.ended()["reason"] == "completed"


def test_wipe_unlinks_the_set_before_shredding_it(shm_dir: Path, writer: CredentialWriter,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader during teardown finds no set, never a manifest listing files already shredded."""
    writer.write(creds(1))
    seen: list[bool] = []
    shred = writer._shred_tree

    def spy(entry: str, *args: object) -> None:
        seen.append((shm_dir / MANIFEST_FILE).exists() or (shm_dir / "github" / "token").exists())
        shred(entry, *args)

    monkeypatch.setattr(writer, "_shred_tree", spy)
    writer.wipe()
    assert seen == [False]


def test_prepare_removes_leftovers_of_a_crashed_run_and_keeps_markers(shm_dir: Path) -> None:
    first = CredentialWriter(str(shm_dir))
    first.prepare()
    started = first.started_at()
    first.write(creds(1))
    first.close()  # crash: nothing cleaned up
    second = CredentialWriter(str(shm_dir))
    second.prepare()
    assert sorted(p.name for p in shm_dir.iterdir()) == [".taskcreds-started"]
    assert second.started_at() == started
    second.close()


# --- a full volume: a real 8 KiB tmpfs (two pages; each file takes one) --------------------------------

PAGE = 4096




def everything_in(directory: Path) -> list[str]:
    """Every entry below ``directory`` (links, generations, files), markers included."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def one(name: str, size: int) -> CredentialFiles:
    return CredentialFiles(name, "secret", EXPIRES, {"token": "x" * size})


# each row: the set written before (fits or None), the set that does not fit
FULL = [
    pytest.param(None, [one("api", 10), one("bao", 10)], id="first set does not fit"),
    pytest.param([one("api", 10)], [one("api", 10), one("bao", PAGE)], id="a bigger set after one that fit"),
]


@pytest.mark.parametrize(("before", "too_big"), FULL)
def test_a_write_that_does_not_fit_leaves_nothing_behind(tiny_tmpfs: Path, before: list[CredentialFiles] | None,
                                                         too_big: list[CredentialFiles]) -> None:
    w = CredentialWriter(str(tiny_tmpfs), task="t", grace=0.0)
    w.prepare()
    if before is not None:
        w.write(before)
    layout = everything_in(tiny_tmpfs)
    with pytest.raises(OSError) as raised:
        w.write(too_big)
    assert raised.value.errno == errno.ENOSPC
    assert everything_in(tiny_tmpfs) == layout, "the partial generation was left behind"
    if before is not None:
        assert (tiny_tmpfs / "api" / "token").read_text() == "x" * 10, "the previous set is still whole"
    w.close()


async def test_teardown_on_a_full_volume_removes_every_file(tiny_tmpfs: Path) -> None:
    w = CredentialWriter(str(tiny_tmpfs), task="t", grace=0.0)
    w.prepare()
    w.write([one("api", 10)])  # the value and the manifest: both pages, the volume is full
    with pytest.raises(OSError) as raised:
        w.mark_ended("probe")
    assert raised.value.errno == errno.ENOSPC, "the volume must really be full for this test to mean anything"
    assert not [p for p in everything_in(tiny_tmpfs) if ENDED_MARKER in p], "no half-written marker left"
    metrics = register_sidecar()
    await teardown("completed", writer=w, metrics=metrics, task="t")
    assert everything_in(tiny_tmpfs) == [ENDED_MARKER]
    assert json.loads((tiny_tmpfs / ENDED_MARKER).read_text())["reason"] == "completed"
    assert w.ended() is not None, "a restarted sidecar does not fetch again"
    w.close()
