"""Files: outputs written whole or not at all (a crash or an error never leaves a half-written file or folder),
content versions, and JSONL read back."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
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


def sha256_hex(*parts: bytes | str | Path, delimiter: bytes = b"") -> str:
    """The SHA-256 hex digest of the parts in order: bytes as given, a str as its UTF-8 text, a Path as the
    file's contents (read in blocks, so a large file is never whole in memory). `delimiter` follows every part,
    so that with one (b"\\0") the parts ("ab", "c") and ("a", "bc") differ. The one content hash of the package:
    its values are stored (sensor cursors, run keys, dataset and adapter versions, calibration file names)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            with part.open("rb") as file:
                for block in iter(functools.partial(file.read, 1 << 20), b""):
                    digest.update(block)
        else:
            digest.update(part.encode("utf-8") if isinstance(part, str) else part)
        digest.update(delimiter)
    return digest.hexdigest()


def content_version(*paths: Path) -> str:
    """A short hash of the files' contents (a missing file counts as empty): a data version."""
    return sha256_hex(*(path if path.exists() else b"" for path in paths), delimiter=b"\0")[:12]


@dataclass(frozen=True)
class BadLine:
    """A line of an input file that cannot be used, and why."""

    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


def _json_object(raw: bytes) -> dict | str:
    """The line's JSON object, or why it is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"not UTF-8 text (byte {error.start + 1} is {raw[error.start : error.start + 1]!r}): save it as UTF-8"
    try:
        value = json.loads(text.removeprefix("\ufeff"))
    except ValueError as error:
        return f"not valid JSON ({error})"
    except RecursionError:
        return "not valid JSON (nested too deeply)"
    if not isinstance(value, dict):
        return f"a JSON {type(value).__name__}, not a JSON object ({{...}})"
    return value


def read_jsonl_lines(path: Path) -> tuple[list[tuple[int, dict]], list[BadLine]]:
    """Each JSON object of a JSONL file with its line number, and the lines that are not one, with the reason
    (blank lines skipped). Lines end only at \\n or \\r, so text holding U+2028 stays one line."""
    objects, bad = [], []
    for number, raw in enumerate(Path(path).read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        value = _json_object(raw)
        if isinstance(value, str):
            bad.append(BadLine(Path(path), number, value))
        else:
            objects.append((number, value))
    return objects, bad


def read_jsonl(path: Path) -> list[dict]:
    """The objects of a JSONL file, blank lines skipped; a line that is not a JSON object raises ValueError
    naming the file, the line and the reason."""
    objects, bad = read_jsonl_lines(path)
    if bad:
        more = f" (and {len(bad) - 1} more bad lines)" if len(bad) > 1 else ""
        raise ValueError(f"{bad[0]}{more}")
    return [value for _, value in objects]
