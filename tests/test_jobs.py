"""categorize_noticias_job and the sensor through Dagster, with the real model, on PostgreSQL and SQLite."""

from __future__ import annotations

import threading
import time

import dagster as dg
import pytest
import sqlalchemy as sa

from newsllm_pipeline import db
from newsllm_pipeline.assets.noticias import no_permanently_failed_noticias, noticias, noticias_category_stats
from newsllm_pipeline.categorizer.batch import drain
from newsllm_pipeline.categorizer.prompt import DEFAULT_CATEGORIES
from newsllm_pipeline.jobs.noticias import (
    categorize_noticias_job,
    reprocess_noticias_job,
    uncategorized_noticias_sensor,
)
from newsllm_pipeline.resources.noticias import NoticiasDatabase, TransformersCategorizerResource
from tests.conftest import FEEDS, sample_rows, site_devices


def _rows(engine):
    with engine.connect() as conn:
        return conn.execute(sa.select(db.noticias).order_by(db.noticias.c.id)).mappings().all()


def _run(resources, batch_size=10, **config):
    return categorize_noticias_job.execute_in_process(
        run_config={"ops": {"categorize_backlog": {"config": {"batch_size": batch_size, **config}}}},
        resources=resources,
    )


@pytest.fixture
def resources(database_url, categorizer):
    return {"noticias_db": NoticiasDatabase(url=database_url), "categorizer": categorizer, **site_devices()}


def test_feeds_to_categorised_rows_end_to_end(resources, engine):
    ingest = dg.materialize(
        [noticias],
        resources=resources,
        run_config={
            "ops": {"noticias": {"config": {"feeds": [str(FEEDS / "valid_rss.xml"), str(FEEDS / "valid_atom.xml")]}}}
        },
    )
    assert ingest.asset_materializations_for_node("noticias")[0].metadata["new_items"].value == 9
    first = _run(resources, batch_size=5, max_batches=1)
    assert first.output_for_node("categorize_backlog") == 5
    launched_by_hand = categorize_noticias_job.execute_in_process(resources=resources)  # no config: the rest
    assert launched_by_hand.output_for_node("categorize_backlog") == 4
    rows = _rows(engine)
    assert all(row["llm_processed"] and row["llm_processed_at"] for row in rows)
    assert all(row["llm_categoria"] in DEFAULT_CATEGORIES and 0 < row["llm_confianza"] <= 1 for row in rows)
    assert all(row["llm_claimed_by"] is None and row["llm_error"] is None for row in rows)
    observation_metadata = first.get_asset_observation_events()[0].asset_observation_data.asset_observation.metadata
    assert observation_metadata["categorized"].value == 5

    stats = dg.materialize([noticias_category_stats, no_permanently_failed_noticias], resources=resources)
    metadata = stats.asset_materializations_for_node("noticias_category_stats")[0].metadata
    assert metadata["categorized"].value == 9
    assert "data:image/png;base64," in metadata["plot"].value
    assert stats.get_asset_check_evaluations()[0].passed


def test_two_runs_at_once_take_disjoint_batches(resources, engine):
    db.insert_new(engine, sample_rows(12))
    results = []

    def run():
        results.append(_run(resources, batch_size=6))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Each run drains what it can claim; a row taken twice would be counted twice.
    assert sum(result.output_for_node("categorize_backlog") for result in results) == 12
    rows = _rows(engine)
    assert all(row["llm_processed"] for row in rows) and len(rows) == 12


def test_a_run_drains_the_backlog_batch_by_batch_and_shows_every_batch(resources, engine):
    db.insert_new(engine, sample_rows(25))
    result = _run(resources, batch_size=10)
    assert result.output_for_node("categorize_backlog") == 25
    observations = [event.asset_observation_data.asset_observation for event in result.get_asset_observation_events()]
    assert [observation.metadata["claimed"].value for observation in observations] == [10, 10, 5]
    output = next(event for event in result.all_events if event.is_successful_output)
    assert output.event_specific_data.metadata["batches"].value == 3


def test_the_time_budget_ends_a_run_cleanly_after_its_batch(resources, engine):
    db.insert_new(engine, sample_rows(12))
    result = _run(resources, batch_size=5, time_budget_s=0)
    assert result.success and result.output_for_node("categorize_backlog") == 5
    rows = _rows(engine)
    assert sum(row["llm_processed"] for row in rows) == 5
    assert all(row["llm_claimed_by"] is None for row in rows)  # nothing left claimed by the ended run


def test_a_run_stopped_mid_backlog_keeps_its_committed_batches_and_releases_the_one_in_hand(
    database_url, engine, categorizer
):
    db.insert_new(engine, sample_rows(25))
    calls = []

    def categorize_then_get_stopped(texts):
        calls.append(len(texts))
        if len(calls) == 2:  # what Dagster raises in a run that is terminated
            raise KeyboardInterrupt
        return categorizer.categorize(texts)

    database = NoticiasDatabase(url=database_url)
    with pytest.raises(KeyboardInterrupt):
        for _ in drain(database.claim("run-1", 10), categorize_then_get_stopped, time_budget_s=600):
            pass
    rows = _rows(engine)
    assert [row["id"] for row in rows if row["llm_processed"]] == [row["id"] for row in rows[:10]]
    assert all(row["llm_claimed_by"] is None and row["llm_attempts"] == 0 for row in rows[10:])
    assert database.count_claimable() == 15  # the next run takes them


def test_a_lingering_run_takes_noticias_that_arrive_after_the_backlog_is_empty(database_url, engine, categorizer):
    """A steady stream needs no new run per arrival: the run that emptied the backlog keeps its model and takes
    the newcomers; once nothing came for `linger_s` it ends."""
    db.insert_new(engine, sample_rows(3))
    late = threading.Timer(1.0, db.insert_new, (engine, sample_rows(4, prefix="late")))
    late.start()
    database = NoticiasDatabase(url=database_url)
    started = time.monotonic()
    outcomes = list(drain(database.claim("run-1", 10), categorizer.categorize, time_budget_s=600, linger_s=3.0))
    took = time.monotonic() - started
    late.join()
    assert [len(outcome.claimed) for outcome in outcomes] == [3, 4]
    assert all(row["llm_processed"] for row in _rows(engine))
    assert 4.0 <= took < 20.0  # one second's wait, two batches, then three idle seconds
    with_budget = list(drain(database.claim("run-2", 10), categorizer.categorize, time_budget_s=0.5, linger_s=60))
    assert with_budget == [] and time.monotonic() - started - took < 5.0  # the budget ends lingering too


def test_an_answer_that_is_not_a_category_is_recorded_as_failed_and_retried_up_to_the_limit(
    database_url, engine, model_dir
):
    resources = {
        "noticias_db": NoticiasDatabase(url=database_url, max_attempts=2),
        "categorizer": TransformersCategorizerResource(
            model_dir=model_dir, method="generate", categories=["Xqzvblorp", "Wrrk"]
        ),
        **site_devices(),
    }
    db.insert_new(engine, sample_rows(1))
    for attempt in (1, 2):
        result = _run(resources)
        assert result.success and result.output_for_node("categorize_backlog") == 0
        rows = _rows(engine)
        assert all(row["llm_attempts"] == attempt and "names no category" in row["llm_error"] for row in rows)
        assert all(row["llm_categoria"] is None and not row["llm_processed"] for row in rows)
    assert _run(resources).output_for_node("categorize_backlog") == 0
    assert NoticiasDatabase(url=database_url, max_attempts=2).status()["failed_permanently"] == 1


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_database_dropping_mid_batch_writes_nothing_and_the_rows_are_retried(resources, engine):
    db.insert_new(engine, sample_rows(5))

    def drop_connection(conn, cursor, statement, *args):
        if statement.startswith("UPDATE noticias SET llm_categoria"):
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    # The run's engine is its own (Dagster copies resources), so listen on every engine for this run.
    sa.event.listen(sa.Engine, "after_cursor_execute", drop_connection)
    try:
        with pytest.raises(sa.exc.OperationalError):
            _run(resources, batch_size=5)
    finally:
        sa.event.remove(sa.Engine, "after_cursor_execute", drop_connection)
    rows = _rows(engine)
    assert all(row["llm_categoria"] is None and not row["llm_processed"] for row in rows)
    assert all(row["llm_claimed_by"] is None and row["llm_attempts"] == 0 for row in rows)  # claims given back
    assert _run(resources, batch_size=5).output_for_node("categorize_backlog") == 5


def test_reprocess_job_resets_a_selection_for_the_sensor(resources, engine):
    db.insert_new(engine, sample_rows(6))
    _run(resources)
    low = min(row["llm_confianza"] for row in _rows(engine))
    result = reprocess_noticias_job.execute_in_process(
        run_config={"ops": {"reset_noticias_selection": {"config": {"max_confianza": low + 1e-9}}}},
        resources=resources,
    )
    assert result.output_for_node("reset_noticias_selection") == 1
    assert resources["noticias_db"].count_claimable() == 1


def _tick(database_url, instance, batch_size, max_parallel_runs):
    claiming = NoticiasDatabase(url=database_url, batch_size=batch_size, max_parallel_runs=max_parallel_runs)
    with dg.build_sensor_context(instance=instance, resources={"noticias_db": claiming}) as context:
        return uncategorized_noticias_sensor.evaluate_tick(context)


def test_sensor_skips_until_the_table_exists(tmp_path):
    with dg.instance_for_test() as instance:
        tick = _tick(f"sqlite:///{tmp_path / 'new.db'}", instance, batch_size=10, max_parallel_runs=1)
    assert not tick.run_requests and "no noticias table yet" in tick.skip_message


def test_sensor_launches_one_run_per_batch_up_to_the_cap_and_skips_when_idle(database_url, engine):
    claiming = {"batch_size": 10, "max_parallel_runs": 3}
    with dg.instance_for_test() as instance:
        idle = _tick(database_url, instance, **claiming)
        assert not idle.run_requests and "no uncategorised noticias" in idle.skip_message
        db.insert_new(engine, sample_rows(25))
        tick = _tick(database_url, instance, **claiming)
        assert len(tick.run_requests) == 3
        db.insert_new(engine, sample_rows(60, prefix="more"))
        capped = _tick(database_url, instance, **claiming)
        assert len(capped.run_requests) == 3
        assert not {r.run_key for r in tick.run_requests} & {r.run_key for r in capped.run_requests}


def test_sensor_counts_runs_waiting_or_started_and_never_launches_runs_that_would_find_nothing(database_url, engine):
    claiming = {"batch_size": 10, "max_parallel_runs": 5}
    db.insert_new(engine, sample_rows(25))
    with dg.instance_for_test() as instance:
        instance.create_run_for_job(categorize_noticias_job, status=dg.DagsterRunStatus.NOT_STARTED)
        tick = _tick(database_url, instance, **claiming)
        assert len(tick.run_requests) == 2  # 3 batches' worth, 1 run already waiting
        instance.create_run_for_job(categorize_noticias_job, status=dg.DagsterRunStatus.STARTED)
        assert len(_tick(database_url, instance, **claiming).run_requests) == 1  # a started run drains too
        instance.create_run_for_job(categorize_noticias_job, status=dg.DagsterRunStatus.STARTING)
        assert "3 runs already working" in _tick(database_url, instance, **claiming).skip_message


def test_a_run_with_nothing_to_claim_loads_no_model(database_url, engine, model_dir):
    """The model loads inside the step, on the first batch (after the step holds its pool slot), not before."""
    from newsllm_pipeline.resources import noticias as noticias_resources

    noticias_resources._loaded.clear()
    categorizer = TransformersCategorizerResource(model_dir=model_dir, device="cpu")
    result = _run({"noticias_db": NoticiasDatabase(url=database_url), "categorizer": categorizer, **site_devices()})
    assert result.output_for_node("categorize_backlog") == 0
    assert not noticias_resources._loaded
