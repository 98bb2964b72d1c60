"""Files: outputs written whole or not at all (a crash or an error never leaves a half-written file or folder),
content versions, and JSONL read back."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def staged_file(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`; when the block succeeds it replaces `path`, else it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    with staged_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def staged_folder(folder: Path) -> Iterator[Path]:
    """An empty folder beside `folder`; when the block succeeds it replaces `folder` (the previous one is
    kept until the new one is in place), else it is removed and `folder` is untouched."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    previous = staging.with_name(f"{staging.name}-previous")
    try:
        yield staging
        if folder.exists():
            folder.rename(previous)
        try:
            staging.rename(folder)
        except OSError:
            if previous.exists():
                previous.rename(folder)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)


def content_version(*paths: Path) -> str:
    """A short hash of the files' contents (a missing file counts as empty): a data version."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes() if path.exists() else b"")
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def read_jsonl(path: Path) -> list[dict]:
    """The objects of a JSONL file, blank lines skipped."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
