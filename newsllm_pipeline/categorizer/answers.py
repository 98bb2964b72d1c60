"""What a categoriser answers for an item: a prediction or an error. Plain data, no model code, so callers that only
read answers (the batch runner, a remote client, the code location) import no torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prediction:
    categoria: str
    # Probability among the categories; None where the method gives none (a free-form answer without one).
    confianza: float | None
    # Probability of every category, for review tools and calibration.
    probabilities: dict[str, float]


class CategorizationError(Exception):
    """An item the model could not categorise (an empty text, an answer that is not a category)."""
