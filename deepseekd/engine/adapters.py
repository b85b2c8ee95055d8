"""LoRA adapter folders: validated, copied and hashed into ``data_dir/lora/<name>``.

An adapter is loaded from a sub-folder of ``[lora] source_dir`` (the inbox an operator
copies fine-tunes into). Only its two files are taken, ``adapter_config.json`` and
``adapter_model.safetensors`` (the PEFT layout vLLM loads); pickle weights are refused.
The engine loads the copy, never the inbox: the inbox may change afterwards, the copy is
what was hashed and audited, and its hashes are checked again when a restart reloads it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepseekd.engine.files import (
    PICKLE_SUFFIXES,
    FileCheckError,
    check_safetensors,
    copy_hashed,
    digest,
    sha256_file,
)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE)
# 48, so "<model>:<adapter>" (model names have up to 64) fits the 128-character model
# columns of history and audit.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,47}$")
NAME_RULE = "use 1-48 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
MAX_CONFIG_BYTES = 1024 * 1024


class AdapterError(Exception):
    """A bad adapter folder or name; ``field`` is the request field it concerns."""

    def __init__(self, message: str, field: str = "path") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class AdapterFiles:
    """A copied adapter: where it is, what it contains, its digests."""

    path: Path
    files: dict[str, dict[str, Any]]
    """relpath -> {"sha256", "size"}."""
    sha256: str
    """sha256 over the sorted ``"relpath  sha256\\n"`` lines (as for models)."""
    rank: int
    base_model: str
    """``base_model_name_or_path`` from the adapter's config (what it was trained on)."""


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise AdapterError(f"name: {NAME_RULE}", "name")
    return name


def resolve_source(source_dir: Path, given: str) -> Path:
    """The adapter folder ``given`` (relative to ``source_dir``, or absolute inside it)."""
    if not isinstance(given, str) or not given.strip():
        raise AdapterError("path: a folder inside the LoRA source folder is required")
    root = source_dir.resolve()
    path = Path(given)
    full = (path if path.is_absolute() else root / path).resolve()  # symlinks followed
    if not full.is_relative_to(root) or full == root:
        raise AdapterError(
            f"path: must be a folder inside the LoRA source folder {root} ([lora] source_dir)"
        )
    if not full.is_dir():
        raise AdapterError(f"path: {given!r} is not a folder in {root}")
    return full


def read_config(folder: Path) -> dict[str, Any]:
    """Check the folder holds a PEFT LoRA adapter in safetensors; return its config."""
    pickles = sorted(p.name for p in folder.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
        raise AdapterError(
            f"path: the adapter holds pickle weights ({', '.join(pickles)}); "
            "pickle files can run code when loaded: save it with "
            "safe_serialization=True and remove them"
        )
    for name in ADAPTER_FILES:
        f = folder / name
        if f.is_symlink() or not f.is_file():
            raise AdapterError(
                f"path: the adapter folder has no {name} (a PEFT LoRA "
                f"adapter holds {' and '.join(ADAPTER_FILES)})"
            )
    cfg_path = folder / CONFIG_FILE
    if cfg_path.stat().st_size > MAX_CONFIG_BYTES:
        raise AdapterError(f"path: {CONFIG_FILE} is larger than 1 MiB")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterError(f"path: {CONFIG_FILE} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict) or str(cfg.get("peft_type", "")).upper() != "LORA":
        raise AdapterError(f"path: {CONFIG_FILE} is not a LoRA adapter's (peft_type 'LORA')")
    rank = cfg.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise AdapterError(f"path: {CONFIG_FILE} has no valid rank 'r'")
    try:
        check_safetensors(folder / WEIGHTS_FILE, WEIGHTS_FILE)
    except FileCheckError as exc:
        raise AdapterError(f"path: {exc}") from None
    return cfg


def import_adapter(
    src: Path, adapters_dir: Path, name: str, max_bytes: int | None = None
) -> AdapterFiles:
    """Validate ``src`` and copy its two files into ``adapters_dir/name`` (atomically).
    Each is opened without following symlinks, must be a regular file and at most
    ``max_bytes`` long (a symlink to /dev/zero or a huge file would fill the disk)."""
    cfg = read_config(src)
    target = adapters_dir / name
    adapters_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.path.lexists(target):
        # Left over from an unload that could not delete it, or a crash: the registry,
        # not this folder, says what is loaded.
        shutil.rmtree(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".load-{name}-", dir=adapters_dir))
    try:
        files = {
            rel: copy_hashed(src / rel, tmp / rel, max_bytes=max_bytes, regular_only=True)
            for rel in ADAPTER_FILES
        }
        # What was copied must still be a valid adapter (the source may change meanwhile).
        read_config(tmp)
        os.rename(tmp, target)
    except FileCheckError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise AdapterError(f"path: {exc}") from None
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise AdapterError(f"path: cannot copy the adapter: {exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return AdapterFiles(
        path=target,
        files=files,
        sha256=digest(files),
        rank=int(cfg["r"]),
        base_model=str(cfg.get("base_model_name_or_path") or ""),
    )


def verify(path: Path, files: dict[str, dict[str, Any]]) -> str | None:
    """None when the copy still has the recorded hashes, else what differs."""
    for rel, want in sorted(files.items()):
        f = path / rel
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != want["size"] or sha256_file(f) != want["sha256"]:
            return f"{rel} changed (sha256 differs from the one recorded at load)"
    return None


def remove(adapters_dir: Path, name: str) -> None:
    shutil.rmtree(adapters_dir / name, ignore_errors=True)
