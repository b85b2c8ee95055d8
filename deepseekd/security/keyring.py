"""Envelope encryption: versioned master keys (KEKs) wrap per-user data keys (DEKs); every
message is sealed with AES-256-GCM under its user's DEK, with associated data that binds it
to its row, so ciphertext moved to another row fails to open.

Master keys live one per file (``master-v<N>.key``, 32 random bytes in base64, mode 0600)
in ``data_dir/keys/`` or, under systemd, in ``$CREDENTIALS_DIRECTORY`` (LoadCredential=).
The highest version wraps; older ones only unwrap until rotation retires them.
"""

from __future__ import annotations

import base64
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
            mode = path.stat().st_mode & 0o077
            if mode and not os.environ.get("CREDENTIALS_DIRECTORY"):
                raise KeyringError(
                    f"{path} is readable by others (mode {oct(path.stat().st_mode & 0o777)}); "
                    "chmod 600 it"
                )
            try:
                raw = base64.b64decode(path.read_text().strip(), validate=True)
            except (ValueError, OSError) as exc:
                raise KeyringError(f"{path} is not a base64 key: {exc}") from None
            if len(raw) != KEY_BYTES:
                raise KeyringError(f"{path} holds {len(raw)} bytes, not {KEY_BYTES}")
            versions[version] = _Version(version, raw, path, mtime)
        self._versions = versions
        self._signature = signature

    @property
    def current_version(self) -> int:
        return max(self._versions)

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

    def retire(self, version: int) -> None:
        """Delete an old version's file once nothing is wrapped with it any more."""
        v = self._versions.get(version)
        if v is None or version == self.current_version:
            return
        v.path.unlink()
        self.reload()


def create_master_key(directory: Path, version: int) -> Path:
    """Write ``master-v<version>.key`` (0600) atomically; refuses to overwrite."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"master-v{version}.key"
    tmp = directory / f".master-v{version}.key.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.link(tmp, path)  # fails if the version exists: never overwrite a key
    tmp.unlink()
    dfd = os.open(directory, os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
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
