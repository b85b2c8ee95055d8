"""Envelope encryption: versioned master keys (KEKs) wrap per-user data keys (DEKs); every
message is sealed with AES-256-GCM under its user's DEK, with associated data that binds it
to its row, so ciphertext moved to another row fails to open.

Master keys live one per file (``master-v<N>.key``, 32 random bytes in base64, mode 0600)
in ``data_dir/keys/`` or, under systemd, in ``$CREDENTIALS_DIRECTORY`` (LoadCredential=).
The highest version wraps; older ones only unwrap until rotation retires them.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
_FILE_RE = re.compile(r"master-v(\d{1,6})\.key$")
CHECK_PLAINTEXT = b"deepseekd master key check v1"


class KeyringError(Exception):
    """The master key is missing, unreadable, or not the one the database was sealed with."""


class Unreadable(Exception):
    """A ciphertext failed authentication: wrong key, tampered, or moved to another row."""


def new_data_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = secrets.token_bytes(
        NONCE_BYTES
    )  # 96-bit random nonces: safe far beyond 2^32 seals per key
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, blob: bytes, aad: bytes) -> bytes:
    if len(blob) < NONCE_BYTES + 16:
        raise Unreadable("ciphertext too short")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise Unreadable("authentication failed") from None


def key_dirs(data_dir: Path) -> list[Path]:
    """Where master keys are looked for: the systemd credentials first, then data_dir/keys."""
    dirs = []
    cred = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred:
        dirs.append(Path(cred))
    dirs.append(data_dir / "keys")
    return dirs


@dataclass
class _Version:
    version: int
    key: bytes
    path: Path
    mtime: float


class Keyring:
    """The master keys found on disk. Reloads itself when a key file appears or vanishes."""

    def __init__(self, dirs: list[Path]) -> None:
        self._dirs = dirs
        self._versions: dict[int, _Version] = {}
        self._signature: tuple[tuple[str, float], ...] = ()
        self._wrap_limit: int | None = None
        self.reload()
        if not self._versions:
            where = " or ".join(str(d) for d in dirs)
            raise KeyringError(
                f"no master key found in {where}: run `deepseekd init`, or "
                "restore the key file (master-v<N>.key) from your key backup"
            )

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> Keyring:
        return cls(key_dirs(data_dir))

    def _scan(self) -> list[tuple[int, Path, float]]:
        found = []
        for d in self._dirs:
            if not d.is_dir():
                continue
            for p in d.iterdir():
                m = _FILE_RE.search(p.name)
                if m and p.is_file():
                    found.append((int(m.group(1)), p, p.stat().st_mtime))
        return found

    def reload(self) -> None:
        found = self._scan()
        signature = tuple(sorted((str(p), mt) for _, p, mt in found))
        if signature == self._signature:
            return
        versions: dict[int, _Version] = {}
        for version, path, mtime in found:
            if version in versions:
                continue  # the credentials directory wins over data_dir/keys
            if not _private(path) and not os.environ.get("CREDENTIALS_DIRECTORY"):
                raise KeyringError(
                    f"{path} is readable by others (mode {oct(path.stat().st_mode & 0o777)}); "
                    "chmod 600 it"
                )
            raw = _read_key(path)
            versions[version] = _Version(version, raw, path, mtime)
        self._versions = versions
        self._signature = signature

    @property
    def current_version(self) -> int:
        """The version that wraps: the highest held, but never above the one the database
        says is in use (a prepared version only unwraps until a rotation starts using it)."""
        limit = self._wrap_limit
        usable = [v for v in self._versions if limit is None or v <= limit]
        return max(usable) if usable else max(self._versions)

    def wrap_up_to(self, version: int) -> None:
        """Wrap with ``version`` (or the highest held below it) from now on."""
        self._wrap_limit = version

    @property
    def highest_held(self) -> int:
        return max(self._versions)

    def holds(self, version: int) -> bool:
        return version in self._versions

    def as_staged(self, version: int) -> Staged:
        """A held version in the shape a rotation re-wraps with (a prepared version)."""
        v = self._versions[version]
        return Staged(v.version, v.key, v.path)

    @property
    def versions(self) -> list[int]:
        return sorted(self._versions)

    def wrap(self, data_key: bytes, aad: bytes) -> tuple[int, bytes]:
        self.reload()  # a rotation by another process shows up as a new file (rare call)
        v = self._versions[self.current_version]
        return v.version, seal(v.key, data_key, aad)

    def unwrap(self, version: int, blob: bytes, aad: bytes) -> bytes:
        if version not in self._versions:
            self.reload()
        v = self._versions.get(version)
        if v is None:
            raise KeyringError(
                f"master key version {version} is not available (retired or "
                f"missing); restore master-v{version}.key from your key backup"
            )
        try:
            return open_sealed(v.key, blob, aad)
        except Unreadable:
            raise KeyringError(
                f"master key version {version} does not match the database: wrong key file?"
            ) from None

    def check_value(self, version: int) -> bytes:
        """A sealed constant that proves, at start-up, that a key is the one in use."""
        return seal(self._versions[version].key, CHECK_PLAINTEXT, b"check:%d" % version)

    def verify_check(self, version: int, blob: bytes) -> None:
        if self.unwrap(version, blob, b"check:%d" % version) != CHECK_PLAINTEXT:
            raise KeyringError(f"master key version {version} does not match the database")

    def retire(self, version: int) -> bool:
        """Delete an old version's file once nothing is wrapped with it any more."""
        v = self._versions.get(version)
        if v is None or version == self.current_version:
            return False
        v.path.unlink()
        _sync_dir(v.path.parent)
        self.reload()
        return True

    # -- rotation, in steps a crash can stop between ------------------------------------

    def stage(self, directory: Path, version: int | None = None) -> Staged:
        """A new version's key, written as ``master-v<N+1>.key.pending``: not yet a key
        file, so nothing wraps with it until ``commit``. Refuses when a pending file exists
        (a rotation running, or one interrupted: the daemon settles those at start)."""
        version = version or self.highest_held + 1
        path = directory / f"master-v{version}.key{PENDING}"
        raw = secrets.token_bytes(KEY_BYTES)
        try:
            _write_key(path, raw)
        except FileExistsError:
            raise KeyringError(
                f"{path} exists: a key rotation is running or was "
                "interrupted (the daemon completes or discards it at start)"
            ) from None
        return Staged(version, raw, path)

    @staticmethod
    def wrap_staged(staged: Staged, data_key: bytes, aad: bytes) -> bytes:
        return seal(staged.key, data_key, aad)

    @staticmethod
    def staged_check_value(staged: Staged) -> bytes:
        return seal(staged.key, CHECK_PLAINTEXT, b"check:%d" % staged.version)

    @staticmethod
    def staged_matches(staged: Staged, check_value: bytes) -> bool:
        try:
            return (
                open_sealed(staged.key, check_value, b"check:%d" % staged.version)
                == CHECK_PLAINTEXT
            )
        except Unreadable:
            return False

    def commit(self, staged: Staged) -> None:
        """The staged key becomes ``master-v<N+1>.key``, the version that wraps from now on."""
        final = staged.path.with_name(staged.path.name.removesuffix(PENDING))
        os.link(staged.path, final)  # fails if that version exists: never overwrite a key
        staged.path.unlink()
        _sync_dir(final.parent)
        self.reload()

    @staticmethod
    def discard(staged: Staged) -> None:
        with contextlib.suppress(FileNotFoundError):
            staged.path.unlink()
        _sync_dir(staged.path.parent)

    @staticmethod
    def pending(directory: Path) -> list[Staged]:
        """Pending keys a rotation left behind (it stopped between staging and commit)."""
        out = []
        if directory.is_dir():
            for p in sorted(directory.iterdir()):
                m = _PENDING_RE.search(p.name)
                if m and p.is_file():
                    out.append(Staged(int(m.group(1)), _read_key(p), p))
        return out


PENDING = ".pending"
_PENDING_RE = re.compile(r"^master-v(\d{1,6})\.key\.pending$")


@dataclass(frozen=True)
class Staged:
    """A master key version made by a rotation that has not committed yet."""

    version: int
    key: bytes
    path: Path


def _private(path: Path) -> bool:
    """Only this user may read the key file: mode 0600 or 0400, or group-readable (0440) by
    a group of this process only, as Kubernetes mounts a Secret for a non-root pod (owned by
    root, group ``fsGroup``); never writable by the group, never open to others."""
    st = path.stat()
    extra = st.st_mode & 0o077
    if not extra:
        return True
    return extra == 0o040 and st.st_gid in {os.getegid(), *os.getgroups()}


def _read_key(path: Path) -> bytes:
    try:
        raw = base64.b64decode(path.read_text().strip(), validate=True)
    except (ValueError, OSError) as exc:
        raise KeyringError(f"{path} is not a base64 key: {exc}") from None
    if len(raw) != KEY_BYTES:
        raise KeyringError(f"{path} holds {len(raw)} bytes, not {KEY_BYTES}")
    return raw


def _write_key(path: Path, raw: bytes) -> None:
    """Write a key file (0600) durably; FileExistsError if it exists: never overwrite."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left by a crash while writing
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(raw).decode() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)
    finally:
        tmp.unlink()
    _sync_dir(path.parent)


def _sync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def new_staged(version: int, path: Path) -> Staged:
    """A new key held in memory for ``path`` (written by ``write_staged``)."""
    return Staged(version, secrets.token_bytes(KEY_BYTES), path)


def write_staged(staged: Staged) -> None:
    """Write a key made by ``new_staged`` (0600); FileExistsError rather than overwrite."""
    _write_key(staged.path, staged.key)


def create_master_key(directory: Path, version: int) -> Path:
    """Write ``master-v<version>.key`` (0600) atomically; refuses to overwrite."""
    path = directory / f"master-v{version}.key"
    _write_key(path, secrets.token_bytes(KEY_BYTES))
    return path


class SecretBox:
    """Small secrets (TOTP seeds) sealed for a database column as ``sealed1:<base64>``.

    Values written before sealing existed are read as they are, and sealed when next set.
    """

    PREFIX = "sealed1:"

    def __init__(self, key: Callable[[], bytes]) -> None:
        self._key = key

    def seal(self, text: str, aad: bytes) -> str:
        return self.PREFIX + base64.b64encode(seal(self._key(), text.encode(), aad)).decode()

    def open(self, stored: str, aad: bytes) -> str:
        if not stored.startswith(self.PREFIX):
            return stored
        return open_sealed(self._key(), base64.b64decode(stored[len(self.PREFIX) :]), aad).decode()
