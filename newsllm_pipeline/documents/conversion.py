"""Documents to Docling Markdown with extracted PNG images, offline.

PDFs go through Docling's standard PDF pipeline with the font-heuristics layout engine
(`layout.py`, a Docling plugin) in place of the layout model and the text-layer table engine
(`tables.py`) in place of TableFormer: no ML model artifacts are needed, and Docling's own stages do
reading order, heading levels (from the PDF's bookmarks and section numbers), captions, lists, picture
crops and the Markdown export. OCR for scanned pages is optional and uses the RapidOCR ONNX models
that ship inside the `rapidocr` wheel, so it too works offline. DOCX, HTML and Markdown go through
Docling's simple pipeline.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import docling.pipeline.standard_pdf_pipeline as standard_pdf_pipeline
from docling.datamodel.accelerator_options import AcceleratorOptions
from docling.datamodel.base_models import ConversionStatus, InputFormat
from docling.datamodel.pipeline_options import (
    HeadingHierarchyOptions,
    PdfPipelineOptions,
    PictureDescriptionApiOptions,
    RapidOcrOptions,
)
from docling.document_converter import DocumentConverter, PdfFormatOption
from docling.models.factories.table_factory import TableStructureFactory
from docling_core.types.doc import ImageRefMode

from ..files import staged_folder
from .chain import DOCLING_JSON_NAME, IMAGES_DIR, MARKDOWN_NAME
from .layout import FontLayoutModel, FontLayoutOptions, move_running_furniture
from .limits import DocumentLimitExceeded, DocumentLimits, check_conversion_time, check_document_input
from .tables import TextLayerTableModel, TextLayerTableOptions

FORMATS = [InputFormat.PDF, InputFormat.DOCX, InputFormat.HTML, InputFormat.MD]


class DocumentConversionError(Exception):
    """A document Docling could not convert (corrupt, encrypted, not what its name says)."""


_IMAGE_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image"}


def _what_is_wrong(source: Path) -> str | None:
    """Why a file named .pdf cannot be read as one, judged from the file itself (only after Docling failed,
    so good files pay nothing); None when the file gives no clue."""
    if source.suffix.lower() != ".pdf":
        return None
    if source.stat().st_size == 0:
        return "the file is empty (0 bytes): download or copy it again"
    with source.open("rb") as file:
        head = file.read(1024)
    if b"%PDF-" in head:
        import pypdfium2

        try:
            pypdfium2.PdfDocument(source).close()
        except pypdfium2.PdfiumError as error:
            if "password" in str(error).lower():
                return "the PDF is password-protected: give an unencrypted copy (e.g. `qpdf --decrypt`)"
        return None
    if b"<html" in head.lower() or head.lstrip().lower().startswith(b"<!doctype html"):
        return "it is an HTML page, not a PDF (often a login or error page saved by a download): download it again"
    for signature, kind in _IMAGE_SIGNATURES.items():
        if head.startswith(signature):
            return f"it is {kind}, not a PDF: convert it to PDF first"
    return "it is not a PDF (no %PDF- header): check the download"


@dataclass
class ConvertedDocument:
    folder: Path
    pages: int
    pictures: int
    tables: int
    seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def markdown_path(self) -> Path:
        return self.folder / MARKDOWN_NAME

    @property
    def images(self) -> list[Path]:
        return sorted((self.folder / IMAGES_DIR).glob("*.png"))


@contextlib.contextmanager
def _table_structure_without_torchvision():
    """The standard pipeline's table-structure factory loads every table plugin, and Docling's default one
    imports torchvision (not installable on CPU machines) at import. Offer it only the text-layer engine."""

    def factory(allow_external_plugins: bool = False) -> TableStructureFactory:
        tables = TableStructureFactory()
        tables.register(TextLayerTableModel, "newsllm_pipeline", TextLayerTableModel.__module__)
        return tables

    original = standard_pdf_pipeline.get_table_structure_factory
    standard_pdf_pipeline.get_table_structure_factory = factory
    try:
        yield
    finally:
        standard_pdf_pipeline.get_table_structure_factory = original


def _converter(options: PdfPipelineOptions) -> DocumentConverter:
    options.document_timeout = DocumentLimits.from_settings().max_seconds  # PDFs: Docling stops between pages
    return DocumentConverter(
        allowed_formats=FORMATS, format_options={InputFormat.PDF: PdfFormatOption(pipeline_options=options)}
    )


def _bundled_rapidocr_options() -> RapidOcrOptions:
    """RapidOCR on the PP-OCRv6 models in the installed wheel (the multilingual recognizer reads Spanish).
    Pinning every path keeps RapidOCR from resolving, and so downloading, models of its own; a missing
    file fails at start-up with the path."""
    import rapidocr

    models = Path(rapidocr.__file__).parent / "models"
    return RapidOcrOptions(
        lang=["es"],
        det_model_path=str(models / "PP-OCRv6_det_small.onnx"),
        rec_model_path=str(models / "PP-OCRv6_rec_small.onnx"),
        cls_model_path=str(models / "ch_ppocr_mobile_v2.0_cls_mobile.onnx"),
    )


class _LayoutOfOcrText:
    """Docling's PDF pipeline runs OCR after layout, on the layout's regions, so the layout engine sees a
    scanned page as one picture and each OCR line would end up as a paragraph of its own. This OCR stage
    lays the OCR'd pages out again from their OCR lines (with a layout engine of its own, whose
    statistics are those of the OCR'd pages: OCR boxes are not font boxes)."""

    def __init__(self, ocr_model, layout_options: FontLayoutOptions) -> None:
        self.ocr_model = ocr_model
        self.layout_model = FontLayoutModel(layout_options)

    def __call__(self, conv_res, page_batch):
        for page in self.ocr_model(conv_res, page_batch):
            cells = page.parsed_page.textline_cells if page.parsed_page is not None else []
            if any(cell.from_ocr for cell in cells):
                page.predictions.layout = self.layout_model.predict_layout(conv_res, [page])[0]
            yield page


def offline_converter(
    images_scale: float = 2.0, ocr: bool = False, picture_description: PictureDescriptionApiOptions | None = None
) -> DocumentConverter:
    """A converter that needs no model artifacts. `images_scale` sets the resolution of the picture
    crops (2.0: twice the PDF's 72 dpi). `ocr` reads the text of scanned pages (bitmaps with no text
    layer) with RapidOCR; its lines reach the layout engine as the page's text cells.
    `picture_description` has Docling describe each picture through an OpenAI-compatible endpoint such as
    `newsllm vision-server` (see `newsllm_pipeline.vision.client.docling_picture_description`)."""
    options = PdfPipelineOptions(
        allow_external_plugins=True,  # the layout engine is this package's `docling` entry point
        layout_options=FontLayoutOptions(),
        # One page per layout batch: the engine's document statistics then grow page by page in the same
        # way on every run, whatever the parser's pace (batches are filled on a timer).
        layout_batch_size=1,
        table_structure_options=TextLayerTableOptions(),
        do_table_structure=True,
        # Heading levels from the bookmarks and section numbers; it also has the pipeline read the bookmarks,
        # which the layout engine uses to find the headings in the first place.
        heading_hierarchy_options=HeadingHierarchyOptions(enabled=True, use_bookmarks=True),
        do_ocr=ocr,
        generate_page_images=False,
        generate_picture_images=True,
        images_scale=images_scale,
    )
    if ocr:
        options.ocr_options = _bundled_rapidocr_options()
    if picture_description is not None:
        options.do_picture_description = True
        options.enable_remote_services = True  # Docling refuses API options without it
        options.picture_description_options = picture_description
    converter = _converter(options)
    with _table_structure_without_torchvision():
        converter.initialize_pipeline(InputFormat.PDF)
    if ocr:
        pipeline = converter._get_pipeline(InputFormat.PDF)
        pipeline.ocr_model = _LayoutOfOcrText(pipeline.ocr_model, options.layout_options)
    return converter


def standard_converter(artifacts_path: str, images_scale: float = 2.0, device: str = "auto") -> DocumentConverter:
    """Docling's model-based PDF pipeline (layout model, TableFormer) from local artifacts in the
    `<owner>--<repo>/` layout `docling-tools models download` writes, its models on `device` ('cuda:1'…).
    Needs the `docling-models` extra."""
    options = PdfPipelineOptions(
        artifacts_path=artifacts_path,
        accelerator_options=AcceleratorOptions(device=device),
        do_ocr=False,
        do_table_structure=True,
        generate_page_images=False,
        generate_picture_images=True,
        images_scale=images_scale,
    )
    return _converter(options)


def _require_content(source: Path, result, converter: DocumentConverter) -> None:
    """A PDF that yields neither text nor pictures is a scan read without OCR: say so instead of writing
    an empty texto.md (Docling also drops a picture covering a whole page)."""
    document = result.document
    if source.suffix.lower() != ".pdf" or document.texts or document.pictures or document.tables:
        return
    pdf_options = converter.format_to_options[InputFormat.PDF].pipeline_options
    if not pdf_options.do_ocr:
        raise DocumentConversionError(
            f"{source}: no text layer and OCR is off: enable OCR (`ocr: true` on docling_converter, "
            "NEWSLLM_DOCLING_OCR=1) or give a text PDF"
        )


def convert_document(source: Path, out_dir: Path, converter: DocumentConverter) -> ConvertedDocument:
    """Write `texto.md` (pictures as relative links into `imagenes_extraidas/`) and Docling's JSON
    into `out_dir`. The folder appears complete or not at all; a failure raises
    DocumentConversionError naming the file and the reason."""
    started = time.perf_counter()
    limits = DocumentLimits.from_settings()
    try:
        check_document_input(source, limits)
    except DocumentLimitExceeded as error:
        raise DocumentConversionError(f"{source}: {error}") from error
    try:
        result = converter.convert(source, raises_on_error=False)
    except Exception as error:  # docling raises for formats it cannot even detect
        reason = _what_is_wrong(source) or f"not a convertible document ({error})"
        raise DocumentConversionError(f"{source}: {reason}") from error
    if result.status not in (ConversionStatus.SUCCESS, ConversionStatus.PARTIAL_SUCCESS):
        docling_says = "; ".join(item.error_message for item in result.errors) or result.status.value
        reason = _what_is_wrong(source) or f"Docling could not convert it ({docling_says})"
        raise DocumentConversionError(f"{source}: {reason}")
    try:
        check_conversion_time(time.perf_counter() - started, [item.error_message for item in result.errors], limits)
    except DocumentLimitExceeded as error:
        raise DocumentConversionError(f"{source}: {error}") from error
    _require_content(source, result, converter)
    if source.suffix.lower() == ".pdf":
        move_running_furniture(result.document)
    with staged_folder(out_dir) as staging:
        # A relative artifacts_dir is resolved against the Markdown's folder and kept relative in links.
        result.document.save_as_markdown(
            staging / MARKDOWN_NAME, artifacts_dir=Path(IMAGES_DIR), image_mode=ImageRefMode.REFERENCED
        )
        result.document.save_as_json(staging / DOCLING_JSON_NAME)
    document = result.document
    return ConvertedDocument(
        folder=out_dir,
        pages=len(document.pages),
        pictures=len(document.pictures),
        tables=len(document.tables),
        seconds=time.perf_counter() - started,
        warnings=[item.error_message for item in result.errors],
    )
