"""`make demo`: both halves end to end on the embedded defaults, through Dagster itself."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable

import dagster as dg
from dagster._core.storage.tags import RUN_KEY_TAG

from . import db
from .settings import PROJECT_HOME, setting

LABELS_CSV = PROJECT_HOME / "data" / "feeds" / "labels.csv"
# Dagster's console logger at INFO: the run's own messages without every engine event.
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
DEMO_TRAINING_S = 240  # the categoriser adapter's training time in the demo, at most


def drain_backlog(defs: dg.Definitions, instance: dg.DagsterInstance, echo: Callable[[str], None]) -> int:
    """Tick the sensor and execute the runs it requests, in this process, until it skips.
    Returns the number of runs."""
    sensor = defs.resolve_sensor_def("uncategorized_noticias_sensor")
    job = defs.resolve_job_def("categorize_noticias_job")
    sensor_resources = {"noticias_db": defs.resources["noticias_db"]}
    runs = 0
    while True:
        with dg.build_sensor_context(instance=instance, resources=sensor_resources) as context:
            tick = sensor.evaluate_tick(context)
        if not tick.run_requests:
            echo(f"sensor: {tick.skip_message}")
            return runs
        echo(f"sensor: launching {len(tick.run_requests)} runs")
        for request in tick.run_requests:
            run_config = {**request.run_config, **QUIET}
            result = job.execute_in_process(run_config=run_config, instance=instance, tags=request.tags)
            output = result.output_for_node("categorize_backlog")
            runs += 1
            echo(f"  run {result.run_id[:8]}: {output} noticias categorised")


class DemoStepFailed(Exception):
    """A demo step whose run failed: the demo stops with its reason (a non-zero exit)."""


def failure_reasons(result: dg.ExecuteInProcessResult) -> str:
    """The error messages of a run's failed steps (a failed blocking check fails its step too)."""
    reasons = [event.event_specific_data.error.message.strip() for event in result.all_events if event.is_step_failure]
    return "; ".join(reasons) or "the run failed"


def sensor_run_tags(sensor: dg.SensorDefinition, request: dg.RunRequest) -> dict[str, str]:
    """The tags the daemon gives a run it launches for `request`. The demo evaluates the sensor without storing
    its cursor, so the daemon's first tick (`make dev`) requests these documents again; it skips every request
    whose run key a run of this sensor already has, so it does not process them a second time."""
    return {**request.tags, **dg.DagsterRun.tags_for_sensor(sensor), RUN_KEY_TAG: request.run_key}


def process_documents(defs: dg.Definitions, instance: dg.DagsterInstance, echo: Callable[[str], None]) -> bool:
    """Tick the inbox sensor once, run the document chain for each document it finds, build the dataset; False
    when the inbox is empty. A document that fails does not stop the others, but fails the demo before the
    dataset is built."""
    sensor = defs.resolve_sensor_def("raw_documents_sensor")
    resources = {"document_store": defs.resources["document_store"]}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        # Called directly: the daemon would add the partitions before it validates the run requests.
        tick = sensor(context)
    if isinstance(tick, dg.SkipReason):
        echo(f"    inbox sensor: {tick.skip_message}")
        return False
    for request in tick.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    job = defs.resolve_job_def("process_documents_job")
    failed = {}
    for request in tick.run_requests:
        clock = time.perf_counter()
        result = job.execute_in_process(
            partition_key=request.partition_key,
            instance=instance,
            run_config=QUIET,
            raise_on_error=False,
            tags=sensor_run_tags(sensor, request),
        )
        if not result.success:
            failed[request.partition_key] = failure_reasons(result)
        described = result.asset_materializations_for_node("image_descriptions")
        pictures = f", {described[0].metadata['described'].value} pictures described" if described else ""
        outcome = "done" if result.success else "FAILED"
        echo(f"  {request.partition_key}: {outcome} in {time.perf_counter() - clock:.0f}s{pictures}")
    if failed:
        raise DemoStepFailed("documents failed: " + "; ".join(f"{key}: {reason}" for key, reason in failed.items()))
    result = defs.resolve_job_def("training_dataset_job").execute_in_process(
        instance=instance, run_config=QUIET, raise_on_error=False
    )
    materialized = result.asset_materializations_for_node("training_dataset")
    if not result.success or not materialized or "folder" not in materialized[0].metadata:
        raise DemoStepFailed(f"training_dataset: {failure_reasons(result)} (no dataset written)")
    metadata = materialized[0].metadata
    echo(
        f"    dataset: {metadata['train'].value} train / {metadata['eval'].value} eval examples from "
        f"{metadata['documents'].value} documents in {metadata['folder'].value}"
    )
    echo(metadata["sample"].value)
    return True


def train_document_adapter(defs: dg.Definitions, instance: dg.DagsterInstance, echo: Callable[[str], None]) -> None:
    """lora_training_job: the document adapter (cpu profile) and its evaluation against the base model; the demo
    fails when the run fails, and when the adapter does not beat the base model on the held-out examples."""
    clock = time.perf_counter()
    result = defs.resolve_job_def("lora_training_job").execute_in_process(
        instance=instance, run_config=QUIET, raise_on_error=False
    )
    trained = result.asset_materializations_for_node("lora_adapter")
    evaluation = result.asset_materializations_for_node("adapter_evaluation")
    if trained:
        trained = trained[0].metadata
        echo(
            f"    adapter {trained['version'].value} ({trained['adapter_size'].value}, "
            f"{trained['trainable_share_pct'].value}% of the parameters trained): {trained['steps'].value} steps, "
            f"loss {trained['first_loss'].value:.2f} -> {trained['final_loss'].value:.2f} in "
            f"{trained['runtime_s'].value:.0f}s, {trained['tokens_per_s'].value:.0f} tokens/s"
        )
    if evaluation and evaluation[0].metadata["held_out_examples"].value:
        evaluation = evaluation[0].metadata
        echo(
            f"    held-out loss on {evaluation['held_out_examples'].value} examples "
            f"({evaluation['completion_tokens'].value} answer tokens): base {evaluation['base_loss'].value}, "
            f"adapter {evaluation['adapter_loss'].value} (perplexity {evaluation['base_perplexity'].value} -> "
            f"{evaluation['adapter_perplexity'].value})"
        )
    if not result.success:
        raise DemoStepFailed(f"lora_training_job: {failure_reasons(result)}")
    echo(f"    training and evaluation in {time.perf_counter() - clock:.0f}s")


def train_categorizer_adapter(defs: dg.Definitions, instance: dg.DagsterInstance, echo: Callable[[str], None]) -> None:
    """Mark the hand labels as reviewed, then categorizer_training_job: trusted-label set, adapter, accuracy."""
    from .db import import_reviews_csv

    engine = db.create_db_engine(setting("DATABASE_URL"))
    if LABELS_CSV.exists():
        reviews = import_reviews_csv(engine, LABELS_CSV)
        echo(f"    {reviews.written} hand labels from {LABELS_CSV.name} marked as reviewed")
    if not db.fetch_labelled(engine):
        echo("    no noticias with a trusted label (reviewed, or a mapped feed tag): nothing to train on")
        return
    # Bounded: 160 steps take about 4 minutes on 2 cores with native bf16, four times that without it.
    run_config = {**QUIET, "ops": {"categorizer_adapter": {"config": {"max_time_s": DEMO_TRAINING_S}}}}
    result = defs.resolve_job_def("categorizer_training_job").execute_in_process(
        instance=instance, run_config=run_config
    )
    labelled = result.asset_materializations_for_node("categorizer_training_set")[0].metadata
    trained = result.asset_materializations_for_node("categorizer_adapter")[0].metadata
    evaluation = result.asset_materializations_for_node("categorizer_evaluation")[0].metadata
    echo(
        f"    {labelled['train'].value} training items ({labelled['real_train'].value} of them real headlines from "
        f"data/noticias_reales) / {labelled['eval'].value} held-out noticias; adapter {trained['version'].value} "
        f"trained in {trained['runtime_s'].value:.0f}s ({trained['tokens_per_s'].value:.0f} tokens/s)"
    )
    echo(
        f"    held-out sample noticias: base model {evaluation['base_accuracy'].value:.0%}, "
        f"with the adapter {evaluation['adapter_accuracy'].value:.0%} (hand-written items, easier)"
    )
    if "real_dev_adapter_accuracy" in evaluation:
        echo(
            f"    {evaluation['real_dev'].value} real development headlines (title only, never trained on): base model "
            f"{evaluation['real_dev_base_accuracy'].value:.0%}, with the adapter "
            f"{evaluation['real_dev_adapter_accuracy'].value:.0%}"
        )
    echo("    The sensor's runs use the adapter from now on (NEWSLLM_USE_CURRENT_ADAPTER=0: few-shot)")


def gold_labels() -> dict[str, str]:
    if not LABELS_CSV.exists():
        return {}
    with LABELS_CSV.open(encoding="utf-8") as handle:
        return {row["url"]: row["categoria"] for row in csv.DictReader(handle)}


def run_demo(echo: Callable[[str], None]) -> None:
    from .definitions import defs

    instance = dg.DagsterInstance.get()
    echo(f"Dagster instance: {instance.root_directory}")
    database = defs.resources["noticias_db"]
    echo("1/6 reading the sample feeds into noticias")
    ingest = defs.resolve_job_def("ingest_noticias_job").execute_in_process(run_config=QUIET, instance=instance)
    materialization = ingest.asset_materializations_for_node("noticias")[0]
    echo(f"    {materialization.metadata['new_items'].value} new noticias")

    adapter = defs.resources["categorizer"].trained_adapter()
    how = (
        f"with the categoriser adapter an earlier demo trained ({adapter}; NEWSLLM_USE_CURRENT_ADAPTER=0 turns it off)"
        if adapter
        else "few-shot: no categoriser adapter has been trained yet (step 6 trains one)"
    )
    echo(f"2/6 categorising with the local LLM (sensor -> categorize_noticias_job runs), {how}")
    clock = time.perf_counter()
    runs = drain_backlog(defs, instance, echo)
    echo(f"    {runs} runs in {time.perf_counter() - clock:.0f}s")
    if not runs:
        echo("    everything was categorised by an earlier demo: `.venv/bin/newsllm reprocess` resets it")

    echo("3/6 category statistics")
    defs.resolve_job_def("category_stats_job").execute_in_process(run_config=QUIET, instance=instance)
    engine = db.create_db_engine(setting("DATABASE_URL"))
    rows = db.fetch_categorized(engine)
    with engine.connect() as conn:
        urls = dict(conn.execute(db.sa.select(db.noticias.c.id, db.noticias.c.url)).all())
    from .assets.noticias import category_distribution

    echo(category_distribution(rows).round(3).to_markdown(index=False))
    gold = gold_labels()
    scored = [row for row in rows if urls[row["id"]] in gold]
    if scored:
        correct = sum(row["llm_categoria"] == gold[urls[row["id"]]] for row in scored)
        echo(
            f"agreement with the hand labels in {LABELS_CSV.name}: {correct}/{len(scored)} "
            f"({correct / len(scored):.0%}; chance is {1 / 15:.0%}"
            + ("; the adapter was trained on 80 % of these items, which flatters it)" if adapter else ")")
        )
    echo(f"status: {db.status_counts(engine, database.max_attempts)}")

    echo("4/6 documents in data/raw_pdfs -> Docling Markdown, picture descriptions, instruction dataset")
    documents = process_documents(defs, instance, echo)
    echo("5/6 a LoRA adapter on the instruction dataset (lora_training_job)")
    if documents:
        train_document_adapter(defs, instance, echo)
    else:
        echo("    no documents in the inbox, so no instruction dataset to train on")
    echo("6/6 the categoriser specialised: a LoRA adapter on the reviewed noticias (categorizer_training_job)")
    train_categorizer_adapter(defs, instance, echo)
    echo("Open the Dagster UI with `make dev` to see the runs, the asset metadata and the sensors.")
