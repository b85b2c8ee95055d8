"""Files of models and adapters: hashed as they are copied, checked before anything loads.

Shared by the model store (``models.py``) and the LoRA adapter store (``adapters.py``): both
keep hashed copies, record a digest over them, and refuse pickle weights and corrupt
safetensors files.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import struct
from pathlib import Path
from typing import Any, BinaryIO

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# safetensors itself refuses headers above 100 MB; a bigger length means a corrupt file,
# and reading it would allocate whatever the first 8 bytes claim.
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
CHUNK = 1024 * 1024


class FileCheckError(Exception):
    """A file that cannot be used: corrupt, truncated, or of a refused kind."""


def sha256_file(path: Path) -> str:
    """sha256 of a file, streamed so multi-GB weights never sit in memory."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def digest(files: dict[str, dict[str, Any]]) -> str:
    """One digest for a set of files: sha256 over sorted ``"relpath  sha256\\n"`` lines."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}  {files[rel]['sha256']}\n".encode())
    return h.hexdigest()


def open_regular(path: Path, max_bytes: int | None = None) -> BinaryIO:
    """``path`` opened for reading only if it is a regular file, not a symlink (O_NOFOLLOW:
    no swap between a check and the open), and at most ``max_bytes`` long."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileCheckError(f"{path.name} is a symlink; copy the real file in") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise FileCheckError(f"{path.name} is not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        os.close(fd)
        raise FileCheckError(f"{path.name} is {st.st_size} bytes, above the limit of {max_bytes}")
    return os.fdopen(fd, "rb")


def copy_hashed(
    src: Path, dst: Path, *, max_bytes: int | None = None, regular_only: bool = False
) -> dict[str, Any]:
    """Copy one file and hash what was written, in a single pass: ``{"sha256", "size"}``.
    ``regular_only``: refuse a symlink or anything but a regular file (``open_regular``);
    ``max_bytes``: refuse a larger file, and stop copying one that grows past it."""
    h = hashlib.sha256()
    size = 0
    fin = open_regular(src, max_bytes) if regular_only else src.open("rb")
    with fin, dst.open("xb") as fout:
        while chunk := fin.read(CHUNK):
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                raise FileCheckError(f"{src.name} grew past the limit of {max_bytes} bytes")
            h.update(chunk)
            fout.write(chunk)
    return {"sha256": h.hexdigest(), "size": size}


def check_safetensors(path: Path, label: str) -> None:
    """Check a safetensors file's header against its size without loading any tensor."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise FileCheckError(f"{label} is truncated: no safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, MAX_SAFETENSORS_HEADER):
                raise FileCheckError(
                    f"{label} is corrupt or truncated: header length {n} is impossible"
                )
            header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FileCheckError(f"{label} is corrupt: header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise FileCheckError(f"{label} is corrupt: header is not a JSON object")
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise FileCheckError(f"{label} is corrupt: tensor {key!r} has bad data_offsets")
        end = max(end, offsets[1])
    found = size - 8 - n
    if found < end:
        raise FileCheckError(
            f"{label} is truncated: expected {end} bytes of tensor data, found {found}"
        )
    if found > end:
        raise FileCheckError(
            f"{label} is corrupt: expected {end} bytes of tensor data, "
            f"found {found} (trailing bytes)"
        )
