"""The speedrun's "aha moment" section: does GRPO make a model check its work, and does thinking grow with it?

Two GRPO stages (recipes/cpu.yaml): `aha-zero` is R1-Zero's GRPO (accuracy + format rewards only) from a
base whose pretraining traces include a small share that verify their answer after the first pass
(tasks/arithmetic.py, `data.check`); `aha-control` is the same GRPO from a base without checking traces.
On the held-out problems this module compares each GRPO stage with its start: mean response length,
check rate (tasks.common.review), pass@1, each with its 95% interval over problems, against the issue's
targets, and draws the R1 paper's Figure 3 small (length, check rate, fix rate and accuracy over GRPO steps).
Two transcripts are picked by a rule fixed before any run: the first two held-out responses of
`aha-zero` (problems in the evaluation's order, samples in seed order) whose check says "wait" and whose
answer is right.
"""
from __future__ import annotations

import json
from pathlib import Path

from .report import Finding, Stage, plot_steps, read_metrics
from .stats import fmt_interval, fmt_points, half_width

ZERO, CONTROL = "aha-zero", "aha-control"  # the two GRPO stages; each is compared with the stage it starts from
NAMES = (ZERO, CONTROL)
TASK = "addition"
# the acceptance: length +30%, check rate x2, pass@1 +10 points (intervals excluding no change);
# the control's length within 10%
LENGTH_GAIN, CHECK_FACTOR, PASS1_GAIN, CONTROL_DRIFT = 0.30, 2.0, 0.10, 0.10


def _eval(stages: dict[str, Stage], name: str) -> dict | None:
    return (stages[name].evals.get(TASK) or None) if name in stages else None


def _change(before: dict, after: dict, key: str, ci: str) -> tuple[float, float]:
    """(after - before, its 95% half-width from the two intervals over problems, taken as independent)."""
    margin = (half_width(before.get(ci)) ** 2 + half_width(after.get(ci)) ** 2) ** 0.5
    return after[key] - before[key], margin


def aha_findings(stages: dict[str, Stage], starts: dict[str, str | None]) -> list[Finding]:
    """The finding line the issue asks for, and the verdict against its targets; [] without the aha stages.
    starts: each aha GRPO stage's start (recipe `from:`)."""
    base, zero = _eval(stages, starts.get(ZERO) or ""), _eval(stages, ZERO)
    cbase, control = _eval(stages, starts.get(CONTROL) or ""), _eval(stages, CONTROL)
    if base is None or zero is None or base.get("check_rate") is None or zero.get("check_rate") is None:
        return []
    length, length_margin = _change(base, zero, "mean_length", "mean_length_ci")
    gain, gain_margin = _change(base, zero, "pass1", "pass1_ci")
    p, q = base["check_rate"], zero["check_rate"]
    line = (f"Response length grew {base['mean_length']:.0f} → {zero['mean_length']:.0f} tokens under GRPO while the "
            f"check rate rose {100 * p:.0f}% → {100 * q:.0f}% and pass@1 rose {100 * base['pass1']:.1f}% → "
            f"{100 * zero['pass1']:.1f}%")
    if length < 0 or q < p or gain < 0:
        line = (f"Under GRPO response length went {base['mean_length']:.0f} → {zero['mean_length']:.0f} tokens, the "
                f"check rate {100 * p:.0f}% → {100 * q:.0f}% and pass@1 {100 * base['pass1']:.1f}% → {100 * zero['pass1']:.1f}%")
    drift = None
    if cbase is not None and control is not None:
        drift = control["mean_length"] / max(cbase["mean_length"], 1e-9) - 1
        line += (f"; the control without checking traces stayed at {control['mean_length']:.0f} tokens "
                 f"(from {cbase['mean_length']:.0f})" if abs(drift) < CONTROL_DRIFT else
                 f"; the control without checking traces went {cbase['mean_length']:.0f} → {control['mean_length']:.0f} tokens")
    rel = length / max(base["mean_length"], 1e-9)
    checks = [
        (rel >= LENGTH_GAIN and length > length_margin,
         f"length {100 * rel:+.0f}% ({length:+.1f} ± {length_margin:.1f} tokens)"),
        (q >= CHECK_FACTOR * p and q > p,
         f"check rate x{q / p:.1f}" if p > 0 else f"check rate {100 * p:.0f}% → {100 * q:.0f}%"),
        (gain >= PASS1_GAIN and gain > gain_margin, f"pass@1 {100 * gain:+.1f} ± {100 * gain_margin:.1f} points"),
    ]
    if drift is not None:
        checks.append((abs(drift) < CONTROL_DRIFT, f"control length {100 * drift:+.1f}%"))
    passed = all(ok for ok, _ in checks)
    verdict = ", ".join(f"{text} {'✓' if ok else '✗'}" for ok, text in checks)
    fixes = f"{100 * (base.get('fix_rate') or 0):.0f}% → {100 * (zero.get('fix_rate') or 0):.0f}%"
    waits = (f"; \"wait\" on a wrong first answer {_share(base, 'wait_wrong_guess')} → {_share(zero, 'wait_wrong_guess')}, "
             f"on a right one {_share(base, 'wait_right_guess')} → {_share(zero, 'wait_right_guess')}")
    return [Finding(line, None, f"held-out {TASK}, {base.get('n')} problems x {base.get('k')} samples; fix rate (checks "
                    f"that caught a wrong first answer and ended right) {fixes}{waits}", observation=True,
                    key="aha: length, check rate, pass@1 under GRPO",
                    figure=f"{base['mean_length']:.0f} → {zero['mean_length']:.0f} tokens, "
                           f"checks {100 * p:.0f}% → {100 * q:.0f}%"),
            Finding("Aha moment: under GRPO (accuracy + format rewards only) length grows >= 30%, the check rate at "
                    "least doubles and pass@1 gains >= 10 points, intervals excluding no change; the control's length "
                    "moves < 10%", passed, verdict + " (95% margins from the intervals over problems)",
                    figure=f"length {100 * rel:+.0f}%, pass@1 {fmt_points(gain, gain - gain_margin, gain + gain_margin)}",
                    value=gain, low=gain - gain_margin, high=gain + gain_margin, key="aha moment (aha-zero vs its base)")]


def _share(e: dict, key: str) -> str:
    return "–" if e.get(key) is None else f"{100 * e[key]:.0f}%"


def transcripts(eval_file: Path, count: int = 2) -> list[dict]:
    """The rule fixed in advance: the first `count` held-out responses (problems in order, samples in seed
    order) whose check caught a wrong first answer and that ended right."""
    if not eval_file.exists():
        return []
    picked = []
    for line in eval_file.read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        for text in row.get("fixes") or []:
            if len(picked) < count:
                picked.append({"prompt": row["prompt"], "answer": row["answer"], "response": text})
    return picked


def plot_aha(stages: dict[str, Stage], path: Path) -> Path | None:
    """The R1 paper's Figure 3 drawn small, with the check rate beside it: per GRPO step, mean response
    length, share of responses that check, share of those checks that say "wait" and end right, accuracy
    (training samples), for aha-zero and its control."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [(n, read_metrics(stages[n].metrics)) for n in (ZERO, CONTROL) if n in stages and stages[n].metrics]
    curves = [(n, rows) for n, rows in curves if rows]
    if not curves:
        return None
    panels = [("response_length", "mean response length (tokens)"), ("check_rate", "share of responses that check"),
              ("fix_rate", "fix rate: checks that say \"wait\" and end right"), ("accuracy", "accuracy (training samples)")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for (key, title), ax in zip(panels, axes):
        plot_steps(ax, key, curves, label=lambda name: name + (" (no checking traces)" if name == CONTROL else ""),
                   alpha=0.3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
        if key != "response_length":
            ax.set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8)
    fig.suptitle("Aha moment: R1-Zero on addition (thin: per step, thick: 5-step moving average)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cell(e: dict | None, key: str, percent: bool = True) -> str:
    if not e or e.get(key) is None:
        return "–"
    value = f"{100 * e[key]:.1f}%" if percent else f"{e[key]:.1f}"
    interval = e.get(f"{key}_ci")
    if interval and not percent:
        return f"{value} [{interval[0]:.1f}, {interval[1]:.1f}]"
    return value + (f" {fmt_interval(interval)}" if interval else "")


def _count(e: dict) -> str:
    return "" if e.get("checks_right_guess") is None else f" (of {e['checks_right_guess']})"


def aha_section(stages: dict[str, Stage], out: Path, starts: dict[str, str | None]) -> list[str]:
    """The report's aha section: the before/after table, the curves and the two transcripts."""
    if not any(n in stages for n in NAMES):
        return []
    lines = ["## Aha moment: checking pays, so thinking grows", "",
             f"Held-out {TASK} problems; length in completion tokens; check rate = share of responses whose thinking "
             "re-derives the answer (`Check:`); fix rate = share of those checks that caught a wrong first answer "
             "(`wait`) and ended right; wait | wrong, wait | right = share of checks that say `wait` when the answer "
             "written before the check was wrong / right (how many checks had a right one). 95% intervals over "
             "problems.", "",
             "| stage | pass@1 | mean length | check rate | fix rate | wait \\| wrong | wait \\| right |",
             "|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys([starts.get(ZERO), ZERO, starts.get(CONTROL), CONTROL]):
        e = _eval(stages, name or "")
        if e:
            lines.append(f"| {name} | {_cell(e, 'pass1')} | {_cell(e, 'mean_length', percent=False)} "
                         f"| {_cell(e, 'check_rate')} | {_cell(e, 'fix_rate')} | {_cell(e, 'wait_wrong_guess')} "
                         f"| {_cell(e, 'wait_right_guess')}{_count(e)} |")
    plot = plot_aha(stages, out / "aha_curves.png")
    if plot:
        lines += ["", f"![aha curves]({plot.name})"]
    picked = transcripts(out / "eval" / f"{ZERO}.jsonl")
    lines += ["", f"Transcripts ({ZERO}, held-out; the rule, fixed before the run: the first two responses, problems in "
              "the evaluation's order and samples in seed order, whose check says \"wait\" and that end right):", ""]
    if not picked:
        lines.append("none: no held-out response of this run caught and fixed a slip")
    for t in picked:
        lines += [f"**{t['prompt']}** (answer {t['answer']})", "", "```", t["response"].strip(), "```", ""]
    return [*lines, ""]
