"""RSS/Atom feeds (URLs or local files) into `noticias` rows, deduplicated by url."""

from __future__ import annotations

import calendar
import datetime as dt
import html
import re
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import feedparser
from sqlalchemy.engine import Engine

from . import db

FETCH_TIMEOUT_S = 30
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


class FeedError(Exception):
    """A feed that yields no items: unreachable, or not RSS/Atom at all."""


@dataclass
class FeedReport:
    source: str
    items: int = 0
    new: int = 0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


def plain_text(fragment: str | None) -> str:
    """Feed text without markup or entities, whitespace collapsed."""
    if not fragment:
        return ""
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", fragment))).strip()


def _read(source: str) -> bytes:
    if re.match(r"^https?://", source):
        request = urllib.request.Request(source, headers={"User-Agent": "newsllm-pipeline/0.1"})
        try:
            with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response:
                return response.read()
        except OSError as error:
            raise FeedError(f"{source}: could not fetch the feed ({error})") from error
    path = Path(source.removeprefix("file://"))
    if not path.is_file():
        raise FeedError(f"{source}: no such feed file")
    return path.read_bytes()


def _entry_date(entry) -> dt.datetime | None:
    parsed = entry.get("published_parsed") or entry.get("updated_parsed")
    return dt.datetime.fromtimestamp(calendar.timegm(parsed), dt.UTC).replace(tzinfo=None) if parsed else None


def parse_feed(source: str) -> tuple[list[dict], list[str]]:
    """The feed's items as `noticias` rows, and warnings about what was skipped.

    Raises FeedError when nothing can be read. A feed that breaks part-way keeps the items before
    the break, with a warning."""
    parsed = feedparser.parse(_read(source))
    warnings = []
    if parsed.bozo and not parsed.entries:
        raise FeedError(f"{source}: not a readable RSS/Atom feed ({parsed.get('bozo_exception')})")
    if parsed.bozo:
        warnings.append(
            f"{source}: malformed feed ({parsed.get('bozo_exception')}); kept the {len(parsed.entries)} readable items"
        )
    fuente = plain_text(parsed.feed.get("title")) or source
    rows = []
    for position, entry in enumerate(parsed.entries, start=1):
        url = entry.get("link") or (entry.get("id") if str(entry.get("id", "")).startswith("http") else None)
        titulo = plain_text(entry.get("title"))
        resumen = plain_text(entry.get("summary") or entry.get("description"))
        if not url:
            warnings.append(f"{source}: item {position} ({titulo[:60]!r}) has no link; skipped")
            continue
        if not titulo and not resumen:
            warnings.append(f"{source}: item {position} ({url}) has neither title nor summary; skipped")
            continue
        tags = [plain_text(tag.get("term")) for tag in entry.get("tags", []) if tag.get("term")]
        rows.append(
            {
                "titulo": titulo,
                "resumen": resumen or None,
                "url": url,
                "fecha": _entry_date(entry),
                "fuente": fuente[:255],
                "feed": source,
                "feed_categorias": "|".join(tags) or None,
            }
        )
    return rows, warnings


def ingest_feeds(engine: Engine, sources: Iterable[str]) -> list[FeedReport]:
    """Read each feed and insert its new items. A feed that fails is reported and the others go on;
    each feed's items are inserted in one transaction."""
    reports = []
    for source in sources:
        report = FeedReport(source)
        try:
            rows, report.warnings = parse_feed(source)
            report.items = len(rows)
            report.new = db.insert_new(engine, rows)
        except FeedError as error:
            report.error = str(error)
        reports.append(report)
    return reports
