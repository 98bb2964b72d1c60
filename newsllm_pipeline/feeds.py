"""RSS/Atom feeds (URLs or local files) into `noticias` rows, deduplicated by url."""

from __future__ import annotations

import calendar
import datetime as dt
import html
import re
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import feedparser
from sqlalchemy.engine import Engine

from . import db, settings

_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"[\s\x00]+")  # NUL (`&#0;` or raw) too: it separates words, and PostgreSQL refuses it
MB = 1024 * 1024
_CHUNK_BYTES = 64 * 1024


class FeedError(Exception):
    """A feed that yields no items: unreachable, over a limit, or not RSS/Atom at all."""


@dataclass(frozen=True)
class FeedLimits:
    """How much of a feed is read: a feed over `max_bytes`, or still arriving after `total_seconds`, is refused
    (nothing of it is stored) and the next feed is read. `read_timeout_s` bounds each wait for the server."""

    max_bytes: int = int(float(settings.SETTINGS["FEED_MAX_MB"].default_value()) * MB)
    total_seconds: float = float(settings.SETTINGS["FEED_TIMEOUT_S"].default_value())
    read_timeout_s: float = 30.0

    @classmethod
    def from_settings(cls) -> FeedLimits:
        """NEWSLLM_FEED_MAX_MB and NEWSLLM_FEED_TIMEOUT_S, else the declared defaults."""
        return cls(
            max_bytes=int(float(settings.setting("FEED_MAX_MB")) * MB),
            total_seconds=float(settings.setting("FEED_TIMEOUT_S")),
        )


@dataclass
class FeedReport:
    source: str
    items: int = 0
    new: int = 0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # items the database cannot hold, with the reason


def plain_text(fragment: str | None) -> str:
    """Feed text without markup or entities, whitespace collapsed."""
    if not fragment:
        return ""
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", fragment))).strip()


def _too_large(source: str, limits: FeedLimits) -> FeedError:
    return FeedError(
        f"{source}: the feed is larger than {limits.max_bytes / MB:.3g} MB (NEWSLLM_FEED_MAX_MB); not read"
    )


def _download(source: str, limits: FeedLimits) -> bytes:
    """The body, read in chunks against the byte cap and the overall deadline (a server that sends forever, or a
    byte at a time, is cut off; the deadline is checked between reads, each bounded by the read timeout)."""
    deadline = time.monotonic() + limits.total_seconds
    request = urllib.request.Request(source, headers={"User-Agent": "newsllm-pipeline/0.1"})
    body = bytearray()
    try:
        timeout = min(limits.read_timeout_s, limits.total_seconds)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > limits.max_bytes:
                raise _too_large(source, limits)
            while chunk := response.read1(_CHUNK_BYTES):
                body += chunk
                if len(body) > limits.max_bytes:
                    raise _too_large(source, limits)
                if time.monotonic() > deadline:
                    raise FeedError(
                        f"{source}: the feed was still arriving after {limits.total_seconds:g} s "
                        f"({len(body):,} bytes read; NEWSLLM_FEED_TIMEOUT_S); not read"
                    )
    except OSError as error:
        raise FeedError(f"{source}: could not fetch the feed ({error})") from error
    return bytes(body)


def _read(source: str, limits: FeedLimits) -> bytes:
    if re.match(r"^https?://", source):
        return _download(source, limits)
    path = Path(source.removeprefix("file://"))
    if not path.is_file():
        raise FeedError(f"{source}: no such feed file")
    if path.stat().st_size > limits.max_bytes:
        raise _too_large(source, limits)
    return path.read_bytes()


def _entry_date(entry) -> dt.datetime | None:
    parsed = entry.get("published_parsed") or entry.get("updated_parsed")
    return dt.datetime.fromtimestamp(calendar.timegm(parsed), dt.UTC).replace(tzinfo=None) if parsed else None


def parse_feed(source: str, limits: FeedLimits | None = None) -> tuple[list[dict], list[str]]:
    """The feed's items as `noticias` rows, and warnings about what was skipped.

    Raises FeedError when nothing can be read. A feed that breaks part-way keeps the items before
    the break, with a warning."""
    content = _read(source, limits or FeedLimits.from_settings())
    try:
        parsed = feedparser.parse(content)
    except Exception as error:  # feedparser's loose parser raises on some character references (&#xD800;)
        raise FeedError(f"{source}: the feed could not be parsed ({type(error).__name__}: {error})") from error
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


def ingest_feeds(engine: Engine, sources: Iterable[str], limits: FeedLimits | None = None) -> list[FeedReport]:
    """Read each feed and insert its new items. A feed that fails is reported and the others go on;
    each feed's items are inserted in one transaction, less the items the database cannot hold, which are
    reported in `rejected` with the feed and the reason."""
    limits = limits or FeedLimits.from_settings()
    reports = []
    for source in sources:
        report = FeedReport(source)
        try:
            rows, report.warnings = parse_feed(source, limits)
            report.items = len(rows)
            inserted = db.insert_new(engine, rows)
            report.new = inserted.new
            report.rejected = [f"{source}: item {item.row['url'][:80]!r}: {item.reason}" for item in inserted.rejected]
        except FeedError as error:
            report.error = str(error)
        reports.append(report)
    return reports
