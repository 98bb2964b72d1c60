"""The noticias domain's jobs, sensor and schedules: ingest feeds, categorise new rows in batches, reset a
selection for re-categorisation, refresh the statistics."""

import datetime as dt
import math
import time

import dagster as dg
from pydantic import Field

from .. import db
from ..assets import noticias as noticias_assets
from ..assets.noticias import noticias, noticias_category_stats
from ..categorizer.batch import run_batch
from ..device_memory import peak_device_memory
from ..resources.noticias import (
    CategorizerResource,
    NoticiasDatabase,
    categorizer_from_settings,
    noticias_database_from_settings,
)

NOTICIAS_ASSET = dg.AssetKey("noticias")


class CategorizeBatchConfig(dg.Config):
    batch_size: int | None = Field(
        default=None, description="How many uncategorised noticias this run claims (default: noticias_db.batch_size)"
    )


def _results_table(outcome) -> str:
    titles = {item.id: item.titulo for item in outcome.claimed}
    lines = ["| id | titulo | categoria | confianza |", "|---:|---|---|---:|"]
    for row in outcome.categorized:
        confianza = "–" if row.confianza is None else f"{row.confianza:.2f}"
        lines.append(f"| {row.id} | {titles[row.id][:80]} | {row.categoria} | {confianza} |")
    for row in outcome.failed:
        lines.append(f"| {row.id} | {titles[row.id][:80]} | **failed**: {row.error[:80]} | |")
    return "\n".join(lines)


@dg.op(pool="gpu", description="Claim a batch of uncategorised noticias, categorise them, write the results.")
def categorize_batch(
    context: dg.OpExecutionContext,
    config: CategorizeBatchConfig,
    noticias_db: NoticiasDatabase,
    categorizer: CategorizerResource,
) -> dg.Output[int]:
    with peak_device_memory(categorizer.compute_device) as memory:
        outcome = run_batch(
            noticias_db.engine,
            claimant=context.run_id,
            size=config.batch_size or noticias_db.batch_size,
            categorize=categorizer.categorize,
            max_attempts=noticias_db.max_attempts,
            lease=noticias_db.lease,
            logger=context.log,
        )
    if not outcome.claimed:
        context.log.info("no uncategorised noticias left to claim")
    else:
        context.log.info(
            f"categorised {len(outcome.categorized)} of {len(outcome.claimed)} noticias "
            f"in {outcome.seconds:.1f}s ({outcome.items_per_second:.1f} items/s); {len(outcome.failed)} failed"
        )
    metadata = {
        "claimed": len(outcome.claimed),
        "categorized": len(outcome.categorized),
        "failed": len(outcome.failed),
        "seconds": round(outcome.seconds, 2),
        "items_per_second": round(outcome.items_per_second, 2),
        "results": dg.MetadataValue.md(_results_table(outcome)),
        **memory,
    }
    if outcome.claimed:
        # Shows every batch on the noticias asset's page.
        context.log_event(dg.AssetObservation(asset_key=NOTICIAS_ASSET, metadata=metadata))
    return dg.Output(len(outcome.categorized), metadata=metadata)


@dg.job(
    executor_def=dg.in_process_executor,  # one process holds the model; no reload per step
    description="Categorise the next batch of uncategorised noticias with the local LLM.",
    tags={"newsllm/kind": "categorization"},
)
def categorize_noticias_job():
    categorize_batch()


class ReprocessConfig(dg.Config):
    """Which categorised noticias to reset. Leave a field empty to not filter on it."""

    categoria: str | None = Field(default=None, description="Only this category")
    max_confianza: float | None = Field(default=None, description="Only confidence below this")
    fecha_desde: str | None = Field(default=None, description="Only items published on or after (ISO date)")
    fecha_hasta: str | None = Field(default=None, description="Only items published before (ISO date)")
    include_failed: bool = Field(default=True, description="Also give failed items fresh attempts")


def _date(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


@dg.op(description="Clear the LLM columns of a selection; the sensor then re-categorises it.")
def reset_noticias_selection(
    context: dg.OpExecutionContext, config: ReprocessConfig, noticias_db: NoticiasDatabase
) -> dg.Output[int]:
    selection = db.Selection(
        categoria=config.categoria,
        max_confianza=config.max_confianza,
        fecha_desde=_date(config.fecha_desde),
        fecha_hasta=_date(config.fecha_hasta),
        include_failed=config.include_failed,
    )
    reset = db.reset_for_reprocessing(noticias_db.engine, selection)
    context.log.info(f"reset {reset} noticias for re-categorisation")
    return dg.Output(reset, metadata={"reset": reset, "selection": dg.MetadataValue.json(config.model_dump())})


@dg.job(description="Reset categorised noticias (by category, confidence, date) so they are categorised again.")
def reprocess_noticias_job():
    reset_noticias_selection()


# Runs launched but not yet claiming: their batches are still counted in the backlog.
_WAITING = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING]


@dg.sensor(
    job=categorize_noticias_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches one categorize_noticias_job run per noticias_db.batch_size uncategorised noticias "
    "(at most noticias_db.max_runs_per_tick per tick).",
)
def uncategorized_noticias_sensor(context: dg.SensorEvaluationContext, noticias_db: NoticiasDatabase):
    backlog = noticias_db.count_claimable()
    if backlog == 0:
        status = noticias_db.status()
        return dg.SkipReason(
            f"no uncategorised noticias ({status['processed']} categorised, "
            f"{status['failed_permanently']} failed {noticias_db.max_attempts} times, "
            f"{status['claimed']} in progress)"
        )
    waiting = context.instance.get_runs_count(dg.RunsFilter(job_name=categorize_noticias_job.name, statuses=_WAITING))
    batch_size = noticias_db.batch_size
    wanted = min(math.ceil(backlog / batch_size) - waiting, noticias_db.max_runs_per_tick)
    if wanted <= 0:
        return dg.SkipReason(f"{backlog} uncategorised noticias; {waiting} runs already waiting to claim them")
    # Keys unique per tick: a run key deduplicates forever, and reset rows must be processed again.
    tick = time.time_ns()
    context.log.info(f"{backlog} uncategorised noticias: launching {wanted} runs of {batch_size}")
    return [
        dg.RunRequest(
            run_key=f"{tick}-{index}",
            run_config=dg.RunConfig(ops={"categorize_batch": {"config": {"batch_size": batch_size}}}),
            tags={"newsllm/backlog": str(backlog)},
        )
        for index in range(wanted)
    ]


ingest_noticias_job = dg.define_asset_job(
    "ingest_noticias_job", selection=[noticias], description="Read the configured feeds into noticias."
)
category_stats_job = dg.define_asset_job(
    "category_stats_job", selection=[noticias_category_stats], description="Refresh the category statistics."
)
ingest_noticias_schedule = dg.ScheduleDefinition(
    job=ingest_noticias_job, cron_schedule="*/15 * * * *", default_status=dg.DefaultScheduleStatus.RUNNING
)
category_stats_schedule = dg.ScheduleDefinition(
    job=category_stats_job, cron_schedule="0 * * * *", default_status=dg.DefaultScheduleStatus.RUNNING
)


def definitions() -> dg.Definitions:
    """The noticias domain: feeds into the table, categorisation by the sensor, statistics on a schedule."""
    return dg.Definitions(
        assets=dg.load_assets_from_modules([noticias_assets]),
        asset_checks=dg.load_asset_checks_from_modules([noticias_assets]),
        jobs=[categorize_noticias_job, reprocess_noticias_job, ingest_noticias_job, category_stats_job],
        sensors=[uncategorized_noticias_sensor],
        schedules=[ingest_noticias_schedule, category_stats_schedule],
        resources={"noticias_db": noticias_database_from_settings(), "categorizer": categorizer_from_settings()},
    )
