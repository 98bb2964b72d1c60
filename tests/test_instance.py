"""Dagster's own storage in PostgreSQL through deploy/dagster-postgres.yaml (dagster-postgres): a job's run, and the
real daemon's sensor ticks, the run it launches and that run's events; `make dev` picks the file by the settings."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from newsllm_pipeline import db
from newsllm_pipeline.jobs.noticias import categorize_noticias_job, reprocess_noticias_job
from newsllm_pipeline.processes import LoggedProcess, dagster_daemon, group_alive
from newsllm_pipeline.resources.noticias import NoticiasDatabase
from tests.conftest import sample_rows

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"


@pytest.fixture
def postgres_home(pg_server_url, tmp_path, monkeypatch):
    """A DAGSTER_HOME with the documented dagster.yaml on a scratch database (the DAGSTER_PG_* settings set in this
    process); yields the home and the database's URL; the database is dropped afterwards."""
    server = sa.make_url(pg_server_url)
    storage_db = f"dagster_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {storage_db}")
    for name, value in {
        "DAGSTER_PG_HOST": server.host,
        "DAGSTER_PG_PORT": str(server.port or 5432),
        "DAGSTER_PG_USER": server.username,
        "DAGSTER_PG_PASSWORD": server.password or "",
        "DAGSTER_PG_DB": storage_db,
    }.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster-postgres.yaml", home / "dagster.yaml")
    storage = sa.create_engine(server.set(database=storage_db))
    try:
        yield home, storage
    finally:
        storage.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {storage_db} WITH (FORCE)")
        admin.dispose()


def test_runs_are_stored_in_postgresql_with_the_documented_dagster_yaml(postgres_home, tmp_path):
    home, storage = postgres_home
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = reprocess_noticias_job.execute_in_process(
            instance=instance,
            resources={"noticias_db": NoticiasDatabase(url=f"sqlite:///{tmp_path / 'noticias.db'}")},
            raise_on_error=False,
        )
        assert instance.get_run_by_id(result.run_id) is not None
    with storage.connect() as conn:
        stored = conn.execute(sa.text("SELECT count(*) FROM runs WHERE run_id = :id"), {"id": result.run_id})
        assert stored.scalar_one() == 1


def sensor_tick_times(instance: dg.DagsterInstance) -> list[float]:
    state = next(s for s in instance.all_instigator_state() if s.name == "uncategorized_noticias_sensor")
    return sorted(tick.timestamp for tick in instance.get_ticks(state.instigator_origin_id, state.selector_id))


@pytest.mark.slow
def test_the_daemon_keeps_ticks_runs_and_events_in_postgresql(postgres_home, tmp_path, model_dir):
    """The real `dagster-daemon` on the PostgreSQL instance: the categorisation sensor ticks every 5 s, launches a run
    for the noticia waiting, the run categorises it; ticks, the run and its events are rows in PostgreSQL."""
    home, storage = postgres_home
    url = f"sqlite:///{tmp_path / 'noticias.db'}"
    engine = db.create_db_engine(url)
    db.upgrade(engine)
    db.insert_new(engine, sample_rows(1))
    (tmp_path / "inbox").mkdir()
    site = {
        "NEWSLLM_DATABASE_URL": url,
        "NEWSLLM_FEEDS": "",
        "NEWSLLM_INBOX_DIR": str(tmp_path / "inbox"),
        "NEWSLLM_CATEGORIZER_MODEL_DIR": model_dir,
        "NEWSLLM_CATEGORIZER_ADAPTERS_DIR": str(tmp_path / "adapters"),
        "NEWSLLM_CATEGORIZE_DEVICE": "cpu",
    }
    with dagster_daemon(home, site) as daemon:
        daemon.wait_for("sensor: uncategorized_noticias_sensor", 120)
        deadline = time.monotonic() + 180
        while db.status_counts(engine, 3)["processed"] < 1:
            assert daemon.process.poll() is None and time.monotonic() < deadline, daemon.log.read_text()[-3000:]
            time.sleep(0.5)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            while not (runs := instance.get_runs(dg.RunsFilter(job_name=categorize_noticias_job.name)))[0].is_finished:
                assert time.monotonic() < deadline, daemon.log.read_text()[-3000:]
                time.sleep(0.5)
            while len(ticks := sensor_tick_times(instance)) < 6:
                assert time.monotonic() < deadline, daemon.log.read_text()[-3000:]
                time.sleep(1)
    engine.dispose()
    # The documented default interval, 5 s, is the daemon's loop: a tick at every look, none skipped.
    assert max(later - earlier for earlier, later in zip(ticks, ticks[1:], strict=False)) < 6, ticks
    assert runs[0].status == dg.DagsterRunStatus.SUCCESS
    with storage.connect() as conn:
        sql = {
            "run": "SELECT count(*) FROM runs WHERE run_id = :run_id AND status = 'SUCCESS'",
            "events": "SELECT count(*) FROM event_logs WHERE run_id = :run_id",
            "sensor ticks": "SELECT count(*) FROM job_ticks WHERE selector_id IN "
            "(SELECT selector_id FROM jobs WHERE job_body LIKE '%uncategorized_noticias_sensor%')",
            "ticks that launched": "SELECT count(*) FROM job_ticks WHERE status = 'SUCCESS'",
        }
        found = {
            name: conn.execute(sa.text(query), {"run_id": runs[0].run_id}).scalar_one() for name, query in sql.items()
        }
    assert found["run"] == 1 and found["events"] > 10, found
    assert found["sensor ticks"] >= 2 and found["ticks that launched"] >= 1, found


def test_stopping_a_daemon_leaves_nothing_of_its_process_group(tmp_path):
    """A leader that ends on SIGTERM and a child that ignores it (as a Dagster code server can outlive the daemon
    that started it): stop() kills what is left of the group."""
    command = ["sh", "-c", '(trap "" TERM; sleep 60) & exec sleep 60']
    process = LoggedProcess(command, tmp_path / "group.log")
    time.sleep(0.5)
    process.stop(stragglers_s=1)
    deadline = time.monotonic() + 5
    while group_alive(process.process.pid):
        assert time.monotonic() < deadline, "a process of the group is still running"
        time.sleep(0.1)


@pytest.mark.parametrize("settings", [{}, {"DAGSTER_PG_HOST": "db.example"}], ids=["sqlite", "postgresql"])
def test_make_dev_picks_the_instance_by_the_postgresql_settings(settings):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DAGSTER_PG_", "DAGSTER_HOME"))}
    recipe = subprocess.run(
        ["make", "-n", "dev"], cwd=ROOT, env={**env, **settings}, capture_output=True, text=True
    ).stdout
    pg_home = ROOT / "dagster_home_pg"
    if settings:
        assert f"cp deploy/dagster-postgres.yaml {pg_home}/dagster.yaml" in recipe
        assert f"DAGSTER_HOME={pg_home} " in recipe
    else:
        assert "dagster_home_pg" not in recipe and "dagster dev" in recipe
