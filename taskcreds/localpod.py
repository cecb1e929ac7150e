"""A local stand-in for the kubelet, for ``taskcreds demo`` and the end-to-end tests.

Given a pod as the webhook admitted it, it lays out what the kubelet would for the injected
sidecar — one directory per volume (the credentials volume on tmpfs), the downward-API
``annotations`` file, the projected service-account token — and starts the sidecar as a real
process from the injected container's own command and env, with fieldRefs resolved and mount
paths mapped onto those directories. It never runs in a cluster: there, the kubelet does this.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from taskcreds import names

__all__ = ["LocalPod", "go_quote", "render_downward_annotations", "LocalPodError"]


class LocalPodError(Exception):
    """The pod cannot be laid out locally (no sidecar injected, unknown volume, ...)."""


def go_quote(value: str) -> str:
    """Quote like Go's strconv.Quote, which the kubelet uses for downward-API annotation files."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def render_downward_annotations(annotations: Mapping[str, str]) -> str:
    """The kubelet's format for a ``metadata.annotations`` fieldRef file: sorted ``key="value"`` lines."""
    return "".join(f"{key}={go_quote(annotations[key])}\n" for key in sorted(annotations))


def _atomic_write(path: Path, data: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


class LocalPod:
    """One admitted pod, run locally: its sidecar as a subprocess, its volumes as directories."""

    def __init__(
        self,
        pod: dict[str, Any],
        *,
        root: Path,
        credentials_dir: Path,
        spiffe_socket: Path,
        token: Callable[[], str],
        env_overrides: Mapping[str, str] | None = None,
        executable: str | None = None,
    ) -> None:
        self.pod = pod
        self.root = root
        self.credentials_dir = credentials_dir
        self.spiffe_socket = spiffe_socket
        self._token = token
        self._env_overrides = dict(env_overrides or {})
        self._executable = executable
        self.process: subprocess.Popen[bytes] | None = None
        self.sidecar = self._find_sidecar()
        self.volume_dirs = self._lay_out_volumes()

    # --- layout -------------------------------------------------------------------------------
    def _find_sidecar(self) -> dict[str, Any]:
        for container in (self.pod.get("spec") or {}).get("initContainers") or []:
            if container.get("name") == names.SIDECAR_CONTAINER:
                return container
        raise LocalPodError(
            "the pod has no taskcreds-sidecar init container: was it admitted by the webhook?"
        )

    def _lay_out_volumes(self) -> dict[str, Path]:
        dirs: dict[str, Path] = {}
        for volume in (self.pod.get("spec") or {}).get("volumes") or []:
            name = volume["name"]
            if name == names.VOLUME_CREDENTIALS:
                path = self.credentials_dir
            elif name == names.VOLUME_SPIFFE:
                path = self.spiffe_socket.parent
            else:
                path = self.root / "volumes" / name
            path.mkdir(parents=True, exist_ok=True)
            dirs[name] = path
        self.refresh_podinfo()
        self.refresh_token()
        return dirs

    def _volume_dir(self, name: str) -> Path:
        return self.root / "volumes" / name

    def refresh_podinfo(self) -> None:
        """Rewrite the downward-API annotations file, as the kubelet does about once a minute."""
        target = self._volume_dir(names.VOLUME_PODINFO)
        target.mkdir(parents=True, exist_ok=True)
        annotations = (self.pod.get("metadata") or {}).get("annotations") or {}
        _atomic_write(target / names.PODINFO_ANNOTATIONS_FILE, render_downward_annotations(annotations))

    def refresh_token(self) -> None:
        """Write a fresh projected service-account token (the kubelet rotates it before expiry)."""
        target = self._volume_dir(names.VOLUME_SA_TOKEN)
        target.mkdir(parents=True, exist_ok=True)
        _atomic_write(target / names.SIDECAR_TOKEN_FILE, self._token(), mode=0o600)

    def set_annotation(self, key: str, value: str, *, refresh: bool = True) -> None:
        """Change an annotation on the local copy (and the downward-API file when ``refresh``)."""
        self.pod.setdefault("metadata", {}).setdefault("annotations", {})[key] = value
        if refresh:
            self.refresh_podinfo()

    # --- the sidecar process --------------------------------------------------------------------
    def _map_path(self, value: str) -> str:
        """Map an in-container path onto the local directory of the volume mounted there."""
        best: tuple[int, str] | None = None
        for mount in self.sidecar.get("volumeMounts") or []:
            mount_path = mount["mountPath"].rstrip("/")
            if (value == mount_path or value.startswith(mount_path + "/")) and (
                best is None or len(mount_path) > best[0]
            ):
                best = (len(mount_path), mount["name"])
        if best is None:
            return value
        local = self.volume_dirs.get(best[1], self._volume_dir(best[1]))
        return str(local) + value[best[0] :]

    def sidecar_env(self) -> dict[str, str]:
        """The injected container's env with fieldRefs resolved and mount paths mapped locally."""
        meta = self.pod.get("metadata") or {}
        field_values = {
            "metadata.name": meta.get("name", ""),
            "metadata.namespace": meta.get("namespace", ""),
            "metadata.uid": meta.get("uid", ""),
        }
        env: dict[str, str] = {}
        for item in self.sidecar.get("env") or []:
            if "value" in item:
                value = str(item["value"])
            else:
                ref = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
                if ref not in field_values:
                    raise LocalPodError(
                        f"env {item['name']}: unsupported valueFrom {item.get('valueFrom')!r}"
                    )
                value = field_values[ref]
            if value.startswith("unix://"):
                value = "unix://" + self._map_path(value[len("unix://") :])
            elif value.startswith("/"):
                value = self._map_path(value)
            env[item["name"]] = value
        env.update(self._env_overrides)
        return env

    def start_sidecar(self, *, stdout: Any = None, stderr: Any = None) -> subprocess.Popen[bytes]:
        """Start the sidecar from the injected command, as the kubelet would."""
        command = list(self.sidecar.get("command") or [])
        if not command:
            raise LocalPodError("the injected sidecar has no command")
        if command[0] == "taskcreds-sidecar":  # this installation's sidecar, whatever PATH says
            script = Path(self._executable or sys.executable).with_name("taskcreds-sidecar")
            command = (
                [str(script), *command[1:]]
                if script.exists()
                else [
                    sys.executable,
                    "-c",
                    "import sys; from taskcreds.sidecar.main import main; sys.exit(main())",
                ]
            )
        base = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "HOME")}
        self.process = subprocess.Popen(  # noqa: S603 - our own command, no shell
            command,
            env={**base, **self.sidecar_env()},
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self.process

    def stop_sidecar(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(timeout)

    def kill_sidecar(self) -> None:
        """SIGKILL: no teardown of its own (the scenario where the operator must revoke alone)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def cleanup(self) -> None:
        """Stop the sidecar and remove every directory this pod laid out."""
        self.stop_sidecar()
        shutil.rmtree(self.root / "volumes", ignore_errors=True)
