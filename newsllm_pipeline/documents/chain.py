"""The per-document chain as plain steps, shared by the Dagster assets and `newsllm process-document`.

One folder per document, in the original extractor's layout: `texto.md` and `imagenes_extraidas/`
(Docling), `image_descriptions/` (one JSON and one Markdown per picture) and `texto_final.md`
(each picture link replaced by its description).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from pathlib import Path

from ..files import write_text_atomically
from .conversion import IMAGES_DIR, MARKDOWN_NAME
from .dataset import FIGURE_MARKER
from .markdown import IMAGE_LINK

DESCRIPTIONS_DIR = "image_descriptions"
FINAL_MARKDOWN_NAME = "texto_final.md"
SUPPORTED_SUFFIXES = {".pdf", ".docx", ".html", ".htm", ".md"}


def document_key(path: Path) -> str:
    """A stable, safe partition key for a file: its name without accents, lowercased, with the suffix."""
    ascii_name = unicodedata.normalize("NFKD", path.name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_") or "documento"


def content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inbox_files(inbox: Path) -> dict[str, Path]:
    """Supported documents in the inbox by partition key (hidden and partial files ignored)."""
    files = sorted(p for p in inbox.glob("*") if p.is_file() and not p.name.startswith("."))
    return {document_key(path): path for path in files if path.suffix.lower() in SUPPORTED_SUFFIXES}


def image_descriptions(folder: Path) -> dict[str, str]:
    """Description text by image file name, from a document's `image_descriptions/` JSON files."""
    descriptions = {}
    for path in sorted((folder / DESCRIPTIONS_DIR).glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        descriptions[Path(record["image"]).name] = record["text"]
    return descriptions


def describe_markdown(markdown: str, descriptions: dict[str, str]) -> tuple[str, int, int]:
    """Replace every picture link with a paragraph holding its description; a picture without one
    (too small, or its description failed) is dropped. Returns the text, replaced and dropped counts."""
    replaced = dropped = 0

    def replacement(match: re.Match) -> str:
        nonlocal replaced, dropped
        text = descriptions.get(Path(match.group(1)).name)
        if text is None:
            dropped += 1
            return ""
        replaced += 1
        return f"{FIGURE_MARKER} {' '.join(text.split())}"

    return IMAGE_LINK.sub(replacement, markdown), replaced, dropped


def write_described_markdown(folder: Path) -> tuple[Path, int, int]:
    """`texto_final.md` from `texto.md` and the descriptions in `folder`."""
    markdown = (folder / MARKDOWN_NAME).read_text(encoding="utf-8")
    final, replaced, dropped = describe_markdown(markdown, image_descriptions(folder))
    path = folder / FINAL_MARKDOWN_NAME
    write_text_atomically(path, final)
    return path, replaced, dropped


def extracted_images(folder: Path) -> list[Path]:
    return sorted((folder / IMAGES_DIR).glob("*.png"))
