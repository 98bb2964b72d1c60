"""Quality measures of the categoriser's answers and confidences, and the review threshold chosen from them."""

import pytest

from newsllm_pipeline.categorizer.metrics import (
    accuracy_at_coverage,
    expected_calibration_error,
    macro_f1,
    quality_report,
    review_threshold,
)


def test_macro_f1_weighs_every_category_alike():
    truth = ["Deportes"] * 8 + ["Cultura"] * 2
    always_sport = ["Deportes"] * 10
    # Deportes: precision 0.8, recall 1 -> F1 0.889; Cultura never predicted -> F1 0.
    assert macro_f1(truth, always_sport) == pytest.approx((2 * 0.8 / 1.8 + 0) / 2)
    assert macro_f1(truth, truth) == 1.0
    assert macro_f1(truth, [None] * 10) == 0.0


def test_calibration_error_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident():
    calibrated = [0.75] * 4
    assert expected_calibration_error(calibrated, [True, True, True, False]) == pytest.approx(0.0)
    overconfident = [0.95] * 4
    assert expected_calibration_error(overconfident, [True, False, False, False]) == pytest.approx(0.7)
    # Two bins: 0.2 (right 0 of 2) and 0.9 (right 2 of 2): |0-0.2|/2 + |1-0.9|/2.
    mixed = expected_calibration_error([0.2, 0.2, 0.9, 0.9], [False, False, True, True])
    assert mixed == pytest.approx(0.15)


def test_accuracy_at_coverage_keeps_the_most_confident_answers():
    confidences = [0.9, 0.8, 0.3, 0.2]
    correct = [True, True, False, False]
    assert accuracy_at_coverage(confidences, correct, 0.5) == 1.0
    assert accuracy_at_coverage(confidences, correct, 1.0) == 0.5
    report = quality_report(["A", "A", "B", "B"], ["A", "A", "A", "A"], confidences)
    assert report.accuracy == 0.5 and report.accuracy_at_half == 1.0
    assert report.mean_confidence_right == pytest.approx(0.85) and report.mean_confidence_wrong == pytest.approx(0.25)


def test_review_threshold_is_the_lowest_confidence_whose_answers_reach_the_target():
    confidences = [0.9, 0.7, 0.6, 0.4, 0.1]
    correct = [True, True, False, True, False]
    assert review_threshold(confidences, correct, 1.0) == 0.7
    assert review_threshold(confidences, correct, 0.75) == 0.4  # 3 of 4 right at or above 0.4
    assert review_threshold(confidences, [False] * 5, 0.5) == 1.0
