"""One categorisation batch: claim rows, ask the model, write every outcome in one transaction."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError

from .. import db
from .labels import CategorizationError, Prediction
from .prompt import item_text

log = logging.getLogger(__name__)

Categorize = Callable[[Sequence[str]], Sequence[Prediction | CategorizationError]]


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
    engine,
    claimant: str,
    size: int,
    categorize: Categorize,
    max_attempts: int,
    lease,
    logger: logging.Logger | None = None,
) -> BatchOutcome:
    """Claim up to `size` rows for `claimant`, categorise them and record the results.

    Items the model cannot categorise are recorded as failed (error kept, attempt counted) and retried
    by later runs up to `max_attempts`. If the model or the database fails for the whole batch, the
    claims are given back untouched and the error propagates: nothing is half-written.
    """
    logger = logger or log
    outcome = BatchOutcome(claimed=db.claim_batch(engine, claimant, size, max_attempts, lease))
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
        db.record_results(engine, claimant, outcome.categorized, outcome.failed)
    except BaseException:
        _give_back(engine, claimant, logger)
        raise
    return outcome


def _give_back(engine, claimant: str, logger: logging.Logger) -> None:
    try:
        released = db.release_claims(engine, claimant)
        logger.warning("batch failed; released %d claimed noticias for the next run", released)
    except SQLAlchemyError as error:
        logger.error("batch failed and the claims could not be released (%s); they expire with the lease", error)
