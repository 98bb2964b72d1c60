"""Dagster's own storage in PostgreSQL through deploy/dagster-postgres.yaml (dagster-postgres)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from newsllm_pipeline.jobs.noticias import reprocess_noticias_job
from newsllm_pipeline.resources.noticias import NoticiasDatabase

DEPLOY = Path(__file__).parent.parent / "deploy"


def test_runs_are_stored_in_postgresql_with_the_documented_dagster_yaml(pg_server_url, tmp_path, monkeypatch):
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
    shutil.copy(DEPLOY / "dagster-postgres.yaml", tmp_path / "dagster.yaml")
    try:
        with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
            result = reprocess_noticias_job.execute_in_process(
                instance=instance,
                resources={"noticias_db": NoticiasDatabase(url=f"sqlite:///{tmp_path / 'noticias.db'}")},
                raise_on_error=False,
            )
            assert instance.get_run_by_id(result.run_id) is not None
        storage = sa.create_engine(server.set(database=storage_db))
        with storage.connect() as conn:
            stored = conn.execute(sa.text("SELECT count(*) FROM runs WHERE run_id = :id"), {"id": result.run_id})
            assert stored.scalar_one() == 1
        storage.dispose()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {storage_db} WITH (FORCE)")
        admin.dispose()
