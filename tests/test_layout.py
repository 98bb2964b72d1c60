"""The offline layout engine's structural rules, each checked on real PDFs: the shared reference PDFs (against
Docling's model-based Markdown) and a real specification with bookmarks, numbered sections and running headers."""

from __future__ import annotations

import re
from pathlib import Path

import pypdfium2
import pytest

from newsllm_pipeline.documents.conversion import convert_document, offline_converter
from newsllm_pipeline.documents.fidelity import fidelity, heading_lines, table_cells

SHARED_PDFS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pdfs"
SPEC_PDF = Path(__file__).parent / "data" / "pdfs" / "shared-mime-info-spec.pdf"

# Floors a little under what the engine measures today, per reference PDF: (heading F1, token F1,
# reading order, table cell F1); None where the reference has no table.
FLOORS = {
    "code_and_formula": (0.9, 0.97, 0.95, None),
    "multi_page": (0.9, 0.97, 0.95, None),
    "picture_classification": (0.9, 0.97, 0.95, None),
    "right_to_left_01": (0.9, 0.95, 0.95, None),
    "right_to_left_02": (0.9, 0.92, 0.95, None),
    "right_to_left_03": (0.6, 0.97, 0.8, None),
    "table_mislabeled_as_picture": (0.9, 0.97, 0.95, 0.55),
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, str]:
    """texto.md of every shared PDF and of the specification, converted once by the offline converter."""
    converter = offline_converter()
    folder = tmp_path_factory.mktemp("converted")
    pdfs = [*sorted(SHARED_PDFS.glob("*.pdf")), SPEC_PDF]
    return {
        pdf.stem: convert_document(pdf, folder / pdf.stem, converter).markdown_path.read_text(encoding="utf-8")
        for pdf in pdfs
    }


def _reference(name: str) -> str:
    return (SHARED_PDFS / f"{name}.docling-standard.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_structure_of_every_reference_pdf_stays_above_its_floor(converted, name):
    score = fidelity(converted[name], _reference(name))
    heading_floor, token_floor, order_floor, table_floor = FLOORS[name]
    assert heading_floor is None or score.heading_f1 >= heading_floor, score
    assert score.token_f1 >= token_floor, score
    assert score.reading_order is not None and score.reading_order >= order_floor, score
    assert table_floor is None or score.table_cell_f1 >= table_floor, score


def test_no_heading_is_empty_or_a_lone_fragment(converted):
    for name, markdown in converted.items():
        for line in markdown.splitlines():
            if line.startswith("#"):
                text = line.lstrip("#").strip()
                assert sum(character.isalpha() for character in text) >= 2, (name, line)


def test_right_to_left_lines_are_kept_whole(converted):
    """docling-parse cuts the Arabic title at each Latin word ("R", "Python"); the heading is the whole line."""
    assert heading_lines(converted["right_to_left_01"]) == heading_lines(_reference("right_to_left_01"))
    first_paragraph = converted["right_to_left_01"].split("\n\n")[1]
    assert first_paragraph.startswith("تعتبر البرمجة بلغة R و Python من الأدوات القوية")


def test_arabic_words_cut_by_the_parser_are_joined_again(converted):
    """right_to_left_03's title and section heading reach docling-parse as touching pieces of words
    ("اميد" + "نامه"); they are one word, as in the reference, while "و Python" keeps its space."""
    found, expected = heading_lines(converted["right_to_left_03"]), heading_lines(_reference("right_to_left_03"))
    assert "اميدنامه پذيرش در بازار اصلی کالای داخلی" in found & expected
    assert "2 5 استاندارد کالا" in found & expected


def test_a_table_of_aligned_cells_becomes_a_markdown_table_with_the_references_cells(converted):
    cells, reference_cells = (
        table_cells(converted["table_mislabeled_as_picture"]),
        table_cells(_reference("table_mislabeled_as_picture")),
    )
    assert cells["state funded legal aid"] == cells["csos"] == 1
    assert cells["*"] == reference_cells["*"] == 14
    rows = [line for line in converted["table_mislabeled_as_picture"].splitlines() if line.startswith("|")]
    assert len(rows) == 9  # header, separator and the seven groups
    assert "Persons with disabilities" in rows[2] and rows[2].count("*") == 2


def test_two_column_page_reads_column_by_column(converted):
    """table_mislabeled_as_picture is set in two columns: paragraphs must not interleave across them."""
    score = fidelity(converted["table_mislabeled_as_picture"], _reference("table_mislabeled_as_picture"))
    assert score.reading_order == pytest.approx(1.0, abs=0.02)


def test_bookmarks_become_headings_with_their_levels(converted):
    markdown = converted["shared-mime-info-spec"]
    with pypdfium2.PdfDocument(SPEC_PDF) as pdf:
        bookmarks = [(bookmark.level, bookmark.get_title()) for bookmark in pdf.get_toc()]
    found = heading_lines(markdown)
    missing = [title for _, title in bookmarks if heading_lines(f"# {title}").pop() not in found]
    assert len(missing) <= len(bookmarks) // 10, missing
    # "2. Unified system" is a chapter, "2.1. Directory layout" a section within it.
    assert re.search(r"^## 2\. Unified system$", markdown, re.M)
    assert re.search(r"^### 2\.1\. Directory layout$", markdown, re.M)


def test_running_headers_and_page_numbers_stay_out_of_the_body(converted):
    """Each page of the specification starts with "Shared MIME-info Database" and ends with its number."""
    paragraphs = [paragraph.strip() for paragraph in converted["shared-mime-info-spec"].split("\n\n")]
    assert "Shared MIME-info Database" not in paragraphs  # only the title, as a heading
    assert "## Shared MIME-info Database" in paragraphs
    assert not [paragraph for paragraph in paragraphs if re.fullmatch(r"\d{1,3}", paragraph)]
