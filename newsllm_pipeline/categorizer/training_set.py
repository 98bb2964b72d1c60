"""Trusted category labels from `noticias`, split into a training set for the categoriser.

A label is trusted when an editor reviewed the item (`categoria_revisada`, always wins) or when the
newsroom's own signals map to exactly one category: the feed's category tags (`FEED_TAG_CATEGORIES`)
and the section in the item's url path (`/deportes/...`, `URL_SECTION_CATEGORIES`). The train/eval side of
an item is fixed by a hash of its url, so it never changes as the table grows or items get reviewed;
the eval split keeps to reviewed items once there are enough of them (`min_reviewed_eval`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa

from ..files import read_jsonl
from ..splits import REAL_DEV_JSONL, STATS_JSON, stable_hash, write_splits
from ..text import fold, words_only
from .prompt import DEFAULT_CATEGORIES, item_text

REAL = "real"  # source of the items of the shipped real labelled set (data/noticias_reales)
REAL_EVAL_SHARE = 0.2

REVIEWED = "reviewed"
FEED = "feed"
URL_SECTION = "url"

# Skip reasons, as they appear in the stats.
AMBIGUOUS = "ambiguous"  # the feed's tags (and url section) map to more than one category
NO_MAPPED_TAG = "no_mapped_tag"  # neither a feed tag nor the url section maps to a category
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

# Url path sections as Spanish newsrooms spell them (folded, hyphens as spaces), on top of the feed tags'
# vocabulary: `/deportes/`, `/espana/`, `/mundo/`, `/ciencia-y-salud/salud/`... Left out for the same
# reasons as above: `opinion`, `local`, region and city names, `tribunales`, `motor`, `viajes`, `gastronomia`.
_URL_SECTIONS = {
    "futbol": "Deportes",
    "deporte": "Deportes",
    "baloncesto": "Deportes",
    "motogp": "Deportes",
    "formula 1": "Deportes",
    "economia": "Economía",
    "dinero": "Economía",
    "mercados": "Economía",
    "empresas": "Economía",
    "politica": "Política",
    "internacional": "Internacional",
    "mundo": "Internacional",
    "america": "Internacional",
    "latinoamerica": "Internacional",
    "estados unidos": "Internacional",
    "europa": "Internacional",
    "espana": "Nacional",
    "nacional": "Nacional",
    "nacion": "Nacional",
    "sociedad": "Sociedad",
    "cultura": "Cultura",
    "libros": "Cultura",
    "arte": "Cultura",
    "ciencia": "Ciencia",
    "tecnologia": "Tecnología",
    "tecnologia e innovacion": "Tecnología",
    "salud": "Salud",
    "sanidad": "Salud",
    "educacion": "Educación",
    "medio ambiente": "Medio Ambiente",
    "medioambiente": "Medio Ambiente",
    "clima": "Medio Ambiente",
    "clima y medio ambiente": "Medio Ambiente",
    "sucesos": "Seguridad",
    "gente": "Entretenimiento",
    "famosos": "Entretenimiento",
    "espectaculos": "Entretenimiento",
    "television": "Entretenimiento",
    "tv": "Entretenimiento",
    "series": "Entretenimiento",
    "cine": "Entretenimiento",
    "musica": "Entretenimiento",
    "loterias": "Otros",
    "curiosidades": "Otros",
}
URL_SECTION_CATEGORIES: dict[str, str] = {**FEED_TAG_CATEGORIES, **_URL_SECTIONS}

_NOT_A_SECTION = re.compile(r"^[\d ]*$|\.|^(?:[a-z]{2}|amp|noticias?|ultima hora|actualidad|portada|articulo)$")


@dataclass(frozen=True)
class LabelledItem:
    id: int
    url: str
    text: str
    categoria: str
    source: str  # "reviewed", "feed" (tags) or "url" (url section)


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
    # Reviewed items whose newsroom signals (feed tags and url section pooled) also give a label, and how
    # many of those agree with the review; the same for the url section alone.
    feed_checked: int
    feed_agreed: int
    url_checked: int = 0
    url_agreed: int = 0
    # Items of the real labelled set (data/noticias_reales) in train, and held out as its development split.
    real_train: int = 0
    real_dev: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LabelledSet:
    train: list[LabelledItem]
    eval: list[LabelledItem]
    stats: LabelledSetStats
    # The real labelled set's development items (`split_real_items`), never trained on: issue 9's measure.
    real_dev: list[LabelledItem] = field(default_factory=list)


def url_sections(url: str | None) -> list[str]:
    """The section names in a url's path, outermost first, folded with hyphens as spaces:
    "https://x.es/deportes/futbol/2026/10/01/slug.html" -> ["deportes", "futbol"]. The last segment is
    the article's own slug unless the path ends with a slash; dates, ids, language codes ("es") and
    generic segments ("noticias") are not sections."""
    path = urlsplit(url or "").path
    segments = path.strip("/").split("/")
    if not path.endswith("/"):
        segments = segments[:-1]
    folded = (fold(segment).replace("-", " ").replace("_", " ").strip() for segment in segments)
    return [segment for segment in folded if segment and not _NOT_A_SECTION.search(segment)]


def url_section_label(url: str | None, section_map: Mapping[str, str] = URL_SECTION_CATEGORIES) -> str | None:
    """The category of the outermost url section the map knows (a newsroom files `/deportes/tenis/`
    under its sports desk), or None."""
    return next((section_map[section] for section in url_sections(url) if section in section_map), None)


def _signal_label(
    row: Mapping, tag_map: Mapping[str, str], section_map: Mapping[str, str], categories: Sequence[str]
) -> tuple[str, str] | str:
    """(category, source) from the newsroom's own signals, or AMBIGUOUS / NO_MAPPED_TAG. The feed's tags
    and the url section are pooled: signals naming two categories make the row ambiguous."""
    tags = (fold(tag).strip() for tag in (row.get("feed_categorias") or "").split("|"))
    from_tags = {tag_map[tag] for tag in tags if tag in tag_map and tag_map[tag] in categories}
    section = url_section_label(row.get("url"), section_map)
    mapped = from_tags | ({section} if section in categories else set())
    if len(mapped) > 1:
        return AMBIGUOUS
    if not mapped:
        return NO_MAPPED_TAG
    return mapped.pop(), FEED if from_tags else URL_SECTION


def _label(
    row: Mapping, tag_map: Mapping[str, str], section_map: Mapping[str, str], categories: Sequence[str]
) -> tuple[str, str] | str:
    """(categoria, source), or the reason the row has no trusted label."""
    reviewed = row.get("categoria_revisada")
    if reviewed:
        canonical = {fold(category): category for category in categories}
        return (canonical[fold(reviewed)], REVIEWED) if fold(reviewed) in canonical else REVIEW_NOT_IN_CATEGORIES
    return _signal_label(row, tag_map, section_map, categories)


def trusted_label(
    row: Mapping,
    tag_map: Mapping[str, str] = FEED_TAG_CATEGORIES,
    categories: Sequence[str] = DEFAULT_CATEGORIES,
    section_map: Mapping[str, str] = URL_SECTION_CATEGORIES,
) -> tuple[str, str] | None:
    """(categoria, source) of a `noticias` row (a dict with `categoria_revisada`, `feed_categorias` and
    `url`): the editor's review if there is one ("reviewed"), else the category its feed tags map to
    ("feed"), else the category of its url section ("url"). `tag_map` maps folded tags (`text.fold`) and
    `section_map` folded url sections to categories; unmapped ones are ignored, and signals mapping to two
    different categories make the row ambiguous: None, as for a row with no mapped signal."""
    label = _label(row, tag_map, section_map, categories)
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
    section_map: Mapping[str, str] = URL_SECTION_CATEGORIES,
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
    agreement = {FEED: [0, 0], URL_SECTION: [0, 0]}  # signal -> [reviewed items it labels, agreeing]
    for row in rows:
        label = _label(row, tag_map, section_map, categories)
        if isinstance(label, str):
            skipped[label] += 1
            continue
        text = item_text(row.get("titulo"), row.get("resumen"))
        if not text:
            skipped[NO_TEXT] += 1
            continue
        categoria, source = label
        if source == REVIEWED:
            _count_agreement(agreement, row, categoria, tag_map, section_map, categories)
        item = LabelledItem(id=row["id"], url=row["url"], text=text, categoria=categoria, source=source)
        (held_out if is_eval_side(item.url, eval_share, seed) else train).append(item)
    reviewed_held_out = [item for item in held_out if item.source == REVIEWED]
    evaluation = reviewed_held_out if len(reviewed_held_out) >= max(min_reviewed_eval, 1) else held_out
    splits = {"train": train, "eval": evaluation}
    stats = LabelledSetStats(
        train=len(train),
        eval=len(evaluation),
        eval_reviewed=len(reviewed_held_out),
        categories={name: _per_category(items, categories) for name, items in splits.items()},
        sources={name: dict(Counter(item.source for item in items)) for name, items in splits.items()},
        skipped=dict(skipped),
        held_out_feed=len(held_out) - len(evaluation),
        feed_checked=agreement[FEED][0],
        feed_agreed=agreement[FEED][1],
        url_checked=agreement[URL_SECTION][0],
        url_agreed=agreement[URL_SECTION][1],
    )
    return LabelledSet(train=train, eval=evaluation, stats=stats)


def real_item_key(row: Mapping) -> str:
    """What decides a real item's side: its url, or its section page and headline where it has no url."""
    return row.get("url") or f"{row.get('section_url')}\n{row['titulo']}"


def split_real_items(rows: Iterable[Mapping], eval_share: float = REAL_EVAL_SHARE) -> tuple[list, list]:
    """(train, development) rows of the real labelled set, by a hash of `real_item_key`: an item never changes
    side. The quality benchmark and `categorizer_training_set` share this split, so the demo's adapter never
    trains on the items the benchmark measures."""
    rows = list(rows)
    dev = [is_eval_side(real_item_key(row), eval_share) for row in rows]
    return [row for row, held in zip(rows, dev, strict=True) if not held], [
        row for row, held in zip(rows, dev, strict=True) if held
    ]


def _title_key(text: str) -> str:
    """A headline folded, punctuation and spacing collapsed: the same story from two sources matches."""
    return words_only(fold(text.split("\n", 1)[0]))


def _real_item(row: Mapping, index: int) -> LabelledItem:
    return LabelledItem(
        id=-index - 1,
        url=real_item_key(row),
        text=item_text(row["titulo"], row.get("resumen")),
        categoria=row["categoria"],
        source=REAL,
    )


def with_real_items(labelled: LabelledSet, real_rows: Sequence[Mapping], categories: Sequence[str]) -> LabelledSet:
    """The table's labelled set merged with the real labelled set: its training items join train, its development
    items go to `real_dev`. The table's own label wins over a real item with the same url or headline, and a
    table item that duplicates a development item leaves train (a development item is never trained on)."""
    rows = [row for row in real_rows if row.get("categoria") in categories and row.get("titulo")]
    train_rows, dev_rows = split_real_items(rows)
    real_dev = [_real_item(row, index) for index, row in enumerate(dev_rows)]
    dev_keys = {item.url for item in real_dev} | {_title_key(item.text) for item in real_dev}
    table_train = [item for item in labelled.train if not {item.url, _title_key(item.text)} & dev_keys]
    seen = {key for item in [*labelled.train, *labelled.eval] for key in (item.url, _title_key(item.text))}
    real_train = []
    for index, row in enumerate(train_rows, start=len(dev_rows)):
        item = _real_item(row, index)
        if not {item.url, _title_key(item.text)} & (seen | dev_keys):
            real_train.append(item)
            seen |= {item.url, _title_key(item.text)}
    train = table_train + real_train
    stats = replace(
        labelled.stats,
        train=len(train),
        categories={**labelled.stats.categories, "train": _per_category(train, categories)},
        sources={**labelled.stats.sources, "train": dict(Counter(item.source for item in train))},
        real_train=len(real_train),
        real_dev=len(real_dev),
    )
    return LabelledSet(train=train, eval=labelled.eval, stats=stats, real_dev=real_dev)


def _per_category(items: Sequence[LabelledItem], categories: Sequence[str]) -> dict[str, int]:
    return {c: n for c in categories if (n := sum(item.categoria == c for item in items))}


def _count_agreement(agreement, row, reviewed, tag_map, section_map, categories) -> None:
    """Count, for a reviewed row, whether its newsroom signals alone (tags and url pooled) and its url
    section alone would have given the editor's category."""
    signal = _signal_label(row, tag_map, section_map, categories)
    if isinstance(signal, tuple):
        agreement[FEED][0] += 1
        agreement[FEED][1] += signal[0] == reviewed
    section = url_section_label(row.get("url"), section_map)
    if section in categories:
        agreement[URL_SECTION][0] += 1
        agreement[URL_SECTION][1] += section == reviewed


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
    return write_splits(
        out_dir,
        [asdict(item) for item in labelled.train],
        [asdict(item) for item in labelled.eval],
        _SCHEMA,
        jsonl={REAL_DEV_JSONL: [asdict(item) for item in labelled.real_dev]},
        json_files={STATS_JSON: labelled.stats.as_dict()},
    )


def read_labelled_split(path: Path) -> list[LabelledItem]:
    """The items of a `train.jsonl` or `eval.jsonl` written by `write_labelled_set`."""
    return [LabelledItem(**row) for row in read_jsonl(path)]
