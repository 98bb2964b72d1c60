"""Tables from the PDF's text layer, with no ML model: a grid of aligned text lines, and a Docling
table-structure engine that turns each table cluster of the layout engine into Docling's table cells,
so the Markdown export writes a Markdown table and the dataset sees one.

The grid: columns are the x-ranges that the table's lines cover (lines whose x-ranges overlap share a
column), rows are the visual lines (lines that share a baseline band). A row with a single line right
under a fuller row, or a row whose texts all start in lower case, continues the cells above it (a header or
a name wrapped over two lines).

Known limits: spanning cells (a header over two columns) merge the columns they span; cells wrapped
onto a new line in several columns at once start a new row.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from docling.datamodel.accelerator_options import AcceleratorOptions
from docling.datamodel.base_models import Page, Table, TableStructurePrediction
from docling.datamodel.document import ConversionResult
from docling.datamodel.pipeline_options import BaseTableStructureOptions
from docling.models.base_table_model import BaseTableStructureModel
from docling_core.types.doc import BoundingBox, CoordOrigin, DocItemLabel, TableCell

from .textlines import SAME_LINE_OVERLAP, TextLine, cell_lines, join_visual_lines

MIN_COLUMNS = 3  # two aligned columns are as often a form or a two-column page as a table
MIN_FULL_ROWS = 3  # rows with text in at least two columns
MAX_MEDIAN_CELL_WORDS = 6  # table cells are short; columns of running text are not a table
CONTINUATION_GAP = 0.6  # a lone line closer than this many line heights under a row continues it
CELL_JOIN_GAP = 0.3  # inside a table, only fragments a word space apart are one cell's text


@dataclass
class GridCell:
    row: int
    column: int
    lines: list[TextLine]

    @property
    def text(self) -> str:
        return " ".join(line.text for line in self.lines)


@dataclass
class TableGrid:
    num_rows: int
    num_columns: int
    cells: list[GridCell]

    @property
    def full_rows(self) -> int:
        """Rows with text in at least two columns."""
        columns_by_row: dict[int, int] = {}
        for cell in self.cells:
            columns_by_row[cell.row] = columns_by_row.get(cell.row, 0) + 1
        return sum(count >= 2 for count in columns_by_row.values())

    def looks_like_table(self) -> bool:
        words = [len(cell.text.split()) for cell in self.cells]
        return (
            self.num_columns >= MIN_COLUMNS
            and self.full_rows >= MIN_FULL_ROWS
            and statistics.median(words) <= MAX_MEDIAN_CELL_WORDS
        )


def column_ranges(lines: Sequence[TextLine]) -> list[tuple[float, float]]:
    """Left-to-right x-ranges covered by the lines, overlapping ranges merged into one column."""
    columns: list[list[float]] = []
    for line in sorted(lines, key=lambda line: line.left):
        if columns and line.left < columns[-1][1]:
            columns[-1][1] = max(columns[-1][1], line.right)
        else:
            columns.append([line.left, line.right])
    return [(left, right) for left, right in columns]


def visual_rows(lines: Sequence[TextLine]) -> list[list[TextLine]]:
    """Lines grouped into rows that share a baseline band, top to bottom."""
    rows: list[list[TextLine]] = []
    for line in sorted(lines, key=lambda line: line.top):
        if rows and _shares_band(line, rows[-1]):
            rows[-1].append(line)
        else:
            rows.append([line])
    return rows


def _shares_band(line: TextLine, row: list[TextLine]) -> bool:
    top, bottom = min(other.top for other in row), max(other.bottom for other in row)
    return min(line.bottom, bottom) - max(line.top, top) >= SAME_LINE_OVERLAP * line.height


def _continues(row: list[TextLine], previous: list[TextLine]) -> bool:
    """A lone line, or lines that all start in lower case, right under a row: text wrapped inside its cells."""
    gap = min(line.top for line in row) - max(line.bottom for line in previous)
    wrapped = len(row) == 1 and len(previous) >= 2 or all(line.text[:1].islower() for line in row)
    return wrapped and gap < CONTINUATION_GAP * max(line.height for line in row)


def table_grid(lines: Sequence[TextLine]) -> TableGrid:
    columns = column_ranges(lines)
    cells: dict[tuple[int, int], GridCell] = {}
    row_index, previous = -1, None
    for row in visual_rows(lines):
        if previous is None or not _continues(row, previous):
            row_index += 1
        for line in row:
            column = next(index for index, (left, right) in enumerate(columns) if left <= line.left <= right)
            cells.setdefault((row_index, column), GridCell(row_index, column, [])).lines.append(line)
        previous = row
    return TableGrid(row_index + 1, len(columns), list(cells.values()))


def _table_cell(cell: GridCell) -> TableCell:
    box = BoundingBox(
        l=min(line.left for line in cell.lines),
        t=min(line.top for line in cell.lines),
        r=max(line.right for line in cell.lines),
        b=max(line.bottom for line in cell.lines),
        coord_origin=CoordOrigin.TOPLEFT,
    )
    return TableCell(
        bbox=box,
        start_row_offset_idx=cell.row,
        end_row_offset_idx=cell.row + 1,
        start_col_offset_idx=cell.column,
        end_col_offset_idx=cell.column + 1,
        text=cell.text,
        column_header=cell.row == 0,
    )


def _otsl(grid: TableGrid) -> list[str]:
    filled = {(cell.row, cell.column) for cell in grid.cells}
    sequence = []
    for row in range(grid.num_rows):
        sequence += ["fcel" if (row, column) in filled else "ecel" for column in range(grid.num_columns)]
        sequence.append("nl")
    return sequence


class TextLayerTableOptions(BaseTableStructureOptions):
    """Selects the text-layer table engine in `PdfPipelineOptions.table_structure_options`."""

    kind: ClassVar[str] = "newsllm_text_layer_tables"


class TextLayerTableModel(BaseTableStructureModel):
    """Docling table structure for the layout engine's table clusters, from their text cells' alignment."""

    def __init__(
        self,
        enabled: bool,
        artifacts_path: Path | None,
        options: TextLayerTableOptions,
        accelerator_options: AcceleratorOptions | None = None,
        enable_remote_services: bool = False,
        **kwargs: object,
    ) -> None:
        self.enabled = enabled
        self.options = options

    @classmethod
    def get_options_type(cls) -> type[BaseTableStructureOptions]:
        return TextLayerTableOptions

    def predict_tables(self, conv_res: ConversionResult, pages: Sequence[Page]) -> Sequence[TableStructurePrediction]:
        return [self._page_tables(page) for page in pages]

    def _page_tables(self, page: Page) -> TableStructurePrediction:
        prediction = TableStructurePrediction()
        if page.predictions.layout is None or page.size is None:
            return prediction
        for cluster in page.predictions.layout.clusters:
            if cluster.label != DocItemLabel.TABLE or not cluster.cells:
                continue
            lines = join_visual_lines(cell_lines(cluster.cells, page.size.height), join_gap=CELL_JOIN_GAP)
            grid = table_grid(lines)
            prediction.table_map[cluster.id] = Table(
                otsl_seq=_otsl(grid),
                table_cells=[_table_cell(cell) for cell in grid.cells],
                num_rows=grid.num_rows,
                num_cols=grid.num_columns,
                id=cluster.id,
                page_no=page.page_no,
                cluster=cluster,
                label=cluster.label,
            )
        return prediction


def table_structure_engines() -> dict:
    """Docling plugin hook (`table_structure_engines` of the `newsllm_layout` entry point)."""
    return {"table_structure_engines": [TextLayerTableModel]}
