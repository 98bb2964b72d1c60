"""A Docling layout engine that reads page structure from the PDF's text layer, with no ML models.

It recovers section headers, paragraphs, list items, captions, tables, page headers/footers and
pictures from docling-parse's text cells, joined into visual lines (`textlines.py`):

- headings: a line in the PDF's own outline (bookmarks) on that page; otherwise a short line that
  reads like a title and whose words are set taller than the document's body text or bold in a
  non-bold body (body height and weight are counted over the document's pages so far, not fixed
  thresholds); a numbered line ("2.1 Scope", "A.2", "IV.") needs only a slightly larger or partly
  bold font; the first page's tallest line is the title, its other large regular-weight lines are
  a cover's authors and dates. A lone fragment (no two letters), a formula, a line ending like a
  sentence, a table-of-contents entry, a bulleted item, or a bold run starting in lower case never is;
- page furniture: page numbers, short lines in the outer bands, and any line in the outer bands
  that repeats one of an earlier page (same first words, digits aside, at the same height): running
  headers/footers; `move_running_furniture` then catches their first occurrence in the document;
- tables: runs of rows with short texts aligned in at least three columns (`tables.py`), emitted as
  table clusters that the text-layer table engine turns into cells;
- paragraphs and list items from gaps and indents, column by column: a line continues the block
  right above it in its own column, so side-by-side columns never interleave.

The result is a set of layout clusters, so Docling's own reading order, caption matching, list
processing and Markdown export do the rest.

Known limits: statistics grow page by page (the first pages of a document are judged by less text);
headings set in the body font without bold or a number are not found; tables with two columns or
without aligned cells stay paragraphs.
"""

from __future__ import annotations

import re
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from docling.datamodel.accelerator_options import AcceleratorOptions
from docling.datamodel.base_models import Cluster, LayoutPrediction, Page
from docling.datamodel.document import ConversionResult
from docling.datamodel.pipeline_options import BaseLayoutOptions
from docling.models.base_layout_model import BaseLayoutModel
from docling_core.types.doc import BoundingBox, ContentLayer, CoordOrigin, DocItemLabel, DoclingDocument, TextItem
from docling_core.types.doc.page import SegmentedPdfPage, TextCell

from ..text import words_only
from .tables import TextLayerTableModel, table_grid, visual_rows
from .textlines import TextLine, page_lines, top_left_box

# (left, top, right, bottom) in points, top-left origin.
BoxCoordinates = tuple[float, float, float, float]

BULLET = r"[•∞●▪◦‣⁃○■□►➢✓\-–—*·]"
LIST_MARKER = re.compile(rf"^\s*(?:{BULLET}|\(?\d{{1,2}}[.)]|\(?[a-z][.)])\s+")
BULLETED = re.compile(rf"^\s*{BULLET}\s+")
CAPTION_START = re.compile(
    r"^\s*(?:figure|fig\.|table|tab\.|listing|abbildung|figura|tabla|imagen|gráfico)\s*\d+[.:]?", re.IGNORECASE
)
PAGE_NUMBER = re.compile(r"(page|p\.|seite|página)?\s*\d+(\s*(/|of|de|von)\s*\d+)?", re.IGNORECASE)
# "1", "2.1", "2.1.3.", "A.2", "IV.", "Appendix B", "Chapter 3" followed by a title.
NUMBERED_HEADING = re.compile(
    r"^(?:\d{1,2}(?:\.\d{1,2}){0,4}\.?|[A-Z](?:\.\d{1,2}){1,3}\.?|[IVXL]{1,5}\.|"
    r"(?:appendix|annex|anexo|chapter|cap[ií]tulo|section|secci[oó]n|part|parte)\s+[\dA-Z]{1,3}[.:]?)\s+\S",
    re.IGNORECASE,
)
SENTENCE_END = (".", ",", ";")
TOC_ENTRY = re.compile(r"(?:\.\s?){4,}\s*[\divxlc]+$", re.IGNORECASE)  # "2.1 Scope . . . . 12"
# Markers Docling's ListMarkerProcessor recognises, plus "(" which opens "(a)"-style markers.
DOCLING_LIST_MARKERS = "-*+•·‣⁃("

DEFAULT_BODY_HEIGHT = 10.0
HEADING_HEIGHT_RATIO = 1.15  # a line this much taller than body text is a heading
NUMBERED_HEADING_HEIGHT_RATIO = 1.04  # a numbered line needs only this much
BOLD_HEADING_SHARE = 0.9  # a line this bold in a non-bold body is a heading
NUMBERED_BOLD_SHARE = 0.5
HEADING_MAX_WORDS = 20
HEADING_MIN_LETTER_SHARE = 0.5  # of its non-space characters: formulas and number rows are no headings
FURNITURE_BOTTOM_ZONE = 0.85  # page headers/footers live in these top and bottom bands (share of height)
FURNITURE_TOP_ZONE = 0.1
SHORT_FURNITURE_BOTTOM_ZONE = 0.93  # short lines count as furniture only in these narrower bands
SHORT_FURNITURE_TOP_ZONE = 0.05
SHORT_FURNITURE_MAX_WORDS = 3
OUTLINE_MATCH_MIN_SHARE = 0.5  # a line must hold at least this share of a bookmark's title to match it
REMEMBERED_DOCUMENTS = 4
FURNITURE_SIGNATURE_WORDS = 2
FURNITURE_POSITION_TOLERANCE = 4.0  # points: a running header sits at the same height on every page
OCR_HEADING_HEIGHT_RATIO = 1.3  # OCR boxes vary by a tenth: only a clearly taller line is a heading by height
OCR_HEADING_MAX_WIDTH = 0.8  # share of the page's text width a lone OCR line may fill to be a heading
GUTTER_MAX_CROSSING = 0.1  # share of a page's lines that may cross a column gutter (titles, full-width figures)
GUTTER_MIN_SIDE = 0.2  # share of the lines each page column holds at least
GUTTER_MIN_FILL = 0.5  # most of a page column's text is in lines that fill at least this share of its width

DOCLING_LABELS = {
    "text": DocItemLabel.TEXT,
    "section_header": DocItemLabel.SECTION_HEADER,
    "list_item": DocItemLabel.LIST_ITEM,
    "caption": DocItemLabel.CAPTION,
    "page_header": DocItemLabel.PAGE_HEADER,
    "page_footer": DocItemLabel.PAGE_FOOTER,
    "table": DocItemLabel.TABLE,
}


def furniture_signature(text: str, top: float) -> tuple[str, int]:
    """A running header/footer's identity across pages: its first words (page numbers and chapter titles
    vary, "Chapter #" does not) and its height on the page."""
    words = re.sub(r"\d+", "#", words_only(text)).split()
    return " ".join(words[:FURNITURE_SIGNATURE_WORDS]), round(top / FURNITURE_POSITION_TOLERANCE)


@dataclass(frozen=True)
class BodyStatistics:
    body_height: float
    body_is_bold: bool


@dataclass
class DocumentState:
    """What the engine has learnt about one document from its pages so far, and its outline."""

    outline_titles: dict[int | None, list[str]] = field(default_factory=dict)  # page number -> titles
    characters_by_height: Counter[float] = field(default_factory=Counter)
    characters: int = 0
    bold_characters: float = 0.0
    band_signatures: dict[tuple[str, int], set[int]] = field(default_factory=dict)  # -> pages it is in a band of
    first_page: int | None = None
    title_height: float = 0.0  # the tallest heading-like line on the first page: the document's title

    def start_page(self, lines: Sequence[TextLine], page_no: int) -> None:
        if self.first_page is None:
            self.first_page = page_no
            heights = [line.font_height for line in lines if reads_like_heading(line.text)]
            self.title_height = max(heights, default=0.0)

    def add_lines(self, lines: Sequence[TextLine]) -> None:
        for line in lines:
            self.characters_by_height[round(line.font_height, 1)] += len(line.text)
            self.characters += len(line.text)
            self.bold_characters += line.bold_share * len(line.text)

    def statistics(self) -> BodyStatistics:
        if not self.characters_by_height:
            return BodyStatistics(DEFAULT_BODY_HEIGHT, False)
        body_height = self.characters_by_height.most_common(1)[0][0]
        return BodyStatistics(body_height, self.bold_characters / self.characters > 0.5)

    def in_outline(self, text: str, page_no: int) -> bool:
        """Whether the line is (most of) a bookmark title that points at this page or the next one."""
        line = words_only(text)
        if len(line) < 2:
            return False
        titles = [title for page in (page_no, page_no + 1, None) for title in self.outline_titles.get(page, [])]
        return any(line in title and len(line) >= OUTLINE_MATCH_MIN_SHARE * len(title) for title in titles)

    def is_running_furniture(self, line: TextLine, page_no: int) -> bool:
        pages = self.band_signatures.get(furniture_signature(line.text, line.top), set())
        return bool(pages - {page_no})

    def remember_band_line(self, line: TextLine, page_no: int) -> None:
        self.band_signatures.setdefault(furniture_signature(line.text, line.top), set()).add(page_no)


def outline_titles(conv_res: ConversionResult) -> dict[int | None, list[str]]:
    """The PDF's bookmarks by target page (None: no page), as Docling's backend read them."""
    titles: dict[int | None, list[str]] = {}
    for item in conv_res._pdf_outline or []:
        titles.setdefault(item.page_no, []).append(words_only(item.title))
    return titles


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


def _in_outer_band(line: TextLine, page_height: float, bottom_zone: float, top_zone: float) -> bool:
    return line.top > page_height * bottom_zone or line.bottom < page_height * top_zone


def _is_page_furniture(line: TextLine, page_height: float, page_no: int, state: DocumentState) -> bool:
    if not _in_outer_band(line, page_height, FURNITURE_BOTTOM_ZONE, FURNITURE_TOP_ZONE):
        return False
    is_page_number = PAGE_NUMBER.fullmatch(line.text.strip()) is not None
    is_short_at_edge = line.word_count <= SHORT_FURNITURE_MAX_WORDS and _in_outer_band(
        line, page_height, SHORT_FURNITURE_BOTTOM_ZONE, SHORT_FURNITURE_TOP_ZONE
    )
    return is_page_number or is_short_at_edge or state.is_running_furniture(line, page_no)


def reads_like_heading(text: str) -> bool:
    letters = sum(character.isalpha() for character in text)
    return (
        letters >= 2
        and letters >= HEADING_MIN_LETTER_SHARE * len(re.sub(r"^[\d.\s]+|\s", "", text))  # section number aside
        and "=" not in text  # a displayed formula
        and len(text.split()) <= HEADING_MAX_WORDS
        and not text.endswith(SENTENCE_END)
        and not TOC_ENTRY.search(text)
        and not BULLETED.match(text)  # a list item in bold
    )


def _continues_sentence(text: str) -> bool:
    return text[:1].islower() or text.endswith(":")


def is_heading(line: TextLine, stats: BodyStatistics, page_no: int, state: DocumentState) -> bool:
    text = line.text.strip()
    if state.in_outline(text, page_no):
        return True
    if not reads_like_heading(text):
        return False
    height_ratio = line.font_height / stats.body_height
    if line.from_ocr:  # a scan: no fonts, and heights only when clearly taller (see `lone_ocr_headings`)
        is_numbered = NUMBERED_HEADING.match(text) is not None
        return not _continues_sentence(text) and (height_ratio >= OCR_HEADING_HEIGHT_RATIO or is_numbered)
    bold_share = 0.0 if stats.body_is_bold else line.bold_share
    is_numbered = NUMBERED_HEADING.match(text) is not None
    on_first_page = page_no == state.first_page
    if on_first_page and line.font_height >= state.title_height - 0.5 and height_ratio >= NUMBERED_HEADING_HEIGHT_RATIO:
        return True  # the title
    # Large lines in a regular weight on the first page are a cover's authors, dates and slogans.
    is_cover_line = on_first_page and bold_share < NUMBERED_BOLD_SHARE and not is_numbered
    if height_ratio >= HEADING_HEIGHT_RATIO and not is_cover_line:
        return True
    # A bold run that starts in lower case or ends with a colon belongs to a sentence.
    if _continues_sentence(text):
        return False
    return bold_share > BOLD_HEADING_SHARE or (
        is_numbered and (height_ratio >= NUMBERED_HEADING_HEIGHT_RATIO or bold_share >= NUMBERED_BOLD_SHARE)
    )


def classify_line(line: TextLine, stats: BodyStatistics, page: tuple[int, float], state: DocumentState) -> str:
    """The line's label: page_header/page_footer, caption, section_header, list_item or text."""
    page_no, page_height = page
    text = line.text.strip()
    if _is_page_furniture(line, page_height, page_no, state):
        return "page_footer" if line.top > page_height / 2 else "page_header"
    if CAPTION_START.match(text):
        return "caption"
    if is_heading(line, stats, page_no, state):
        return "section_header"
    if LIST_MARKER.match(text):
        return "list_item"
    return "text"


def _is_close_below(line: TextLine, previous: TextLine, body_height: float) -> bool:
    gap = line.top - previous.bottom
    overlaps = min(line.right, previous.right) - max(line.left, previous.left) > 0
    return overlaps and -0.5 * line.height < gap < max(0.9 * body_height, 0.8 * previous.height)


def _starts_new_block(line: TextLine, block: LayoutBlock, body_height: float) -> bool:
    previous = block.lines[-1]
    if line.label == "text":
        if block.label == "text":
            # A first-line indent starts a new paragraph.
            block_left = min(block_line.left for block_line in block.lines)
            return line.left > block_left + 0.8 * body_height and line.left > previous.left + 1
        if block.label == "list_item":
            # Continuation lines are indented under the bullet; a line back at the margin is new.
            return line.left < block.lines[0].left + 1
        # Text runs on in a caption; headers and page furniture end where body text begins.
        return block.label != "caption"
    same_heading = line.label == block.label == "section_header" and abs(line.font_height - previous.font_height) < 0.5
    return not same_heading


def group_blocks(lines: Sequence[TextLine], body_height: float) -> list[LayoutBlock]:
    """Merges labelled lines into paragraphs, list items, captions and headings, column by column: a line
    joins the block whose last line sits right above it, so side-by-side columns stay apart."""
    blocks: list[LayoutBlock] = []
    for line in lines:
        above = [block for block in blocks[-8:] if _is_close_below(line, block.lines[-1], body_height)]
        block = min(above, key=lambda block: line.top - block.lines[-1].bottom, default=None)
        if block is None or _starts_new_block(line, block, body_height):
            blocks.append(block := LayoutBlock(line.label))
        block.lines.append(line)
    return blocks


def table_blocks(lines: Sequence[TextLine]) -> list[LayoutBlock]:
    """Runs of consecutive rows with several short texts that align into a table grid."""
    tables = []
    run: list[list[TextLine]] = []
    for row in [*visual_rows(lines), []]:
        if len(row) >= 2 or (run and row and _continues_run(row[0], run[-1])):
            run.append(row)
            continue
        table_lines = [line for run_row in run for line in run_row]
        if table_lines and table_grid(table_lines).looks_like_table():
            tables.append(LayoutBlock("table", table_lines))
        run = [row] if len(row) >= 2 else []
    return tables


def _gutter_quality(lines: Sequence[TextLine], x: float) -> tuple[int, int] | None:
    """(lines crossing x, imbalance) when x separates two columns of running text, else None."""
    left = [line for line in lines if line.right <= x]
    right = [line for line in lines if line.left >= x]
    crossing = len(lines) - len(left) - len(right)
    if crossing > GUTTER_MAX_CROSSING * len(lines) or min(len(left), len(right)) < GUTTER_MIN_SIDE * len(lines):
        return None
    for side in (left, right):
        extent = max(line.right for line in side) - min(line.left for line in side)
        filling = sum(len(line.text) for line in side if line.right - line.left >= GUTTER_MIN_FILL * extent)
        if filling < 0.5 * sum(len(line.text) for line in side):
            return None  # a side of mostly short texts: the columns of a table, not of the page
    return crossing, abs(len(left) - len(right))


def page_columns(lines: Sequence[TextLine], depth: int = 2) -> list[list[TextLine]]:
    """The lines split at the page's column gutters (vertical gaps that only a few full-width lines, such as
    a title, cross); lines that cross a gutter belong to no column."""
    candidates = {round(line.right + 1) for line in lines}
    scored = [(quality, x) for x in candidates if (quality := _gutter_quality(lines, x)) is not None]
    if not scored or depth == 0:
        return [list(lines)]
    x = min(scored)[1]
    left = [line for line in lines if line.right <= x]
    right = [line for line in lines if line.left >= x]
    return page_columns(left, depth - 1) + page_columns(right, depth - 1)


def _continues_run(line: TextLine, previous_row: list[TextLine]) -> bool:
    return line.top - max(other.bottom for other in previous_row) < 0.6 * line.height


def picture_boxes(parsed_page: SegmentedPdfPage) -> list[BoxCoordinates]:
    """Boxes of the page's embedded bitmaps, which become picture clusters."""
    page_height = parsed_page.dimension.height
    boxes = []
    for bitmap in parsed_page.bitmap_resources:
        box = top_left_box(bitmap.rect, page_height)
        boxes.append((box.l, box.t, box.r, box.b))
    return boxes


def _normalise_bullet(line: TextLine) -> None:
    # Docling's ListMarkerProcessor only knows [-*+•·‣⁃]; symbol-font bullets decode as e.g. '∞'
    # (SymbolMT), so they are rewritten as '•' for Docling to recognise the list item.
    text = line.text
    if text[:1] and not text[0].isalnum() and text[0] not in DOCLING_LIST_MARKERS and text[1:2] == " ":
        line.text = "•" + text[1:]
        line.cells[0].text = line.cells[0].orig = line.text


def _cluster(cluster_id: int, label: DocItemLabel, box: BoxCoordinates, cells: list[TextCell]) -> Cluster:
    left, top, right, bottom = box
    return Cluster(
        id=cluster_id,
        label=label,
        bbox=BoundingBox(l=left, t=top, r=right, b=bottom, coord_origin=CoordOrigin.TOPLEFT),
        confidence=1.0,
        cells=cells,
    )


def page_blocks(lines: list[TextLine], page: tuple[int, float], state: DocumentState) -> list[LayoutBlock]:
    """The page's blocks: tables first, then the other lines labelled and grouped. Updates `state`."""
    page_no, page_height = page
    stats = state.statistics()
    state.start_page(lines, page_no)
    for line in lines:
        line.label = classify_line(line, stats, page, state)
    for line in lines:
        if _in_outer_band(line, page_height, FURNITURE_BOTTOM_ZONE, FURNITURE_TOP_ZONE):
            state.remember_band_line(line, page_no)
    body = [line for line in lines if line.label in ("text", "list_item", "caption")]
    tables = [table for column in page_columns(body) for table in table_blocks(column)]
    in_tables = {id(line) for table in tables for line in table.lines}
    rest = [line for line in lines if id(line) not in in_tables]
    blocks = group_blocks(rest, stats.body_height)
    lone_ocr_headings(blocks)
    return tables + blocks


def lone_ocr_headings(blocks: Sequence[LayoutBlock]) -> None:
    """On a scan, a heading set bold or slightly larger looks like body text to OCR; what still shows it is
    that it stands alone: a one-line block, set apart by paragraph gaps, that reads like a title, starts
    with a capital and leaves much of the line empty."""
    ocr_lines = [block.lines[0] for block in blocks if block.lines[0].from_ocr]
    if not ocr_lines:
        return
    text_left = min(line.left for line in ocr_lines)
    text_width = max(line.right for line in ocr_lines) - text_left
    for block in blocks:
        line = block.lines[0]
        if block.label == "text" and len(block.lines) == 1 and line.from_ocr:
            text = line.text.strip()
            short = line.right - text_left < OCR_HEADING_MAX_WIDTH * text_width
            if short and text[:1].isupper() and reads_like_heading(text) and not _continues_sentence(text):
                block.label = line.label = "section_header"


def _page_clusters(parsed_page: SegmentedPdfPage, blocks: list[LayoutBlock]) -> list[Cluster]:
    clusters = []
    for block in blocks:
        if block.label == "list_item":
            _normalise_bullet(block.lines[0])
        cells = [cell for line in block.lines for cell in line.cells]
        clusters.append(_cluster(len(clusters), DOCLING_LABELS[block.label], block.box, cells))
    for box in picture_boxes(parsed_page):
        clusters.append(_cluster(len(clusters), DocItemLabel.PICTURE, box, []))
    return clusters


class FontLayoutOptions(BaseLayoutOptions):
    """Selects the font-heuristics layout engine in `PdfPipelineOptions.layout_options`."""

    kind: ClassVar[str] = "newsllm_font_heuristics"


class FontLayoutModel(BaseLayoutModel):
    """Layout clusters from the outline, font heights, bold fonts, alignment, gaps and indents of the PDF's
    text cells."""

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
        self._documents: OrderedDict[int, DocumentState] = OrderedDict()

    @classmethod
    def get_options_type(cls) -> type[BaseLayoutOptions]:
        return FontLayoutOptions

    def _state(self, conv_res: ConversionResult, pages: Sequence[Page]) -> DocumentState:
        # Pages of one document arrive in order, batch after batch, on the layout stage's one thread. A
        # batch holding the document's first page starts afresh (a new result may reuse a freed one's id).
        key = id(conv_res)
        if key not in self._documents or (conv_res.pages and pages and pages[0] is conv_res.pages[0]):
            self._documents[key] = DocumentState(outline_titles=outline_titles(conv_res))
            while len(self._documents) > REMEMBERED_DOCUMENTS:
                self._documents.popitem(last=False)
        return self._documents[key]

    def predict_layout(self, conv_res: ConversionResult, pages: Sequence[Page]) -> Sequence[LayoutPrediction]:
        state = self._state(conv_res, pages)
        lines_by_page = [page_lines(page.parsed_page) if page.parsed_page is not None else [] for page in pages]
        for lines in lines_by_page:
            state.add_lines(lines)
        predictions = []
        for page, lines in zip(pages, lines_by_page, strict=True):
            if page.parsed_page is None:
                predictions.append(LayoutPrediction())
                continue
            # The layout postprocessor assigns the page's cells to clusters: give it the joined lines.
            for line in lines:
                line.cells = [line.as_cell()]
            page.parsed_page.textline_cells = [line.cells[0] for line in lines]
            blocks = page_blocks(lines, (page.page_no, page.parsed_page.dimension.height), state)
            predictions.append(LayoutPrediction(clusters=_page_clusters(page.parsed_page, blocks)))
        return predictions


def _band_position(item: TextItem, document: DoclingDocument) -> tuple[int, float, float] | None:
    """(page number, top, page height) of a text item, in top-left-origin points."""
    if not item.prov or item.prov[0].page_no not in document.pages:
        return None
    page_no = item.prov[0].page_no
    size = document.pages[page_no].size
    box = item.prov[0].bbox.to_top_left_origin(size.height)
    return page_no, box.t, size.height


def move_running_furniture(document: DoclingDocument) -> int:
    """Moves body text that repeats a page header or footer of another page (same first words, same height
    on the page) to the furniture layer; returns how many items moved. The layout engine sees a running
    header only from its second page on: this catches the first occurrence too."""
    pages_by_signature: dict[tuple[str, int], set[int]] = {}
    for item in document.texts:
        if item.label in (DocItemLabel.PAGE_HEADER, DocItemLabel.PAGE_FOOTER) and (
            position := _band_position(item, document)
        ):
            pages_by_signature.setdefault(furniture_signature(item.text, position[1]), set()).add(position[0])
    moved = 0
    for item in document.texts:
        if item.content_layer != ContentLayer.BODY or not (position := _band_position(item, document)):
            continue
        page_no, top, page_height = position
        in_band = top > page_height * FURNITURE_BOTTOM_ZONE or top < page_height * FURNITURE_TOP_ZONE
        if in_band and pages_by_signature.get(furniture_signature(item.text, top), set()) - {page_no}:
            item.content_layer = ContentLayer.FURNITURE
            moved += 1
    return moved


def layout_engines() -> dict:
    """Docling plugin hook, found through the `docling` entry-point group (`newsllm_layout` in pyproject)."""
    return {"layout_engines": [FontLayoutModel]}


def table_structure_engines() -> dict:
    """Docling plugin hook for the text-layer table engine that fills this engine's table clusters."""
    return {"table_structure_engines": [TextLayerTableModel]}
