"""The training domain's jobs and retraining schedules: the document adapter and the categoriser adapter."""

import json
from pathlib import Path

import dagster as dg

from ..assets import training as training_assets
from ..assets.training import (
    adapter_evaluation,
    categorizer_adapter,
    categorizer_evaluation,
    categorizer_training_set,
    lora_adapter,
)
from ..documents.dataset import DatasetFiles
from ..resources.documents import DocumentStore
from ..resources.training import CURRENT, LoraTrainerResource
from ..settings import site_setting
from ..training.record import TRAINING_INFO

lora_training_job = dg.define_asset_job(
    "lora_training_job",
    selection=[lora_adapter, adapter_evaluation],
    description="Train the document adapter on the instruction dataset and evaluate it against the base model.",
)
categorizer_training_job = dg.define_asset_job(
    "categorizer_training_job",
    selection=[categorizer_training_set, categorizer_adapter, categorizer_evaluation],
    description="Rebuild the trusted-label set from noticias, train the categoriser adapter, compare accuracies.",
)


def trained_dataset_version(adapters_dir: Path) -> str | None:
    """The dataset version the current adapter was trained on, if there is one."""
    info = adapters_dir / CURRENT / TRAINING_INFO
    return json.loads(info.read_text(encoding="utf-8")).get("dataset_version") if info.exists() else None


@dg.schedule(
    job=lora_training_job,
    cron_schedule="0 2 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Nightly: retrain the document adapter when the instruction dataset changed since the last one.",
)
def lora_retraining_schedule(
    context: dg.ScheduleEvaluationContext, document_store: DocumentStore, lora_trainer: LoraTrainerResource
):
    files = DatasetFiles(folder=Path(document_store.dataset_dir))
    if not files.train_jsonl.exists():
        return dg.SkipReason(f"no instruction dataset in {files.folder} yet")
    version = files.version()
    if version == trained_dataset_version(lora_trainer.folder("documents")):
        return dg.SkipReason(f"dataset {version} unchanged since the current adapter")
    return dg.RunRequest(run_key=f"dataset-{version}", tags={"dataset_version": version})


categorizer_retraining_schedule = dg.ScheduleDefinition(
    job=categorizer_training_job,
    cron_schedule="0 3 * * 0",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Weekly: rebuild the trusted-label set and retrain the categoriser adapter (an unchanged set "
    "reuses the existing adapter: its version hashes the data).",
)


def definitions() -> dg.Definitions:
    """The training domain: adapters trained, evaluated against their base model and retrained on a schedule."""
    return dg.Definitions(
        assets=dg.load_assets_from_modules([training_assets]),
        asset_checks=dg.load_asset_checks_from_modules([training_assets]),
        jobs=[lora_training_job, categorizer_training_job],
        schedules=[lora_retraining_schedule, categorizer_retraining_schedule],
        resources={
            "lora_trainer": LoraTrainerResource(
                model_dir=site_setting("TRAIN_BASE_MODEL_DIR"),
                device=site_setting("TRAIN_DEVICE"),
                precision=site_setting("TRAIN_PRECISION"),
                adapters_dir=site_setting("ADAPTERS_DIR"),
                categorizer_adapters_dir=site_setting("CATEGORIZER_ADAPTERS_DIR"),
                categorizer_dataset_dir=site_setting("CATEGORIZER_DATASET_DIR"),
            )
        },
    )
