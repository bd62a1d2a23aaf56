"""The report card: runs/<name>/report.md with a verdict per finding, tables, plots and cost.

Input is what the speedrun measured: one `Stage` per trained model (wall time, FLOPs, where its metrics
are) and an evaluation per (stage, task). Nothing here trains or evaluates; it only writes down.
"""
from __future__ import annotations

import json
import math
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .stats import fmt_interval, half_width, inside_noise

H100_PEAK_FLOPS = 989e12  # dense bf16 tensor-core peak, per GPU
ASSUMED_MFU = 0.35  # what a well-tuned small-model run reaches on it
PRICE_PER_GPU_HOUR = 2.50  # USD, a typical on-demand cloud price for one H100 (stated, not measured)


@dataclass
class Stage:
    name: str  # e.g. "base", "r1-zero", "r1", "student-distilled"
    checkpoint: str
    wall_s: float
    train_flops: float  # forward+backward FLOPs spent training this stage
    gen_flops: float = 0.0  # forward FLOPs spent generating (GRPO rollouts, rejection sampling, teacher traces)
    params: dict[str, int] = field(default_factory=dict)
    metrics: str | None = None  # metrics.jsonl of a GRPO stage, for the curves
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> TaskResult.summary()


@dataclass
class Finding:
    claim: str
    passed: bool | None  # None: could not be measured
    detail: str
    observation: bool = False  # reported either way, not a target (passed is then None)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} torch threads, {gpu}, torch {torch.__version__}"


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- plots

def _smooth(values: list[float], window: int = 5) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1):i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def plot_grpo_curves(stages: list[Stage], path: Path) -> Path | None:
    """Reward, accuracy and mean response length over GRPO steps, one line per GRPO stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [(s.name, read_metrics(s.metrics)) for s in stages if s.metrics]
    curves = [(n, m) for n, m in curves if m]
    if not curves:
        return None
    # with several tasks, one accuracy panel per task (GRPO logs accuracy_<task>), else one for all
    tasks = sorted({k[len("accuracy_"):] for _, rows in curves for r in rows for k in r if k.startswith("accuracy_")})
    panels = [("reward", "mean reward")]
    panels += [(f"accuracy_{t}", f"accuracy on {t} (train samples)") for t in tasks] or [("accuracy", "accuracy (train samples)")]
    panels += [("response_length", "mean response length (tokens)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2))
    for (key, title), ax in zip(panels, axes):
        plot_steps(ax, key, curves)
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("GRPO training curves (thin: per step, thick: 5-step moving average)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_steps(ax, key: str, curves: list[tuple[str, list[dict]]], label=lambda name: name, alpha: float = 0.25) -> None:
    """On `ax`, each run's `key` per GRPO step: thin per step, thick its 5-step moving average, one colour."""
    for name, rows in curves:
        xs = [r["step"] for r in rows if key in r]
        ys = [r[key] for r in rows if key in r]
        if xs:
            line, = ax.plot(xs, ys, alpha=alpha)
            ax.plot(xs, _smooth(ys), label=label(name), color=line.get_color(), linewidth=2)


def plot_bars(stages: list[Stage], tasks: list[str], path: Path, title: str, metric: str = "pass1") -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not stages or not tasks:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(stages) * max(1, len(tasks)) / 2 + 3), 4.2))
    width = 0.8 / len(tasks)
    for j, task in enumerate(tasks):
        # a stage not evaluated on this task (the aha stages: addition only) gets no bar, not a 0
        kept = [(i, 100 * (s.evals[task].get(metric) or 0)) for i, s in enumerate(stages) if task in s.evals]
        xs = [i + j * width for i, _ in kept]
        values = [v for _, v in kept]
        ax.bar(xs, values, width, label=task)
        for x, v in zip(xs, values):
            ax.text(x, v + 1, f"{v:.0f}", ha="center", fontsize=8)
    ax.set_xticks([i + width * (len(tasks) - 1) / 2 for i in range(len(stages))])
    ax.set_xticklabels([s.name for s in stages], rotation=15)
    ax.set_ylabel(f"{metric} (%) on held-out problems")
    ax.set_ylim(0, 110)
    ax.legend()
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- cost

def cost(stages: list[Stage]) -> dict[str, float]:
    flops = sum(s.train_flops + s.gen_flops for s in stages)
    gpu_hours = flops / (H100_PEAK_FLOPS * ASSUMED_MFU) / 3600
    return {"wall_s": sum(s.wall_s for s in stages), "train_flops": sum(s.train_flops for s in stages),
            "gen_flops": sum(s.gen_flops for s in stages), "total_flops": flops, "h100_gpu_hours": gpu_hours,
            "usd": gpu_hours * PRICE_PER_GPU_HOUR}


# ---------------------------------------------------------------- the report

def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _with_ci(e: dict, key: str) -> str:
    """'93.0% [88.1, 96.0]': the value and its 95% interval (over problems), when the eval has one."""
    interval = fmt_interval(e.get(f"{key}_ci"))
    return _pct(e.get(key)) + (f" {interval}" if interval else "")


def _mean_and_margin(evals: dict | list[dict | None] | None, key: str) -> tuple[float, float] | None:
    """(mean of `key` over evals, its 95% half-width: sqrt(sum of squares) / count), None if one lacks it."""
    evals = evals if isinstance(evals, list) else [evals]
    if not evals or any(not e or e.get(key) is None or not e.get(f"{key}_ci") for e in evals):
        return None
    return (sum(e[key] for e in evals) / len(evals),
            sum(half_width(e[f"{key}_ci"]) ** 2 for e in evals) ** 0.5 / len(evals))


def noise_note(a, b, key: str = "pass1") -> str:
    """' (inside the noise: ...)' when the difference of two evals' `key` (or of their means over several
    tasks, given lists) is within its 95% margin, from the intervals over problems."""
    first, second = _mean_and_margin(a, key), _mean_and_margin(b, key)
    if first is None or second is None:
        return ""
    margin = (first[1] ** 2 + second[1] ** 2) ** 0.5
    if not inside_noise(first[0], (first[0] - first[1], first[0] + first[1]), second[0],
                        (second[0] - second[1], second[0] + second[1])):
        return ""
    return f" (inside the noise: the 95% margin of this difference is ±{100 * margin:.1f} points)"


def threshold_note(e: dict | None, threshold: float, key: str = "pass1", label: str = "") -> str:
    """' (90% is inside the 95% interval [..])' when a threshold cannot be told apart from the measured value."""
    interval = (e or {}).get(f"{key}_ci")
    if not interval or not interval[0] <= threshold <= interval[1]:
        return ""
    return f" ({label}{100 * threshold:.0f}% is inside the 95% interval {fmt_interval(interval)}: within the noise)"


def health_lines(stages: list[Stage]) -> list[str]:
    """The report's health section: per GRPO stage, each sign the monitor raised, on how many steps, from when."""
    lines = ["## GRPO health", ""]
    rows = []
    for s in stages:
        records = read_metrics(s.metrics) if s.metrics else []
        if not records:
            continue
        seen: dict[str, list] = {}
        for r in records:
            for name, message in ((r.get("health") or {}).get("signs") or {}).items():
                seen.setdefault(name, []).append((r.get("step"), message))
        if not seen:
            rows.append(f"| {s.name} | none | – | – | |")
        for name, hits in seen.items():
            rows.append(f"| {s.name} | {name} | {len(hits)} of {len(records)} | {hits[0][0]} | {hits[-1][1]} |")
    if not rows:
        return lines + ["No GRPO metrics with health records.", ""]
    return lines + ["| stage | sign | steps flagged | first step | last warning |", "|---|---|---|---|---|", *rows,
                    "", *correction_lines(stages),
                    "Signs and thresholds: r1lab/train/health.py (warnings to look at, not verdicts).", ""]


def correction_lines(stages: list[Stage]) -> list[str]:
    """Per GRPO stage that ran a rollout correction: what it cut, as shares of the trained tokens per step."""
    lines = []
    for s in stages:
        records = [r for r in (read_metrics(s.metrics) if s.metrics else []) if "correction_ratio" in r]
        if not records:
            continue
        cut = [r.get("correction_masked", 0.0) + r.get("correction_truncated", 0.0) for r in records]
        how = "masked" if any(r.get("correction_masked", 0.0) for r in records) else "truncated"
        lines.append(f"- {s.name}: the rollout correction {how} {sum(cut) / len(cut):.2%} of trained tokens per step "
                     f"(at most {max(cut):.2%}, step {records[cut.index(max(cut))].get('step')}); mean weight "
                     f"{sum(r['correction_ratio'] for r in records) / len(records):.4f} over {len(records)} steps")
    return lines + [""] if lines else []


def write_report(out_dir: str | Path, stages: list[Stage], findings: list[Finding], tasks: list[str],
                 title: str = "r1lab speedrun", notes: list[str] | None = None,
                 extra_plots: list[tuple[str, list[Stage]]] | None = None, students: list[Stage] | None = None,
                 sections: list[str] | None = None) -> Path:
    """report.md and summary.json in out_dir; `sections`: extra markdown lines after the health section."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    plot = plot_grpo_curves(stages, out / "grpo_curves.png")
    if plot:
        plots.append(("GRPO curves", plot))
    plot = plot_bars(stages, tasks, out / "accuracy_by_stage.png", "pass@1 by stage")
    if plot:
        plots.append(("Accuracy by stage", plot))
    for name, group in extra_plots or []:
        file = out / (name.lower().replace(" ", "_").replace("/", "_") + ".png")
        plot = plot_bars(group, tasks, file, name)
        if plot:
            plots.append((name, plot))
    costs = cost(stages)
    lines = [f"# {title}", ""]
    for f in findings:
        mark = "ℹ️" if f.observation else "✅" if f.passed else ("⚠️ not measured" if f.passed is None else "❌")
        lines.append(f"- {mark} **{f.claim}** — {f.detail}")
    lines += ["", "## Results on held-out problems", "",
              "| stage | task | n | pass@1 [95% CI] | ± samples | greedy [95% CI] | maj@k [95% CI] | mean length | truncated |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in stages:
        for task in tasks:
            e = s.evals.get(task)
            if e:
                skipped = f" ({e['skipped']} skipped)" if e.get("skipped") else ""
                spread = f"±{100 * half_width(e['pass1_ci_samples']):.1f}" if e.get("pass1_ci_samples") else "–"
                lines.append(f"| {s.name} | {task} | {e.get('n', '')}{skipped} | {_with_ci(e, 'pass1')} | {spread} "
                             f"| {_with_ci(e, 'greedy')} | {_with_ci(e, 'maj')} "
                             f"| {e.get('mean_length', 0):.1f} | {_pct(e.get('truncated'))} |")
    ks = sorted({e.get("k") for s in stages for e in s.evals.values() if e.get("k")})
    methods = sorted({e["ci_method"] for s in stages for e in s.evals.values() if e.get("ci_method")})
    lines += ["", f"pass@1 is the mean accuracy over k={','.join(map(str, ks)) or '?'} samples at temperature 1; "
              "maj@k grades the majority answer; length counts completion tokens; n counts problems (skipped ones: "
              "the prompt did not fit the context). " + " ".join(f"{m}." for m in methods), ""]
    lines += student_table(students or [], tasks)
    lines += health_lines(stages)
    lines += sections or []
    for name, path in plots:
        lines += [f"## {name}", "", f"![{name}]({path.name})", ""]
    lines += ["## Cost", "", "| stage | wall time | training FLOPs | generation FLOPs | parameters (total / activated) |",
              "|---|---|---|---|---|"]
    for s in stages:
        params = f"{s.params.get('total', 0) / 1e6:.2f}M / {s.params.get('activated', 0) / 1e6:.2f}M" if s.params else "–"
        lines.append(f"| {s.name} | {s.wall_s:.0f} s | {s.train_flops:.3g} | {s.gen_flops:.3g} | {params} |")
    lines += ["", f"Total: {costs['wall_s'] / 60:.1f} min wall time, {costs['total_flops']:.3g} FLOPs. "
              f"Projected to H100s at {ASSUMED_MFU:.0%} MFU of {H100_PEAK_FLOPS / 1e12:.0f} TFLOP/s (bf16 dense): "
              f"{costs['h100_gpu_hours'] * 3600:.2f} GPU-seconds = {costs['h100_gpu_hours']:.2e} GPU-hours, "
              f"${costs['usd']:.2e} at ${PRICE_PER_GPU_HOUR:.2f} per GPU-hour (an assumed on-demand price).", ""]
    lines += ["## Setup", "", f"- hardware: {hardware()}", f"- git commit: {git_commit()}"]
    for note in notes or []:
        lines.append(f"- {note}")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    summary = {
        "findings": [asdict(f) for f in findings],
        "table": [{"stage": s.name, "task": t, **s.evals[t]} for s in stages for t in tasks if t in s.evals],
        "stages": [{k: v for k, v in asdict(s).items() if k != "evals"} for s in stages],
        "cost": costs,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out / "report.md"


def mean_pass1(stage: Stage, tasks: list[str]) -> tuple[float, float] | None:
    """Mean pass@1 over tasks and its 95% half-interval (normal approximation over the held-out problems,
    each problem's k samples counted once: they are not independent)."""
    evals = [stage.evals.get(t) for t in tasks]
    if not evals or any(e is None or e.get("pass1") is None for e in evals):
        return None
    mean = sum(e["pass1"] for e in evals) / len(evals)
    n = sum(e.get("n", 0) for e in evals)
    return mean, (1.96 * math.sqrt(mean * (1 - mean) / n) if n else float("nan"))


def student_table(students: list[Stage], tasks: list[str]) -> list[str]:
    """The students side by side: mean pass@1 (95% interval), training FLOPs (the update plus sampling and,
    on-policy, the teacher's scoring), wall time."""
    rows = [(s, mean_pass1(s, tasks)) for s in students]
    rows = [(s, p) for s, p in rows if p is not None]
    if not rows:
        return []
    lines = ["## Students", "", "| student | mean pass@1 (95% interval) | training FLOPs (incl. sampling, scoring) | wall time |",
             "|---|---|---|---|"]
    for s, (mean, half) in rows:
        flops = s.train_flops + s.gen_flops
        lines.append(f"| {s.name} | {100 * mean:.1f}% ± {100 * half:.1f} | {flops:.3g} | {s.wall_s:.0f} s |")
    return [*lines, ""]


def onpolicy_finding(stages: dict[str, Stage], tasks: list[str],
                     names: tuple[str, ...] = ("student-onpolicy", "student-distilled", "student-rl")) -> Finding | None:
    """Which student wins, and at how much compute (on-policy distillation vs SFT-distillation vs RL)."""
    scored = [(n, mean_pass1(stages[n], tasks)) for n in names if n in stages]
    scored = [(n, p) for n, p in scored if p is not None]
    if len(scored) < 2 or scored[0][0] != names[0]:
        return None
    flops = {n: stages[n].train_flops + stages[n].gen_flops for n, _ in scored}
    best = max(scored, key=lambda item: item[1][0])
    others = [f"{n} {100 * p[0]:.1f}% ± {100 * p[1]:.1f} at {flops[n]:.3g} FLOPs ({stages[n].wall_s:.0f} s)" for n, p in scored]
    onp = scored[0][1]
    ties = [n for n, p in scored if n != best[0] and abs(p[0] - best[1][0]) <= p[1] + best[1][1]]
    level = [n for n, p in scored if p[0] == best[1][0]]
    verdict = (f"no student wins ({', '.join(level)} level)" if len(level) > 1 else
               f"{best[0]} wins" + (f" (within the intervals of {', '.join(ties)})" if ties else ""))
    ratios = [f"{flops[n] / max(flops[names[0]], 1.0):.1f}x on-policy's FLOPs for {n}" for n, _ in scored[1:]]
    return Finding(f"Students: {verdict}", None, "mean pass@1 over tasks: " + "; ".join(others) + f". On-policy at "
                   f"{100 * onp[0]:.1f}%; the others took " + ", ".join(ratios), observation=True)


# ---------------------------------------------------------------- the speedrun's findings

def findings(stages: dict[str, Stage], tasks: list[str], grpo_from: dict[str, str], final: str,
             students: tuple[str, str, str] = ("student-distilled", "student-rl", "student-base")) -> list[Finding]:
    """The R1 paper's claims, checked on a run: GRPO's gain over the stage each GRPO stage started from
    (`grpo_from`, in recipe order), the final model's accuracy, distilled vs RL-only student (`students`:
    distilled, RL-only, their base), and how response length moved under GRPO."""

    def pass1(stage: str, task: str) -> float | None:
        return (stages[stage].evals.get(task) or {}).get("pass1") if stage in stages else None

    def mean_pass1(stage: str) -> float | None:
        values = [pass1(stage, t) for t in tasks]
        return None if any(v is None for v in values) else sum(values) / len(values)

    gains = [(pass1(rl, t) - pass1(start, t), rl, start, t) for rl, start in grpo_from.items() for t in tasks
             if pass1(rl, t) is not None and pass1(start, t) is not None]
    best = max(gains, default=None)
    out = [Finding(
        "GRPO improves on the model it starts from by >= 15 points of pass@1 on at least one task",
        None if best is None else best[0] >= 0.15,
        "not measured" if best is None else
        f"largest gain: {best[1]} over {best[2]} on {best[3]}, {100 * best[0]:+.1f} points "
        f"(all gains: {', '.join(f'{g[1]}/{g[3]} {100 * g[0]:+.1f}' for g in gains)})"
        + ("" if best is None else noise_note(stages[best[1]].evals.get(best[3]), stages[best[2]].evals.get(best[3]))))]
    final_scores = {t: pass1(final, t) for t in tasks}
    out.append(Finding(
        "The R1 model is >= 90% (pass@1) on the in-distribution tasks",
        None if None in final_scores.values() else all(v >= 0.9 for v in final_scores.values()),
        ", ".join(f"{t}: {'–' if v is None else f'{100 * v:.1f}%'}" for t, v in final_scores.items())
        + "".join(threshold_note(stages[final].evals.get(t), 0.9, label=f"{t}: ") for t in final_scores if final in stages)))
    distilled, rl_only, base = (mean_pass1(name) for name in students)
    out.append(Finding(
        "The distilled student beats the RL-only student (the R1 paper's finding for small models)",
        None if distilled is None or rl_only is None else distilled > rl_only,
        "not measured" if distilled is None or rl_only is None else
        f"mean pass@1 over tasks: {100 * distilled:.1f}% distilled vs {100 * rl_only:.1f}% RL-only"
        + ("" if base is None else f" (both start from the student base at {100 * base:.1f}%)")
        + noise_note([stages[students[0]].evals.get(t) for t in tasks], [stages[students[1]].evals.get(t) for t in tasks])))
    out.append(length_trend(stages, [name for name in grpo_from if name not in students]))
    third = onpolicy_finding(stages, tasks)
    if third is not None:
        out.append(third)
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
                   if trend else "no GRPO curves", observation=bool(trend))
