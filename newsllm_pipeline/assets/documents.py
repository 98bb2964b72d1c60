"""Document assets: raw files → Docling Markdown + images → image descriptions → described Markdown
(one dynamic partition per document) → the instruction dataset (all documents).

The sensor runs one document per run; a backfill runs up to NEWSLLM_DOCUMENTS_PER_RUN documents per run, so
Docling and the describer load once per batch rather than once per document."""

from collections.abc import Callable
from pathlib import Path
from textwrap import shorten

import dagster as dg
import pandas as pd
from pydantic import Field

from ..automation import after_inputs_change
from ..deployment import device_step_tags
from ..documents.chain import extracted_images, write_described_markdown
from ..documents.dataset import (
    AnswerDefects,
    Dataset,
    answer_defects,
    build_dataset,
    examples_from_sections,
    split_sections,
    write_dataset,
)
from ..documents.synthesis import synthesize_examples
from ..files import sha256_hex, staged_folder
from ..resources.devices import ComputeDevice, role_pool
from ..resources.documents import (
    DoclingConverterResource,
    DocumentStore,
    ImageDescriberResource,
    TextGeneratorResource,
)
from ..settings import setting

documents_partitions = dg.DynamicPartitionsDefinition(name="documents")
# Every asset of the chain has the same policy, so a backfill runs each batch through the whole chain in one run.
documents_backfill_policy = dg.BackfillPolicy.multi_run(max_partitions_per_run=int(setting("DOCUMENTS_PER_RUN")))
GROUP = "documents"


def _preview(text: str, limit: int = 1500) -> dg.MetadataValue:
    return dg.MetadataValue.md(text[:limit] + ("\n\n…" if len(text) > limit else ""))


def each_document(context: dg.AssetExecutionContext, work: Callable[[str], dict]) -> dict[str, dict]:
    """Run `work` (a document's key → its metadata) on every document of the run: one, or a backfill's batch.
    Each document's metadata goes to its own partition. A document that fails does not stop the others in this
    step: the ones done are recorded as materialised, then the step fails naming those that failed (the batch's
    later steps wait for a re-execution of the failed run)."""
    done, failed = {}, {}
    for key in context.partition_keys:
        try:
            done[key] = work(key)
        except Exception as error:  # one document's failure is its own; the step reports all of them at the end
            context.log.error(f"{key}: {error}")
            failed[key] = error
    if failed:
        for key, metadata in done.items():
            context.log_event(dg.AssetMaterialization(context.asset_key, partition=key, metadata=metadata))
        raise dg.Failure(
            "; ".join(f"{key}: {error}" for key, error in failed.items()),
            metadata={"failed": sorted(failed), "done": sorted(done)},
        ) from next(iter(failed.values()))
    for key, metadata in done.items():
        context.add_asset_metadata(metadata, partition_key=key)
    return done


@dg.asset(
    partitions_def=documents_partitions,
    backfill_policy=documents_backfill_policy,
    group_name=GROUP,
    description="A document dropped in the inbox (PDF, DOCX, HTML, Markdown), identified by its content hash.",
)
def raw_documents(context: dg.AssetExecutionContext, document_store: DocumentStore) -> dg.MaterializeResult:
    def record(key: str) -> dict:
        source = document_store.source(key)
        digest, size = sha256_hex(source), source.stat().st_size
        return {"path": dg.MetadataValue.path(str(source)), "sha256": digest, "bytes": size}

    done = each_document(context, record)
    # A run gives all its partitions one data version: a document's digest when it runs alone (the sensor's runs);
    # in a backfill's batch each document's digest is its metadata's sha256.
    digest = next(iter(done.values()))["sha256"] if len(done) == 1 else None
    return dg.MaterializeResult(data_version=dg.DataVersion(digest) if digest else None)


@dg.asset(
    partitions_def=documents_partitions,
    backfill_policy=documents_backfill_policy,
    group_name=GROUP,
    deps=[raw_documents],
    kinds={"docling"},
    pool=role_pool("describe"),
    op_tags=device_step_tags("describe"),
    description="texto.md with every picture saved as a PNG under imagenes_extraidas/, plus Docling's JSON.",
)
def docling_markdown(
    context: dg.AssetExecutionContext,
    document_store: DocumentStore,
    docling_converter: DoclingConverterResource,
    describe_device: ComputeDevice,
) -> dg.MaterializeResult:
    from ..documents.conversion import DocumentConversionError, convert_document

    mode, reason = docling_converter.resolved_mode()
    docling_converter = docling_converter.on(describe_device)

    def convert(key: str) -> dict:
        context.log.info(f"converting {key} in {mode} mode ({reason})")
        try:
            converted = convert_document(
                document_store.source(key), document_store.folder(key), docling_converter.converter()
            )
        except DocumentConversionError as error:
            raise dg.Failure(str(error)) from error
        for warning in converted.warnings:
            context.log.warning(warning)
        markdown = converted.markdown_path.read_text(encoding="utf-8")
        return {
            "mode": mode,
            "mode_reason": reason,
            "pages": converted.pages,
            "pictures": converted.pictures,
            "tables": converted.tables,
            "seconds": round(converted.seconds, 2),
            "pages_per_second": round(converted.pages / converted.seconds, 2) if converted.seconds else 0.0,
            "markdown": dg.MetadataValue.path(str(converted.markdown_path)),
            "preview": _preview(markdown),
        }

    # Docling's own models (standard mode) run on the describe_device; the offline engine measures nothing there.
    with describe_device.step(context, docling_converter, measure=mode == "standard") as placement:
        each_document(context, convert)
    return dg.MaterializeResult(metadata=placement)


@dg.asset(
    partitions_def=documents_partitions,
    backfill_policy=documents_backfill_policy,
    group_name=GROUP,
    deps=[docling_markdown],
    pool=role_pool("describe"),
    op_tags=device_step_tags("describe"),
    description="One description per extracted picture (JSON and Markdown per image), with the document's caption "
    "and text around it; tiny pictures are skipped, and pictures with nothing usable to say are left out.",
)
def image_descriptions(
    context: dg.AssetExecutionContext,
    document_store: DocumentStore,
    image_describer: ImageDescriberResource,
    describe_device: ComputeDevice,
) -> dg.MaterializeResult:
    from ..documents.chain import DESCRIPTIONS_DIR, describe_document_images
    from ..documents.descriptions import write_descriptions

    def describe(key: str) -> dict:
        folder = document_store.folder(key)
        images = extracted_images(folder)
        context.log.info(f"{key}: describing {len(images)} pictures with the {image_describer.backend} backend")
        run = describe_document_images(
            folder, image_describer.describer(), image_describer.question(), image_describer.min_side_px
        )
        for image, error in run.failed.items():
            context.log.warning(f"{image}: {error}")
        with staged_folder(folder / DESCRIPTIONS_DIR) as staging:
            write_descriptions(run, staging)
        table = pd.DataFrame(
            [
                {"image": Path(d.image).name, "seconds": d.seconds, "description": d.text[:160]}
                for d in run.descriptions
            ],
            columns=["image", "seconds", "description"],
        )
        return {
            "backend": image_describer.backend,
            "pictures": len(images),
            "described": len(run.descriptions),
            "skipped_small": len(run.skipped),
            "undescribed": len(run.undescribed),
            "failed": len(run.failed),
            "descriptions": dg.MetadataValue.md(table.to_markdown(index=False)),
        }

    image_describer = image_describer.on(describe_device)
    with describe_device.step(context, image_describer, measure=image_describer.runs_here) as placement:
        each_document(context, describe)
    return dg.MaterializeResult(metadata=placement)


@dg.asset(
    partitions_def=documents_partitions,
    backfill_policy=documents_backfill_policy,
    group_name=GROUP,
    deps=[image_descriptions],
    description="texto_final.md: the Markdown with every picture link replaced by its description.",
)
def described_markdown(context: dg.AssetExecutionContext, document_store: DocumentStore) -> dg.MaterializeResult:
    def rewrite(key: str) -> dict:
        path, replaced, dropped = write_described_markdown(document_store.folder(key))
        return {
            "path": dg.MetadataValue.path(str(path)),
            "pictures_described": replaced,
            "pictures_dropped": dropped,
            "preview": _preview(path.read_text(encoding="utf-8")),
        }

    each_document(context, rewrite)
    return dg.MaterializeResult()


class TrainingDatasetConfig(dg.Config):
    strategy: str = Field(
        default="sections",
        description="'sections': headings and their text become instruction/output pairs (deterministic); "
        "'llm': the text generator writes a question and answer per chunk, kept only when grounded in the text",
    )
    min_grounding: float = Field(default=0.6, description="llm: share of the answer's words found in the chunk")
    eval_share: float = Field(
        default=0.2, description="Share of sections held out for evaluation (whole sections: unseen text)"
    )
    min_output_chars: int = Field(default=40)
    max_output_chars: int = Field(default=1000, description="Longer sections give several passages of at most this")
    max_examples: int | None = Field(default=None, description="Keep at most this many examples")


DATASET_CHECKS = [
    dg.AssetCheckSpec("not_empty", asset="training_dataset", description="At least one training example"),
    dg.AssetCheckSpec("no_duplicate_instructions", asset="training_dataset"),
    dg.AssetCheckSpec("output_lengths_within_bounds", asset="training_dataset"),
    dg.AssetCheckSpec(
        "answers_whole_and_not_templates",
        asset="training_dataset",
        description="No answer is cut inside a word or is a fill-in template (blocks training on it)",
        blocking=True,
    ),
    dg.AssetCheckSpec(
        "uses_image_descriptions", asset="training_dataset", description="Some examples use figure descriptions"
    ),
]


def _dataset_checks(dataset: Dataset, defects: AnswerDefects, config: TrainingDatasetConfig) -> list:
    kept = dataset.train + dataset.eval
    return [
        dg.AssetCheckResult(check_name="not_empty", passed=bool(dataset.train)),
        dg.AssetCheckResult(
            check_name="no_duplicate_instructions",
            passed=len({e.instruction for e in kept}) == len(kept),
        ),
        dg.AssetCheckResult(
            check_name="output_lengths_within_bounds",
            passed=all(config.min_output_chars <= len(e.output) <= config.max_output_chars for e in kept),
        ),
        dg.AssetCheckResult(
            check_name="answers_whole_and_not_templates",
            passed=defects.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=None if defects.passed else "not written: the previous dataset stays",
            metadata={
                "cut_mid_word": len(defects.cut_mid_word),
                "templates": len(defects.templates),
                "examples": dg.MetadataValue.json(list(defects.cut_mid_word[:3] + defects.templates[:3])),
            },
        ),
        dg.AssetCheckResult(
            check_name="uses_image_descriptions",
            passed=dataset.stats.image_description_share > 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"share": dataset.stats.image_description_share},
        ),
    ]


@dg.asset(
    group_name=GROUP,
    deps=[described_markdown],
    kinds={"parquet"},
    check_specs=DATASET_CHECKS,
    # Rebuilt once described documents changed and none is still in a run: once after a backfill, not per batch.
    automation_condition=after_inputs_change(),
    pool=role_pool("describe"),  # the `llm` strategy's text generator
    op_tags=device_step_tags("describe"),
    description="All described documents as an alpaca instruction dataset (JSONL, Parquet, dataset_info.json).",
)
def training_dataset(
    context: dg.AssetExecutionContext,
    config: TrainingDatasetConfig,
    document_store: DocumentStore,
    text_generator: TextGeneratorResource,
    describe_device: ComputeDevice,
) -> dg.MaterializeResult:
    from ..documents.chain import FINAL_MARKDOWN_NAME

    keys = context.instance.get_dynamic_partitions(documents_partitions.name)
    finals = {key: document_store.folder(key) / FINAL_MARKDOWN_NAME for key in keys}
    missing = sorted(key for key, path in finals.items() if not path.exists())
    if missing:
        context.log.warning(f"not yet described, left out: {', '.join(missing)}")
    names = {key: path.stem for key, path in document_store.inbox().items()}  # "informe anual", not its key
    sections = [
        section
        for key, path in sorted(finals.items())
        if path.exists()
        for section in split_sections(names.get(key, key), path.read_text(encoding="utf-8"))
    ]
    synthesis = {}
    if config.strategy == "sections":
        examples = examples_from_sections(sections, config.min_output_chars, config.max_output_chars)
    elif config.strategy == "llm":
        text_generator = text_generator.on(describe_device)
        with describe_device.step(context, text_generator) as placement:
            run = synthesize_examples(
                sections,
                text_generator.generator(),
                max_examples=config.max_examples,
                min_grounding=config.min_grounding,
                progress=lambda done, total: context.log.info(f"synthesised {done}/{total} chunks"),
            )
        examples = run.examples
        synthesis = {
            **placement,
            "chunks": run.chunks,
            "kept": len(run.examples),
            "unparseable": run.unparseable,
            "ungrounded": run.ungrounded,
            "invalid": run.invalid,
        }
    else:
        raise dg.Failure(f"unknown dataset strategy {config.strategy!r}: use 'sections' or 'llm'")
    examples = examples[: config.max_examples] if config.max_examples else examples
    dataset = build_dataset(examples, eval_share=config.eval_share)
    defects = answer_defects(dataset.train + dataset.eval, sections)
    checks = _dataset_checks(dataset, defects, config)
    if not dataset.train or not defects.passed:  # the previous dataset stays; the checks say why
        return dg.MaterializeResult(
            check_results=checks,
            metadata={"strategy": config.strategy, **synthesis, "documents": len(keys), "written": False},
        )
    files = write_dataset(dataset, Path(document_store.dataset_dir))
    # Outputs shortened at a word for the preview only (the dataset keeps them whole).
    rows = [{"instruction": e.instruction, "output": shorten(e.output, 200, placeholder=" […]")} for e in dataset.train]
    sample = pd.DataFrame(rows[:10])
    return dg.MaterializeResult(
        check_results=checks,
        metadata={
            "strategy": config.strategy,
            **synthesis,
            "documents": len(keys) - len(missing),
            "train": len(dataset.train),
            "eval": len(dataset.eval),
            "duplicates_removed": dataset.stats.duplicates_removed,
            "image_description_share": round(dataset.stats.image_description_share, 3),
            "output_chars_p50": dataset.stats.output_chars_p50,
            "folder": dg.MetadataValue.path(str(files.folder)),
            "sample": dg.MetadataValue.md(sample.to_markdown(index=False)),
        },
    )
