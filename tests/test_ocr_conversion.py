"""OCR of scanned PDFs in the offline converter, with the RapidOCR models shipped in the wheel."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from newsllm_pipeline.documents.conversion import DocumentConversionError, convert_document, offline_converter
from newsllm_pipeline.documents.fidelity import fidelity

LINES = ["El ayuntamiento aprueba", "el presupuesto municipal", "para la biblioteca nueva"]
SHARED_PDFS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pdfs"
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def scanned_pdf(path: Path) -> Path:
    """A one-page PDF that is only a picture of Spanish text (A4 at 150 dpi), like a scan."""
    page = Image.new("RGB", (1240, 1754), "white")
    font = ImageFont.truetype(str(DEJAVU), 48) if DEJAVU.exists() else ImageFont.load_default(size=48)
    draw = ImageDraw.Draw(page)
    for number, line in enumerate(LINES):
        draw.text((100, 200 + number * 90), line, fill="black", font=font)
    page.save(path, "PDF", resolution=150)
    return path


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to fetch a model fails, as on the offline machines."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted during an offline conversion")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_ocr_reads_a_scanned_page_offline_and_without_it_the_error_says_so(tmp_path, no_network):
    source = scanned_pdf(tmp_path / "escaneado.pdf")
    words = {word.lower() for line in LINES for word in line.split()}

    with_ocr = convert_document(source, tmp_path / "ocr", offline_converter(ocr=True))
    read = set(with_ocr.markdown_path.read_text(encoding="utf-8").lower().split())
    assert words <= read, f"missing after OCR: {sorted(words - read)}"

    with pytest.raises(DocumentConversionError, match="escaneado.pdf: no text layer and OCR is off: enable OCR"):
        convert_document(source, tmp_path / "plain", offline_converter())
    assert not (tmp_path / "plain").exists()


def scanned_copy(source: Path, pages: int, path: Path) -> Path:
    """The first pages of a real PDF as a scan: each page only a 150 dpi picture, no text layer."""
    import pypdfium2

    document = pypdfium2.PdfDocument(source)
    images = [document[index].render(scale=150 / 72).to_pil().convert("RGB") for index in range(pages)]
    images[0].save(path, "PDF", resolution=150, save_all=True, append_images=images[1:])
    return path


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_PDFS / "multi_page.pdf").exists(), reason="shared reference PDFs not present")
def test_a_scanned_report_keeps_its_paragraphs_and_headings(tmp_path, no_network):
    source = scanned_copy(SHARED_PDFS / "multi_page.pdf", 2, tmp_path / "escaneado.pdf")
    # The reference's text up to the first heading of page 3: what the two scanned pages hold.
    reference = (SHARED_PDFS / "multi_page.docling-standard.md").read_text(encoding="utf-8")
    reference = reference.split("## Specialized Word Processing Tools")[0]

    markdown = convert_document(source, tmp_path / "ocr", offline_converter(ocr=True)).markdown_path.read_text()
    scores = fidelity(markdown, reference)

    # Before headings were found on scans every OCR line was a paragraph and none a heading (F1 0.0).
    assert scores.heading_f1 >= 0.8, scores
    assert scores.token_f1 >= 0.95, scores
    paragraph = "The origins of word processing can be traced back to the invention of the typewriter in the"
    assert paragraph + " mid-19th century." in markdown  # a paragraph's OCR lines are joined
