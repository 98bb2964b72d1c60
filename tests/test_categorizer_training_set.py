"""Trusted category labels: editors' reviews, feed tags mapped to the categories, and the held-out split."""

from __future__ import annotations

import csv
import json

import pyarrow.parquet as pq
import sqlalchemy as sa
from click.testing import CliRunner

from newsllm_pipeline import db, settings
from newsllm_pipeline.categorizer import DEFAULT_CATEGORIES
from newsllm_pipeline.categorizer.training_set import (
    FEED_TAG_CATEGORIES,
    URL_SECTION_CATEGORIES,
    build_labelled_set,
    read_labelled_split,
    real_item_key,
    split_real_items,
    trusted_label,
    url_section_label,
    url_sections,
    with_real_items,
    write_labelled_set,
)
from newsllm_pipeline.cli import main
from newsllm_pipeline.feeds import ingest_feeds, parse_feed
from newsllm_pipeline.files import read_jsonl

SAMPLE_FEEDS = sorted(str(path) for path in (settings.PROJECT_HOME / "data" / "feeds").glob("*.xml"))
LABELS_CSV = settings.PROJECT_HOME / "data" / "feeds" / "labels.csv"
REAL_ITEMS = settings.PROJECT_HOME / "data" / "noticias_reales" / "items.jsonl"


def _hand_labels() -> dict[str, str]:
    with open(LABELS_CSV, encoding="utf-8") as file:
        return {row["url"]: row["categoria"] for row in csv.DictReader(file)}


def _sample_rows() -> list[dict]:
    """The sample feeds' items as rows, with ids as the table would give them."""
    rows = [row for feed in SAMPLE_FEEDS for row in parse_feed(feed)[0]]
    return [{**row, "id": number, "categoria_revisada": None} for number, row in enumerate(rows, start=1)]


def _reviewed(engine) -> dict[int, tuple[str | None, object]]:
    with engine.connect() as conn:
        query = sa.select(db.noticias.c.id, db.noticias.c.categoria_revisada, db.noticias.c.revisada_at)
        return {row_id: (categoria, at) for row_id, categoria, at in conn.execute(query)}


def test_reviews_by_id_and_url_are_written_and_bad_ones_reported_without_stopping_the_rest(engine):
    ingest_feeds(engine, SAMPLE_FEEDS)
    untagged = next(row for row in _sample_rows() if not row["feed_categorias"])
    assert len(db.fetch_labelled(engine)) == 240  # every row: its url section may label it
    with engine.connect() as conn:
        first, second, third, untagged_id = (
            conn.execute(sa.select(db.noticias.c.id).where(db.noticias.c.url == url)).scalar_one()
            for url in (
                "https://eldiarionacional.example/loterias/loteria-navidad-numero-mas-buscado-60.html",
                "https://eldiarionacional.example/medio-ambiente/espana-cop31-antalya-metano-57.html",
                "https://eldiarionacional.example/sucesos/incendio-edificio-benimaclet-59.html",
                untagged["url"],
            )
        )
    result = db.mark_reviewed(
        engine,
        [
            (first, "Otros"),
            ("https://eldiarionacional.example/medio-ambiente/espana-cop31-antalya-metano-57.html", "medio ambiente"),
            (third, "Deporte"),
            (untagged["url"], "ECONOMIA"),
            (10**9, "Salud"),
            ("https://nowhere.example/x", "Salud"),
        ],
    )
    assert result.written == 3 and not result.ok
    assert [(r.key, r.categoria) for r in result.rejected] == [(third, "Deporte")]
    assert "did you mean 'Deportes'?" in result.rejected[0].reason
    assert result.not_found == (10**9, "https://nowhere.example/x")
    reviewed = _reviewed(engine)
    assert {row_id: categoria for row_id, (categoria, _) in reviewed.items() if categoria} == {
        first: "Otros",
        second: "Medio Ambiente",
        untagged_id: "Economía",
    }
    assert reviewed[first][1] is not None and reviewed[third] == (None, None)


def test_a_review_wins_over_the_feed_and_tags_naming_two_categories_give_no_label():
    def row(tags, review=None):
        return {"feed_categorias": tags, "categoria_revisada": review, "url": "https://x.example/2026/10/a.html"}

    assert trusted_label(row("Deportes|Fútbol", review="Economía")) == ("Economía", "reviewed")
    assert trusted_label(row("Fútbol|Deportes")) == ("Deportes", "feed")
    assert trusted_label(row("Economía|Turismo")) == ("Economía", "feed")  # the unmapped tag is ignored
    assert trusted_label(row("SUCESOS")) == ("Seguridad", "feed")
    assert trusted_label(row("Política|España")) is None  # Política or Nacional: ambiguous
    assert trusted_label(row("Ayuntamiento")) is None and trusted_label(row(None)) is None
    site_map = {**FEED_TAG_CATEGORIES, "ayuntamiento": "Política"}
    assert trusted_label(row("Ayuntamiento"), tag_map=site_map) == ("Política", "feed")
    assert trusted_label(row("Deportes", review="Deportes"), categories=("Local", "Resto")) is None


def test_url_sections_are_the_path_segments_before_the_slug_without_dates_ids_or_generic_ones():
    assert url_sections("https://elpais.com/deportes/2025-06-28/kilian-jornet.html") == ["deportes"]
    assert url_sections("https://www.elmundo.es/ciencia-y-salud/salud/2025/01/01/6776.html") == [
        "ciencia y salud",
        "salud",
    ]
    assert url_sections("https://www.20minutos.es/noticia/5664131/0/rey-federico/") == ["rey federico"]
    assert url_sections("https://es.example/es/amp/Economía/") == ["economia"]
    assert url_sections("not a url") == [] and url_sections(None) == []


def test_the_outermost_known_url_section_names_the_category():
    assert url_section_label("https://www.marca.com/futbol/premios-the-best/2023/02/27/63fc.html") == "Deportes"
    assert url_section_label("https://www.elmundo.es/ciencia-y-salud/salud/2025/01/01/6776.html") == "Salud"
    assert url_section_label("https://www.abc.es/espana/madrid/ayuso-20250101-nt.html") == "Nacional"
    assert url_section_label("https://www.eluniversal.com.mx/nacion/fotos-avion-aifa/") == "Nacional"
    assert url_section_label("https://www.lavanguardia.com/internacional/20250101/123/x.html") == "Internacional"
    assert url_section_label("https://x.example/medio-ambiente/cop31.html") == "Medio Ambiente"
    assert url_section_label("https://cnnespanol.cnn.com/2024/11/16/zelensky-trump/") is None
    assert url_section_label("https://x.example/opinion/tribuna.html") is None  # filed either way: not mapped
    assert url_section_label("https://x.example/opinion/tribuna.html", {"opinion": "Otros"}) == "Otros"
    assert URL_SECTION_CATEGORIES["sanidad"] == FEED_TAG_CATEGORIES["sanidad"] == "Salud"


def test_url_section_labels_an_untagged_row_and_a_disagreeing_one_is_ambiguous():
    def row(tags, url, review=None):
        return {"feed_categorias": tags, "categoria_revisada": review, "url": url}

    sport = "https://x.example/deportes/2026/10/01/final.html"
    assert trusted_label(row(None, sport)) == ("Deportes", "url")
    assert trusted_label(row("Fútbol", sport)) == ("Deportes", "feed")  # both agree: the tags are named
    assert trusted_label(row("Economía", sport)) is None  # the tags and the url disagree
    assert trusted_label(row("Economía", sport, review="Economía")) == ("Economía", "reviewed")
    assert trusted_label(row(None, "https://x.example/2026/10/01/final.html")) is None


def test_url_sections_agree_with_the_hand_labels_of_the_sample():
    labels = _hand_labels()
    by_url = [(row["url"], url_section_label(row["url"])) for row in _sample_rows()]
    labelled = [(url, label) for url, label in by_url if label]
    agreed = sum(label == labels[url] for url, label in labelled)
    assert len(labelled) >= 120  # of 240 items, 180 have a section in their url
    assert agreed / len(labelled) >= 0.95


def test_feed_tags_agree_with_the_hand_labels_of_the_sample():
    labels = _hand_labels()
    trusted = [(row["url"], trusted_label(row)) for row in _sample_rows()]
    feed_labelled = [(url, label) for url, label in trusted if label]
    agreed = sum(label[0] == labels[url] for url, label in feed_labelled)
    assert len(feed_labelled) >= 180  # of 240 items, 206 with tags
    assert agreed / len(feed_labelled) >= 0.95


def test_an_item_keeps_its_side_of_the_split_as_rows_are_added_and_reviewed():
    rows = _sample_rows()
    before = build_labelled_set(rows[:120], min_reviewed_eval=0)
    labels = _hand_labels()
    after = build_labelled_set([{**row, "categoria_revisada": labels[row["url"]]} for row in rows])
    before_train, before_eval = {i.url for i in before.train}, {i.url for i in before.eval}
    after_train, after_eval = {i.url for i in after.train}, {i.url for i in after.eval}
    assert before_eval and before_train <= after_train and before_eval <= after_eval
    assert not before_eval & after_train


def test_the_real_set_splits_by_url_or_section_page_and_headline_and_items_never_change_side():
    rows = read_jsonl(REAL_ITEMS)
    train, dev = split_real_items(rows)
    assert len(train) + len(dev) == len(rows) and 0.15 < len(dev) / len(rows) < 0.25
    dev_keys = {real_item_key(row) for row in dev}
    assert not dev_keys & {real_item_key(row) for row in train}
    assert any(row["url"] is None for row in dev)  # section-page items are split by page and headline
    # Fewer rows, shuffled, or more rows: each item stays on its side.
    shuffled_train, shuffled_dev = split_real_items(list(reversed(rows[::3])))
    assert {real_item_key(row) for row in shuffled_dev} == dev_keys & {real_item_key(row) for row in rows[::3]}
    assert not {real_item_key(row) for row in shuffled_train} & dev_keys


def _real_row(titulo: str, url: str | None, categoria: str, section_url: str | None = None) -> dict:
    return {"titulo": titulo, "resumen": None, "url": url, "section_url": section_url, "categoria": categoria}


def _dev_and_train_urls(count: int) -> tuple[list[str], list[str]]:
    """Urls that `split_real_items` puts in development and in train."""
    urls = [f"https://real.example/politica/nota-{n}.html" for n in range(count)]
    train, dev = split_real_items([_real_row(f"t{n}", url, "Política") for n, url in enumerate(urls)])
    return [row["url"] for row in dev], [row["url"] for row in train]


def _train_side_section_page_item() -> dict:
    """A headline without url, from a section page, that `split_real_items` puts in train."""
    pages = [_real_row(f"Sin url, titular {n}", None, "Ciencia", "https://real.example/ciencia/") for n in range(20)]
    return split_real_items(pages)[0][0]


def test_real_items_join_train_their_dev_split_is_held_out_and_duplicates_are_merged():
    table = build_labelled_set(_sample_rows(), min_reviewed_eval=0)
    table_item = table.train[0]
    dev_urls, train_urls = _dev_and_train_urls(40)
    real = [
        _real_row("Un titular de desarrollo", dev_urls[0], "Política"),
        _real_row("Un titular para entrenar", train_urls[0], "Economía"),
        section_page := _train_side_section_page_item(),
        # Same url as a table item, another label: the table's label wins, no duplicate.
        _real_row("Otro título", table_item.url, "Otros"),
        # Same headline as a table item, punctuation and accents aside.
        _real_row(table_item.text.split("\n")[0].upper() + "!", train_urls[1], "Otros"),
        # A table item's headline held out as development: it leaves train.
        _real_row(table.train[1].text.split("\n")[0], dev_urls[1], table.train[1].categoria),
        _real_row("Categoría que no existe", train_urls[2], "Farándula"),
    ]
    merged = with_real_items(table, real, DEFAULT_CATEGORIES)

    assert [item.text for item in merged.real_dev] == ["Un titular de desarrollo", table.train[1].text.split("\n")[0]]
    assert {item.source for item in merged.real_dev} == {"real"}
    real_train = [item for item in merged.train if item.source == "real"]
    assert {item.text for item in real_train} == {"Un titular para entrenar", section_page["titulo"]}
    assert all(item.id < 0 for item in real_train) and real_item_key(section_page) in {i.url for i in real_train}
    assert table.train[1] not in merged.train and table_item in merged.train
    assert not {item.url for item in merged.train} & {item.url for item in merged.real_dev}
    assert merged.eval == table.eval
    assert (merged.stats.real_train, merged.stats.real_dev) == (len(real_train), 2)
    assert merged.stats.train == len(merged.train) == len(table.train) - 1 + len(real_train)


def test_the_shipped_real_set_merges_and_its_dev_split_is_written_beside_train(tmp_path):
    rows = read_jsonl(REAL_ITEMS)
    merged = with_real_items(build_labelled_set(_sample_rows(), min_reviewed_eval=0), rows, DEFAULT_CATEGORIES)
    _, dev = split_real_items(rows)
    assert len(merged.real_dev) == len(dev) and merged.stats.real_train > 900
    folder = write_labelled_set(merged, tmp_path / "set")
    assert read_labelled_split(folder / "real_dev.jsonl") == merged.real_dev
    assert read_labelled_split(folder / "train.jsonl") == merged.train
    assert not {i.url for i in merged.train} & {real_item_key(row) for row in dev}


def test_eval_keeps_to_reviewed_items_once_there_are_enough():
    rows = _sample_rows()
    labels = _hand_labels()
    partly_reviewed = [
        {**row, "categoria_revisada": labels[row["url"]] if n % 2 else None} for n, row in enumerate(rows)
    ]
    few = build_labelled_set(partly_reviewed, min_reviewed_eval=1000)
    enough = build_labelled_set(partly_reviewed, min_reviewed_eval=5)
    assert {item.source for item in few.eval} == {"reviewed", "feed"}
    assert {item.source for item in enough.eval} == {"reviewed"}
    assert enough.stats.eval_reviewed == enough.stats.eval == few.stats.eval_reviewed
    assert enough.stats.held_out_feed == few.stats.eval - enough.stats.eval > 0
    assert few.train == enough.train


def test_sample_feeds_with_the_hand_labels_give_a_training_set_over_the_categories(engine, tmp_path):
    ingest_feeds(engine, SAMPLE_FEEDS)
    result = db.import_reviews_csv(engine, LABELS_CSV)
    assert (result.written, result.rejected, result.not_found) == (240, (), ())
    labelled = build_labelled_set(db.fetch_labelled(engine))
    stats = labelled.stats
    assert len(stats.categories["train"]) >= 14 and stats.eval > 0
    assert stats.eval_reviewed == stats.eval and stats.train + stats.eval == 240
    assert stats.feed_agreed / stats.feed_checked >= 0.95
    assert stats.url_checked >= 120 and stats.url_agreed / stats.url_checked >= 0.95

    folder = write_labelled_set(labelled, tmp_path / "categorizer_training_set")
    assert read_labelled_split(folder / "train.jsonl") == labelled.train
    assert read_labelled_split(folder / "eval.jsonl") == labelled.eval
    assert pq.read_table(folder / "eval.parquet").to_pylist() == [
        json.loads(line) for line in (folder / "eval.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert json.loads((folder / "stats.json").read_text(encoding="utf-8")) == stats.as_dict()


def test_review_command_imports_a_csv_and_reviews_one_item(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    assert runner.invoke(main, ["ingest", *SAMPLE_FEEDS, "--url", url]).exit_code == 0

    imported = runner.invoke(main, ["review", "--file", str(LABELS_CSV), "--url", url])
    assert imported.exit_code == 0, imported.output
    assert "240 written, 0 rejected, 0 not found" in imported.output

    single = runner.invoke(main, ["review", "1", "sociedad", "--url", url])
    assert single.exit_code == 0 and "1 written" in single.output
    assert _reviewed(db.create_db_engine(url))[1][0] == "Sociedad"

    bad = tmp_path / "bad.csv"
    bad.write_text("id,categoria\n2,Salud\n3,Farándula\nabc,Salud\n99999,Salud\n", encoding="utf-8")
    result = runner.invoke(main, ["review", "--file", str(bad), "--url", url])
    assert result.exit_code == 1
    assert "1 written, 2 rejected, 1 not found" in result.output
    assert "unknown category 'Farándula'" in result.output and "not found: 99999" in result.output

    assert runner.invoke(main, ["review", "1", "Farándula", "--url", url]).exit_code == 1
    assert runner.invoke(main, ["review", "--url", url]).exit_code == 2  # nothing to review: usage error


def test_the_adapter_trains_on_each_item_with_its_summary_and_as_a_headline_alone():
    from newsllm_pipeline.categorizer.adapter import with_headline_only

    texts, labels = with_headline_only(["Gol en el descuento\nEl Betis gana la Copa", "Sube el IPC"], ["D", "E"])
    assert texts == ["Gol en el descuento\nEl Betis gana la Copa", "Sube el IPC", "Gol en el descuento"]
    assert labels == ["D", "E", "D"]
