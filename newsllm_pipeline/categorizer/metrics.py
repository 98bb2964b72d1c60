"""How good the categoriser's answers and confidences are on labelled items: accuracy, macro-F1, expected
calibration error, accuracy at coverage, and the confidence under which an item should go to an editor.

A confidence means something when the items answered with confidence c are right about a fraction c of the
time (calibration) and when keeping only the most confident answers raises accuracy (selective accuracy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class QualityReport:
    items: int
    accuracy: float
    macro_f1: float
    ece: float  # expected calibration error, 10 equal-width confidence bins
    accuracy_at_half: float  # accuracy on the most confident half of the items
    mean_confidence_right: float | None
    mean_confidence_wrong: float | None

    def as_dict(self) -> dict:
        return {key: round(value, 4) if isinstance(value, float) else value for key, value in asdict(self).items()}


def macro_f1(truth: Sequence[str], predicted: Sequence[str | None], labels: Sequence[str] | None = None) -> float:
    """Mean F1 over the categories present in the truth (or `labels`); an unanswered item is wrong."""
    labels = sorted(set(truth)) if labels is None else list(labels)
    scores = []
    for label in labels:
        true_positive = sum(t == label and p == label for t, p in zip(truth, predicted, strict=True))
        predicted_positive = sum(p == label for p in predicted)
        actual_positive = sum(t == label for t in truth)
        precision = true_positive / predicted_positive if predicted_positive else 0.0
        recall = true_positive / actual_positive if actual_positive else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Sum over equal-width confidence bins of (share of items in the bin) x |accuracy - mean confidence|."""
    if not confidences:
        return 0.0
    total, error = len(confidences), 0.0
    for index in range(bins):
        low, high = index / bins, (index + 1) / bins
        members = [
            (c, ok) for c, ok in zip(confidences, correct, strict=True) if low < c <= high or (index == 0 and c == 0.0)
        ]
        if members:
            accuracy = sum(ok for _, ok in members) / len(members)
            confidence = sum(c for c, _ in members) / len(members)
            error += len(members) / total * abs(accuracy - confidence)
    return error


def accuracy_at_coverage(confidences: Sequence[float], correct: Sequence[bool], coverage: float = 0.5) -> float:
    """Accuracy on the `coverage` share of items with the highest confidence (at least one item)."""
    if not confidences:
        return 0.0
    ranked = sorted(zip(confidences, correct, strict=True), key=lambda pair: -pair[0])
    kept = ranked[: max(1, round(coverage * len(ranked)))]
    return sum(ok for _, ok in kept) / len(kept)


def quality_report(
    truth: Sequence[str], predicted: Sequence[str | None], confidences: Sequence[float]
) -> QualityReport:
    """All the measures at once; `confidences` are the answers' probabilities (0 for an unanswered item)."""
    correct = [t == p for t, p in zip(truth, predicted, strict=True)]
    right = [c for c, ok in zip(confidences, correct, strict=True) if ok]
    wrong = [c for c, ok in zip(confidences, correct, strict=True) if not ok]
    return QualityReport(
        items=len(truth),
        accuracy=sum(correct) / len(correct) if correct else 0.0,
        macro_f1=macro_f1(truth, predicted),
        ece=expected_calibration_error(confidences, correct),
        accuracy_at_half=accuracy_at_coverage(confidences, correct, 0.5),
        mean_confidence_right=sum(right) / len(right) if right else None,
        mean_confidence_wrong=sum(wrong) / len(wrong) if wrong else None,
    )


def review_threshold(confidences: Sequence[float], correct: Sequence[bool], target_accuracy: float) -> float:
    """The lowest confidence at which the answers at or above it are right at least `target_accuracy` of the
    time on labelled items: items under it go to an editor. 1.0 when no confident set reaches the target."""
    ranked = sorted(zip(confidences, correct, strict=True), key=lambda pair: -pair[0])
    threshold, right = 1.0, 0
    for count, (confidence, ok) in enumerate(ranked, start=1):
        right += ok
        if right / count >= target_accuracy:
            threshold = confidence
    return threshold
