"""The content hash and what is derived from it: the values are stored between runs (sensor cursors and run keys,
dataset versions that name adapters, calibration file names) or decide an item's split, so they are pinned here."""

from __future__ import annotations

from pathlib import Path

from newsllm_pipeline.documents.dataset import DatasetFiles
from newsllm_pipeline.files import content_version, sha256_hex
from newsllm_pipeline.splits import stable_hash


def _splits(folder: Path) -> tuple[Path, Path]:
    train, evaluation = folder / "train.jsonl", folder / "eval.jsonl"
    train.write_text('{"a": "ñ"}\n', encoding="utf-8")
    evaluation.write_text('{"b": 1}\n', encoding="utf-8")
    return train, evaluation


def test_sha256_hex_hashes_a_file_as_its_bytes_and_text_as_utf8(tmp_path):
    train, _ = _splits(tmp_path)
    pinned = "eea64747108006b72cee27c0ad66ff04afad38e0a93e0e573b6bacae0ebf6709"
    assert sha256_hex(train) == sha256_hex(train.read_bytes()) == sha256_hex('{"a": "ñ"}\n') == pinned
    assert sha256_hex("ab", "c", delimiter=b"\0") != sha256_hex("a", "bc", delimiter=b"\0")


def test_content_version_is_pinned_and_counts_a_missing_file_as_empty(tmp_path):
    train, evaluation = _splits(tmp_path)
    assert content_version(train, evaluation, tmp_path / "missing.jsonl") == "9ceeec7c870b"
    assert content_version(train, evaluation) == DatasetFiles(tmp_path).version() == "b2f7c93525fc"


def test_the_split_hash_is_pinned():
    """An item's train/eval side (documents and categoriser alike) comes from it."""
    assert stable_hash("13\nhttps://example.es/deportes/x.html") == 9526457261873042319


def test_the_calibration_cache_file_name_is_pinned(tmp_path, monkeypatch):
    from newsllm_pipeline.categorizer import labels

    monkeypatch.setattr(labels, "PROJECT_HOME", tmp_path)
    assert labels.cached_prior('["model", "prefix"]', lambda: [0.25, 0.75]) == [0.25, 0.75]
    assert [path.name for path in (tmp_path / "models" / ".calibration").iterdir()] == ["e84c3f94f23de2f1.json"]
