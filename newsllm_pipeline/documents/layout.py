"""A Docling layout engine that reads page structure from the PDF's text layer, with no ML models.

It recovers section headers, paragraphs, list items, captions, page headers/footers and pictures
from docling-parse's text cells: each line's font height against the body height (the most common
one), the share of its words set in bold fonts, the gaps between lines and their indents. The
result is a set of layout clusters, so Docling's own reading order, caption matching, list
processing and Markdown export do the rest.

Known limits:
- Lines are merged only when they overlap horizontally, which assumes one column per block;
  columns stay separate clusters and their order is left to Docling's reading-order model.
- No tables: their cells come out as paragraphs.
- Side-by-side text boxes, and right-to-left lines that docling-parse splits at Latin words,
  are not handled yet.
- Body statistics are computed per page batch (the pipeline's `layout_batch_size`), not per
  document.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from docling.datamodel.accelerator_options import AcceleratorOptions
from docling.datamodel.base_models import Cluster, LayoutPrediction, Page
from docling.datamodel.document import ConversionResult
from docling.datamodel.pipeline_options import BaseLayoutOptions
from docling.models.base_layout_model import BaseLayoutModel
from docling_core.types.doc import BoundingBox, CoordOrigin, DocItemLabel
from docling_core.types.doc.page import BoundingRectangle, SegmentedPdfPage, TextCell

# (left, top, right, bottom) in points, top-left origin.
BoxCoordinates = tuple[float, float, float, float]

BOLD_FONT = re.compile(r"bold|black|heavy|semibold|demi|CMBX|CMB\d|[-,](bd|b)$|\.B$", re.IGNORECASE)
LIST_MARKER = re.compile(r"^\s*(?:[•∞●▪◦‣⁃○■□►➢✓\-–—*·]|\(?\d{1,2}[.)]|\(?[a-z][.)])\s+")
CAPTION_START = re.compile(
    r"^\s*(?:figure|fig\.|table|tab\.|abbildung|figura|tabla|imagen|gráfico)\s*\d+[.:]?", re.IGNORECASE
)
PAGE_NUMBER = re.compile(r"(page|p\.|seite|página)?\s*\d+(\s*(/|of|de|von)\s*\d+)?", re.IGNORECASE)
# Markers Docling's ListMarkerProcessor recognises, plus "(" which opens "(a)"-style markers.
DOCLING_LIST_MARKERS = "-*+•·‣⁃("

DEFAULT_BODY_HEIGHT = 10.0
HEADING_HEIGHT_RATIO = 1.15  # a line this much taller than body text is a heading
BOLD_HEADING_SHARE = 0.9  # a line this bold in a non-bold body is a heading
HEADING_MAX_WORDS = 20
FURNITURE_BOTTOM_ZONE = 0.85  # page headers/footers live in these top and bottom bands (share of height)
FURNITURE_TOP_ZONE = 0.08
SHORT_FURNITURE_BOTTOM_ZONE = 0.93  # short lines count as furniture only in these narrower bands
SHORT_FURNITURE_TOP_ZONE = 0.05
SHORT_FURNITURE_MAX_WORDS = 3

DOCLING_LABELS = {
    "text": DocItemLabel.TEXT,
    "section_header": DocItemLabel.SECTION_HEADER,
    "list_item": DocItemLabel.LIST_ITEM,
    "caption": DocItemLabel.CAPTION,
    "page_header": DocItemLabel.PAGE_HEADER,
    "page_footer": DocItemLabel.PAGE_FOOTER,
}


@dataclass
class TextLine:
    """One docling-parse text line, in top-left-origin points."""

    text: str
    left: float
    top: float
    right: float
    bottom: float
    height: float
    bold_share: float  # share of the line's characters set in bold fonts
    font_name: str
    cell: TextCell
    label: str = "text"


@dataclass
class LayoutBlock:
    """Consecutive lines that become one Docling cluster."""

    label: str
    lines: list[TextLine] = field(default_factory=list)

    @property
    def box(self) -> BoxCoordinates:
        return (
            min(line.left for line in self.lines),
            min(line.top for line in self.lines),
            max(line.right for line in self.lines),
            max(line.bottom for line in self.lines),
        )


@dataclass(frozen=True)
class BodyStatistics:
    body_height: float
    body_is_bold: bool


def is_bold_font(font_name: str) -> bool:
    """Whether a PDF font name (subset prefix "ABCDEF+" ignored) names a bold weight."""
    return bool(BOLD_FONT.search(font_name.split("+")[-1]))


def _top_left_box(rect: BoundingRectangle, page_height: float) -> BoundingBox:
    box = rect.to_bounding_box()
    if box.coord_origin == CoordOrigin.BOTTOMLEFT:
        box = box.to_top_left_origin(page_height)
    return box


def page_lines(parsed_page: SegmentedPdfPage) -> list[TextLine]:
    """The page's non-blank text lines, top to bottom, with their bold share taken from the word cells."""
    page_height = parsed_page.dimension.height
    lines = []
    for cell in parsed_page.textline_cells:
        if not cell.text.strip():
            continue
        box = _top_left_box(cell.rect, page_height)
        lines.append(TextLine(cell.text, box.l, box.t, box.r, box.b, abs(box.b - box.t), 0.0, cell.font_name, cell))
    lines.sort(key=lambda line: (round(line.top, 0), line.left))
    _assign_bold_shares(lines, parsed_page.word_cells, page_height)
    return lines


def _assign_bold_shares(lines: list[TextLine], word_cells: Sequence[TextCell], page_height: float) -> None:
    # Line cells carry one font name; word cells show which words in it are bold. Each word is
    # counted on the line that contains its centre.
    characters = [0] * len(lines)
    bold_characters = [0] * len(lines)
    tops = [line.top for line in lines]
    for word in word_cells:
        box = _top_left_box(word.rect, page_height)
        centre_x, centre_y = (box.l + box.r) / 2, (box.t + box.b) / 2
        following = bisect.bisect_right(tops, centre_y)
        for index in range(max(0, following - 3), min(len(lines), following + 2)):
            line = lines[index]
            if line.top - 1 <= centre_y <= line.bottom + 1 and line.left - 1 <= centre_x <= line.right + 1:
                characters[index] += len(word.text)
                if is_bold_font(word.font_name):
                    bold_characters[index] += len(word.text)
                break
    for index, line in enumerate(lines):
        if characters[index]:
            line.bold_share = bold_characters[index] / characters[index]
        else:
            line.bold_share = float(is_bold_font(line.font_name))


def body_statistics(lines: Sequence[TextLine]) -> BodyStatistics:
    """The body text's height (the most common one, weighted by characters) and whether it is bold."""
    characters_by_height: Counter[float] = Counter()
    bold_characters = 0.0
    characters = 0
    for line in lines:
        characters_by_height[round(line.height, 1)] += len(line.text)
        bold_characters += line.bold_share * len(line.text)
        characters += len(line.text)
    body_height = characters_by_height.most_common(1)[0][0] if characters_by_height else DEFAULT_BODY_HEIGHT
    return BodyStatistics(body_height, (bold_characters / characters if characters else 0) > 0.5)


def _is_page_furniture(line: TextLine, word_count: int, page_height: float) -> bool:
    in_band = line.top > page_height * FURNITURE_BOTTOM_ZONE or line.bottom < page_height * FURNITURE_TOP_ZONE
    in_narrow_band = (
        line.top > page_height * SHORT_FURNITURE_BOTTOM_ZONE or line.bottom < page_height * SHORT_FURNITURE_TOP_ZONE
    )
    is_page_number = PAGE_NUMBER.fullmatch(line.text.strip()) is not None
    return in_band and (is_page_number or (word_count <= SHORT_FURNITURE_MAX_WORDS and in_narrow_band))


def classify_line(line: TextLine, stats: BodyStatistics, page_height: float) -> str:
    """The line's label: page_header/page_footer, caption, section_header, list_item or text."""
    text = line.text.strip()
    word_count = len(text.split())
    if _is_page_furniture(line, word_count, page_height):
        return "page_footer" if line.top > page_height / 2 else "page_header"
    if CAPTION_START.match(text):
        return "caption"
    is_taller = line.height >= stats.body_height * HEADING_HEIGHT_RATIO
    is_bolder = line.bold_share > BOLD_HEADING_SHARE and not stats.body_is_bold
    reads_like_heading = (
        word_count <= HEADING_MAX_WORDS and not text.endswith((".", ",", ";")) and any(ch.isalpha() for ch in text)
    )
    if (is_taller or is_bolder) and reads_like_heading:
        return "section_header"
    if LIST_MARKER.match(text):
        return "list_item"
    return "text"


def _starts_new_block(line: TextLine, previous: TextLine, block: LayoutBlock, body_height: float) -> bool:
    gap = line.top - previous.bottom
    overlaps = min(line.right, previous.right) - max(line.left, previous.left) > 0
    is_close = overlaps and gap < max(0.9 * body_height, 0.8 * previous.height)
    if line.label == "text" and is_close:
        if block.label == "text":
            # A first-line indent starts a new paragraph.
            block_left = min(block_line.left for block_line in block.lines)
            return line.left > block_left + 0.8 * body_height and line.left > previous.left + 1
        if block.label == "list_item":
            # Continuation lines are indented under the bullet; a line back at the margin is new.
            return line.left < block.lines[0].left + 1
        # Text runs on in a caption; headers and page furniture end where body text begins.
        return block.label != "caption"
    is_heading_continuation = (
        line.label == "section_header"
        and block.label == "section_header"
        and is_close
        and abs(line.height - previous.height) < 0.5
    )
    return not is_heading_continuation


def group_blocks(lines: Sequence[TextLine], stats: BodyStatistics, page_height: float) -> list[LayoutBlock]:
    """Labels each line and merges neighbouring lines into paragraphs, list items, captions and headings."""
    blocks: list[LayoutBlock] = []
    previous: TextLine | None = None
    for line in lines:
        line.label = classify_line(line, stats, page_height)
        if previous is None or _starts_new_block(line, previous, blocks[-1], stats.body_height):
            blocks.append(LayoutBlock(line.label))
        blocks[-1].lines.append(line)
        previous = line
    return blocks


def picture_boxes(parsed_page: SegmentedPdfPage) -> list[BoxCoordinates]:
    """Boxes of the page's embedded bitmaps, which become picture clusters."""
    page_height = parsed_page.dimension.height
    boxes = []
    for bitmap in parsed_page.bitmap_resources:
        box = _top_left_box(bitmap.rect, page_height)
        boxes.append((box.l, box.t, box.r, box.b))
    return boxes


def _normalise_bullet(cell: TextCell) -> None:
    # Docling's ListMarkerProcessor only knows [-*+•·‣⁃]; symbol-font bullets decode as e.g. '∞'
    # (SymbolMT), so they are rewritten as '•' for Docling to recognise the list item.
    text = cell.text.lstrip()
    if text[:1] and not text[0].isalnum() and text[0] not in DOCLING_LIST_MARKERS and text[1:2] == " ":
        cell.text = "•" + text[1:]
        cell.orig = cell.text


def _cluster(cluster_id: int, label: DocItemLabel, box: BoxCoordinates, cells: list[TextCell]) -> Cluster:
    left, top, right, bottom = box
    return Cluster(
        id=cluster_id,
        label=label,
        bbox=BoundingBox(l=left, t=top, r=right, b=bottom, coord_origin=CoordOrigin.TOPLEFT),
        confidence=1.0,
        cells=cells,
    )


def _page_clusters(parsed_page: SegmentedPdfPage, lines: list[TextLine], stats: BodyStatistics) -> list[Cluster]:
    clusters = []
    for block in group_blocks(lines, stats, parsed_page.dimension.height):
        if block.label == "list_item":
            _normalise_bullet(block.lines[0].cell)
        cells = [line.cell for line in block.lines]
        clusters.append(_cluster(len(clusters), DOCLING_LABELS[block.label], block.box, cells))
    for box in picture_boxes(parsed_page):
        clusters.append(_cluster(len(clusters), DocItemLabel.PICTURE, box, []))
    return clusters


class FontLayoutOptions(BaseLayoutOptions):
    """Selects the font-heuristics layout engine in `PdfPipelineOptions.layout_options`."""

    kind: ClassVar[str] = "newsllm_font_heuristics"


class FontLayoutModel(BaseLayoutModel):
    """Layout clusters from font heights, bold fonts, gaps and indents of the PDF's text cells."""

    # Docling's layout postprocessor reassigns the page cells to our boxes, resolves overlaps and
    # turns cells we left out into orphan clusters.
    requires_layout_postprocessing = True

    def __init__(
        self,
        options: FontLayoutOptions,
        artifacts_path: Path | None = None,
        accelerator_options: AcceleratorOptions | None = None,
        enable_remote_services: bool = False,
        **kwargs: object,
    ) -> None:
        # The layout factory passes model paths and accelerator settings; heuristics need neither.
        self.options = options

    @classmethod
    def get_options_type(cls) -> type[BaseLayoutOptions]:
        return FontLayoutOptions

    def predict_layout(self, conv_res: ConversionResult, pages: Sequence[Page]) -> Sequence[LayoutPrediction]:
        # The pipeline hands pages over in batches of layout_batch_size, so statistics are per batch.
        lines_by_page = [page_lines(page.parsed_page) if page.parsed_page is not None else [] for page in pages]
        stats = body_statistics([line for lines in lines_by_page for line in lines])
        return [
            LayoutPrediction(
                clusters=_page_clusters(page.parsed_page, lines, stats) if page.parsed_page is not None else []
            )
            for page, lines in zip(pages, lines_by_page, strict=True)
        ]


def layout_engines() -> dict:
    """Docling plugin hook, found through the `docling` entry-point group (`newsllm_layout` in pyproject)."""
    return {"layout_engines": [FontLayoutModel]}
