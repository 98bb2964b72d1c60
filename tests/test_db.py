"""The noticias table on PostgreSQL and SQLite: migration, atomic claims, all-or-nothing writes."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
import sqlalchemy as sa

from newsllm_pipeline import db
from tests.conftest import sample_rows

LEASE = dt.timedelta(minutes=30)


def test_upgrade_adds_missing_columns_to_an_existing_table_without_touching_its_data(database_url):
    engine = db.create_db_engine(database_url)
    # The original RSS2 system's table: no failure tracking, no claim columns, no index.
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE noticias (id INTEGER PRIMARY KEY, titulo TEXT NOT NULL, resumen TEXT, "
            "url VARCHAR(2048) NOT NULL UNIQUE, fecha TIMESTAMP, fuente VARCHAR(255), "
            "llm_categoria VARCHAR(64), llm_confianza FLOAT, llm_processed BOOLEAN DEFAULT FALSE, "
            "llm_processed_at TIMESTAMP)"
        )
        conn.exec_driver_sql(
            "INSERT INTO noticias (id, titulo, url, llm_categoria, llm_confianza, llm_processed) VALUES "
            "(1, 'Ya categorizada', 'https://x/1', 'Política', 0.9, TRUE), "
            "(2, 'Pendiente', 'https://x/2', NULL, NULL, FALSE)"
        )
    changes = db.upgrade(engine)
    assert "added column llm_attempts" in changes and "created index ix_noticias_unprocessed" in changes
    assert db.upgrade(engine) == []  # idempotent
    with engine.connect() as conn:
        rows = conn.execute(sa.select(db.noticias).order_by(db.noticias.c.id)).mappings().all()
    assert [(r["titulo"], r["llm_categoria"], r["llm_confianza"], r["llm_processed"]) for r in rows] == [
        ("Ya categorizada", "Política", 0.9, True),
        ("Pendiente", None, None, False),
    ]
    assert [r["llm_attempts"] for r in rows] == [0, 0]
    # The pending row is claimable through the new columns, and items can be marked as reviewed.
    assert [item.id for item in db.claim_batch(engine, "run-a", 10, 3, LEASE)] == [2]
    assert "added column categoria_revisada" in changes and [r["categoria_revisada"] for r in rows] == [None, None]
    assert db.mark_reviewed(engine, [(1, "política"), ("https://x/2", "Salud")]).written == 2
    assert [(r["id"], r["categoria_revisada"]) for r in db.fetch_labelled(engine)] == [(1, "Política"), (2, "Salud")]


def test_concurrent_claims_take_disjoint_batches(engine):
    db.insert_new(engine, sample_rows(60))
    claims: dict[str, list[int]] = {}
    barrier = threading.Barrier(6)

    def claim(name: str) -> None:
        barrier.wait()
        ids = []
        while batch := db.claim_batch(engine, name, 4, 3, LEASE):
            ids += [item.id for item in batch]
            time.sleep(0.01)  # a run works on its batch before claiming again: without it one thread can drain all
        claims[name] = ids

    threads = [threading.Thread(target=claim, args=(f"run-{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    taken = [row_id for ids in claims.values() for row_id in ids]
    assert len(taken) == len(set(taken)) == 60
    assert sum(1 for ids in claims.values() if ids) > 1  # the work was actually shared


def test_results_are_written_for_the_claimant_only_and_failures_count_attempts(engine):
    db.insert_new(engine, sample_rows(3))
    first, second, third = db.claim_batch(engine, "run-a", 3, 3, LEASE)
    written = db.record_results(
        engine, "run-a", [db.Categorized(first.id, "Política", 0.8)], [db.Failed(second.id, "no category")]
    )
    assert written == 2
    assert db.record_results(engine, "run-b", [db.Categorized(third.id, "Salud", 0.5)], []) == 0
    with engine.connect() as conn:
        rows = {r["id"]: r for r in conn.execute(sa.select(db.noticias)).mappings()}
    assert rows[first.id]["llm_processed"] and rows[first.id]["llm_categoria"] == "Política"
    assert rows[first.id]["llm_processed_at"] is not None and rows[first.id]["llm_claimed_by"] is None
    assert not rows[second.id]["llm_processed"] and rows[second.id]["llm_categoria"] is None
    assert (rows[second.id]["llm_attempts"], rows[second.id]["llm_error"]) == (1, "no category")
    assert rows[third.id]["llm_claimed_by"] == "run-a" and not rows[third.id]["llm_processed"]


def test_failed_items_are_retried_up_to_max_attempts(engine):
    db.insert_new(engine, sample_rows(1))
    for attempt in range(3):
        (item,) = db.claim_batch(engine, f"run-{attempt}", 5, 3, LEASE)
        db.record_results(engine, f"run-{attempt}", [], [db.Failed(item.id, f"error {attempt}")])
    assert db.claim_batch(engine, "run-last", 5, 3, LEASE) == []
    assert db.status_counts(engine, 3)["failed_permanently"] == 1


def test_an_expired_claim_is_taken_over_and_released_claims_are_claimable_again(engine):
    db.insert_new(engine, sample_rows(2))
    assert len(db.claim_batch(engine, "dead-run", 2, 3, LEASE)) == 2
    assert db.claim_batch(engine, "run-b", 2, 3, LEASE) == []
    assert len(db.claim_batch(engine, "run-b", 2, 3, dt.timedelta(seconds=-1))) == 2
    assert db.release_claims(engine, "run-b") == 2
    assert len(db.claim_batch(engine, "run-c", 2, 3, LEASE)) == 2


def test_reset_selects_by_category_confidence_and_date(engine):
    rows = sample_rows(4)
    for index, row in enumerate(rows):
        row["fecha"] = dt.datetime(2026, 11, 1 + index)
    db.insert_new(engine, rows)
    items = db.claim_batch(engine, "run-a", 4, 3, LEASE)
    db.record_results(
        engine,
        "run-a",
        [
            db.Categorized(items[0].id, "Política", 0.9),
            db.Categorized(items[1].id, "Política", 0.2),
            db.Categorized(items[2].id, "Deportes", 0.1),
            db.Categorized(items[3].id, "Deportes", 0.95),
        ],
        [],
    )
    assert db.reset_for_reprocessing(engine, db.Selection(categoria="Política", max_confianza=0.5)) == 1
    assert db.reset_for_reprocessing(engine, db.Selection(fecha_desde=dt.datetime(2026, 11, 4))) == 1
    assert [item.id for item in db.claim_batch(engine, "run-b", 10, 3, LEASE)] == [items[1].id, items[3].id]


def test_insert_new_deduplicates_by_url(engine):
    assert db.insert_new(engine, sample_rows(5) + sample_rows(2)).new == 5
    assert db.insert_new(engine, sample_rows(7)).new == 2


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_connection_dropped_mid_write_leaves_nothing_half_written(engine):
    """The server kills the connection after the first UPDATE of the batch's transaction."""
    db.insert_new(engine, sample_rows(4))
    items = db.claim_batch(engine, "run-a", 4, 3, LEASE)

    @sa.event.listens_for(engine, "after_cursor_execute")
    def drop_connection(conn, cursor, statement, *args):
        if statement.startswith("UPDATE noticias SET llm_categoria"):
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    with pytest.raises(sa.exc.OperationalError):
        db.record_results(
            engine,
            "run-a",
            [db.Categorized(i.id, "Salud", 0.7) for i in items[:3]],
            [db.Failed(items[3].id, "x")],
        )
    sa.event.remove(engine, "after_cursor_execute", drop_connection)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(db.noticias)).mappings().all()
    assert all(r["llm_categoria"] is None and not r["llm_processed"] and r["llm_attempts"] == 0 for r in rows)
