"""How close a Markdown conversion is to a reference conversion (docling's model-based pipeline).

- token F1: multiset F1 over lowercased word tokens of the text once Markdown syntax is removed
  (image links and placeholders, HTML comments and tags, heading marks, list markers, table pipes
  and separator rows, emphasis and code marks, escapes, entities). It measures text fidelity only.
- heading F1: set F1 over heading lines (lines starting with '#'), normalised: marks dropped (the
  level is ignored), unescaped, lowercased, punctuation and whitespace runs made one space (so
  "2.1. Scope" and "2.1 Scope" agree, and a bidirectional "-2-5" and "2-5-"); section numbers are kept.
- table cell F1: multiset F1 over the non-empty cells of every Markdown table (pipe rows), emphasis
  around a cell dropped, unescaped, lowercased, whitespace collapsed; None when the reference has no
  table, so a document without tables neither helps nor hurts the mean.
- reading order: each paragraph of the conversion is matched to the reference paragraph that holds
  most of its words (at least half of them); the score is the word-weighted share of matched
  paragraphs that lie on the longest run in reference order (a weighted longest non-decreasing
  subsequence). 1.0 is the reference's order; interleaved columns or a footer amid the text lower it.
  Splitting or merging paragraphs does not change it: that is structure, not order.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import dataclass

from ..text import words_only
from .markdown import ESCAPED_CHARACTER, HTML_COMMENT, IMAGE_LINK, WORD

_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_LINE_MARK = re.compile(r"^\s*(?:#{1,6}\s+|[-*+]\s+|\d+[.)]\s+|>\s*)")
_TABLE_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{1,}:?\s*(\|\s*:?-{1,}:?\s*)*\|?\s*$")
_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
_CELL_BORDER = re.compile(r"(?<!\\)\|")
_EMPHASIS = re.compile(r"[*_`~]+")
_WRAPPING_EMPHASIS = re.compile(r"^(\*\*|__|\*|_|`)(.+)\1$")  # a bold header cell; a lone "*" is content
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
MIN_PARAGRAPH_WORDS = 3  # shorter paragraphs (page numbers, lone labels) say nothing about order
MIN_MATCHED_SHARE = 0.5  # of a paragraph's words that must be in one reference paragraph to place it


@dataclass(frozen=True)
class Fidelity:
    token_f1: float
    heading_f1: float
    headings: int
    reference_headings: int
    table_cell_f1: float | None
    table_cells: int
    reference_table_cells: int
    reading_order: float | None


def plain_text(markdown: str) -> str:
    markdown = _LINK.sub(r"\1", IMAGE_LINK.sub(" ", HTML_COMMENT.sub(" ", markdown)))
    lines = []
    for line in _TAG.sub(" ", markdown).splitlines():
        if not _TABLE_SEPARATOR.match(line):
            line = ESCAPED_CHARACTER.sub(r"\1", _LINE_MARK.sub("", line).replace("|", " "))
            lines.append(_EMPHASIS.sub(" ", line))
    return html.unescape("\n".join(lines))


def word_counts(markdown: str) -> Counter:
    return Counter(WORD.findall(plain_text(markdown).lower()))


def _normalised(text: str) -> str:
    text = html.unescape(ESCAPED_CHARACTER.sub(r"\1", text))
    return re.sub(r"\s+", " ", text).strip().lower()


def heading_lines(markdown: str) -> set[str]:
    found = {
        words_only(_normalised(line.lstrip().lstrip("#")))
        for line in markdown.splitlines()
        if line.lstrip().startswith("#")
    }
    found.discard("")
    return found


def table_cells(markdown: str) -> Counter:
    """Normalised non-empty cell texts of every pipe table (header rows included, separator rows not)."""
    cells: Counter[str] = Counter()
    for line in markdown.splitlines():
        if _TABLE_ROW.match(line) and not _TABLE_SEPARATOR.match(line):
            for cell in _CELL_BORDER.split(line.strip())[1:-1]:
                if text := _normalised(_WRAPPING_EMPHASIS.sub(r"\2", cell.strip())):
                    cells[text] += 1
    return cells


def paragraphs(markdown: str) -> list[Counter]:
    """Word counts of each paragraph (text between blank lines) with at least MIN_PARAGRAPH_WORDS words."""
    found = []
    for block in _PARAGRAPH_BREAK.split(markdown):
        words = Counter(WORD.findall(plain_text(block).lower()))
        if sum(words.values()) >= MIN_PARAGRAPH_WORDS:
            found.append(words)
    return found


def _reference_positions(converted: list[Counter], reference: list[Counter]) -> list[tuple[int, int]]:
    """(reference paragraph index, word weight) for each converted paragraph placed in the reference.
    Among equally good reference paragraphs (repeated text) the first one at or after the previous
    placement is taken, so repetitions do not count as disorder."""
    placed: list[tuple[int, int]] = []
    previous = 0
    for words in converted:
        size = sum(words.values())
        overlaps = [sum((words & candidate).values()) for candidate in reference]
        best = max(overlaps, default=0)
        if best < MIN_MATCHED_SHARE * size:
            continue
        ties = [index for index, overlap in enumerate(overlaps) if overlap == best]
        index = next((index for index in ties if index >= previous), ties[0])
        placed.append((index, size))
        previous = index
    return placed


def reading_order(markdown: str, reference: str) -> float | None:
    """Word-weighted share of placed paragraphs on the longest run in reference order; None if none is placed."""
    placed = _reference_positions(paragraphs(markdown), paragraphs(reference))
    if not placed:
        return None
    best_run = [weight for _, weight in placed]
    for current, (index, weight) in enumerate(placed):
        for earlier in range(current):
            if placed[earlier][0] <= index:
                best_run[current] = max(best_run[current], best_run[earlier] + weight)
    return max(best_run) / sum(weight for _, weight in placed)


def _f1(overlap: float, predicted: float, expected: float) -> float:
    if predicted == expected == 0:
        return 1.0
    return 2 * overlap / (predicted + expected)


def _multiset_f1(predicted: Counter, expected: Counter) -> float:
    return _f1(sum((predicted & expected).values()), sum(predicted.values()), sum(expected.values()))


def fidelity(markdown: str, reference: str) -> Fidelity:
    headings, reference_headings = heading_lines(markdown), heading_lines(reference)
    cells, reference_cells = table_cells(markdown), table_cells(reference)
    return Fidelity(
        token_f1=_multiset_f1(word_counts(markdown), word_counts(reference)),
        heading_f1=_f1(len(headings & reference_headings), len(headings), len(reference_headings)),
        headings=len(headings),
        reference_headings=len(reference_headings),
        table_cell_f1=_multiset_f1(cells, reference_cells) if reference_cells else None,
        table_cells=sum(cells.values()),
        reference_table_cells=sum(reference_cells.values()),
        reading_order=reading_order(markdown, reference),
    )
