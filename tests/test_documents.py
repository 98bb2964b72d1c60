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


def _docx(path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_heading("Memoria", level=1)
    document.add_heading("Objetivos", level=2)
    document.add_paragraph("El proyecto busca digitalizar el archivo histórico.")
    document.save(path)


@pytest.mark.parametrize(
    "name, write",
    [
        (
            "memoria.md",
            lambda p: p.write_text(
                "# Memoria\n\n## Objetivos\n\nEl proyecto busca digitalizar el archivo histórico.\n"
            ),
        ),
        (
            "memoria.html",
            lambda p: p.write_text(
                "<h1>Memoria</h1><h2>Objetivos</h2><p>El proyecto busca digitalizar el archivo histórico.</p>"
            ),
        ),
        ("memoria.docx", _docx),
    ],
)
def test_docx_html_and_markdown_go_through_the_simple_pipeline(converter, tmp_path, name, write):
    source = tmp_path / name
    write(source)
    markdown = convert_document(source, tmp_path / "out", converter).markdown_path.read_text(encoding="utf-8")
    assert "Objetivos" in markdown and "digitalizar el archivo histórico" in markdown
    assert (
        fidelity(
            markdown, "# Memoria\n\n## Objetivos\n\nEl proyecto busca digitalizar el archivo histórico."
        ).heading_f1
        == 1.0
    )
