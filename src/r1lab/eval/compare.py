"""Accuracy against training FLOPs: several ways of continuing one model, compared at equal compute.

The speedrun's students: from one partly SFT'd student, (a) more SFT on the teacher's verified traces,
(b) on-policy distillation, (c) GRPO. Each continuation is a `Curve`: its points are the start (0 FLOPs) and
its evaluated checkpoints, each with the FLOPs spent since the start (the update, the sampling and, on-policy,
the teacher's scoring) and its evaluation per task. Nothing here trains or evaluates; it only compares.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .report import mean_and_margin


@dataclass
class Point:
    flops: float
    evals: dict[str, dict]  # task -> TaskResult.summary()
    label: str = ""  # the checkpoint ("start", "step 20", "final")


@dataclass
class Curve:
    name: str
    start: str  # the stage every curve of a comparison starts from
    points: list[Point] = field(default_factory=list)


def mean_accuracy(evals: dict[str, dict], tasks: list[str]) -> tuple[float, float] | None:
    """Mean pass@1 over the tasks and its 95% half-interval, as the report's students table has it."""
    return mean_and_margin([evals.get(t) for t in tasks])


def nearest(curve: Curve, flops: float) -> Point:
    """The point of `curve` whose FLOPs are closest to `flops` (on a log scale)."""
    return min(curve.points[1:] or curve.points, key=lambda p: abs(math.log(max(p.flops, 1.0) / max(flops, 1.0))))


def plot(curves: list[Curve], tasks: list[str], path: Path, title: str) -> Path | None:
    """One figure: mean pass@1 (95% interval as a band) against FLOPs since the shared start, one line per curve."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for curve in curves:
        rows = [(p.flops, mean_accuracy(p.evals, tasks)) for p in curve.points]
        rows = [(f, m) for f, m in rows if m is not None]
        if not rows:
            continue
        xs = [f for f, _ in rows]
        ys = [100 * m for _, (m, _) in rows]
        half = [100 * h for _, (_, h) in rows]
        line, = ax.plot(xs, ys, marker="o", label=curve.name)
        ax.fill_between(xs, [y - h for y, h in zip(ys, half)], [y + h for y, h in zip(ys, half)],
                        color=line.get_color(), alpha=0.15)
    ax.set_xlabel("FLOPs since the shared start")
    ax.set_ylabel("mean pass@1 over tasks (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(curves: list[Curve], tasks: list[str]) -> list[str]:
    lines = ["| continuation | checkpoint | FLOPs since the start | mean pass@1 (95% interval) |", "|---|---|---|---|"]
    for curve in curves:
        for p in curve.points[1:]:
            m = mean_accuracy(p.evals, tasks)
            score = "–" if m is None else f"{100 * m[0]:.1f}% ± {100 * m[1]:.1f}"
            lines.append(f"| {curve.name} | {p.label} | {p.flops:.3g} | {score} |")
    return lines
