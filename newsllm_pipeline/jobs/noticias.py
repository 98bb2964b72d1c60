"""The noticias domain's jobs, sensor and schedules: ingest feeds, categorise new rows in batches, reset a
selection for re-categorisation, refresh the statistics."""

import datetime as dt
import math
import time

import dagster as dg
import pandas as pd
from pydantic import Field

from .. import db
from ..assets import noticias as noticias_assets
from ..assets.noticias import noticias, noticias_category_stats
from ..automation import site_timezone
from ..categorizer.batch import drain
from ..deployment import device_step_tags, on_celery
from ..resources.devices import ComputeDevice, device_resources, role_pool
from ..resources.noticias import (
    CategorizerResource,
    NoticiasDatabase,
    categorizer_from_settings,
    noticias_database_from_settings,
)
from ..settings import setting

NOTICIAS_ASSET = dg.AssetKey("noticias")


class CategorizeBacklogConfig(dg.Config):
    batch_size: int | None = Field(
        default=None, description="Noticias claimed and committed together (default: noticias_db.batch_size)"
    )
    time_budget_s: float | None = Field(
        default=None,
        description="Stop claiming once this many seconds are spent (default: noticias_db.run_time_budget_s); "
        "the sensor launches another run for what is left",
    )
    max_batches: int | None = Field(default=None, description="Stop after this many batches (default: no limit)")
    linger_s: float | None = Field(
        default=None,
        description="With the backlog empty, keep looking for new noticias this many seconds before ending "
        "(default: noticias_db.run_linger_s)",
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


def _batch_metadata(outcome) -> dict:
    return {
        "claimed": len(outcome.claimed),
        "categorized": len(outcome.categorized),
        "failed": len(outcome.failed),
        "seconds": round(outcome.seconds, 2),
        "items_per_second": round(outcome.items_per_second, 2),
    }


@dg.op(
    pool=role_pool("categorize"),
    tags=device_step_tags("categorize"),
    description="Claim uncategorised noticias a batch at a time, categorise each batch and commit it, until the "
    "backlog is empty or the time budget is spent. The model is loaded once for the whole run, on the "
    "categorize_device, after the step holds a slot of that device's pool.",
)
def categorize_backlog(
    context: dg.OpExecutionContext,
    config: CategorizeBacklogConfig,
    noticias_db: NoticiasDatabase,
    categorizer: CategorizerResource,
    categorize_device: ComputeDevice,
) -> dg.Output[int]:
    batches = []
    started = time.monotonic()
    categorizer = categorizer.on(categorize_device)
    with categorize_device.step(context, categorizer, measure=categorizer.runs_here) as device:
        for outcome in drain(
            noticias_db.claim(context.run_id, config.batch_size),
            categorizer.categorize,
            time_budget_s=config.time_budget_s if config.time_budget_s is not None else noticias_db.run_time_budget_s,
            max_batches=config.max_batches,
            logger=context.log,
            linger_s=config.linger_s if config.linger_s is not None else noticias_db.run_linger_s,
        ):
            batch = _batch_metadata(outcome)
            batches.append(batch)
            context.log.info(
                f"batch {len(batches)}: categorised {batch['categorized']} of {batch['claimed']} noticias in "
                f"{batch['seconds']}s ({batch['items_per_second']} items/s); {batch['failed']} failed"
            )
            # Every batch shows on the noticias asset's page, as soon as it is committed.
            context.log_event(
                dg.AssetObservation(
                    asset_key=NOTICIAS_ASSET,
                    metadata={**batch, "results": dg.MetadataValue.md(_results_table(outcome))},
                )
            )
    if not batches:
        context.log.info("no uncategorised noticias left to claim")
    totals = {key: sum(batch[key] for batch in batches) for key in ("claimed", "categorized", "failed")}
    seconds = time.monotonic() - started
    metadata = {
        "batches": len(batches),
        **totals,
        "seconds": round(seconds, 2),
        "items_per_second": round(totals["claimed"] / seconds, 2) if seconds else 0.0,
        "per_batch": dg.MetadataValue.md(pd.DataFrame(batches).to_markdown(index=False) if batches else "none"),
        **device,
    }
    return dg.Output(totals["categorized"], metadata=metadata)


@dg.job(
    executor_def=dg.in_process_executor,  # one process holds the model; no reload per step
    description="Categorise the uncategorised noticias with the local LLM, batch after batch, within a time budget.",
    tags={"newsllm/kind": "categorization"},
)
def categorize_noticias_job():
    categorize_backlog()


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


# Runs that will still claim work: waiting to start, or started and draining the backlog.
_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


# Dagster's sensor daemon looks every 5 s and skips a sensor whose interval has not fully elapsed since its last
# tick began; an interval of exactly 5 s misses every other look by milliseconds (ticks 5-10 s apart, measured),
# so the sensor asks for a second less: its ticks fall on the interval, rounded up to the daemon's 5 s.
SENSOR_LOOP_SLACK_S = 1


@dg.sensor(
    job=categorize_noticias_job,
    minimum_interval_seconds=max(1, int(setting("SENSOR_INTERVAL_S")) - SENSOR_LOOP_SLACK_S),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches categorize_noticias_job runs while noticias wait: each run drains the backlog, so at most "
    "noticias_db.max_parallel_runs work at once, counting those still queued or started.",
)
def uncategorized_noticias_sensor(context: dg.SensorEvaluationContext, noticias_db: NoticiasDatabase):
    if not noticias_db.has_table():
        return dg.SkipReason("no noticias table yet: materialise `noticias` or run `newsllm db upgrade`")
    backlog = noticias_db.count_claimable()
    if backlog == 0:
        status = noticias_db.status()
        return dg.SkipReason(
            f"no uncategorised noticias ({status['processed']} categorised, "
            f"{status['failed_permanently']} failed {noticias_db.max_attempts} times, "
            f"{status['claimed']} in progress)"
        )
    active = context.instance.get_runs_count(dg.RunsFilter(job_name=categorize_noticias_job.name, statuses=_ACTIVE))
    wanted = min(math.ceil(backlog / noticias_db.batch_size), noticias_db.max_parallel_runs) - active
    if wanted <= 0:
        return dg.SkipReason(f"{backlog} uncategorised noticias; {active} runs already working on them")
    # Keys unique per tick: a run key deduplicates forever, and reset rows must be processed again.
    tick = time.time_ns()
    context.log.info(f"{backlog} uncategorised noticias, {active} runs working: launching {wanted}")
    return [dg.RunRequest(run_key=f"{tick}-{index}", tags={"newsllm/backlog": str(backlog)}) for index in range(wanted)]


ingest_noticias_job = dg.define_asset_job(
    "ingest_noticias_job", selection=[noticias], description="Read the configured feeds into noticias."
)
category_stats_job = dg.define_asset_job(
    "category_stats_job", selection=[noticias_category_stats], description="Refresh the category statistics."
)
ingest_noticias_schedule = dg.ScheduleDefinition(
    job=ingest_noticias_job,
    cron_schedule="*/15 * * * *",
    execution_timezone=site_timezone(),
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
category_stats_schedule = dg.ScheduleDefinition(
    job=category_stats_job,
    cron_schedule="0 * * * *",
    execution_timezone=site_timezone(),
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


# Automation conditions cannot follow the categorisation: its batches are AssetObservations of `noticias`, and
# Dagster counts only materialisations as updates of a materialisable asset. The run's end is the signal instead.
@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[categorize_noticias_job],
    request_job=category_stats_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Refreshes the category statistics after each successful categorisation run.",
)
def category_stats_after_categorization_sensor(context: dg.RunStatusSensorContext):
    run_id = context.dagster_run.run_id
    return dg.RunRequest(run_key=f"after-{run_id}", tags={"newsllm/after_categorization_run": run_id})


def definitions() -> dg.Definitions:
    """The noticias domain: feeds into the table, categorisation by the sensor, statistics on a schedule."""
    return dg.Definitions(
        assets=dg.load_assets_from_modules([noticias_assets]),
        asset_checks=dg.load_asset_checks_from_modules([noticias_assets]),
        jobs=[
            categorize_noticias_job,
            reprocess_noticias_job,
            ingest_noticias_job,
            category_stats_job,
            *on_celery(categorize_noticias_job),
        ],
        sensors=[uncategorized_noticias_sensor, category_stats_after_categorization_sensor],
        schedules=[ingest_noticias_schedule, category_stats_schedule],
        resources={
            "noticias_db": noticias_database_from_settings(),
            "categorizer": categorizer_from_settings(),
            **device_resources("categorize"),
        },
    )
