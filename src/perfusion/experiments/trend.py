"""Does a beta sweep move the way the method says, beyond its noise?

Lower beta should give images more like the concept, higher beta images more like the prompt. A sweep generates
the same prompts with the same seeds at every beta, so each prompt gives its own (paired) slope of a metric over
beta; the mean of those slopes and its standard error across prompts say whether the sweep rises, falls, or is flat
within noise. "Monotone in the expected direction within noise" = no metric moves significantly the wrong way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Sign of each metric's change as beta rises (a higher beta shuts the gate on more tokens: less concept, more prompt).
EXPECTED_SIGN = {"fidelity": -1, "recognised": -1, "alignment": 1}
SIGNIFICANCE = 2.0  # |mean slope| above this many standard errors counts as a real trend (about 95%)


@dataclass(frozen=True)
class Trend:
    metric: str
    slope: float  # change of the metric per unit of beta, the mean over prompts of each prompt's least-squares slope
    stderr: float  # standard error of that mean across prompts (nan with a single prompt)
    prompts: int
    verdict: str  # "as expected", "opposite", "flat within noise" or "unmeasured"

    def describe(self) -> str:
        return f"{self.metric} {self.slope:+.3f} +- {self.stderr:.3f} per unit beta ({self.verdict})"


def least_squares_slope(xs: list[float], ys: list[float]) -> float:
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread


def metric_trend(metric: str, betas: list[float], per_prompt: list[tuple[float, ...]], toward_prompt: int = 1) -> Trend:
    """per_prompt[i][p]: the metric of prompt p at betas[i]. `toward_prompt` -1: a knob whose rise means more concept
    (a LoRA's scale), so the expected signs flip."""
    prompts = len(per_prompt[0])
    slopes = [least_squares_slope(betas, [values[p] for values in per_prompt]) for p in range(prompts)]
    mean = sum(slopes) / prompts
    if prompts < 2:
        return Trend(metric, mean, math.nan, prompts, "unmeasured")
    stderr = math.sqrt(sum((s - mean) ** 2 for s in slopes) / (prompts - 1) / prompts)
    if abs(mean) <= SIGNIFICANCE * stderr:
        verdict = "flat within noise"
    else:
        verdict = "as expected" if math.copysign(1, mean) == EXPECTED_SIGN[metric] * toward_prompt else "opposite"
    return Trend(metric, mean, stderr, prompts, verdict)


def sweep_trends(
    betas: list[float], per_prompt_by_beta: list[dict[str, tuple[float, ...]]], toward_prompt: int = 1
) -> list[Trend]:
    """One Trend per metric that every beta scored per prompt (none for a sweep of fewer than two betas)."""
    if len(set(betas)) < 2:
        return []
    metrics = [
        m
        for m in EXPECTED_SIGN  # a metric with a nan anywhere (fidelity with no image accepted) is not paired
        if all(scores.get(m) and not any(math.isnan(v) for v in scores[m]) for scores in per_prompt_by_beta)
    ]
    return [metric_trend(m, list(betas), [scores[m] for scores in per_prompt_by_beta], toward_prompt) for m in metrics]


def monotone_within_noise(trends: list[Trend]) -> bool | None:
    """True when no metric moves significantly against the method's direction; None when nothing was measured."""
    measured = [trend for trend in trends if trend.verdict != "unmeasured"]
    return all(trend.verdict != "opposite" for trend in measured) if measured else None
