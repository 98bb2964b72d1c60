"""Categorisation in batches: claim rows, ask the model, write every outcome of a batch in one transaction;
a draining run repeats that until the backlog is empty or its time budget is spent."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from .. import db
from .answers import CategorizationError, Prediction
from .prompt import item_text

log = logging.getLogger(__name__)

LINGER_POLL_S = 0.5  # how often a lingering run looks for new rows (one indexed query)

Categorize = Callable[[Sequence[str]], Sequence[Prediction | CategorizationError]]


@dataclass(frozen=True)
class Claim:
    """Who claims rows of which table, how many at a time, and the table's claiming rules."""

    engine: Engine
    claimant: str  # a run id
    size: int
    max_attempts: int
    lease: dt.timedelta


@dataclass
class BatchOutcome:
    claimed: list[db.ClaimedItem] = field(default_factory=list)
    categorized: list[db.Categorized] = field(default_factory=list)
    failed: list[db.Failed] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def items_per_second(self) -> float:
        return len(self.claimed) / self.seconds if self.seconds else 0.0


def run_batch(
    claim: Claim, categorize: Categorize, logger: logging.Logger | None = None, exclude: Collection[int] = ()
) -> BatchOutcome:
    """Claim up to `claim.size` rows (except `exclude`), categorise them and record the results.

    Items the model cannot categorise are recorded as failed (error kept, attempt counted) and retried
    by later runs up to `max_attempts`. If the model or the database fails for the whole batch, the
    claims are given back untouched and the error propagates: nothing is half-written.
    """
    logger = logger or log
    claimed = db.claim_batch(claim.engine, claim.claimant, claim.size, claim.max_attempts, claim.lease, exclude)
    outcome = BatchOutcome(claimed=claimed)
    if not outcome.claimed:
        return outcome
    started = time.perf_counter()
    try:
        results = categorize([item_text(item.titulo, item.resumen) for item in outcome.claimed])
        for item, result in zip(outcome.claimed, results, strict=True):
            if isinstance(result, Prediction):
                outcome.categorized.append(db.Categorized(item.id, result.categoria, result.confianza))
            else:
                outcome.failed.append(db.Failed(item.id, str(result)))
                logger.warning("noticia %s not categorised: %s", item.id, result)
        outcome.seconds = time.perf_counter() - started
        db.record_results(claim.engine, claim.claimant, outcome.categorized, outcome.failed)
    except BaseException:
        _give_back(claim, logger)
        raise
    return outcome


def drain(
    claim: Claim,
    categorize: Categorize,
    time_budget_s: float,
    max_batches: int | None = None,
    logger: logging.Logger | None = None,
    linger_s: float = 0.0,
    poll_s: float = LINGER_POLL_S,
) -> Iterator[BatchOutcome]:
    """Batch after batch until nothing is left to claim, `max_batches` are done or `time_budget_s` is spent
    (checked between batches, so a run ends within one batch of its budget). Each batch is committed before
    the next is claimed: a crash loses at most the batch in hand, whose claims are given back (or expire).
    Rows that failed in this run are not claimed again by it; later runs retry them.
    With nothing left, the run lingers `linger_s` seconds (within its budget), looking for new rows every
    `poll_s`: a noticia that arrives then is categorised by the loaded model at once, with no run to start."""
    logger = logger or log
    started = time.monotonic()
    failed: set[int] = set()
    batches = 0
    idle_since = None
    while max_batches is None or batches < max_batches:
        outcome = run_batch(claim, categorize, logger, exclude=failed)
        if not outcome.claimed:
            now = time.monotonic()
            idle_since = idle_since if idle_since is not None else now
            if now - idle_since >= linger_s or now - started >= time_budget_s:
                return
            time.sleep(poll_s)
            continue
        idle_since = None
        failed.update(row.id for row in outcome.failed)
        batches += 1
        yield outcome
        if time.monotonic() - started >= time_budget_s:
            logger.info("time budget of %.0f s spent after %d batches", time_budget_s, batches)
            return


def _give_back(claim: Claim, logger: logging.Logger) -> None:
    try:
        released = db.release_claims(claim.engine, claim.claimant)
        logger.warning("batch failed; released %d claimed noticias for the next run", released)
    except SQLAlchemyError as error:
        logger.error("batch failed and the claims could not be released (%s); they expire with the lease", error)
