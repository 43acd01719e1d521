"""The fidelity-versus-alignment chart of a beta sweep: one point per beta, one series per method."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from perfusion.errors import CommandError


@dataclass(frozen=True)
class SweepPoint:
    method: str  # series name, e.g. "perfusion (local lock)" or "textual inversion"
    fidelity: float
    alignment: float
    beta: float | None = None  # None for methods without a knob: drawn as a lone marker


def pareto_front(points: Sequence[SweepPoint]) -> list[SweepPoint]:
    """The points that no other point beats on both fidelity and alignment, by increasing alignment."""
    front = [
        point
        for point in points
        if not any(
            other.fidelity >= point.fidelity
            and other.alignment >= point.alignment
            and (other.fidelity, other.alignment) != (point.fidelity, point.alignment)
            for other in points
        )
    ]
    return sorted(front, key=lambda point: point.alignment)


def pareto_plot(
    results: Sequence[SweepPoint],
    path: str | Path,
    title: str = "beta sweep",
    fidelity_label: str = "identity fidelity (judge embedding cosine)",
    alignment_label: str = "text alignment (share of stated attributes)",
) -> Path:
    """Write a PNG: alignment on x, fidelity on y, each method's points joined in beta order and labelled by beta."""
    try:
        import matplotlib
    except ImportError:  # an optional dependency: only the experiments draw plots
        raise CommandError("the Pareto plot needs matplotlib: pip install 'perfusion[experiments]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("no sweep points to plot")
    path = Path(path)
    figure, axes = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    for method in dict.fromkeys(point.method for point in results):
        series = sorted(
            (point for point in results if point.method == method),
            key=lambda point: (point.beta is None, point.beta or 0.0),
        )
        style = "o-" if len(series) > 1 else "s"
        axes.plot([point.alignment for point in series], [point.fidelity for point in series], style, label=method)
        for point in series:
            if point.beta is not None:
                axes.annotate(
                    f"{point.beta:g}",
                    (point.alignment, point.fidelity),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                )
    axes.set_xlabel(alignment_label)
    axes.set_ylabel(fidelity_label)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
