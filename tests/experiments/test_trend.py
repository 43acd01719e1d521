"""A sweep's trend over beta: paired slopes over prompts, judged against their noise."""

import math

import pytest

from perfusion.experiments.trend import least_squares_slope, metric_trend, monotone_within_noise, sweep_trends

BETAS = [0.5, 0.7, 0.9]


def test_least_squares_slope_of_a_line():
    assert least_squares_slope(BETAS, [1.0, 0.8, 0.6]) == pytest.approx(-1.0)


def test_fidelity_falling_with_beta_is_as_expected_and_rising_is_opposite():
    falling = [(0.9, 0.8, 0.85), (0.8, 0.7, 0.76), (0.7, 0.6, 0.66)]  # three prompts, each losing 0.2 over the sweep
    trend = metric_trend("fidelity", BETAS, falling)
    assert trend.slope == pytest.approx(-0.5, abs=0.01) and trend.stderr < 0.01 and trend.verdict == "as expected"
    assert metric_trend("fidelity", BETAS[::-1], falling).verdict == "opposite"
    assert metric_trend("alignment", BETAS, falling).verdict == "opposite"  # alignment should rise with beta


def test_prompts_that_disagree_are_flat_within_noise():
    # one prompt rises steeply, two fall: the mean slope is small against the spread between prompts
    disagreeing = [(0.2, 0.5, 0.5), (0.5, 0.4, 0.4), (0.8, 0.3, 0.3)]
    trend = metric_trend("alignment", BETAS, disagreeing)
    assert trend.verdict == "flat within noise" and abs(trend.slope) < 2 * trend.stderr


def test_one_prompt_is_unmeasured_and_sweeps_need_two_betas():
    trend = metric_trend("recognised", BETAS, [(1.0,), (0.5,), (0.0,)])
    assert trend.verdict == "unmeasured" and math.isnan(trend.stderr)
    assert sweep_trends([0.7], [{"fidelity": (0.5, 0.6)}]) == []
    assert monotone_within_noise([trend]) is None


def test_sweep_trends_cover_the_metrics_every_beta_scored():
    scored = [
        {"alignment": (0.5, 0.6), "fidelity": (0.9, 0.8), "recognised": (1.0, 1.0)},
        {"alignment": (0.7, 0.8), "fidelity": (0.7, 0.6), "recognised": (0.5, 0.5)},
    ]
    trends = sweep_trends([0.5, 0.9], scored)
    assert [t.metric for t in trends] == ["fidelity", "recognised", "alignment"]
    assert [t.verdict for t in trends] == ["as expected"] * 3 and monotone_within_noise(trends) is True
    assert monotone_within_noise(sweep_trends([0.9, 0.5], scored)) is False


def test_a_metric_with_an_unscored_prompt_gets_no_trend():
    scored = [{"alignment": (0.5, 0.6), "fidelity": (math.nan, 0.8)}, {"alignment": (0.7, 0.8), "fidelity": (0.7, 0.6)}]
    assert [t.metric for t in sweep_trends([0.5, 0.9], scored)] == ["alignment"]
