"""Train/eval splits, shared by the document dataset (`documents/dataset.py`) and the categoriser's labelled set
(`categorizer/training_set.py`): the side of an item by a hash that never changes, and the folder the splits are
written to, each as JSONL and Parquet, whole or not at all."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .files import sha256_hex, staged_folder

TRAIN_JSONL = "train.jsonl"
EVAL_JSONL = "eval.jsonl"
TRAIN_PARQUET = "train.parquet"
EVAL_PARQUET = "eval.parquet"
DATASET_INFO = "dataset_info.json"  # the document dataset's entry for LLaMA-Factory
REAL_DEV_JSONL = "real_dev.jsonl"  # the categoriser's development items of the real labelled set
STATS_JSON = "stats.json"  # the categoriser's labelled-set counts


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process and Python version (unlike `hash`), for splits."""
    return int(sha256_hex(text)[:16], 16)


def _write_jsonl(path: Path, rows: Sequence[Mapping]) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_splits(
    out_dir: Path,
    train: Sequence[Mapping],
    evaluation: Sequence[Mapping],
    schema: pa.Schema,
    jsonl: Mapping[str, Sequence[Mapping]] | None = None,
    json_files: Mapping[str, object] | None = None,
) -> Path:
    """The train and eval rows as `train.jsonl`/`train.parquet` and `eval.jsonl`/`eval.parquet` (Parquet with
    `schema`), plus further JSONL files (`jsonl`: name -> rows) and JSON files (`json_files`: name -> value),
    written into a folder beside out_dir that then replaces it: a failure leaves the previous folder. Returns
    out_dir."""
    out_dir = Path(out_dir)
    with staged_folder(out_dir) as staging:
        for rows, jsonl_name, parquet_name in (
            (train, TRAIN_JSONL, TRAIN_PARQUET),
            (evaluation, EVAL_JSONL, EVAL_PARQUET),
        ):
            _write_jsonl(staging / jsonl_name, rows)
            pq.write_table(pa.Table.from_pylist(list(rows), schema=schema), staging / parquet_name)
        for name, rows in (jsonl or {}).items():
            _write_jsonl(staging / name, rows)
        for name, value in (json_files or {}).items():
            (staging / name).write_text(json.dumps(value, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return out_dir
