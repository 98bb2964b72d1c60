"""The structure metric the document benchmark reports: what each score sees and what it ignores."""

from __future__ import annotations

from newsllm_pipeline.documents.fidelity import fidelity, reading_order, table_cells

REFERENCE = """## 1. Scope

The first paragraph explains what the report covers and why.

## 2. Results

The second paragraph gives the measured results in detail.

| Region | Sales |
| - | - |
| North | **12** |
| South | 7 |

The third paragraph draws the conclusions from those results.
"""


def test_identical_markdown_scores_one_everywhere():
    score = fidelity(REFERENCE, REFERENCE)
    assert (score.token_f1, score.heading_f1, score.table_cell_f1, score.reading_order) == (1, 1, 1, 1)


def test_heading_f1_ignores_level_and_punctuation_but_not_words():
    converted = REFERENCE.replace("## 1. Scope", "### 1 Scope").replace("## 2. Results", "## Results")
    assert fidelity(converted, REFERENCE).heading_f1 == 0.5


def test_reading_order_drops_when_paragraphs_change_places_not_when_they_split():
    paragraphs = REFERENCE.split("\n\n")
    swapped = "\n\n".join([paragraphs[0], paragraphs[-1], *paragraphs[1:-1]])
    split = REFERENCE.replace("explains what", "explains\n\nwhat")
    assert reading_order(swapped, REFERENCE) < 0.9
    assert reading_order(split, REFERENCE) == 1.0


def test_table_cells_are_compared_as_text_and_missing_tables_count_as_none():
    assert table_cells(REFERENCE) == {"region": 1, "sales": 1, "north": 1, "12": 1, "south": 1, "7": 1}
    as_paragraph = REFERENCE.replace("| North | **12** |", "North 12").replace("| South | 7 |", "South 7")
    assert fidelity(as_paragraph, REFERENCE).table_cell_f1 == 2 * 2 / (2 + 6)
    assert fidelity(REFERENCE, "No table here.").table_cell_f1 is None
