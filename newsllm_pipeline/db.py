"""The `noticias` table and every statement the pipeline runs on it (PostgreSQL and SQLite).

The table is compatible with the original RSS2 system: the feed reader's columns plus the four
`llm_*` result columns. The claim/lease columns let many runs work one backlog without ever taking
the same row twice, and the failure columns keep an item's error and attempt count.
"""

from __future__ import annotations

import csv
import datetime as dt
import difflib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .text import fold

metadata = sa.MetaData()

# SQLite only auto-increments INTEGER PRIMARY KEY, PostgreSQL wants BIGINT for a growing news table.
_id_type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

noticias = sa.Table(
    "noticias",
    metadata,
    sa.Column("id", _id_type, primary_key=True, autoincrement=True),
    sa.Column("titulo", sa.Text, nullable=False),
    sa.Column("resumen", sa.Text),
    sa.Column("url", sa.String(2048), nullable=False, unique=True),
    sa.Column("fecha", sa.DateTime),
    sa.Column("fuente", sa.String(255)),
    sa.Column("feed", sa.String(2048)),
    # The feed's own category tags, "|"-joined: a weak label for training the categoriser.
    sa.Column("feed_categorias", sa.Text),
    sa.Column("ingested_at", sa.DateTime),
    sa.Column("llm_categoria", sa.String(64)),
    sa.Column("llm_confianza", sa.Float),
    sa.Column("llm_processed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("llm_processed_at", sa.DateTime),
    # Failure tracking: attempts that ended in an error on this item, and the last error.
    sa.Column("llm_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("llm_error", sa.Text),
    # Claim lease: the run that holds the row and since when (expired leases are claimable again).
    sa.Column("llm_claimed_by", sa.String(64)),
    sa.Column("llm_claimed_at", sa.DateTime),
    # An editor's category for the item (a trusted label for training) and when it was given.
    sa.Column("categoria_revisada", sa.String(64)),
    sa.Column("revisada_at", sa.DateTime),
)

sa.Index(
    "ix_noticias_unprocessed",
    noticias.c.id,
    postgresql_where=noticias.c.llm_processed.is_(False),
    sqlite_where=noticias.c.llm_processed.is_(False),
)

LLM_COLUMNS = ("llm_categoria", "llm_confianza", "llm_processed", "llm_processed_at")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def create_db_engine(url: str) -> Engine:
    """An engine that gives every transaction the isolation the claim needs.

    SQLite has no row locks: a transaction that starts with BEGIN IMMEDIATE holds the database's
    write lock, so two claims are serialised (the other waits up to `timeout` seconds).
    """
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # let SQLAlchemy's BEGIN below be the only one
            dbapi_connection.execute("PRAGMA journal_mode=WAL")

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def upgrade(engine: Engine) -> list[str]:
    """Create `noticias`, or add the columns and index an existing table lacks. Never drops or
    rewrites data. Returns what was changed, for the log."""
    inspector = sa.inspect(engine)
    if not inspector.has_table("noticias"):
        metadata.create_all(engine)
        return ["created table noticias"]
    changes = []
    existing = {col["name"] for col in inspector.get_columns("noticias")}
    with engine.begin() as conn:
        for column in noticias.columns:
            if column.name in existing:
                continue
            ddl = sa.schema.CreateColumn(column).compile(dialect=engine.dialect)
            conn.exec_driver_sql(f"ALTER TABLE noticias ADD COLUMN {ddl}")
            changes.append(f"added column {column.name}")
    index_names = {ix["name"] for ix in sa.inspect(engine).get_indexes("noticias")}
    for index in noticias.indexes:
        if index.name not in index_names:
            index.create(engine)
            changes.append(f"created index {index.name}")
    return changes


@dataclass(frozen=True)
class ClaimedItem:
    id: int
    titulo: str
    resumen: str | None


@dataclass(frozen=True)
class Categorized:
    id: int
    categoria: str
    confianza: float


@dataclass(frozen=True)
class Failed:
    id: int
    error: str


def _claimable(max_attempts: int, lease: dt.timedelta, now: dt.datetime):
    return sa.and_(
        noticias.c.llm_processed.is_(False),
        noticias.c.llm_attempts < max_attempts,
        sa.or_(noticias.c.llm_claimed_at.is_(None), noticias.c.llm_claimed_at < now - lease),
    )


def count_claimable(engine: Engine, max_attempts: int, lease: dt.timedelta) -> int:
    with engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(noticias).where(_claimable(max_attempts, lease, utcnow()))
        return conn.execute(query).scalar_one()


def claim_batch(
    engine: Engine,
    claimant: str,
    size: int,
    max_attempts: int,
    lease: dt.timedelta,
    exclude: Collection[int] = (),
) -> list[ClaimedItem]:
    """Atomically take up to `size` claimable rows for `claimant` (a run id), oldest first, except the ids in
    `exclude` (rows this run already tried: a failure is retried by a later run, not at once).

    PostgreSQL: FOR UPDATE SKIP LOCKED, so concurrent claims take disjoint rows without waiting.
    SQLite: the transaction holds the write lock from its BEGIN IMMEDIATE.
    """
    now = utcnow()
    claimable = _claimable(max_attempts, lease, now)
    if exclude:
        claimable = sa.and_(claimable, noticias.c.id.not_in(list(exclude)))
    candidates = sa.select(noticias.c.id).where(claimable).order_by(noticias.c.id).limit(size)
    if engine.dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    claim = (
        sa.update(noticias)
        .where(noticias.c.id.in_(candidates.scalar_subquery()))
        .values(llm_claimed_by=claimant, llm_claimed_at=now)
        .returning(noticias.c.id, noticias.c.titulo, noticias.c.resumen)
    )
    with engine.begin() as conn:
        rows = conn.execute(claim).all()
    return sorted((ClaimedItem(*row) for row in rows), key=lambda item: item.id)


def record_results(engine: Engine, claimant: str, categorized: Sequence[Categorized], failed: Sequence[Failed]) -> int:
    """Write a batch's outcome in one transaction: all rows or none. Only rows still held by
    `claimant` are written (a row whose lease expired and was taken by another run is left to it).
    Returns the number of rows written."""
    now = utcnow()
    mine = sa.and_(noticias.c.id == sa.bindparam("row_id"), noticias.c.llm_claimed_by == claimant)
    written = 0
    with engine.begin() as conn:
        if categorized:
            result = conn.execute(
                sa.update(noticias)
                .where(mine)
                .values(
                    llm_categoria=sa.bindparam("categoria"),
                    llm_confianza=sa.bindparam("confianza"),
                    llm_processed=True,
                    llm_processed_at=now,
                    llm_error=None,
                    llm_claimed_by=None,
                    llm_claimed_at=None,
                ),
                [{"row_id": c.id, "categoria": c.categoria, "confianza": c.confianza} for c in categorized],
            )
            written += result.rowcount
        if failed:
            result = conn.execute(
                sa.update(noticias)
                .where(mine)
                .values(
                    llm_attempts=noticias.c.llm_attempts + 1,
                    llm_error=sa.bindparam("error"),
                    llm_claimed_by=None,
                    llm_claimed_at=None,
                ),
                [{"row_id": f.id, "error": f.error[:2000]} for f in failed],
            )
            written += result.rowcount
    return written


def release_claims(engine: Engine, claimant: str) -> int:
    """Give back every row `claimant` still holds, untouched, so the next run takes them."""
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(noticias)
            .where(noticias.c.llm_claimed_by == claimant)
            .values(llm_claimed_by=None, llm_claimed_at=None)
        )
    return result.rowcount


@dataclass(frozen=True)
class Selection:
    """Which categorised rows to reset for re-categorisation. Empty fields select everything."""

    categoria: str | None = None
    max_confianza: float | None = None
    fecha_desde: dt.datetime | None = None
    fecha_hasta: dt.datetime | None = None
    include_failed: bool = True

    def where(self):
        clauses = []
        if self.categoria is not None:
            clauses.append(noticias.c.llm_categoria == self.categoria)
        if self.max_confianza is not None:
            clauses.append(noticias.c.llm_confianza < self.max_confianza)
        if self.fecha_desde is not None:
            clauses.append(noticias.c.fecha >= self.fecha_desde)
        if self.fecha_hasta is not None:
            clauses.append(noticias.c.fecha < self.fecha_hasta)
        processed = noticias.c.llm_processed.is_(True)
        if self.include_failed:
            processed = sa.or_(processed, noticias.c.llm_attempts > 0)
        return sa.and_(processed, *clauses)


def reset_for_reprocessing(engine: Engine, selection: Selection) -> int:
    """Clear the LLM columns and failure count of the selected rows; the sensor picks them up."""
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(noticias)
            .where(selection.where())
            .values(
                llm_categoria=None,
                llm_confianza=None,
                llm_processed=False,
                llm_processed_at=None,
                llm_attempts=0,
                llm_error=None,
            )
        )
    return result.rowcount


@dataclass(frozen=True)
class RejectedItem:
    """A row the database cannot hold, and why."""

    row: dict
    reason: str


@dataclass(frozen=True)
class InsertResult:
    new: int
    rejected: tuple[RejectedItem, ...] = ()


def _without_nul(row: dict) -> dict:
    """PostgreSQL text cannot hold NUL (SQLite can); it carries no meaning in a feed, so it is dropped on both."""
    return {key: value.replace("\x00", "") if isinstance(value, str) else value for key, value in row.items()}


def _unstorable_reason(row: dict) -> str | None:
    """Why a column of `noticias` cannot hold a value of `row` (checked before the database says it less clearly)."""
    for key, value in row.items():
        if not isinstance(value, str):
            continue
        length = getattr(noticias.c[key].type, "length", None) if key in noticias.c else None
        if length is not None and len(value) > length:
            return f"{key} is {len(value):,} characters, over the column's {length:,}"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            return f"{key} is not valid Unicode text ({error.reason} at character {error.start})"
    return None


def _insert_each(conn, statement, rows: list[dict]) -> tuple[int, list[RejectedItem]]:
    """Insert `rows` in one statement; if the database refuses it, row by row (a savepoint each), so one value
    it cannot hold rejects only its own row."""
    try:
        with conn.begin_nested():
            conn.execute(statement, rows)
        return len(rows), []
    except (sa.exc.SQLAlchemyError, UnicodeError):
        pass  # find the rows it refuses
    inserted, rejected = 0, []
    for row in rows:
        try:
            with conn.begin_nested():
                conn.execute(statement, [row])
            inserted += 1
        except (sa.exc.SQLAlchemyError, UnicodeError) as error:
            reason = getattr(error, "orig", None) or error
            rejected.append(RejectedItem(row, f"the database refused it ({str(reason).splitlines()[0]})"))
    return inserted, rejected


def insert_new(engine: Engine, rows: Iterable[dict]) -> InsertResult:
    """Insert feed items whose url is not in the table yet; returns how many were new and the items the table
    cannot hold (with the reason), which are left out while every other item is stored.

    NUL characters are removed from every text value first. Items are deduplicated by url among themselves,
    and each insert skips a url that a concurrent ingestion wrote meanwhile (ON CONFLICT DO NOTHING on both
    dialects).
    """
    by_url, rejected = {}, []
    for row in map(_without_nul, rows):
        reason = _unstorable_reason(row)
        if reason:
            rejected.append(RejectedItem(row, reason))
        else:
            by_url.setdefault(row["url"], row)
    if not by_url:
        return InsertResult(0, tuple(rejected))
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    now = utcnow()
    with engine.begin() as conn:
        known = set()
        urls = list(by_url)
        for start in range(0, len(urls), 500):
            chunk = urls[start : start + 500]
            known.update(conn.execute(sa.select(noticias.c.url).where(noticias.c.url.in_(chunk))).scalars())
        new_rows = [{**row, "ingested_at": now} for url, row in by_url.items() if url not in known]
        inserted = 0
        if new_rows:
            statement = insert(noticias).on_conflict_do_nothing(index_elements=["url"])
            inserted, refused = _insert_each(conn, statement, new_rows)
            rejected.extend(refused)
    return InsertResult(inserted, tuple(rejected))


def fetch_categorized(engine: Engine) -> list[dict]:
    """Every categorised row, for statistics and review."""
    columns = [
        noticias.c.id,
        noticias.c.titulo,
        noticias.c.fuente,
        noticias.c.llm_categoria,
        noticias.c.llm_confianza,
    ]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(*columns).where(noticias.c.llm_processed.is_(True)).order_by(noticias.c.id))
        return [dict(row._mapping) for row in rows]


def status_counts(engine: Engine, max_attempts: int) -> dict[str, int]:
    """Backlog overview: processed, pending, failed-for-good, currently claimed."""
    c = noticias.c
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.count().filter(c.llm_processed.is_(True)),
                sa.func.count().filter(sa.and_(c.llm_processed.is_(False), c.llm_attempts >= max_attempts)),
                sa.func.count().filter(c.llm_claimed_by.is_not(None)),
            ).select_from(noticias)
        ).one()
    total, processed, exhausted, claimed = row
    return {
        "total": total,
        "processed": processed,
        "pending": total - processed - exhausted,
        "failed_permanently": exhausted,
        "claimed": claimed,
    }


@dataclass(frozen=True)
class RejectedReview:
    key: int | str
    categoria: str
    reason: str


@dataclass(frozen=True)
class ReviewResult:
    """What `mark_reviewed` did: rows written, reviews refused (with why) and keys with no row."""

    written: int
    rejected: tuple[RejectedReview, ...] = ()
    not_found: tuple[int | str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.rejected and not self.not_found


def _unknown_category_reason(categoria: str, canonical: dict[str, str]) -> str:
    close = difflib.get_close_matches(fold(categoria), list(canonical), n=1, cutoff=0.6)
    hint = f"; did you mean {canonical[close[0]]!r}?" if close else ""
    return f"unknown category {categoria!r}{hint} (allowed: {', '.join(canonical.values())})"


MAX_ROW_ID = 2**63 - 1  # BIGINT on PostgreSQL, INTEGER (64-bit) on SQLite


def row_id(text: str) -> int | None:
    """`text` as a row id: ASCII digits (not `²` or `٣`, which Python also calls digits) within the id
    column's range; None when no row can have it."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if 1 <= value <= MAX_ROW_ID else None


def _key_problem(key) -> str | None:
    """Why `key` can name no row (None when it can): an id outside the column's range, or no text."""
    if isinstance(key, int) and not isinstance(key, bool):
        return None if 1 <= key <= MAX_ROW_ID else f"id {key} is outside the id range (1 to {MAX_ROW_ID:,})"
    if isinstance(key, str) and key.strip().isdigit():  # only non-ASCII digits reach here: `²`, `٣`
        return f"{key!r} is not a row id (only the digits 0-9 make one) nor a url"
    if isinstance(key, str) and key.strip():
        return None
    return f"{key!r} is neither a row id nor a url"


def mark_reviewed(
    engine: Engine, reviews: Iterable[tuple[int | str, str]], categories: Sequence[str] | None = None
) -> ReviewResult:
    """Record editors' categories: each review is (row id, or url, and categoria). A category is matched
    to `categories` (default: the 15 default ones) ignoring case and accents and stored in its canonical
    spelling; an unknown one is rejected with the reason while the other reviews are written, all in one
    transaction. Keys with no row are reported as not found. A later review of a row replaces an earlier
    one, also within one call."""
    if categories is None:
        from .categorizer.prompt import DEFAULT_CATEGORIES

        categories = DEFAULT_CATEGORIES
    canonical = {fold(category): category for category in categories}
    rejected: list[RejectedReview] = []
    valid: list[tuple[int | str, str]] = []
    for key, categoria in reviews:
        categoria = (categoria or "").strip()
        if problem := _key_problem(key):
            rejected.append(RejectedReview(key, categoria, problem))
        elif fold(categoria) not in canonical:
            rejected.append(RejectedReview(key, categoria, _unknown_category_reason(categoria, canonical)))
        else:
            valid.append((key.strip() if isinstance(key, str) else key, canonical[fold(categoria)]))
    ids = sorted({key for key, _ in valid if isinstance(key, int)})
    urls = sorted({key for key, _ in valid if isinstance(key, str)})
    row_of: dict[int | str, int] = {}  # key -> row id, for the keys that have a row
    categoria_of_row: dict[int, str] = {}
    with engine.begin() as conn:
        for keys, column in ((ids, noticias.c.id), (urls, noticias.c.url)):
            for start in range(0, len(keys), 500):
                query = sa.select(column, noticias.c.id).where(column.in_(keys[start : start + 500]))
                row_of.update((key, row_id) for key, row_id in conn.execute(query))
        for key, categoria in valid:
            if key in row_of:
                categoria_of_row[row_of[key]] = categoria
        if categoria_of_row:
            conn.execute(
                sa.update(noticias)
                .where(noticias.c.id == sa.bindparam("row_id"))
                .values(categoria_revisada=sa.bindparam("categoria"), revisada_at=utcnow()),
                [{"row_id": row_id, "categoria": categoria} for row_id, categoria in categoria_of_row.items()],
            )
    not_found = tuple(dict.fromkeys(key for key, _ in valid if key not in row_of))
    return ReviewResult(written=len(categoria_of_row), rejected=tuple(rejected), not_found=not_found)


def import_reviews_csv(engine: Engine, path: Path, categories: Sequence[str] | None = None) -> ReviewResult:
    """Mark the items of a CSV as reviewed: a header with `url` or `id` (a row may fill either) and
    `categoria`. Rows without a usable key are rejected with their line number; see `mark_reviewed`."""
    path = Path(path)
    with open(path, encoding="utf-8-sig", newline="") as file:
        reader = csv.DictReader(file)
        columns = set(reader.fieldnames or ())
        if "categoria" not in columns or not columns & {"url", "id"}:
            raise ValueError(f"{path}: needs a header with a categoria column and a url or id column, got {columns}")
        reviews: list[tuple[int | str, str]] = []
        rejected: list[RejectedReview] = []
        for row in reader:
            given_id, url, categoria = (row.get("id") or "").strip(), (row.get("url") or "").strip(), row["categoria"]
            line = f"{path.name}:{reader.line_num}"
            if given_id and row_id(given_id) is None:
                rejected.append(RejectedReview(line, categoria or "", f"id {given_id!r} is not a row id"))
            elif given_id or url:
                reviews.append((row_id(given_id) if given_id else url, categoria or ""))
            else:
                rejected.append(RejectedReview(line, categoria or "", "neither id nor url"))
    result = mark_reviewed(engine, reviews, categories)
    return ReviewResult(result.written, tuple(rejected) + result.rejected, result.not_found)


def fetch_labelled(engine: Engine) -> list[dict]:
    """Rows that may carry a training label: every row, as its url's section may give one (besides an
    editor's review or the feed's own category tags)."""
    c = noticias.c
    columns = [c.id, c.url, c.titulo, c.resumen, c.fuente, c.feed_categorias, c.categoria_revisada, c.llm_categoria]
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(sa.select(*columns).order_by(c.id))]
