"""The report card: runs/<name>/report.md with a verdict per finding, tables, plots and cost.

Input is what the speedrun measured: one `Stage` per trained model (wall time, FLOPs, where its metrics
are) and an evaluation per (stage, task). Nothing here trains or evaluates; it only writes down.
"""
from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .stats import difference, fmt_interval, half_width, paired_difference, wilson

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
    """One claim checked on a run. A claim of a difference ("A beats B by >= X points") passes only when the
    difference's 95% interval lies above 0 (intervals apart, stats.difference) and the measured gain is >= X;
    a claim of a level ("R1 >= 90%") is judged on the measured value, its interval shown beside it."""
    claim: str
    passed: bool | None  # None: could not be measured
    detail: str
    observation: bool = False  # reported either way, not a target (passed is then None)
    figure: str = ""  # the headline figure with its 95% interval: "+18.5 pts [+12.1, +24.9]", "89.2% [85.0, 93.4]"
    value: float | None = None  # that figure as a share (0.185 for +18.5 points), and its interval's ends
    low: float | None = None
    high: float | None = None
    key: str = ""  # a short name that stays the same from run to run (a row of `r1lab findings`); "" -> the claim


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


def _interval(e: dict, key: str):
    """An eval's 95% interval of `key` (a share): its own (over problems), else Wilson over its n problems."""
    if e.get(f"{key}_ci"):
        return e[f"{key}_ci"]
    return wilson(e[key] * e["n"], e["n"]) if e.get("n") else None


def mean_and_margin(evals: dict | list[dict | None] | None, key: str = "pass1") -> tuple[float, float] | None:
    """(mean of `key` over evals, its 95% half-width: sqrt(sum of squared half-widths) / count), None if
    one lacks the value or an interval."""
    evals = evals if isinstance(evals, list) else [evals]
    if not evals or any(not e or e.get(key) is None or _interval(e, key) is None for e in evals):
        return None
    return (sum(e[key] for e in evals) / len(evals),
            sum(half_width(_interval(e, key)) ** 2 for e in evals) ** 0.5 / len(evals))


def compare(a, b, key: str = "pass1") -> tuple[float, float, float] | None:
    """(a - b, low, high): the difference of two evals' `key` (or of their means over tasks, given lists) and
    its 95% interval: problem by problem (stats.paired_difference) where both carry pass@1 per problem over the
    same problems (the speedrun judges every stage on one draw), else from the two intervals (stats.difference);
    None when either lacks the value or an interval."""
    a_list, b_list = (x if isinstance(x, list) else [x] for x in (a, b))
    if key == "pass1" and len(a_list) == len(b_list) and all(
            x and y and x.get("pass1_each") and len(x["pass1_each"]) == len(y.get("pass1_each") or [])
            and len(x["pass1_each"]) == len(a_list[0]["pass1_each"]) for x, y in zip(a_list, b_list)):
        return paired_difference([v for x in a_list for v in x["pass1_each"]], [v for y in b_list for v in y["pass1_each"]])
    first, second = mean_and_margin(a, key), mean_and_margin(b, key)
    if first is None or second is None:
        return None
    return difference(first[0], (first[0] - first[1], first[0] + first[1]),
                      second[0], (second[0] - second[1], second[0] + second[1]))


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


def mark(f: Finding | dict) -> str:
    """✅ passed, ❌ failed, ⚠️ not measured, ℹ️ an observation (a Finding or its summary.json record)."""
    f = f if isinstance(f, dict) else asdict(f)
    return "ℹ️" if f.get("observation") else "✅" if f.get("passed") else "⚠️ not measured" if f.get("passed") is None else "❌"


def write_report(out_dir: str | Path, stages: list[Stage], findings: list[Finding], tasks: list[str],
                 title: str = "r1lab speedrun", notes: list[str] | None = None,
                 extra_plots: list[tuple[str, list[Stage]]] | None = None, students: list[Stage] | None = None,
                 sections: list[str] | None = None, seed: int | None = None) -> Path:
    """report.md and summary.json in out_dir; `sections`: extra markdown lines after the health section;
    `seed`: the run's seed, kept in summary.json (`r1lab findings` lays runs out by it)."""
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
        lines.append(f"- {mark(f)} **{f.claim}** — " + (f"**{f.figure}**. " if f.figure else "") + f.detail)
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
        "seed": seed,
        "findings": [asdict(f) for f in findings],
        "table": [{"stage": s.name, "task": t, **s.evals[t]} for s in stages for t in tasks if t in s.evals],
        "stages": [{k: v for k, v in asdict(s).items() if k != "evals"} for s in stages],
        "cost": costs,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out / "report.md"


def mean_pass1(stage: Stage, tasks: list[str]) -> tuple[float, float] | None:
    """Mean pass@1 over tasks and its 95% half-interval, from each task's interval over the held-out problems
    (Wilson over its n problems when an eval has none; a problem's k samples count once: not independent)."""
    return mean_and_margin([stage.evals.get(t) for t in tasks])


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
