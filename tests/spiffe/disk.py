"""Check that a secret never reached a file: scan recently written files for its bytes."""

from __future__ import annotations

import os
from collections.abc import Iterable

from cryptography.hazmat.primitives import serialization

from taskcreds.svid import X509SvidMaterial

__all__ = ["key_marker", "assert_not_on_disk"]

_SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__"}


def key_marker(svid: X509SvidMaterial) -> bytes:
    """The first base64 line of the SVID key's PEM: what a key file on disk would contain."""
    key = serialization.load_der_private_key(svid.key_der, None)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem.splitlines()[1]


def assert_not_on_disk(marker: bytes, roots: Iterable[str], since: float) -> None:
    """Fail naming the file when any regular file under ``roots`` changed after ``since`` holds ``marker``."""
    for root in roots:
        for directory, subdirs, files in os.walk(root):
            subdirs[:] = [d for d in subdirs if d not in _SKIP_DIRS]
            for name in files:
                path = os.path.join(directory, name)
                try:
                    info = os.lstat(path)
                    if not os.path.isfile(path) or info.st_mtime < since or info.st_size > 1 << 20:
                        continue
                    with open(path, "rb") as f:
                        found = marker in f.read()
                except OSError:
                    continue
                assert not found, f"the SVID key was written to {path}"
