"""How close a Markdown conversion is to a reference conversion (docling's model-based pipeline).

- token F1: multiset F1 over lowercased word tokens of the text once Markdown syntax is removed
  (image links and placeholders, HTML comments and tags, heading marks, list markers, table pipes
  and separator rows, emphasis and code marks, escapes, entities). It measures text fidelity only.
- heading F1: set F1 over heading lines (lines starting with '#'), normalised: marks dropped (the
  level is ignored), unescaped, lowercased, whitespace collapsed; section numbers are kept.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import dataclass

from .markdown import ESCAPED_CHARACTER, HTML_COMMENT, IMAGE_LINK, WORD

_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_LINE_MARK = re.compile(r"^\s*(?:#{1,6}\s+|[-*+]\s+|\d+[.)]\s+|>\s*)")
_TABLE_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_EMPHASIS = re.compile(r"[*_`~]+")


@dataclass(frozen=True)
class Fidelity:
    token_f1: float
    heading_f1: float
    headings: int
    reference_headings: int


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


def heading_lines(markdown: str) -> set[str]:
    found = set()
    for line in markdown.splitlines():
        if line.lstrip().startswith("#"):
            text = html.unescape(ESCAPED_CHARACTER.sub(r"\1", line.lstrip().lstrip("#")))
            found.add(re.sub(r"\s+", " ", text).strip().lower())
    found.discard("")
    return found


def _f1(overlap: float, predicted: float, expected: float) -> float:
    if predicted == expected == 0:
        return 1.0
    return 2 * overlap / (predicted + expected)


def fidelity(markdown: str, reference: str) -> Fidelity:
    words, reference_words = word_counts(markdown), word_counts(reference)
    headings, reference_headings = heading_lines(markdown), heading_lines(reference)
    return Fidelity(
        token_f1=_f1(sum((words & reference_words).values()), sum(words.values()), sum(reference_words.values())),
        heading_f1=_f1(len(headings & reference_headings), len(headings), len(reference_headings)),
        headings=len(headings),
        reference_headings=len(reference_headings),
    )
