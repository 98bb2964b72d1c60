"""The per-document chain as plain steps, shared by the Dagster assets and `newsllm process-document`.

One folder per document, in the original extractor's layout: `texto.md` and `imagenes_extraidas/`
(Docling), `documento.json` (Docling's document, where captions and the text around each picture
come from), `image_descriptions/` (one JSON and one Markdown per picture) and `texto_final.md`
(each picture link replaced by its description).
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

from ..files import write_text_atomically
from .dataset import FIGURE_MARKER
from .descriptions import DescriptionRun, FigureContext, ImageDescriber, describe_images
from .markdown import IMAGE_LINK

# The folder's entries (Docling's conversion writes the first three).
MARKDOWN_NAME = "texto.md"
IMAGES_DIR = "imagenes_extraidas"
DOCLING_JSON_NAME = "documento.json"
DESCRIPTIONS_DIR = "image_descriptions"
FINAL_MARKDOWN_NAME = "texto_final.md"
SUPPORTED_SUFFIXES = {".pdf", ".docx", ".html", ".htm", ".md"}
OUTPUT_ENTRIES = frozenset({MARKDOWN_NAME, DOCLING_JSON_NAME, IMAGES_DIR, DESCRIPTIONS_DIR, FINAL_MARKDOWN_NAME})


class UnsafeOutputFolder(Exception):
    """An output folder the chain must not replace: it holds something the chain did not write."""


def _is_output_entry(name: str) -> bool:
    """One of the chain's files, or a temporary one it left when killed mid-write (`.texto_final.md-x8k2`)."""
    return name in OUTPUT_ENTRIES or name.startswith(tuple(f".{entry}-" for entry in OUTPUT_ENTRIES))


def check_output_folder(folder: Path, source: Path) -> None:
    """Raise UnsafeOutputFolder unless replacing `folder` with a document's output loses nothing but a previous
    output of the chain: it is missing, empty, or holds only the chain's own files. The source's folder (or a
    folder above it) and the current folder are always refused."""
    resolved, source_folder, current = folder.resolve(), source.resolve().parent, Path.cwd().resolve()
    if resolved == source_folder or resolved in source_folder.parents:
        raise UnsafeOutputFolder(
            f"{folder}: it is the source's own folder (or holds it), and replacing it would delete {source.name} "
            "and its neighbours: give a new or empty folder, e.g. --out out/" + document_key(source)
        )
    if resolved == current or resolved in current.parents:
        raise UnsafeOutputFolder(f"{folder}: it is the current folder (or above it): give a new or empty folder")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise UnsafeOutputFolder(f"{folder}: it is a file, not a folder: give a new or empty folder")
    foreign = sorted(entry.name for entry in folder.iterdir() if not _is_output_entry(entry.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UnsafeOutputFolder(
            f"{folder}: not empty and not a previous output of the chain (it holds {shown}); it would be replaced "
            "whole: give a new or empty folder"
        )


def document_key(path: Path) -> str:
    """A stable, safe partition key for a file: its name without accents, lowercased, with the suffix."""
    ascii_name = unicodedata.normalize("NFKD", path.name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_") or "documento"


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


def _picture_number(image: Path) -> str:
    """The "000003" of `image_000003_<hash>.png`: Docling numbers the files it writes by picture, in reading order."""
    return image.name.split("_")[1]


def figure_contexts(folder: Path) -> dict[str, FigureContext]:
    """The caption, inner text and neighbouring paragraphs of each extracted picture, by image file name, read
    from Docling's JSON of the document (empty where there is none)."""
    from docling_core.types.doc import DocItemLabel, DoclingDocument, PictureItem, TextItem

    path = folder / DOCLING_JSON_NAME
    if not path.exists():
        return {}
    document = DoclingDocument.load_from_json(path)
    paragraph_labels = {DocItemLabel.TEXT, DocItemLabel.PARAGRAPH, DocItemLabel.LIST_ITEM}
    flow: list[str | PictureItem] = []  # body paragraphs and pictures in reading order
    # The same walk as Docling's when it numbers the picture files (`_with_pictures_refs`).
    for item, _ in document.iterate_items(with_groups=False):
        if isinstance(item, PictureItem):
            flow.append(item)
        elif isinstance(item, TextItem) and item.label in paragraph_labels:
            inside_picture = item.parent is not None and item.parent.cref.startswith("#/pictures/")
            if not inside_picture and item.text.strip():
                flow.append(item.text)

    def nearest_text(positions) -> str:
        return next((flow[place] for place in positions if isinstance(flow[place], str)), "")

    contexts = {}
    pictures = [place for place, entry in enumerate(flow) if isinstance(entry, PictureItem)]
    names = {_picture_number(image): image.name for image in extracted_images(folder)}
    for number, place in enumerate(pictures):
        name = names.get(f"{number:06d}")
        if name is None:  # Docling wrote no file for a picture without an image
            continue
        picture = flow[place]
        inner = [child.resolve(document) for child in picture.children]
        contexts[name] = FigureContext(
            caption=picture.caption_text(document),
            inner_text=" ".join(
                child.text for child in inner if isinstance(child, TextItem) and child.label != DocItemLabel.CAPTION
            ),
            before=nearest_text(range(place - 1, -1, -1)),
            after=nearest_text(range(place + 1, len(flow))),
        )
    return contexts


def describe_document_images(
    folder: Path, describer: ImageDescriber, prompt: str, min_side_px: int = 32
) -> DescriptionRun:
    """Describe every picture extracted into `folder`, each with what the document says around it."""
    return describe_images(extracted_images(folder), describer, prompt, min_side_px, figure_contexts(folder))
