"""Trusted category labels from `noticias`, split into a training set for the categoriser.

A label is trusted when an editor reviewed the item (`categoria_revisada`, always wins) or when the
feed's own category tags map to exactly one category (`FEED_TAG_CATEGORIES`). The train/eval side of
an item is fixed by a hash of its url, so it never changes as the table grows or items get reviewed;
the eval split keeps to reviewed items once there are enough of them (`min_reviewed_eval`).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy.engine import Engine

from .. import db
from ..documents.dataset import stable_hash
from ..files import read_jsonl, staged_folder
from ..text import fold
from .prompt import DEFAULT_CATEGORIES, item_text

TRAIN_JSONL = "train.jsonl"
EVAL_JSONL = "eval.jsonl"
TRAIN_PARQUET = "train.parquet"
EVAL_PARQUET = "eval.parquet"
STATS_JSON = "stats.json"

REVIEWED = "reviewed"
FEED = "feed"

# Skip reasons, as they appear in the stats.
AMBIGUOUS = "ambiguous"  # the feed's tags map to more than one category
NO_MAPPED_TAG = "no_mapped_tag"
REVIEW_NOT_IN_CATEGORIES = "review_not_in_categories"  # reviewed under another category set
NO_TEXT = "no_text"

# Feed section tags as Spanish newsrooms name them, and the category an editor files them under. Tags
# that could go either way are left out on purpose (an unmapped tag is ignored when another tag maps):
# Ayuntamiento (local politics, services or events), Política económica (the sample's hand labels file
# budget votes under Política, tax receipts under Economía), El tiempo (weather: Medio Ambiente or Otros),
# Turismo, Motor, Energía, Transporte, Infraestructuras (Economía or Nacional by story), Tribunales,
# Europa, and country names (a country is "Nacional" or "Internacional" depending on the newsroom).
_FEED_TAGS = {
    **{category: category for category in DEFAULT_CATEGORIES},
    "Elecciones": "Política",
    "Mercados": "Economía",
    "Bolsa": "Economía",
    "Empresas": "Economía",
    "Finanzas": "Economía",
    "Empleo": "Economía",
    "Trabajo": "Economía",
    "Vivienda": "Economía",  # prices, mortgages and rents: the economy desk, in the sample labels too
    "Materias primas": "Economía",
    "Inteligencia artificial": "Tecnología",
    "Internet": "Tecnología",
    "Telecomunicaciones": "Tecnología",
    "Startups": "Tecnología",
    "Ciberseguridad": "Tecnología",  # attacks and flaws in software, not policing
    "Móviles": "Tecnología",
    "Espacio": "Ciencia",
    "Astronomía": "Ciencia",
    "Sanidad": "Salud",
    "Medicina": "Salud",
    "Fútbol": "Deportes",
    "Baloncesto": "Deportes",
    "Tenis": "Deportes",
    "Ciclismo": "Deportes",
    "Balonmano": "Deportes",
    "Atletismo": "Deportes",
    "Rugby": "Deportes",
    "Fórmula 1": "Deportes",
    "Motociclismo": "Deportes",
    "Televisión": "Entretenimiento",
    "TV": "Entretenimiento",
    "Espectáculos": "Entretenimiento",
    "Gente": "Entretenimiento",
    "Famosos": "Entretenimiento",
    "Corazón": "Entretenimiento",
    "Música": "Entretenimiento",  # pop concerts and charts; classical music comes tagged Cultura
    "Cine": "Entretenimiento",  # releases and box office; film culture comes tagged Cultura
    "Series": "Entretenimiento",
    "Cine y TV": "Entretenimiento",
    "Mundo": "Internacional",
    "España": "Nacional",
    "Igualdad": "Sociedad",
    "Libros": "Cultura",
    "Literatura": "Cultura",
    "Arte": "Cultura",
    "Teatro": "Cultura",
    "Medio ambiente": "Medio Ambiente",
    "Cambio climático": "Medio Ambiente",
    "Universidad": "Educación",
    "Universidades": "Educación",
    "Sucesos": "Seguridad",
    "Narcotráfico": "Seguridad",
    "Curiosidades": "Otros",
    "Loterías": "Otros",
    "Lotería": "Otros",
}
FEED_TAG_CATEGORIES: dict[str, str] = {fold(tag): category for tag, category in _FEED_TAGS.items()}


@dataclass(frozen=True)
class LabelledItem:
    id: int
    url: str
    text: str
    categoria: str
    source: str  # "reviewed" or "feed"


@dataclass(frozen=True)
class LabelledSetStats:
    train: int
    eval: int
    eval_reviewed: int
    categories: dict[str, dict[str, int]]  # split -> categoria -> items
    sources: dict[str, dict[str, int]]  # split -> source -> items
    skipped: dict[str, int]  # reason -> rows without a trusted label
    # Eval-side items with a feed label left out of eval because it has enough reviewed ones (never trained on).
    held_out_feed: int
    # Reviewed items whose feed tags also give a label, and how many of those agree with the review.
    feed_checked: int
    feed_agreed: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LabelledSet:
    train: list[LabelledItem]
    eval: list[LabelledItem]
    stats: LabelledSetStats


def _feed_label(feed_categorias: str | None, tag_map: Mapping[str, str], categories: Sequence[str]) -> str | None:
    """The one category the feed's tags map to; AMBIGUOUS or NO_MAPPED_TAG as the reason there is none."""
    tags = (fold(tag).strip() for tag in (feed_categorias or "").split("|"))
    mapped = {tag_map[tag] for tag in tags if tag in tag_map and tag_map[tag] in categories}
    if len(mapped) > 1:
        return AMBIGUOUS
    return mapped.pop() if mapped else NO_MAPPED_TAG


def _label(row: Mapping, tag_map: Mapping[str, str], categories: Sequence[str]) -> tuple[str, str] | str:
    """(categoria, source), or the reason the row has no trusted label."""
    reviewed = row.get("categoria_revisada")
    if reviewed:
        canonical = {fold(category): category for category in categories}
        return (canonical[fold(reviewed)], REVIEWED) if fold(reviewed) in canonical else REVIEW_NOT_IN_CATEGORIES
    label = _feed_label(row.get("feed_categorias"), tag_map, categories)
    return (label, FEED) if label in categories else label


def trusted_label(
    row: Mapping, tag_map: Mapping[str, str] = FEED_TAG_CATEGORIES, categories: Sequence[str] = DEFAULT_CATEGORIES
) -> tuple[str, str] | None:
    """(categoria, source) of a `noticias` row (a dict with `categoria_revisada` and `feed_categorias`):
    the editor's review if there is one ("reviewed"), else the category its feed tags map to ("feed").
    `tag_map` maps folded tags (`text.fold`) to categories; unmapped tags are ignored, and tags mapping to
    two different categories make the row ambiguous: None, as for a row with no mapped tag."""
    label = _label(row, tag_map, categories)
    return label if isinstance(label, tuple) else None


def is_eval_side(url: str, eval_share: float, seed: int = 13) -> bool:
    """Whether an item is held out: decided by its url alone, so it never changes side."""
    return stable_hash(f"{seed}\n{url}") / 2**64 < eval_share


def build_labelled_set(
    rows: Iterable[Mapping],
    eval_share: float = 0.2,
    categories: Sequence[str] = DEFAULT_CATEGORIES,
    tag_map: Mapping[str, str] = FEED_TAG_CATEGORIES,
    min_reviewed_eval: int = 30,
    seed: int = 13,
) -> LabelledSet:
    """Items with a trusted label (rows as `db.fetch_labelled` returns them), split by a hash of the url.

    Eval-side items never go to train. The eval split holds the eval-side items with a trusted label,
    except that once at least `min_reviewed_eval` of them are reviewed, it holds only reviewed ones (a
    feed tag is a guess at the editors' answer; a test set should be their answer). Sizes and counts per
    category, source and skip reason are in `stats`."""
    if not 0 <= eval_share < 1:
        raise ValueError(f"eval_share must be in [0, 1), got {eval_share}")
    train: list[LabelledItem] = []
    held_out: list[LabelledItem] = []
    skipped: Counter[str] = Counter()
    feed_checked = feed_agreed = 0
    for row in rows:
        label = _label(row, tag_map, categories)
        if isinstance(label, str):
            skipped[label] += 1
            continue
        text = item_text(row.get("titulo"), row.get("resumen"))
        if not text:
            skipped[NO_TEXT] += 1
            continue
        categoria, source = label
        if source == REVIEWED:
            feed = _feed_label(row.get("feed_categorias"), tag_map, categories)
            if feed in categories:
                feed_checked += 1
                feed_agreed += feed == categoria
        item = LabelledItem(id=row["id"], url=row["url"], text=text, categoria=categoria, source=source)
        (held_out if is_eval_side(item.url, eval_share, seed) else train).append(item)
    reviewed_held_out = [item for item in held_out if item.source == REVIEWED]
    evaluation = reviewed_held_out if len(reviewed_held_out) >= max(min_reviewed_eval, 1) else held_out
    splits = {"train": train, "eval": evaluation}
    stats = LabelledSetStats(
        train=len(train),
        eval=len(evaluation),
        eval_reviewed=len(reviewed_held_out),
        categories={
            name: {c: n for c in categories if (n := sum(item.categoria == c for item in items))}
            for name, items in splits.items()
        },
        sources={name: dict(Counter(item.source for item in items)) for name, items in splits.items()},
        skipped=dict(skipped),
        held_out_feed=len(held_out) - len(evaluation),
        feed_checked=feed_checked,
        feed_agreed=feed_agreed,
    )
    return LabelledSet(train=train, eval=evaluation, stats=stats)


_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("url", pa.string()),
        ("text", pa.string()),
        ("categoria", pa.string()),
        ("source", pa.string()),
    ]
)


def write_labelled_set(labelled: LabelledSet, out_dir: Path) -> Path:
    """train/eval as JSONL and Parquet plus `stats.json`, written into a folder beside out_dir that then
    replaces it: a failure leaves the previous set. Returns out_dir."""
    if not labelled.train:
        raise ValueError(
            f"{out_dir}: no item with a trusted label to train on; mark categories as reviewed "
            "(`newsllm review`) or ingest feeds whose category tags map to the categories"
        )
    out_dir = Path(out_dir)
    with staged_folder(out_dir) as staging:
        for items, jsonl, parquet in (
            (labelled.train, TRAIN_JSONL, TRAIN_PARQUET),
            (labelled.eval, EVAL_JSONL, EVAL_PARQUET),
        ):
            rows = [asdict(item) for item in items]
            with open(staging / jsonl, "w", encoding="utf-8") as file:
                file.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            pq.write_table(pa.Table.from_pylist(rows, schema=_SCHEMA), staging / parquet)
        (staging / STATS_JSON).write_text(
            json.dumps(labelled.stats.as_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
    return out_dir


def read_labelled_split(path: Path) -> list[LabelledItem]:
    """The items of a `train.jsonl` or `eval.jsonl` written by `write_labelled_set`."""
    return [LabelledItem(**row) for row in read_jsonl(path)]


def import_reviews_csv(engine: Engine, path: Path, categories: Sequence[str] | None = None) -> db.ReviewResult:
    """Mark the items of a CSV as reviewed: a header with `url` or `id` (a row may fill either) and
    `categoria`. Rows without a usable key are rejected with their line number; see `db.mark_reviewed`."""
    path = Path(path)
    with open(path, encoding="utf-8-sig", newline="") as file:
        reader = csv.DictReader(file)
        columns = set(reader.fieldnames or ())
        if "categoria" not in columns or not columns & {"url", "id"}:
            raise ValueError(f"{path}: needs a header with a categoria column and a url or id column, got {columns}")
        reviews: list[tuple[int | str, str]] = []
        rejected: list[db.RejectedReview] = []
        for row in reader:
            row_id, url, categoria = (row.get("id") or "").strip(), (row.get("url") or "").strip(), row["categoria"]
            line = f"{path.name}:{reader.line_num}"
            if row_id and not row_id.isdigit():
                rejected.append(db.RejectedReview(line, categoria or "", f"id {row_id!r} is not a row id"))
            elif row_id or url:
                reviews.append((int(row_id) if row_id else url, categoria or ""))
            else:
                rejected.append(db.RejectedReview(line, categoria or "", "neither id nor url"))
    result = db.mark_reviewed(engine, reviews, categories)
    return db.ReviewResult(result.written, tuple(rejected) + result.rejected, result.not_found)
