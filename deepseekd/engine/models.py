"""The local model store: validated, hashed copies of models under ``data_dir/models``.

Each model lives in ``models_dir/<name>/`` as a Hugging Face folder (safetensors weights,
config, tokenizer) next to ``deepseekd-manifest.json``, which records where it came from
and the sha256 of every file. Imports are atomic: a model is built in a hidden temp
folder and renamed into place only when complete, so a half-import never shows up.

GGUF files are dequantised to a Hugging Face folder with transformers at import time,
because vLLM's GGUF support is partial and a plain folder loads the same everywhere.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
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

log = logging.getLogger(__name__)

MANIFEST_NAME = "deepseekd-manifest.json"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
NAME_RULE = "use 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"

GGUF_MAGIC = b"GGUF"
DTYPES = ("bfloat16", "float16", "float32")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
SAFETENSORS_INDEX = "model.safetensors.index.json"
_TMP_PREFIX = ".import-"


class ModelError(Exception):
    """Bad source, bad name, missing model; message is shown to the user as-is."""


@dataclass(frozen=True)
class ModelRecord:
    """One imported model, as recorded in its manifest."""

    name: str
    path: Path
    """``models_dir/<name>``; not stored in the manifest, so the store can be moved."""
    format: str
    """Source format: ``"gguf"`` or ``"hf"``."""
    source: str
    """The source path as given at import."""
    source_sha256: str
    """sha256 of the GGUF file, or the folder digest (see ``sha256``) of an hf source."""
    sha256: str
    """sha256 over the sorted ``"relpath  sha256\\n"`` lines of the imported files."""
    files: dict[str, dict[str, Any]]
    """relpath -> ``{"sha256": hex, "size": int}``, manifest excluded."""
    imported_at: str
    """ISO 8601 UTC."""


# --------------------------------------------------------------------------- names


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise ModelError naming the rule."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ModelError(f"model name {name!r}: {NAME_RULE}")
    return name


def default_name(src: Path) -> str:
    """A model name derived from the source: file name without ``.gguf``, or folder name."""
    base = src.name or src.resolve().name
    if base.lower().endswith(".gguf"):
        base = base[: -len(".gguf")]
    name = re.sub(r"[^a-z0-9._-]+", "-", base.lower())
    name = re.sub(r"-{2,}", "-", name)
    # The name must start with a letter or digit; trailing separators just look odd.
    name = name.lstrip("._-")[:64].rstrip("._-")
    if not name:
        raise ModelError(f"cannot derive a model name from {str(src)!r}; pass --name")
    return validate_name(name)


# --------------------------------------------------------------------------- hashing


def _hash_tree(root: Path) -> dict[str, dict[str, Any]]:
    """relpath -> sha256 and size for every regular file under ``root`` (manifest excluded)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            rel = path.relative_to(root).as_posix()
            if rel != MANIFEST_NAME:
                out[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return out


# --------------------------------------------------------------------------- store


def _record_from_manifest(model_dir: Path) -> ModelRecord:
    """Read and check ``model_dir``'s manifest; ModelError if it is unreadable."""
    manifest = model_dir / MANIFEST_NAME
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        wanted = {f.name for f in fields(ModelRecord)} - {"path"}
        missing = sorted(wanted - data.keys())
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        record = ModelRecord(path=model_dir, **{k: data[k] for k in wanted})
        if record.name != model_dir.name:
            # A renamed folder would serve under a name its manifest disagrees with.
            raise ValueError(f"it names model {record.name!r}, not {model_dir.name!r}")
        if not isinstance(record.files, dict) or not isinstance(record.sha256, str):
            raise ValueError("bad files or sha256 field")
    except (OSError, ValueError, TypeError) as e:
        raise ModelError(
            f"model {model_dir.name!r}: manifest {manifest} is unreadable: {e}"
        ) from None
    return record


def list_models(models_dir: Path) -> list[ModelRecord]:
    """Imported models sorted by name; temp dirs and folders without a manifest are skipped."""
    if not models_dir.is_dir():
        return []
    records: list[ModelRecord] = []
    for entry in sorted(models_dir.iterdir()):
        if entry.name.startswith("."):
            continue  # in-progress or abandoned imports
        if not entry.is_dir() or not (entry / MANIFEST_NAME).is_file():
            continue
        try:
            records.append(_record_from_manifest(entry))
        except ModelError as e:
            # One damaged folder must not hide the others; get_model reports it in full.
            log.warning("skipping model folder %s: %s", entry, e)
    return records


def get_model(models_dir: Path, name: str) -> ModelRecord:
    """The imported model ``name``; ModelError listing the imported names if missing."""
    validate_name(name)
    model_dir = models_dir / name
    if not (model_dir / MANIFEST_NAME).is_file():
        names = ", ".join(r.name for r in list_models(models_dir)) or "none"
        raise ModelError(
            f"no imported model named {name!r} (imported: {names}); "
            f"run `deepseekd model import SRC --name {name}`"
        )
    return _record_from_manifest(model_dir)


def _looks_like_path(value: str) -> bool:
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return any(s in value for s in seps) or value.startswith((".", "~"))


def resolve_model(value: str, models_dir: Path) -> tuple[Path, str, str | None]:
    """Resolve ``[engine] model`` to ``(folder, served_name, sha256 or None)``.

    A value with a path separator, or starting with ``.`` or ``~``, is a Hugging Face
    folder used in place (no digest); anything else is the name of an imported model.
    """
    if _looks_like_path(value):
        folder = Path(value).expanduser()
        if not folder.exists():
            raise ModelError(f"engine.model: {value!r} does not exist")
        if folder.is_file() and folder.suffix.lower() == ".gguf":
            raise ModelError(
                f"engine.model: {value!r} is a GGUF file; run `deepseekd model import {value}` "
                "and set engine.model to the imported name"
            )
        if not folder.is_dir():
            raise ModelError(f"engine.model: {value!r} is not a folder")
        if not (folder / "config.json").is_file():
            raise ModelError(
                f"engine.model: {value!r} has no config.json; "
                "it must be a Hugging Face model folder or the name of an imported model"
            )
        folder = folder.resolve()
        return folder, folder.name.lower(), None
    try:
        record = get_model(models_dir, value)
    except ModelError as e:
        raise ModelError(f"engine.model: {e}") from None
    return record.path, record.name, record.sha256


# --------------------------------------------------------------------------- validation


def _check_hf_files(files: dict[str, Path], label: str) -> None:
    """Check a Hugging Face folder given as posix relpath -> real file path."""
    rels = sorted(files)
    top = {r for r in rels if "/" not in r}
    pickles = sorted(r for r in rels if r.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ModelError(
            f"{label} holds pickle weights ({', '.join(pickles)}); pickle files can run code "
            "when loaded, so they are refused: convert the model to safetensors and remove them"
        )
    if "config.json" not in top:
        raise ModelError(f"{label} has no config.json; it is not a Hugging Face model folder")
    try:
        config = json.loads(files["config.json"].read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{label}: config.json is not valid JSON: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ModelError(f"{label}: config.json is not a JSON object with a 'model_type'")
    if not any(r.endswith(".safetensors") for r in top):
        raise ModelError(f"{label} has no *.safetensors weight file")
    if SAFETENSORS_INDEX in top:
        try:
            index = json.loads(files[SAFETENSORS_INDEX].read_text(encoding="utf-8"))
            weight_map = index["weight_map"]
            shards = set(weight_map.values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelError(f"{label}: {SAFETENSORS_INDEX} is unreadable: {e!r}") from None
        missing = sorted(str(s) for s in shards if s not in top)
        if missing:
            raise ModelError(
                f"{label}: {SAFETENSORS_INDEX} lists shards that are missing: {', '.join(missing)}"
            )
    for rel in rels:
        if rel.endswith(".safetensors"):
            try:
                check_safetensors(files[rel], f"{label}/{rel}")
            except FileCheckError as e:
                raise ModelError(str(e)) from None
    if not top & set(TOKENIZER_FILES):
        raise ModelError(f"{label} has no tokenizer ({', '.join(TOKENIZER_FILES)})")


def _scan_source(src: Path) -> list[tuple[str, Path]]:
    """The files to copy from ``src``: (posix relpath, real path), hidden entries skipped.

    Symlinks are followed only when they stay inside ``src``: a link out of the folder
    would smuggle arbitrary files (keys, /etc) into the store.
    """
    root = src.resolve()
    out: list[tuple[str, Path]] = []

    def walk(real_dir: Path, rel_dir: str, stack: tuple[Path, ...]) -> None:
        for entry in sorted(os.scandir(real_dir), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            rel = f"{rel_dir}{entry.name}"
            path = Path(entry.path)
            if entry.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(root):
                    raise ModelError(
                        f"{src}/{rel} is a symlink pointing outside the source folder "
                        f"(to {target}); copy the real file into the folder"
                    )
                path = target
            if path.is_dir():
                if path in stack:
                    raise ModelError(f"{src}/{rel} is a symlink loop")
                walk(path, f"{rel}/", (*stack, path))
            elif path.is_file():
                out.append((rel, path))
            # Sockets, FIFOs and devices are not model files; reading a FIFO would hang.

    walk(root, "", (root,))
    return out


# --------------------------------------------------------------------------- import


def import_model(
    src: Path, models_dir: Path, name: str | None = None, *, dtype: str = "bfloat16"
) -> ModelRecord:
    """Validate ``src`` (a ``.gguf`` file or a Hugging Face folder) and import it as ``name``.

    A GGUF file is dequantised to ``dtype``; a folder is copied as-is (``dtype`` unused).
    """
    src = Path(src).expanduser()
    name = validate_name(name) if name is not None else default_name(src)
    fmt = _source_format(src, models_dir, name, dtype)
    try:
        models_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{name}-", dir=models_dir))
    except OSError as e:
        raise ModelError(f"cannot create a folder in the model store {models_dir}: {e}") from None
    log.info("importing model %r (%s) from %s", name, fmt, src)
    try:
        if fmt == "gguf":
            source_sha256 = _import_gguf(src, tmp, dtype)
            files = _hash_tree(tmp)
        else:
            files = _copy_hf(src, tmp)
            source_sha256 = digest(files)
        # The written folder must pass the same checks vLLM's loader relies on.
        _check_hf_files({rel: tmp / rel for rel in files}, f"imported model {name!r}")
        record = ModelRecord(
            name=name,
            path=models_dir / name,
            format=fmt,
            source=str(src),
            source_sha256=source_sha256,
            sha256=digest(files),
            files=files,
            imported_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        manifest = {k: v for k, v in asdict(record).items() if k != "path"}
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if os.path.lexists(record.path):
            raise ModelError(f"model {name!r} already exists; pick another --name")
        try:
            os.rename(tmp, record.path)
        except OSError as e:
            # Another import of the same name won the race (or the target is unusable).
            raise ModelError(f"cannot store model {name!r} at {record.path}: {e}") from None
    except OSError as e:
        # Unreadable source files, a full disk: the user's problem to fix, not a crash.
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"cannot import {src}: {e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("imported model %r: %d files, sha256 %s", name, len(files), record.sha256)
    return record


def _source_format(src: Path, models_dir: Path, name: str, dtype: str) -> str:
    """'gguf' or 'hf' for an importable ``src``; ModelError naming what is wrong."""
    if dtype not in DTYPES:
        raise ModelError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if os.path.lexists(models_dir / name):
        raise ModelError(f"model {name!r} already exists; pick another --name")
    if not src.exists():
        raise ModelError(f"{src} does not exist")
    if src.is_file() and src.suffix.lower() == ".gguf":
        return "gguf"
    if not src.is_dir():
        raise ModelError(f"{src} is neither a .gguf file nor a Hugging Face model folder")
    if models_dir.resolve().is_relative_to(src.resolve()):
        # Copying a folder that contains the store would copy the store into itself.
        raise ModelError(f"{src} contains the model store {models_dir}; pick the model folder")
    return "hf"


def _copy_hf(src: Path, dst: Path) -> dict[str, dict[str, Any]]:
    """Validate the folder ``src``, copy its files into ``dst`` and return their hashes."""
    entries = _scan_source(src)
    # Check the source first so a bad folder fails before copying gigabytes.
    _check_hf_files(dict(entries), str(src))
    files: dict[str, dict[str, Any]] = {}
    for rel, path in entries:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        files[rel] = copy_hashed(path, target)
    return files


def _check_gguf(src: Path) -> None:
    """Check the GGUF magic, header and that every tensor lies inside the file."""
    with src.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ModelError(f"{src} is not a GGUF file (bad magic)")
    size = src.stat().st_size
    import gguf  # light (numpy only), but only import commands need it

    try:
        reader = gguf.GGUFReader(src)
        tensors = [(t.name, int(t.data_offset), int(t.n_bytes)) for t in reader.tensors]
    except Exception as e:  # the reader raises assorted errors on short or garbled files
        raise ModelError(f"{src} is corrupt or truncated: {e}") from None
    del reader  # drop the memmap now rather than at garbage collection
    for tname, offset, n_bytes in tensors:
        if offset + n_bytes > size:
            raise ModelError(
                f"{src} is corrupt or truncated: tensor {tname!r} ends at byte "
                f"{offset + n_bytes} but the file has {size} bytes"
            )


def _import_gguf(src: Path, dst: Path, dtype: str) -> str:
    """Dequantise the GGUF file ``src`` into a Hugging Face folder ``dst``; return its sha256."""
    _check_gguf(src)
    source_sha256 = sha256_file(src)
    # torch and transformers take seconds to import: only GGUF imports pay for them.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers wants a folder plus a file name in it; use the real file behind a link.
    real = src.resolve()
    parent, fname = str(real.parent), real.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(parent, gguf_file=fname, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(parent, gguf_file=fname, local_files_only=True)
    except Exception as e:
        raise ModelError(f"transformers cannot load {src}: {type(e).__name__}: {e}") from None
    model = model.to(getattr(torch, dtype))
    # The GGUF loader marks the model as quantized, and save_pretrained refuses quantized
    # models; the weights are already dequantised, so the flags are simply stale.
    model.is_quantized = False
    model.hf_quantizer = None
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if not getattr(model.config, "architectures", None):
        # vLLM picks the model class from config.architectures; GGUF configs may lack it.
        model.config.architectures = [type(model).__name__]
    try:
        model.save_pretrained(dst, safe_serialization=True)
        tokenizer.save_pretrained(dst)
    except Exception as e:
        raise ModelError(f"cannot write the converted model from {src}: {e}") from None
    return source_sha256
