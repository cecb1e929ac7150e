"""The credential directory on tmpfs, laid out and swapped the way the kubelet does it.

::

    $TASKCREDS_DIR/
      ..2026_11_29_10_00_00.123456789/   one generation: every credential of one moment
        github/token                     0440, group = fsGroup when set
        taskcreds.json                   names, files, provider, expiry: never values
      ..data -> ..2026_11_29_10_00_00.123456789   swapped atomically (symlink ..data_tmp, rename)
      github -> ..data/github
      taskcreds.json -> ..data/taskcreds.json
      .taskcreds-started                 first start of the sidecar in this pod (max-duration clock)
      .taskcreds-ended                   written at teardown: a restarted sidecar never fetches again
      ca-bundle.crt                      system roots + the pod CA, when a credential has delivery proxy
                                         (public material only; written by podca.write_ca_bundle)

Proxy-delivered credentials are never written here: the manifest lists them (``"delivery": "proxy"``
and their hosts) so the agent knows which hosts it may call, and that is all.

A reader that opens files through ``..data`` (or the top-level links) sees one whole generation,
never a mix. Every path operation is relative to a directory descriptor and never follows a link
the writer did not make (``O_NOFOLLOW``, ``lstat``). Retired generations are overwritten with
zeros and unlinked once ``grace`` seconds have passed, so a reader that opened the old set just
before a swap still reads it whole; :meth:`wipe` removes everything at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import re
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from taskcreds.sidecar.errors import NotInMemoryFilesystem, UnsafeEntry, UnsafeName, WriterError

from taskcreds import names

__all__ = ["CredentialFiles", "CredentialWriter", "filesystem_magic", "check_in_memory", "check_name",
           "ENDED_MARKER", "STARTED_MARKER", "CA_BUNDLE", "TMPFS_MAGIC", "RAMFS_MAGIC"]

TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6
ENDED_MARKER = ".taskcreds-ended"
STARTED_MARKER = ".taskcreds-started"
CA_BUNDLE = "ca-bundle.crt"  # taskcreds.sidecar.podca.CA_BUNDLE_FILE; its temporaries are ".ca-bundle.crt.*"
DATA = names.DATA_DIR_LINK
DATA_TMP = DATA + "_tmp"
_GENERATION = re.compile(r"^\.\.\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d\.\d{9}(_\d+)?$")
_LINK_TMP = "..tmp_"  # a top-level link being replaced; never a credential name (leading dot)
_DIR_MODE = 0o750
_NAME_MAX = 253


@dataclass(frozen=True)
class CredentialFiles:
    """One credential as written: the values are in ``files`` only, hidden from repr."""

    name: str
    provider: str
    expires_at: datetime
    files: Mapping[str, str] = field(repr=False)
    delivery: str = "file"
    """``proxy``: listed in the manifest with ``hosts``, nothing written (``files`` must be empty)."""
    hosts: tuple[str, ...] = ()


def filesystem_magic(path: str) -> int:
    """The ``statfs`` f_type of the filesystem holding ``path`` (Linux)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise WriterError(f"cannot inspect the filesystem of {path}: {os.strerror(err)}")
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def check_in_memory(path: str) -> None:
    """Refuse any directory that is not on tmpfs or ramfs: credentials must never reach a disk."""
    if not os.path.isdir(path):
        raise WriterError(f"credential directory {path} does not exist or is not a directory")
    magic = filesystem_magic(path)
    if magic not in (TMPFS_MAGIC, RAMFS_MAGIC):
        raise NotInMemoryFilesystem(
            f"credential directory {path} is not on tmpfs or ramfs (filesystem type 0x{magic:x}); "
            "refusing to write credentials where they could reach a disk. Use an emptyDir volume "
            "with medium: Memory")


def check_name(name: str, what: str) -> str:
    """A credential or file name that stays inside its directory: no '/', NUL, '..', leading dot."""
    if (not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\0" in name
            or len(name) > _NAME_MAX or name in (names.MANIFEST_FILE, CA_BUNDLE)):
        raise UnsafeName(f"{what} name {name!r} is not allowed: expected 1-{_NAME_MAX} characters, no '/', "
                         f"no NUL, not starting with '.', not {names.MANIFEST_FILE!r} or {CA_BUNDLE!r}")
    return name


class CredentialWriter:
    """Writes, swaps and wipes credential sets in one directory. Not thread-safe: one caller."""

    def __init__(self, directory: str, *, fs_group: int | None = None, task: str | None = None,
                 grace: float = 2.0) -> None:
        self.directory = directory
        self.fs_group = fs_group
        self.task = task
        self.grace = grace
        self._dfd: int | None = None
        self._current: str | None = None
        self._retired: list[tuple[float, str]] = []
        self._links: set[str] = set()
        self._seq = 0

    # --- life cycle ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Check the directory (tmpfs, nothing planted) and remove leftovers of an earlier run.

        Markers are kept. Raises NotInMemoryFilesystem or UnsafeEntry before writing anything.
        """
        check_in_memory(self.directory)
        dfd = self._fd()
        plan: list[tuple[str, str]] = []
        for entry in sorted(os.listdir(dfd)):
            st = os.lstat(entry, dir_fd=dfd)
            kind = self._classify(entry, st, dfd)
            if kind is None:
                raise UnsafeEntry(
                    f"{os.path.join(self.directory, entry)} was not created by taskcreds "
                    f"({_describe(st)}); refusing to write next to it. The credential directory must be "
                    "an emptyDir volume only the sidecar writes")
            plan.append((entry, kind))
        for entry, kind in plan:
            if kind == "generation":
                self._shred_tree(entry)
            elif kind in ("link", "bundle"):
                os.unlink(entry, dir_fd=dfd)

    def close(self) -> None:
        if self._dfd is not None:
            os.close(self._dfd)
            self._dfd = None

    # --- writing ---------------------------------------------------------------------------------
    def write(self, credentials: Sequence[CredentialFiles]) -> None:
        """Replace the whole set atomically. An empty set still writes a manifest listing nothing.

        A write that fails (ENOSPC on a too-small volume, ...) removes its partial generation before
        raising, so no half-written value stays behind and the space is free again; the previous set
        stays in place. A failure after the ``..data`` swap keeps the new set (it is whole).
        """
        for cred in credentials:
            check_name(cred.name, "credential")
            if cred.delivery != "file" and cred.files:
                raise WriterError(f"credential {cred.name!r} has delivery {cred.delivery!r}: its values are "
                                  "never written to the credential directory")
            for file_name in cred.files:
                check_name(file_name, f"file of credential {cred.name!r}:")
        on_disk = [c for c in credentials if c.delivery == "file"]
        dfd = self._fd()
        wanted = {c.name for c in on_disk} | {names.MANIFEST_FILE}
        for link in wanted:  # check before touching anything: all or nothing
            self._check_top_level(link)
        generation = self._new_generation()
        os.mkdir(generation, 0o700, dir_fd=dfd)
        try:
            self._fill(generation, on_disk, credentials)
            self._replace_link(DATA, generation)
        except BaseException:
            self._discard(generation, DATA_TMP)
            raise
        previous, self._current = self._current, generation
        if previous is not None:
            self._retired.append((time.monotonic(), previous))
        try:
            for link in wanted:
                self._replace_link(link, f"{DATA}/{link}")
            for stale in sorted(self._links - wanted):
                self._remove_link(stale)
        except BaseException:
            self._links |= wanted  # the next write repairs them, and removes what is stale
            raise
        self._links = wanted
        self.collect()

    def _fill(self, generation: str, on_disk: Sequence[CredentialFiles],
              credentials: Sequence[CredentialFiles]) -> None:
        gfd = os.open(generation, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self._fd())
        try:
            for cred in on_disk:
                os.mkdir(cred.name, 0o700, dir_fd=gfd)
                cfd = os.open(cred.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=gfd)
                try:
                    for file_name, value in cred.files.items():
                        self._write_file(cfd, file_name, value.encode("utf-8", "surrogateescape"))
                    self._own(cfd, _DIR_MODE)
                finally:
                    os.close(cfd)
            self._write_file(gfd, names.MANIFEST_FILE, self._manifest(credentials))
            self._own(gfd, _DIR_MODE)
        finally:
            os.close(gfd)

    def _discard(self, generation: str, tmp_link: str) -> None:
        """Remove a generation that never went live (and the link being made), best effort: the
        caller raises the original error."""
        dfd = self._fd()
        try:
            self._shred_tree(generation)
        except OSError:
            pass  # wipe() at teardown tries again
        try:
            os.unlink(tmp_link, dir_fd=dfd)
        except OSError:
            pass

    def collect(self, *, force: bool = False) -> None:
        """Shred retired generations older than ``grace`` seconds (all of them with ``force``)."""
        now, keep = time.monotonic(), []
        for retired_at, generation in self._retired:
            if force or now - retired_at >= self.grace:
                self._shred_tree(generation)
            else:
                keep.append((retired_at, generation))
        self._retired = keep

    @property
    def pending_retired(self) -> int:
        """Generations waiting for their grace period to pass."""
        return len(self._retired)

    def wipe(self) -> None:
        """Overwrite and unlink every credential file and remove the layout; markers stay.

        Works on a full filesystem: nothing is created, overwriting in place needs no new blocks, and
        a file whose overwrite fails is unlinked all the same. Every entry is tried; the first error
        is raised at the end.
        """
        dfd = self._fd()
        errors: list[OSError] = []
        # the links first, then the generations: a reader finds no set at all, never a manifest
        # whose files are already gone
        for wanted in (("link", "bundle"), ("generation",)):
            for entry in sorted(os.listdir(dfd)):
                try:
                    st = os.lstat(entry, dir_fd=dfd)
                    kind = self._classify(entry, st, dfd)
                    if kind not in wanted:
                        continue
                    if kind == "generation":
                        self._shred_tree(entry, errors)
                    else:
                        os.unlink(entry, dir_fd=dfd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    errors.append(exc)
        self._retired, self._current, self._links = [], None, set()
        if errors:
            raise errors[0]

    # --- markers ---------------------------------------------------------------------------------
    def mark_ended(self, reason: str) -> None:
        """Record that the task ended, in the volume (survives a container restart, not the pod)."""
        self._write_marker(ENDED_MARKER, {"task": self.task, "reason": reason,
                                          "endedAt": datetime.now(UTC).isoformat()})

    def ended(self) -> dict[str, Any] | None:
        """The teardown marker's content when the task already ended in this pod, else None."""
        return self._read_marker(ENDED_MARKER)

    def started_at(self) -> float:
        """Unix time of the sidecar's first start in this pod (recorded on first call)."""
        marker = self._read_marker(STARTED_MARKER)
        if marker and isinstance(marker.get("startedAt"), (int, float)):
            return float(marker["startedAt"])
        now = time.time()
        self._write_marker(STARTED_MARKER, {"task": self.task, "startedAt": now})
        return now

    # --- internals -------------------------------------------------------------------------------
    def _fd(self) -> int:
        if self._dfd is None:
            try:
                self._dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError as exc:
                raise WriterError(
                    f"cannot open credential directory {self.directory}: {exc.strerror}") from None
        return self._dfd

    def _classify(self, entry: str, st: os.stat_result, dfd: int) -> str | None:
        """'generation', 'link', 'marker' or 'bundle' for the sidecar's own entries, else None."""
        if entry in (ENDED_MARKER, STARTED_MARKER, ENDED_MARKER + ".tmp", STARTED_MARKER + ".tmp"):
            return "marker" if stat.S_ISREG(st.st_mode) else None
        if entry == CA_BUNDLE or entry.startswith(f".{CA_BUNDLE}."):
            # public certificates only; a restarted sidecar makes a new pod CA and rewrites it
            return "bundle" if stat.S_ISREG(st.st_mode) else None
        if _GENERATION.fullmatch(entry):
            return "generation" if stat.S_ISDIR(st.st_mode) else None
        if not stat.S_ISLNK(st.st_mode):
            return None
        target = os.readlink(entry, dir_fd=dfd)
        if entry in (DATA, DATA_TMP):
            return "link" if _GENERATION.fullmatch(target) else None
        if entry.startswith(_LINK_TMP):
            return "link" if target == f"{DATA}/{entry[len(_LINK_TMP):]}" else None
        if entry.startswith("."):
            return None
        return "link" if target == f"{DATA}/{entry}" else None

    def _check_top_level(self, link: str) -> None:
        dfd = self._fd()
        try:
            st = os.lstat(link, dir_fd=dfd)
        except FileNotFoundError:
            return
        if not (stat.S_ISLNK(st.st_mode) and os.readlink(link, dir_fd=dfd) == f"{DATA}/{link}"):
            raise UnsafeEntry(f"{os.path.join(self.directory, link)} was not created by taskcreds "
                              f"({_describe(st)}); refusing to replace it")

    def _new_generation(self) -> str:
        now = time.time_ns()
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime(now // 1_000_000_000))
        self._seq += 1
        return f"..{stamp}.{now % 1_000_000_000:09d}_{self._seq}"

    def _write_file(self, dir_fd: int, name: str, data: bytes) -> None:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dir_fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            self._own(fd, names.FILE_MODE)
        finally:
            os.close(fd)

    def _own(self, fd: int, mode: int) -> None:
        if self.fs_group is not None:
            os.fchown(fd, -1, self.fs_group)
        os.fchmod(fd, mode)

    def _replace_link(self, name: str, target: str) -> None:
        """Point ``name`` at ``target`` atomically: a new link under a temporary name, renamed over."""
        dfd = self._fd()
        tmp = DATA_TMP if name == DATA else _LINK_TMP + name
        try:
            os.unlink(tmp, dir_fd=dfd)
        except FileNotFoundError:
            pass
        os.symlink(target, tmp, dir_fd=dfd)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)

    def _remove_link(self, name: str) -> None:
        dfd = self._fd()
        try:
            st = os.lstat(name, dir_fd=dfd)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            os.unlink(name, dir_fd=dfd)

    def _shred_tree(self, generation: str, errors: list[OSError] | None = None) -> None:
        """Zero and unlink every file under one generation, then remove its directories.

        ``errors``: collect failures there and go on (teardown); without it, raise the first one
        after trying everything.
        """
        dfd = self._fd()
        try:
            gfd = os.open(generation, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
        except FileNotFoundError:
            return
        found: list[OSError] = []
        try:
            os.fchmod(gfd, 0o700)
            _shred_dir(gfd, found)
        finally:
            os.close(gfd)
        try:
            os.rmdir(generation, dir_fd=dfd)
        except OSError as exc:
            found.append(exc)
        if errors is not None:
            errors.extend(found)
        elif found:
            raise found[0]

    def _manifest(self, credentials: Sequence[CredentialFiles]) -> bytes:
        doc = {
            "task": self.task,
            "credentials": [_manifest_entry(c) for c in credentials],
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    def _write_marker(self, name: str, doc: dict[str, Any]) -> None:
        dfd = self._fd()
        tmp = name + ".tmp"
        try:
            os.unlink(tmp, dir_fd=dfd)
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dfd)
        try:
            try:
                data = json.dumps(doc).encode()
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                if self.fs_group is not None:
                    os.fchown(fd, -1, self.fs_group)
                os.fchmod(fd, 0o444)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)  # no half-written marker left behind (a full volume)
            raise

    def _read_marker(self, name: str) -> dict[str, Any] | None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self._fd())
        except (FileNotFoundError, OSError):
            return None
        try:
            raw = os.read(fd, 65536)
        finally:
            os.close(fd)
        try:
            doc = json.loads(raw)
        except ValueError:
            return {"reason": "unknown"}  # a damaged marker still means: ended
        return doc if isinstance(doc, dict) else {"reason": "unknown"}


def _manifest_entry(cred: CredentialFiles) -> dict[str, Any]:
    """Names, hosts and expiry of one credential: never a value. A file entry has no ``delivery``
    key (the manifest's original shape; absent means file)."""
    entry: dict[str, Any] = {"name": cred.name, "provider": cred.provider}
    if cred.delivery == "file":
        entry["files"] = sorted(cred.files)
    else:
        entry["delivery"] = cred.delivery
        entry["hosts"] = list(cred.hosts)
    entry["expiresAt"] = cred.expires_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return entry


def _shred_dir(dir_fd: int, errors: list[OSError]) -> None:
    """Zero in place (no new blocks) and unlink every file below ``dir_fd``; a failed overwrite is
    recorded in ``errors`` and the file unlinked anyway. Goes on after any error."""
    for entry in os.listdir(dir_fd):
        try:
            st = os.lstat(entry, dir_fd=dir_fd)
            if stat.S_ISDIR(st.st_mode):
                sub = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
                try:
                    os.fchmod(sub, 0o700)
                    _shred_dir(sub, errors)
                finally:
                    os.close(sub)
                os.rmdir(entry, dir_fd=dir_fd)
                continue
            if stat.S_ISREG(st.st_mode) and st.st_size:
                try:
                    # the directory is ours and private, so chmod by name cannot be redirected
                    os.chmod(entry, 0o600, dir_fd=dir_fd)
                    fd = os.open(entry, os.O_WRONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
                    try:
                        os.write(fd, b"\0" * st.st_size)
                    finally:
                        os.close(fd)
                except OSError as exc:
                    errors.append(exc)  # unlinked all the same: the value must not stay reachable
            os.unlink(entry, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        except OSError as exc:
            errors.append(exc)


def _describe(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if stat.S_ISREG(st.st_mode):
        return "a regular file"
    return "a special file"
