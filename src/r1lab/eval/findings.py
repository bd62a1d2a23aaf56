"""The speedrun's findings: the lessons of the R1 paper and of on-policy distillation, checked on a run.

Each is a `report.Finding` with its verdict, its figure and 95% interval; a claim of a difference holds only
when the difference's interval lies above 0 (report.compare: paired over the same held-out problems where the
per-problem shares are kept). The students' comparison at equal compute reads the curves of eval/compare.py.
"""
from __future__ import annotations

from .compare import Curve, mean_accuracy, nearest
from .report import Finding, Stage, compare, mean_pass1, read_metrics
from .stats import fmt_points

ZERO_GAIN = 0.15  # R1-Zero: GRPO from the base lifts pass@1 by >= 15 points on at least one task
COLD_START_GAIN = 0.10  # R1 beats its own cold-start SFT by >= 10 points on at least one task
ONPOLICY_GAIN = 0.05  # on-policy distillation beats continued SFT at equal FLOPs by >= 5 points...
ONPOLICY_FLOPS_SHARE = 1 / 3  # ...or reaches continued SFT's final accuracy with <= 1/3 of its FLOPs


def _gain_finding(claim: str, key: str, stages: dict[str, Stage], tasks: list[str], pairs: list[tuple[str, str]],
                  bar: float) -> Finding:
    """Whether `a` beats `b` by >= bar on at least one task, intervals apart, for some (a, b) in pairs; the
    figure is the gain that holds (else the largest one) with its interval."""
    gains = [(diff, a, b, t) for a, b in pairs for t in tasks if a in stages and b in stages
             if (diff := compare(stages[a].evals.get(t), stages[b].evals.get(t))) is not None]
    if not gains:
        return Finding(claim, None, "not measured", key=key)

    def holds(g) -> bool:
        return g[0][0] >= bar and g[0][1] > 0

    (gain, low, high), a, b, task = best = max(gains, key=lambda g: (holds(g), g[0][0]))
    return Finding(claim, holds(best), f"best gain: {a} over {b} on {task}"
                   + ("" if low > 0 else ", inside the noise (its interval holds 0)")
                   + f"; all: {', '.join(f'{g[1]} over {g[2]}, {g[3]} {100 * g[0][0]:+.1f}' for g in gains)}",
                   figure=f"{fmt_points(gain, low, high)} {a} over {b}, {task}", value=gain, low=low, high=high, key=key)


def best_model_finding(stages: dict[str, Stage], tasks: list[str], final: str, rivals: list[str]) -> Finding:
    """The final model is the recipe's best on every task: no rival's pass@1 is above it beyond the noise.
    The figure is the final model's smallest lead (or largest deficit) over a rival, with its interval."""
    claim, key = "R1 is the recipe's best model on every task (no stage above it beyond the noise)", "R1 best on every task"
    leads = [(diff, rival, t) for rival in rivals for t in tasks if rival in stages and final in stages
             if (diff := compare(stages[final].evals.get(t), stages[rival].evals.get(t))) is not None]
    if not leads:
        return Finding(claim, None, "not measured", key=key)
    (lead, low, high), rival, task = min(leads, key=lambda g: g[0][0])
    beaten = [f"{r} on {t} ({fmt_points(*d)})" for d, r, t in leads if d[2] < 0]
    return Finding(claim, not beaten, ("above it beyond the noise: " + "; ".join(beaten)) if beaten else
                   f"its smallest lead: over {rival} on {task}" + (", inside the noise" if low <= 0 <= high else ""),
                   figure=f"{fmt_points(lead, low, high)} over {rival}, {task}", value=lead, low=low, high=high, key=key)


def no_loss_finding(stages: dict[str, Stage], tasks: list[str], chain: list[str]) -> Finding:
    """No stage of R1's pipeline loses pass@1 against the stage before it beyond the noise (a drop is allowed
    only while its interval still holds 0). The figure is the largest drop (or smallest gain)."""
    claim, key = "No stage of R1's pipeline loses more than its interval", "no R1 stage loses"
    steps = [(diff, b, a, t) for a, b in zip(chain, chain[1:]) for t in tasks if a in stages and b in stages
             if (diff := compare(stages[b].evals.get(t), stages[a].evals.get(t))) is not None]
    if not steps:
        return Finding(claim, None, "not measured", key=key)
    (move, low, high), b, a, task = min(steps, key=lambda g: g[0][0])
    lost = [f"{g[1]} after {g[2]} on {g[3]} ({fmt_points(*g[0])})" for g in steps if g[0][2] < 0]
    return Finding(claim, not lost, ("lost beyond the noise: " + "; ".join(lost)) if lost else
                   f"the weakest step: {b} after {a} on {task}; every step: "
                   + ", ".join(f"{g[1]} {g[3]} {100 * g[0][0]:+.1f}" for g in steps),
                   figure=f"{fmt_points(move, low, high)} {b} after {a}, {task}", value=move, low=low, high=high, key=key)


def onpolicy_vs_sft_finding(curves: list[Curve], tasks: list[str], onpolicy: str = "student-onpolicy",
                            sft: str = "student-distilled") -> Finding | None:
    """From one partly SFT'd student and at equal FLOPs (sampling and teacher scoring counted), on-policy
    distillation beats continued SFT by >= 5 points with intervals apart, or reaches continued SFT's final
    accuracy (its point estimate) with <= 1/3 of SFT's FLOPs."""
    by_name = {c.name: c for c in curves}
    if onpolicy not in by_name or sft not in by_name:
        return None
    onp, cont = by_name[onpolicy], by_name[sft]
    claim = (f"On-policy distillation beats continued SFT at equal FLOPs by >= {100 * ONPOLICY_GAIN:.0f} points "
             f"(intervals apart), or matches SFT's final accuracy with <= 1/3 of its FLOPs")
    key = "on-policy vs continued SFT at equal FLOPs"
    last = onp.points[-1]
    at = nearest(cont, last.flops)
    diff = compare([last.evals.get(t) for t in tasks], [at.evals.get(t) for t in tasks])
    sft_final = cont.points[-1]
    target = mean_accuracy(sft_final.evals, tasks)
    early = [p for p in onp.points[1:] if p.flops <= ONPOLICY_FLOPS_SHARE * sft_final.flops
             and target is not None and (m := mean_accuracy(p.evals, tasks)) is not None and m[0] >= target[0]]
    if diff is None:
        return Finding(claim, None, "not measured", key=key)
    gain, low, high = diff
    beats = gain >= ONPOLICY_GAIN and low > 0
    detail = (f"on-policy's final ({last.flops:.3g} FLOPs) against SFT's {at.label} ({at.flops:.3g} FLOPs, "
              f"{at.flops / max(last.flops, 1.0):.2f}x)" + ("" if low > 0 or high < 0 else ", inside the noise"))
    if early:
        detail += (f"; on-policy's {early[0].label} reached SFT's final {100 * target[0]:.1f}% with "
                   f"{early[0].flops / max(sft_final.flops, 1.0):.2f}x its FLOPs")
    elif target is not None:
        detail += f"; no on-policy checkpoint within 1/3 of SFT's FLOPs reached SFT's final {100 * target[0]:.1f}%"
    return Finding(claim, beats or bool(early), detail, figure=f"{fmt_points(gain, low, high)} on-policy vs continued SFT",
                   value=gain, low=low, high=high, key=key)


def findings(stages: dict[str, Stage], tasks: list[str], chain: list[str], final: str, curves: list[Curve] | None = None,
             zero: tuple[str, str] = ("r1-zero", "base"),
             students: tuple[str, str, str] = ("student-distilled", "student-rl", "student-base"),
             grpo_stages: list[str] | None = None) -> list[Finding]:
    """The R1 paper's lessons, checked on a run. `zero`: the R1-Zero stage and the base it starts from;
    `chain`: R1's pipeline from its cold start to the final model (`final`); `students`: distilled, RL-only,
    their base; `curves` (eval/compare.py): the students continued from one SFT'd start, at equal FLOPs;
    `grpo_stages`: whose response length is shown. Each claim of a difference passes only when the
    difference's 95% interval lies above 0 (see Finding)."""
    out = [_gain_finding(f"R1-Zero: GRPO from the base lifts pass@1 by >= {100 * ZERO_GAIN:.0f} points on at least "
                         "one task, intervals apart", f"R1-Zero over base >= {100 * ZERO_GAIN:.0f} pts", stages, tasks,
                         [zero], ZERO_GAIN)]
    if len(chain) >= 2:
        out.append(_gain_finding(f"RL after the cold start: R1 beats its cold-start SFT by >= {100 * COLD_START_GAIN:.0f} "
                                 "points on at least one task, intervals apart",
                                 f"R1 over its cold start >= {100 * COLD_START_GAIN:.0f} pts", stages, tasks,
                                 [(final, chain[0])], COLD_START_GAIN))
        out.append(no_loss_finding(stages, tasks, chain))
    rivals = [n for n in stages if n != final and "@" not in n]
    out.append(best_model_finding(stages, tasks, final, rivals))

    def evs(stage: str) -> list[dict | None]:
        return [stages[stage].evals.get(t) if stage in stages else None for t in tasks]

    distilled, rl_only, base = (mean_pass1(stages[name], tasks) if name in stages else None for name in students)
    gap = compare(evs(students[0]), evs(students[1])) if distilled and rl_only else None
    out.append(Finding(
        "The distilled student beats the RL-only student (the R1 paper's finding for small models), intervals apart",
        None if gap is None else gap[1] > 0,
        "not measured" if gap is None else
        f"mean pass@1 over tasks: {100 * distilled[0]:.1f}% distilled vs {100 * rl_only[0]:.1f}% RL-only"
        + ("" if base is None else f" (both start from the student base at {100 * base[0]:.1f}%)")
        + (", inside the noise (the interval of the difference holds 0)" if gap[1] <= 0 <= gap[2] else ""),
        figure="" if gap is None else fmt_points(*gap), key="distilled student - RL-only student",
        **({} if gap is None else dict(zip(("value", "low", "high"), gap)))))
    onp = onpolicy_vs_sft_finding(curves or [], tasks)
    if onp is not None:
        out.append(onp)
    out.append(length_trend(stages, grpo_stages if grpo_stages is not None else [zero[0], *chain[1:]]))
    return out


def length_trend(stages: dict[str, Stage], names: list[str]) -> Finding:
    """Does thinking get longer under RL, as it did for R1? (countdown rewards a longer search)"""
    trend, moves = [], []
    for name in names:
        rows = read_metrics(stages[name].metrics) if name in stages and stages[name].metrics else []
        if len(rows) >= 4:
            quarter = max(1, len(rows) // 4)
            first = sum(row["response_length"] for row in rows[:quarter]) / quarter
            last = sum(row["response_length"] for row in rows[-quarter:]) / quarter
            moves.append(last - first)
            trend.append(f"{name} {first:.0f} -> {last:.0f} tokens")
    verdict = ("grew" if all(m > 0 for m in moves) else "shrank" if all(m < 0 for m in moves) else "mixed") if moves else ""
    return Finding(f"Response length under GRPO: {verdict or 'not measured'} (R1's thinking grew with RL)", None,
                   "mean sampled response length, first vs last quarter of training: " + "; ".join(trend)
                   if trend else "no GRPO curves", observation=bool(trend), key="response length under GRPO",
                   figure=f"{verdict} ({', '.join(f'{m:+.0f}' for m in moves)} tokens)" if moves else "")
