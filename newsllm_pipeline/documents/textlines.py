"""Visual text lines from docling-parse's text cells, the unit the layout and table engines reason about.

docling-parse cuts a printed line into several cells where the script direction or the font changes
(an Arabic line at each Latin word, a date at each slash). Cells that sit on the same baseline with
less than a word-and-a-bit between them are joined again into one `TextLine`; its text follows the
cells' content-stream order, which is the logical (reading) order for right-to-left lines too.
Table columns and page columns are further apart than that and stay separate lines.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from docling_core.types.doc import BoundingBox, CoordOrigin
from docling_core.types.doc.page import BoundingRectangle, SegmentedPdfPage, TextCell

BOLD_FONT = re.compile(r"bold|black|heavy|semibold|demi|CMBX|CMB\d|[-,](bd|b)$|\.B$", re.IGNORECASE)
SAME_LINE_OVERLAP = 0.5  # share of the smaller height two cells must share vertically to be on one line
JOIN_GAP = 0.8  # cells on one line closer than this many line heights are one line
TOUCHING_GAP = 0.05  # cells closer than this many line heights touch
WORD_SEARCH_LINES = 40  # lines starting above a word's centre searched for the one holding it (side-by-side columns)


@dataclass
class TextLine:
    """One visual line (one or more docling-parse cells), in top-left-origin points."""

    text: str
    left: float
    top: float
    right: float
    bottom: float
    bold_share: float  # share of the line's characters set in bold fonts
    cells: list[TextCell]
    label: str = "text"
    # Height of most of its words: a line's box grows with a superscript or a formula, its words' do not.
    font_height: float = 0.0
    # Read by OCR from a scan: no font, and a box height that varies by a tenth from line to line.
    from_ocr: bool = False

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def word_count(self) -> int:
        return len(self.text.split())

    def as_cell(self) -> TextCell:
        """The line as one text cell (its first cell's index and font), so that Docling, which joins a
        cluster's cells with spaces in index order, writes the line as joined here."""
        if len(self.cells) == 1:
            return self.cells[0]
        boxes = [cell.rect.to_bounding_box() for cell in self.cells]
        box = BoundingBox(
            l=min(box.l for box in boxes),
            t=min(box.t for box in boxes),
            r=max(box.r for box in boxes),
            b=max(box.b for box in boxes),
            coord_origin=boxes[0].coord_origin,
        )
        rect = BoundingRectangle.from_bounding_box(box)
        return self.cells[0].model_copy(update={"text": self.text, "orig": self.text, "rect": rect})


def is_bold_font(font_name: str) -> bool:
    """Whether a PDF font name (subset prefix "ABCDEF+" ignored) names a bold weight."""
    return bool(BOLD_FONT.search(font_name.split("+")[-1]))


def top_left_box(rect: BoundingRectangle, page_height: float) -> BoundingBox:
    box = rect.to_bounding_box()
    if box.coord_origin == CoordOrigin.BOTTOMLEFT:
        box = box.to_top_left_origin(page_height)
    return box


def cell_lines(cells: Iterable[TextCell], page_height: float) -> list[TextLine]:
    """One line per non-blank cell, its bold share from the cell's own font."""
    lines = []
    for cell in cells:
        if cell.text.strip():
            box = top_left_box(cell.rect, page_height)
            bold = float(is_bold_font(getattr(cell, "font_name", "")))  # OCR cells have no font
            height = box.b - box.t
            from_ocr = getattr(cell, "from_ocr", False)
            line = TextLine(cell.text.strip(), box.l, box.t, box.r, box.b, bold, [cell], font_height=height)
            line.from_ocr = from_ocr
            lines.append(line)
    return lines


def _vertical_overlap(line: TextLine, other: TextLine) -> float:
    return min(line.bottom, other.bottom) - max(line.top, other.top)


def _horizontal_gap(line: TextLine, other: TextLine) -> float:
    return max(line.left, other.left) - min(line.right, other.right)


def _is_right_to_left_letter(character: str) -> bool:
    return len(character) == 1 and unicodedata.bidirectional(character) in ("R", "AL")


def _cells_text(cells: Sequence[TextCell], height: float) -> str:
    """The cells' texts in content-stream order, joined with a space, except where two right-to-left
    letters meet across cells that touch: docling-parse cuts some Arabic words in two (a word space shows
    as a gap, or as a change of script as in "و Python")."""
    text, previous = "", None
    for cell in cells:
        piece = cell.text.strip()
        box = cell.rect.to_bounding_box()
        if previous is not None and piece:
            gap = max(box.l, previous.l) - min(box.r, previous.r)
            one_word = gap < TOUCHING_GAP * height and all(map(_is_right_to_left_letter, (text[-1:], piece[0])))
            text += "" if one_word else " "
        text += piece
        previous = box if piece else previous
    return text


def _joined(line: TextLine, other: TextLine) -> TextLine:
    cells = sorted(line.cells + other.cells, key=lambda cell: cell.index)
    characters = len(line.text) + len(other.text)
    longer = max(line, other, key=lambda fragment: len(fragment.text))
    return TextLine(
        font_height=longer.font_height,
        text=_cells_text(cells, max(line.height, other.height)),
        left=min(line.left, other.left),
        top=min(line.top, other.top),
        right=max(line.right, other.right),
        bottom=max(line.bottom, other.bottom),
        bold_share=(line.bold_share * len(line.text) + other.bold_share * len(other.text)) / characters,
        cells=cells,
        from_ocr=line.from_ocr or other.from_ocr,
    )


def join_visual_lines(fragments: Sequence[TextLine], join_gap: float = JOIN_GAP) -> list[TextLine]:
    """Joins fragments of one printed line (same baseline, close together); result sorted top to bottom."""
    lines: list[TextLine] = []
    for fragment in sorted(fragments, key=lambda line: (line.top, line.left)):
        partner = None
        for candidate in reversed(lines[-12:]):
            same_line = _vertical_overlap(fragment, candidate) >= SAME_LINE_OVERLAP * min(
                fragment.height, candidate.height
            )
            if same_line and _horizontal_gap(fragment, candidate) < join_gap * max(fragment.height, candidate.height):
                partner = candidate
                break
        if partner is None:
            lines.append(fragment)
        else:
            lines[lines.index(partner)] = _joined(partner, fragment)
    lines.sort(key=lambda line: (round(line.top), line.left))
    return lines


def _assign_word_styles(lines: list[TextLine], word_cells: Sequence[TextCell], page_height: float) -> None:
    # Line cells carry one font name; word cells show which words in it are bold, and how tall most
    # of its words are. Each word is counted on the line that contains its centre.
    characters = [0] * len(lines)
    bold_characters = [0] * len(lines)
    word_heights: list[Counter[float]] = [Counter() for _ in lines]
    tops = [line.top for line in lines]
    for word in word_cells:
        box = top_left_box(word.rect, page_height)
        centre_x, centre_y = (box.l + box.r) / 2, (box.t + box.b) / 2
        following = bisect.bisect_right(tops, centre_y)
        for index in range(max(0, following - WORD_SEARCH_LINES), min(len(lines), following + 2)):
            line = lines[index]
            if line.top - 1 <= centre_y <= line.bottom + 1 and line.left - 1 <= centre_x <= line.right + 1:
                characters[index] += len(word.text)
                word_heights[index][round(box.b - box.t, 1)] += len(word.text)
                if is_bold_font(word.font_name):
                    bold_characters[index] += len(word.text)
                break
    for index, line in enumerate(lines):
        if characters[index]:
            line.bold_share = bold_characters[index] / characters[index]
            line.font_height = word_heights[index].most_common(1)[0][0]


def page_lines(parsed_page: SegmentedPdfPage) -> list[TextLine]:
    """The page's visual lines, top to bottom, with their bold share and font height taken from the word cells."""
    page_height = parsed_page.dimension.height
    fragments = sorted(cell_lines(parsed_page.textline_cells, page_height), key=lambda line: line.top)
    _assign_word_styles(fragments, parsed_page.word_cells, page_height)
    return join_visual_lines(fragments)
