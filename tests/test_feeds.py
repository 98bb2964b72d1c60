"""Feed ingestion: RSS and Atom files, deduplication, malformed feeds reported without losing the rest."""

from __future__ import annotations

import functools
import http.server
import threading

import sqlalchemy as sa
from click.testing import CliRunner

from newsllm_pipeline import db
from newsllm_pipeline.cli import main
from newsllm_pipeline.feeds import ingest_feeds, parse_feed
from tests.conftest import FEEDS


def _rows(engine):
    with engine.connect() as conn:
        return conn.execute(sa.select(db.noticias).order_by(db.noticias.c.url)).mappings().all()


def test_rss_and_atom_items_become_noticias_with_their_feed_categories(engine):
    reports = ingest_feeds(engine, [str(FEEDS / "valid_rss.xml"), str(FEEDS / "valid_atom.xml")])
    assert [(r.items, r.new, r.error) for r in reports] == [(5, 5, None), (4, 4, None)]
    rows = {row["url"]: row for row in _rows(engine)}
    assert len(rows) == 9
    atom = rows["https://test.example/atom/3"]
    assert atom["resumen"] is None and atom["titulo"] and atom["feed_categorias"]
    rss = rows["https://test.example/rss/1.html"]
    assert rss["fecha"] is not None and rss["fuente"] and "<" not in rss["resumen"]
    assert all(not row["llm_processed"] for row in rows.values())


def test_a_malformed_feed_is_reported_and_the_other_feeds_are_ingested(engine):
    sources = [str(FEEDS / "malformed.xml"), str(FEEDS / "valid_rss.xml"), str(FEEDS / "missing.xml")]
    reports = ingest_feeds(engine, sources)
    assert "malformed.xml: not a readable RSS/Atom feed" in reports[0].error
    assert reports[1].new == 5 and reports[1].error is None
    assert "no such feed file" in reports[2].error
    assert len(_rows(engine)) == 5


def test_a_feed_broken_part_way_keeps_the_items_before_the_break():
    rows, warnings = parse_feed(str(FEEDS / "partially_broken.xml"))
    assert [row["url"] for row in rows] == [f"https://test.example/broken/{n}" for n in (1, 2, 3)]
    assert "malformed feed" in warnings[0] and "kept the 3 readable items" in warnings[0]


def test_items_are_deduplicated_by_url_within_a_feed_and_across_runs(engine):
    first = ingest_feeds(engine, [str(FEEDS / "duplicates.xml")])[0]
    again = ingest_feeds(engine, [str(FEEDS / "duplicates.xml")])[0]
    assert (first.new, again.new) == (3, 0)
    untitled = [row for row in _rows(engine) if not row["titulo"]]
    assert len(untitled) == 1 and untitled[0]["resumen"]


def test_cli_ingest_exits_non_zero_on_a_bad_feed_but_keeps_the_good_ones(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    result = CliRunner().invoke(
        main, ["ingest", str(FEEDS / "valid_atom.xml"), str(FEEDS / "malformed.xml"), "--url", url]
    )
    assert result.exit_code == 1
    assert "valid_atom.xml: 4 items, 4 new" in result.output
    assert "not a readable RSS/Atom feed" in result.output
    assert len(_rows(db.create_db_engine(url))) == 4


def test_feeds_are_fetched_over_http_and_a_missing_one_is_a_clear_error(engine):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(FEEDS))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        found, missing = ingest_feeds(engine, [f"{base}/valid_atom.xml", f"{base}/gone.xml"])
    finally:
        server.shutdown()
    assert (found.items, found.new, found.error) == (4, 4, None)
    assert "gone.xml: could not fetch the feed" in missing.error and "404" in missing.error
