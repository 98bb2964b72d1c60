"""Document benchmark: docling's native PDF pipeline against our offline converter, and picture descriptions.

On the same PDFs, in one process pinned to one core (torch limited to one thread), it measures:

- conversion pages/s, per document and overall (total pages / total seconds), for
  - native: docling's own `NativePdfPipeline` (docling-parse cells straight to a document, no layout stage);
  - ours: `offline_converter()`, the standard pipeline with the font-heuristics layout engine;
  each converter is warmed up once, then converts every document `--repeats` times;
- fidelity of both conversions against `<name>.docling-standard.md` (docling's model-based pipeline) where
  one exists: token F1, heading F1, table cell F1 (documents whose reference has a table) and reading order
  (`documents/fidelity.py`), per document and mean over every document with a reference;
- pictures/s of the `ocr` description backend (`OcrDescriber`) on every picture our converter extracts from
  the PDFs, engine load time reported apart.

    .venv/bin/python benchmarks/documents.py [--pdfs DIR] [--repeats 5] [--out PATH]
    make bench

PDFs come from --pdfs (default: the shared data/pdfs folder next to this checkout). The results are written
as JSON to --out (default benchmarks/results/documents.json) and printed as a summary.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from docling.datamodel.backend_options import ThreadedDoclingParseBackendOptions
from docling.datamodel.base_models import InputFormat
from docling.datamodel.pipeline_options import NativePdfPipelineOptions
from docling.document_converter import DocumentConverter, NativePdfFormatOption
from docling_core.types.doc import DoclingDocument
from harness import package_versions, write_report
from tabulate import tabulate

from newsllm_pipeline.documents.conversion import convert_document, offline_converter
from newsllm_pipeline.documents.descriptions import OcrDescriber, describe_images
from newsllm_pipeline.documents.fidelity import fidelity
from newsllm_pipeline.documents.layout import move_running_furniture

SCRIPT = Path(__file__).resolve()
DEFAULT_OUT = SCRIPT.parent / "results" / "documents.json"
DEFAULT_PDFS = SCRIPT.parents[2] / "shared" / "data" / "pdfs"
REFERENCE_SUFFIX = ".docling-standard.md"
CONVERTER_LABELS = {"native": "native: NativePdfPipeline", "ours": "ours: offline_converter"}
GOALS = {"pages_per_s": 5, "heading_f1": 0.7, "token_f1": 0.95, "table_cell_f1": 0.6}
METRICS = ("heading_f1", "token_f1", "table_cell_f1", "reading_order")
VERSIONED_PACKAGES = ("docling-slim", "docling-parse", "docling-core", "rapidocr", "onnxruntime", "torch")


def pin_to_one_core() -> int:
    """Run this process, and torch, on the first core it may use; returns that core."""
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    return core


def native_converter() -> DocumentConverter:
    """docling's own text-layer pipeline, single-threaded, extracting picture crops like ours."""
    options = NativePdfPipelineOptions(parser_threads=1, generate_page_images=False, generate_picture_images=True)
    backend_options = ThreadedDoclingParseBackendOptions(
        parser_threads=1, include_bitmap_images=True, render_pages=False
    )
    return DocumentConverter(
        format_options={
            InputFormat.PDF: NativePdfFormatOption(pipeline_options=options, backend_options=backend_options)
        }
    )


def measure_conversion(
    converter: DocumentConverter, pdfs: list[Path], repeats: int, finish: Callable[[DoclingDocument], object]
) -> tuple[dict, dict[str, str]]:
    """Pages/s per document (`repeats` conversions each, after one warm-up conversion, `finish` applied to each
    document as part of the conversion) and overall, and the Markdown of each document's last conversion."""
    converter.convert(pdfs[0])
    documents, markdowns = {}, {}
    for pdf in pdfs:
        started = time.perf_counter()
        for _ in range(repeats):
            result = converter.convert(pdf)
            finish(result.document)
        seconds = (time.perf_counter() - started) / repeats
        pages = len(result.document.pages)
        documents[pdf.stem] = {"pages": pages, "seconds": seconds, "pages_per_s": pages / seconds}
        markdowns[pdf.stem] = result.document.export_to_markdown()
    pages = sum(document["pages"] for document in documents.values())
    seconds = sum(document["seconds"] for document in documents.values())
    totals = {"pages": pages, "seconds": seconds, "pages_per_s": pages / seconds}
    return {"documents": documents, "total": totals}, markdowns


def measure_fidelity(pdfs: list[Path], markdowns: dict[str, dict[str, str]]) -> dict:
    """Each converter's fidelity to the reference, per document that has one, and the means over the documents
    where a metric applies (table cell F1: where the reference has a table)."""
    references = {pdf.stem: pdf.with_name(pdf.stem + REFERENCE_SUFFIX) for pdf in pdfs}
    references = {name: path.read_text(encoding="utf-8") for name, path in references.items() if path.is_file()}
    report = {}
    for converter, converted in markdowns.items():
        documents = {name: vars(fidelity(converted[name], reference)) for name, reference in references.items()}
        means = {metric: _mean(scores[metric] for scores in documents.values()) for metric in METRICS}
        report[converter] = {"documents": documents, "mean": means}
    return report


def _mean(values) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


def measure_descriptions(pdfs: list[Path], converter: DocumentConverter) -> dict:
    """Describe every picture `converter` (ours) extracts from `pdfs` with the OCR backend; the describing time
    and the engine's load time apart."""
    with tempfile.TemporaryDirectory(prefix="documents-bench-") as folder:
        images = [image for pdf in pdfs for image in convert_document(pdf, Path(folder) / pdf.stem, converter).images]
        started = time.perf_counter()
        describer = OcrDescriber()
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        run = describe_images(images, describer)
        seconds = time.perf_counter() - started
    pictures = len(run.descriptions)
    return {
        "backend": describer.name,
        "extracted": len(images),
        "pictures": pictures,
        "skipped": len(run.skipped),
        "failed": len(run.failed),
        "seconds": seconds,
        "pictures_per_s": pictures / seconds,
        "load_s": load_s,
        "error_examples": list(run.failed.values())[:5],
    }


def _metric_name(metric: str) -> str:
    return metric.replace("_f1", " F1").replace("_", " ")


def summary(report: dict) -> str:
    def met(value: float | None, goal: float) -> str:
        if value is None:
            return "no reference"
        return "met" if value >= goal else "NOT met"

    def number(value: float | None, digits: int) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    conversion, fidelities = report["conversion"], report["fidelity"]

    def row(name: str, native: dict, ours: dict, scores: dict[str, dict | None]) -> list:
        return [
            name,
            ours["pages"],
            native["pages_per_s"],
            ours["pages_per_s"],
            ours["pages_per_s"] / native["pages_per_s"],
            *(
                None if scores[converter] is None else scores[converter][metric]
                for metric in METRICS
                for converter in scores
            ),
        ]

    rows = [
        row(
            name,
            conversion["native"]["documents"][name],
            ours,
            {converter: fidelities[converter]["documents"].get(name) for converter in CONVERTER_LABELS},
        )
        for name, ours in conversion["ours"]["documents"].items()
    ]
    means = {converter: fidelities[converter]["mean"] for converter in CONVERTER_LABELS}
    rows.append(row("total / mean", conversion["native"]["total"], conversion["ours"]["total"], means))
    table = tabulate(
        rows,
        headers=["document", "pages", "native pages/s", "ours pages/s", "ratio"]
        + [f"{converter} {_metric_name(metric)}" for metric in METRICS for converter in CONVERTER_LABELS],
        floatfmt=("", "", ".1f", ".1f", ".2f") + (".3f",) * (2 * len(METRICS)),
        missingval="–",
    )
    ours_pages_per_s, descriptions = conversion["ours"]["total"]["pages_per_s"], report["descriptions"]
    goal_lines = [
        f"ours pages/s        {ours_pages_per_s:.1f}  (goal >= {GOALS['pages_per_s']}: "
        f"{met(ours_pages_per_s, GOALS['pages_per_s'])})"
    ] + [
        f"ours {_metric_name(metric):<14} mean {number(means['ours'][metric], 3)}  (goal >= {GOALS[metric]}: "
        f"{met(means['ours'][metric], GOALS[metric])})"
        for metric in METRICS
        if metric in GOALS
    ]
    return "\n".join(
        [
            f"Document benchmark: {len(rows) - 1} PDFs from {report['pdfs']}, core {report['core']} of "
            f"{report['cpu_count']} CPUs, {report['repeats']} conversions per document after a warm-up",
            "",
            table,
            "",
            f"ours / native       {report['ratio']:.2f}x pages/s",
            *goal_lines,
            f"descriptions        {descriptions['pictures']} pictures by {descriptions['backend']} in "
            f"{descriptions['seconds']:.1f} s = {descriptions['pictures_per_s']:.2f} pictures/s "
            f"({descriptions['extracted']} extracted, {descriptions['skipped']} skipped as too small, "
            f"{descriptions['failed']} failed; engine load {descriptions['load_s']:.1f} s apart)",
            "versions            " + ", ".join(f"{name} {version}" for name, version in report["versions"].items()),
        ]
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pdfs", type=Path, default=DEFAULT_PDFS, help=f"folder of PDFs (default: {DEFAULT_PDFS})")
    parser.add_argument("--repeats", type=int, default=5, help="conversions per document and converter (default: 5)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default: {DEFAULT_OUT})")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    pdfs = sorted(args.pdfs.glob("*.pdf"))
    if not pdfs:
        sys.exit(f"no PDFs in {args.pdfs}: give a folder of PDFs with --pdfs")
    core = pin_to_one_core()
    converters = {"native": native_converter(), "ours": offline_converter()}
    # What `convert_document` does to our conversion after Docling's pipeline; native gets nothing.
    finishers = {"native": lambda document: None, "ours": move_running_furniture}
    conversion, markdowns = {}, {}
    for converter_name, converter in converters.items():
        print(f"{CONVERTER_LABELS[converter_name]}: {len(pdfs)} PDFs ...", file=sys.stderr, flush=True)
        conversion[converter_name], markdowns[converter_name] = measure_conversion(
            converter, pdfs, args.repeats, finishers[converter_name]
        )
    print("ocr descriptions of the extracted pictures ...", file=sys.stderr, flush=True)
    report = {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "pdfs": str(args.pdfs),
        "cpu_count": os.cpu_count(),
        "core": core,
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "versions": package_versions(VERSIONED_PACKAGES),
        "conversion": conversion,
        "ratio": conversion["ours"]["total"]["pages_per_s"] / conversion["native"]["total"]["pages_per_s"],
        "fidelity": measure_fidelity(pdfs, markdowns),
        "descriptions": measure_descriptions(pdfs, converters["ours"]),
        "goals": GOALS,
    }
    write_report(report, args.out, summary(report))


if __name__ == "__main__":
    main()
