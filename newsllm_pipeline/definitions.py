"""The one place that assembles the code location: assets, jobs, sensors, schedules, resources.

Resource settings come from NEWSLLM_* environment variables where the site sets them (shown as
such in the UI), else from the offline defaults: SQLite under data/ and the packaged tiny model.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from .assets import documents as document_assets
from .assets import noticias as noticias_assets
from .assets import training as training_assets
from .jobs.categorize import categorize_noticias_job, reprocess_noticias_job
from .jobs.documents import process_documents_job, raw_documents_sensor, training_dataset_job
from .jobs.schedules import (
    category_stats_job,
    category_stats_schedule,
    ingest_noticias_job,
    ingest_noticias_schedule,
)
from .jobs.sensors import build_uncategorized_noticias_sensor
from .jobs.training import (
    categorizer_retraining_schedule,
    categorizer_training_job,
    lora_retraining_schedule,
    lora_training_job,
)
from .resources import CategorizerResource, NoticiasDatabase
from .resources.documents import (
    DoclingConverterResource,
    DocumentStore,
    ImageDescriberResource,
    TextGeneratorResource,
)
from .resources.training import LoraTrainerResource
from .settings import (
    DEFAULT_CATEGORIZER_ADAPTERS_DIR,
    DEFAULT_CATEGORIZER_MODEL_DIR,
    DEFAULT_MODEL_DIR,
    PROJECT_HOME,
    default_database_url,
    env,
    site_setting,
)


def build_resources() -> dict:
    adapter_dir = site_setting("ADAPTER_DIR", "")
    return {
        "noticias_db": NoticiasDatabase(
            url=site_setting("DATABASE_URL", default_database_url()),
            max_attempts=int(env("MAX_ATTEMPTS", "3")),
        ),
        "categorizer": CategorizerResource(
            backend=site_setting("BACKEND", "transformers"),
            model_dir=site_setting("CATEGORIZER_MODEL_DIR", "")
            or site_setting("MODEL_DIR", str(DEFAULT_CATEGORIZER_MODEL_DIR)),
            adapter_dir=adapter_dir or None,
            device=site_setting("DEVICE", "auto"),
            use_current_adapter=env("USE_CURRENT_ADAPTER", "1") not in ("0", "", "false"),
            current_adapter_dir=str(
                Path(env("CATEGORIZER_ADAPTERS_DIR") or DEFAULT_CATEGORIZER_ADAPTERS_DIR) / "current"
            ),
        ),
        "document_store": DocumentStore(
            inbox_dir=site_setting("INBOX_DIR", str(PROJECT_HOME / "data" / "raw_pdfs")),
            work_dir=site_setting("DOCUMENTS_DIR", str(PROJECT_HOME / "data" / "documents")),
            dataset_dir=site_setting("DATASET_DIR", str(PROJECT_HOME / "data" / "datasets" / "documents")),
        ),
        "docling_converter": DoclingConverterResource(
            mode=site_setting("DOCLING_MODE", "auto"), ocr=env("DOCLING_OCR", "0") not in ("0", "", "false")
        ),
        "image_describer": ImageDescriberResource(
            backend=site_setting("DESCRIBER", "ocr"),
            url=site_setting("VISION_URL", "") or None,
            model=site_setting("VISION_MODEL", "") or None,
            api_key=site_setting("VISION_API_KEY", "") or None,
        ),
        "text_generator": TextGeneratorResource(
            model_dir=site_setting("GENERATOR_MODEL_DIR", "") or site_setting("MODEL_DIR", str(DEFAULT_MODEL_DIR))
        ),
        "lora_trainer": LoraTrainerResource(
            model_dir=site_setting("TRAIN_BASE_MODEL_DIR", "") or site_setting("MODEL_DIR", str(DEFAULT_MODEL_DIR)),
            device=site_setting("TRAIN_DEVICE", "auto"),
            precision=site_setting("TRAIN_PRECISION", "auto"),
            adapters_dir=site_setting("ADAPTERS_DIR", str(PROJECT_HOME / "models" / "lora_adapters")),
            categorizer_adapters_dir=site_setting("CATEGORIZER_ADAPTERS_DIR", str(DEFAULT_CATEGORIZER_ADAPTERS_DIR)),
            categorizer_dataset_dir=site_setting(
                "CATEGORIZER_DATASET_DIR", str(PROJECT_HOME / "data" / "datasets" / "categorizer")
            ),
        ),
    }


defs = dg.Definitions(
    assets=dg.load_assets_from_modules([noticias_assets, document_assets, training_assets]),
    asset_checks=dg.load_asset_checks_from_modules([noticias_assets]),
    jobs=[
        categorize_noticias_job,
        reprocess_noticias_job,
        ingest_noticias_job,
        category_stats_job,
        process_documents_job,
        training_dataset_job,
        lora_training_job,
        categorizer_training_job,
    ],
    sensors=[
        build_uncategorized_noticias_sensor(
            batch_size=int(env("BATCH_SIZE", "10")), max_runs_per_tick=int(env("MAX_RUNS_PER_TICK", "4"))
        ),
        raw_documents_sensor,
    ],
    schedules=[
        ingest_noticias_schedule,
        category_stats_schedule,
        lora_retraining_schedule,
        categorizer_retraining_schedule,
    ],
    resources=build_resources(),
)
