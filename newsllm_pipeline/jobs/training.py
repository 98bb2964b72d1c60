"""The training domain's jobs, the categoriser's retraining schedule and the automation sensor: the document
adapter retrains at night when the dataset changed (its automation condition, `automation.py`)."""

import dagster as dg

from ..assets import training as training_assets
from ..assets.training import (
    adapter_evaluation,
    categorizer_adapter,
    categorizer_evaluation,
    categorizer_training_set,
    lora_adapter,
)
from ..automation import automation_sensor, site_timezone
from ..resources.devices import device_resources
from ..resources.training import LoraTrainerResource
from ..settings import site_setting

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
categorizer_retraining_schedule = dg.ScheduleDefinition(
    job=categorizer_training_job,
    cron_schedule="0 3 * * 0",
    execution_timezone=site_timezone(),
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Weekly: rebuild the trusted-label set and retrain the categoriser adapter (an unchanged set "
    "reuses the existing adapter: its version hashes the data).",
)


def definitions() -> dg.Definitions:
    """The training domain: adapters trained, evaluated against their base model and retrained on a schedule or
    by automation (the automation sensor evaluates every asset's condition, the dataset's included)."""
    return dg.Definitions(
        assets=dg.load_assets_from_modules([training_assets]),
        asset_checks=dg.load_asset_checks_from_modules([training_assets]),
        jobs=[lora_training_job, categorizer_training_job],
        schedules=[categorizer_retraining_schedule],
        sensors=[automation_sensor],
        resources={
            "lora_trainer": LoraTrainerResource(
                model_dir=site_setting("TRAIN_BASE_MODEL_DIR"),
                adapters_dir=site_setting("ADAPTERS_DIR"),
                categorizer_adapters_dir=site_setting("CATEGORIZER_ADAPTERS_DIR"),
                categorizer_dataset_dir=site_setting("CATEGORIZER_DATASET_DIR"),
            ),
            **device_resources("train", "evaluate"),
        },
    )
