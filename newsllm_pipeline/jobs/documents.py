"""The documents domain's jobs and the sensor that watches the inbox: convert, describe and rewrite each document,
then rebuild the instruction dataset."""

import json

import dagster as dg

from ..assets import documents as document_assets
from ..assets.documents import (
    described_markdown,
    docling_markdown,
    documents_partitions,
    image_descriptions,
    raw_documents,
    training_dataset,
)
from ..deployment import on_celery
from ..files import sha256_hex
from ..resources.devices import device_resources
from ..resources.documents import (
    DoclingConverterResource,
    DocumentStore,
    TextGeneratorResource,
    image_describer_from_settings,
)
from ..settings import site_flag, site_setting

process_documents_job = dg.define_asset_job(
    "process_documents_job",
    selection=[raw_documents, docling_markdown, image_descriptions, described_markdown],
    partitions_def=documents_partitions,
    description="Convert, describe and rewrite one document (one partition per document).",
)
training_dataset_job = dg.define_asset_job(
    "training_dataset_job", selection=[training_dataset], description="Rebuild the instruction dataset."
)


def _fingerprints(store: DocumentStore, previous: dict) -> dict[str, list]:
    """[size, mtime_ns, sha256] per document; a file whose size and mtime are unchanged is not hashed again."""
    current = {}
    for key, path in store.inbox().items():
        stat = path.stat()
        known = previous.get(key)
        same_file = known is not None and known[:2] == [stat.st_size, stat.st_mtime_ns]
        current[key] = [stat.st_size, stat.st_mtime_ns, known[2] if same_file else sha256_hex(path)]
    return current


@dg.sensor(
    job=process_documents_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a partition for each new document in the inbox and runs the chain for new or changed ones.",
)
def raw_documents_sensor(context: dg.SensorEvaluationContext, document_store: DocumentStore):
    previous = json.loads(context.cursor) if context.cursor else {}
    current = _fingerprints(document_store, previous)
    changed = sorted(key for key, print_ in current.items() if previous.get(key, [None] * 3)[2] != print_[2])
    if not changed:
        return dg.SkipReason(f"{len(current)} documents in {document_store.inbox_dir}, none new or changed")
    known = set(context.instance.get_dynamic_partitions(documents_partitions.name))
    new = [key for key in changed if key not in known]
    context.log.info(f"new: {new or 'none'}; changed: {[key for key in changed if key in known] or 'none'}")
    return dg.SensorResult(
        run_requests=[
            # One run per content: a changed file gets a new key, an unchanged one is never re-run by the sensor.
            dg.RunRequest(partition_key=key, run_key=f"{key}:{current[key][2][:16]}")
            for key in changed
        ],
        dynamic_partitions_requests=[documents_partitions.build_add_request(new)] if new else [],
        cursor=json.dumps(current),
    )


def definitions() -> dg.Definitions:
    """The documents domain: inbox to Markdown, picture descriptions and the instruction dataset."""
    return dg.Definitions(
        assets=dg.load_assets_from_modules([document_assets]),
        asset_checks=dg.load_asset_checks_from_modules([document_assets]),
        jobs=[process_documents_job, training_dataset_job, *on_celery(process_documents_job)],
        sensors=[raw_documents_sensor],
        resources={
            "document_store": DocumentStore(
                inbox_dir=site_setting("INBOX_DIR"),
                work_dir=site_setting("DOCUMENTS_DIR"),
                dataset_dir=site_setting("DATASET_DIR"),
            ),
            "docling_converter": DoclingConverterResource(
                mode=site_setting("DOCLING_MODE"), ocr=site_flag("DOCLING_OCR")
            ),
            "image_describer": image_describer_from_settings(),
            "text_generator": TextGeneratorResource(model_dir=site_setting("GENERATOR_MODEL_DIR")),
            **device_resources("describe"),
        },
    )
