"""Offline Docling conversion on the shared real PDFs: structure against the model-based reference,
pictures as PNG files, clear errors and nothing written for bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from newsllm_pipeline.documents.conversion import DocumentConversionError, convert_document, offline_converter
from newsllm_pipeline.documents.fidelity import fidelity

SHARED_PDFS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pdfs"


@pytest.fixture(scope="module")
def converter():
    return offline_converter()


@pytest.mark.parametrize("name", ["multi_page", "picture_classification"])
def test_offline_conversion_recovers_the_reference_structure(converter, tmp_path, name):
    converted = convert_document(SHARED_PDFS / f"{name}.pdf", tmp_path / name, converter)
    markdown = converted.markdown_path.read_text(encoding="utf-8")
    score = fidelity(markdown, (SHARED_PDFS / f"{name}.docling-standard.md").read_text(encoding="utf-8"))
    assert score.heading_f1 >= 0.7 and score.token_f1 >= 0.95, score
    assert converted.pages >= 1 and (converted.folder / "documento.json").exists()


def test_pictures_are_saved_as_png_and_linked_relatively(converter, tmp_path):
    converted = convert_document(SHARED_PDFS / "picture_classification.pdf", tmp_path / "doc", converter)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", converted.markdown_path.read_text(encoding="utf-8"))
    assert converted.pictures == len(links) == len(converted.images) >= 1
    assert all(not Path(link).is_absolute() and (converted.folder / link).is_file() for link in links)
    assert all(image.read_bytes().startswith(b"\x89PNG") for image in converted.images)


@pytest.mark.parametrize(
    "content",
    [b"%PDF-1.7\n" + bytes(range(256)) * 40, b"Esto no es un PDF, es un texto con nombre de PDF.\n"],
    ids=["corrupt", "not_a_pdf"],
)
def test_a_bad_file_is_a_clear_error_and_nothing_is_written(converter, tmp_path, content):
    source = tmp_path / "roto.pdf"
    source.write_bytes(content)
    with pytest.raises(DocumentConversionError, match="roto.pdf"):
        convert_document(source, tmp_path / "out" / "roto", converter)
    assert not (tmp_path / "out").exists()
