"""Jobs that categorise noticias and reset selections for re-categorisation."""

import datetime as dt

import dagster as dg
from pydantic import Field

from .. import db
from ..categorization import run_batch
from ..device_memory import peak_device_memory
from ..resources import CategorizerResource, NoticiasDatabase

NOTICIAS_ASSET = dg.AssetKey("noticias")


class CategorizeBatchConfig(dg.Config):
    batch_size: int = Field(default=10, description="How many uncategorised noticias this run claims")


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
    with peak_device_memory(categorizer.device) as memory:
        outcome = run_batch(
            noticias_db.engine,
            claimant=context.run_id,
            size=config.batch_size,
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
