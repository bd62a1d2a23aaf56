"""`r1lab speedrun`: the whole R1 recipe on a laptop, stage by stage, then the report card.

    r1lab speedrun --preset cpu --out runs/speedrun
    r1lab speedrun --preset cpu --out runs/speedrun r1_zero_steps=60 r1_grpo_steps=120    # any knob below

Stages (each resumable: a stage whose `final/` exists is skipped and its record reused):
  1. tokenizer on the task corpus
  2. base: pretrain on a task mixture whose teacher traces are noisy (slips)
  3. r1-zero: GRPO straight from the base (accuracy + format rewards)
  4. r1: cold-start SFT on a small clean set -> GRPO -> rejection sampling (the policy's own verified
     answers) -> SFT -> GRPO
  5. distillation: the R1 model teaches a smaller student (SFT on its verified traces), against the same
     student trained by GRPO alone from its own base
  6. evaluation of every stage on held-out problems; report.md, summary.json, plots; final/ = R1
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import TrainConfig, build


@dataclass
class SpeedrunConfig:
    tasks: str = "addition,countdown"  # in-distribution tasks (countdown: more search finds more answers)
    # countdown with 2 numbers: the search (which operation hits the target?) fits in a few lines; with 3
    # numbers (and the earlier random-search trace) the 1.5M-parameter R1 reached only 5.5% pass@1 in this
    # budget ('knobs={countdown: {numbers: 3}, ...}')
    knobs: dict = field(default_factory=lambda: {"addition": {"digits": 4}, "countdown": {"numbers": 2}})
    teacher_model: str = "cpu-tiny"
    student_model: str = "cpu-micro"
    seed: int = 0
    # base: pretraining on noisy traces
    pretrain_steps: int = 600  # the base learns to add in a sudden drop around step 250-350 (pretrain.py)
    pretrain_noise: float = 0.3
    student_pretrain_steps: int = 400
    # R1-Zero: the pure-RL run from the base (30 steps at 1e-4 took addition pass@1 from 58.5% to 77.0%;
    # 40 steps at 5e-5 to 75.0%, in 77 s instead of 61 s)
    r1_zero_steps: int = 30
    r1_zero_lr: float = 1e-4
    # R1's first GRPO stage (after the cold start) and the RL-only student
    grpo_steps: int = 25
    grpo_lr: float = 5e-5
    # R1's last GRPO stage, at a higher lr (from a 40-step R1, 120 more steps at 1e-4 took addition pass@1
    # from 87.8% to 95.2%, at 5e-5 to 91.5%). After the longer cold start below, 40 steps did as well as 80
    # on a second draw of 300 test problems (countdown 90.4% vs 87.6%) in half the time
    r1_grpo_steps: int = 40
    r1_grpo_lr: float = 1e-4
    # ... drawing its prompts with these weights per task (1 for a task not named): addition is the easier
    # task and most of its groups are all-correct by then. With the earlier 60-step cold start, from the same
    # rs-sft model, countdown pass@1 on 300 other test problems: 77.0% at weight 1, 85.0% at 2, 82.6% at 3
    r1_task_weights: dict = field(default_factory=lambda: {"countdown": 2.0})
    # R1's two GRPO stages start from a model the cold start made 93-98% right, so most groups are
    # all-correct: at most 2 sampling rounds per step (not 4) cut those stages from 349 s to 249 s, for
    # countdown pass@1 89.2% instead of 90.4% on a second draw of 300 test problems
    r1_sampling_rounds: int = 2
    grpo_group_size: int = 8
    grpo_prompts: int = 16
    max_new_tokens: int = 128
    # the cold start: clean reference traces. 500 steps over 4000 of them (2000 per task), against 60 steps
    # over 1000, took R1's pass@1 on a second draw of 300 test problems per task from 96.4% to 99.5% on
    # addition and from 85.0% to 90.4% on countdown (4 sampling rounds); 150 steps over 3000 changed R1's
    # countdown little
    cold_start_examples: int = 4000
    cold_start_steps: int = 500
    # the cold-start SFT of the base: at the SFT preset's lr (3e-3) it cost the base 9 points of addition
    # pass@1; at 1e-3 it gained 8
    finetune_lr: float = 1e-3
    rejection_problems: int = 200  # per task
    rejection_k: int = 4
    rs_sft_steps: int = 80
    # the rejection-sampling SFT fine-tunes a model GRPO has already sharpened: at 1e-3 it cost addition 5 to 8
    # points of pass@1 every run; at 3e-4 it gained 5 on addition and 4.5 on countdown
    rs_sft_lr: float = 3e-4
    # distillation
    distill_problems: int = 200  # per task
    distill_k: int = 4
    distill_steps: int = 300
    # evaluation
    eval_problems: int = 100
    eval_k: int = 4


PRESETS = {
    "cpu": {},
    # a shortened run for the slow end-to-end test: every stage, few steps
    "cpu-smoke": dict(pretrain_steps=30, student_pretrain_steps=20, r1_zero_steps=3, grpo_steps=3, r1_grpo_steps=3, grpo_prompts=4, grpo_group_size=4,
                      max_new_tokens=48, cold_start_examples=32, cold_start_steps=5, rejection_problems=8, rejection_k=2,
                      rs_sft_steps=5, distill_problems=8, distill_k=2, distill_steps=5, eval_problems=6, eval_k=2),
}


@dataclass
class StageRecord:
    name: str
    checkpoint: str
    wall_s: float
    train_flops: float = 0.0
    gen_flops: float = 0.0
    params: dict = field(default_factory=dict)
    metrics: str | None = None
    notes: dict = field(default_factory=dict)


def _stage_done(folder: Path) -> StageRecord | None:
    record = folder / "stage.json"
    if record.exists() and (folder / "final" / "config.json").exists():
        return StageRecord(**json.loads(record.read_text()))
    return None


def _flops_from_metrics(metrics: Path, ckpt: Path) -> tuple[float, float]:
    """(training FLOPs, generation FLOPs) of a run, from its metrics.jsonl and its model's accounting."""
    from .eval.report import read_metrics
    from .model import load_model

    model = load_model(ckpt, verify=False)
    rows = read_metrics(metrics)
    train = gen = 0.0
    for r in rows:
        if "gen_tokens" in r:  # GRPO: forward for sampling, forward+backward for the update
            gen += r["gen_tokens"] * model.flops_per_token(256, training=False)
            train += r.get("train_tokens", 0) * model.flops_per_token(256)
        else:
            train += r.get("tokens", 0) * model.flops_per_token(256)
    return train, gen


def _finish_stage(folder: Path, name: str, started: float, run_dir: Path, notes: dict | None = None,
                  extra_gen_flops: float = 0.0) -> StageRecord:
    """Record a finished stage (stage.json) with its wall time, FLOPs and parameter counts."""
    from .model import load_model

    final = run_dir / "final"
    metrics = run_dir / "metrics.jsonl"
    train_f, gen_f = _flops_from_metrics(metrics, final) if metrics.exists() else (0.0, 0.0)
    is_grpo = metrics.exists() and any("gen_tokens" in line for line in metrics.read_text().splitlines()[:1])
    record = StageRecord(name, str(final), time.perf_counter() - started, train_f, gen_f + extra_gen_flops,
                         load_model(final, verify=False).param_count(), str(metrics) if is_grpo else None, notes or {})
    (folder / "stage.json").write_text(json.dumps(asdict(record), indent=2) + "\n")
    return record


class Speedrun:
    def __init__(self, cfg: SpeedrunConfig, out: str):
        self.cfg, self.out = cfg, Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, StageRecord] = {}
        self.task_list = [t.strip() for t in cfg.tasks.split(",") if t.strip()]

    def log(self, msg: str) -> None:
        print(f"\n=== speedrun: {msg}", file=sys.stderr, flush=True)

    # ---- stage helpers, each skipped when already done

    def stage(self, name: str, fn) -> StageRecord:
        folder = self.out / name
        done = _stage_done(folder)
        if done is not None:
            self.log(f"{name}: done already ({done.checkpoint})")
            self.records[name] = done
            return done
        self.log(f"{name}")
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        notes = fn(folder) or {}
        record = _finish_stage(folder, name, started, folder, notes)
        self.records[name] = record
        return record

    def _train_args(self, folder: Path, init: str | None, tokenizer: str | None = None, data: list[str] | None = None):
        return argparse.Namespace(out=str(folder), resume=True, init=init, tokenizer=tokenizer, data=data)

    def pretrain(self, folder: Path, model_preset: str, steps: int) -> None:
        from .model.config import PRESETS as MODEL_PRESETS
        from .train.data import DataConfig, PackedStream
        from .train.pretrain import PRESETS, PretrainConfig, train_command

        cfg = build(PretrainConfig, PRESETS, model_preset, [])
        cfg.train.max_steps, cfg.train.seed, cfg.train.save_every = steps, self.cfg.seed, max(steps // 3, 1)
        cfg.data = DataConfig(tasks=self.cfg.tasks, noise=self.cfg.pretrain_noise, noise_kind="slip",
                              knobs={k: v for k, v in self.cfg.knobs.items() if k in self.task_list})
        train_command(cfg, self._train_args(folder, None, str(self.out / "tokenizer")),
                      lambda source, tok, c: PackedStream(source, tok, c.train.seq_len, c.train.batch_size), "pretrain")

    def sft(self, folder: Path, init: str, steps: int, data_file: Path, model_preset: str, lr: float | None = None) -> None:
        from .train.data import ChatStream, DataConfig
        from .train.pretrain import train_command
        from .train.sft import PRESETS, SFTConfig

        cfg = build(SFTConfig, PRESETS, model_preset, [])
        cfg.train.max_steps, cfg.train.seed, cfg.train.save_every = steps, self.cfg.seed, max(steps // 2, 1)
        cfg.train.warmup_steps = min(cfg.train.warmup_steps, max(1, steps // 5))
        if lr is not None:
            cfg.train.lr = lr
        cfg.data = DataConfig(files=[str(data_file)])
        train_command(cfg, self._train_args(folder, init, data=[str(data_file)]),
                      lambda source, tok, c: ChatStream(source, tok, c.train.seq_len, c.train.batch_size,
                                                        packing=c.data.packing), "sft")

    def grpo(self, folder: Path, init: str, model_preset: str, steps: int | None = None, lr: float | None = None,
             task_weights: str = "", sampling_rounds: int | None = None) -> None:
        from .train.grpo import GRPOConfig, PRESETS, train_grpo

        c = self.cfg
        cfg = build(GRPOConfig, PRESETS, model_preset, [])
        cfg.train.max_steps, cfg.train.seed = c.grpo_steps if steps is None else steps, c.seed
        cfg.train.lr = c.grpo_lr if lr is None else lr
        cfg.train.save_every = max(cfg.train.max_steps // 2, 1)
        g = cfg.grpo
        g.tasks, g.knobs, g.task_weights = c.tasks, {k: v for k, v in c.knobs.items() if k in self.task_list}, task_weights
        g.group_size, g.prompts_per_step, g.max_new_tokens = c.grpo_group_size, c.grpo_prompts, c.max_new_tokens
        if sampling_rounds is not None:
            g.max_sampling_rounds = sampling_rounds
        train_grpo(cfg, init, str(folder), resume=True)

    def verified_set(self, folder: Path, teacher: str, problems: int, k: int, seed: int,
                     add: Path | None = None) -> Path:
        """Rejection sampling / distillation data: the teacher's verified-correct traces as chat rows, plus
        the rows of `add` (R1's second SFT mixes in the cold-start data). A teacher with no correct trace
        at all leaves only `add` (or the clean reference set), and says so in traces_stats.json."""
        from .config import ConfigError
        from .train.distill import TeacherSection, make_traces

        data = folder / "sft.jsonl"
        if data.exists():
            return data
        try:
            stats = make_traces(teacher, TeacherSection(tasks=self.cfg.tasks, knobs=self.cfg.knobs, problems=problems, k=k,
                                                        temperature=1.0, max_new_tokens=self.cfg.max_new_tokens, seed=seed),
                                folder)
            rows = (folder / "traces.jsonl").read_text()
        except ConfigError as e:
            self.log(f"{e}; falling back to the clean reference traces")
            stats, rows = {"kept_traces": 0, "fallback": "clean reference traces"}, ""
            add = add or self.clean_set(self.out / "data", self.cfg.cold_start_examples)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "traces_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        self.log(f"verified traces in {folder}: {stats}")
        data.write_text(rows + (add.read_text() if add else ""))
        return data

    def clean_set(self, folder: Path, n: int) -> Path:
        """The cold-start data: a small set of clean, well-formatted reference traces."""
        from . import tasks

        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "cold_start.jsonl"
        if not path.exists():
            per_task = max(1, n // len(self.task_list))
            with open(path, "w") as f:
                for name in self.task_list:
                    for row in tasks.sample(name, per_task, seed=self.cfg.seed + 99, **self.cfg.knobs.get(name, {})):
                        f.write(json.dumps({"messages": [{"role": "user", "content": row["prompt"]},
                                                         {"role": "assistant", "content": row["reference_trace"]}]}) + "\n")
        return path

    # ---- the recipe

    def run(self) -> Path:
        c = self.cfg
        started = time.perf_counter()
        teacher, student = c.teacher_model, c.student_model
        tok_dir = self.out / "tokenizer"
        if not (tok_dir / "tokenizer.json").exists():
            self.log("tokenizer")
            from .commands import make_tokenizer
            from .model.config import PRESETS as MODEL_PRESETS

            make_tokenizer(MODEL_PRESETS[teacher]["vocab_size"]).save(tok_dir)
        base = self.stage("base", lambda d: self.pretrain(d, teacher, c.pretrain_steps))
        self.stage("r1-zero", lambda d: self.grpo(d, base.checkpoint, teacher, c.r1_zero_steps, c.r1_zero_lr))
        cold = self.stage("r1-cold-start", lambda d: self.sft(d, base.checkpoint, c.cold_start_steps,
                                                               self.clean_set(self.out / "data", c.cold_start_examples), teacher,
                                                               c.finetune_lr))
        rl1 = self.stage("r1-grpo1", lambda d: self.grpo(d, cold.checkpoint, teacher, sampling_rounds=c.r1_sampling_rounds))
        rs = self.stage("r1-rs-sft", lambda d: self.sft(d, rl1.checkpoint, c.rs_sft_steps,
                                                       self.verified_set(self.out / "data" / "rejection", rl1.checkpoint,
                                                                         c.rejection_problems, c.rejection_k, c.seed + 1,
                                                                         add=self.out / "data" / "cold_start.jsonl"),
                                                       teacher, c.rs_sft_lr))
        r1 = self.stage("r1", lambda d: self.grpo(d, rs.checkpoint, teacher, c.r1_grpo_steps, c.r1_grpo_lr,
                                                     ",".join(str(c.r1_task_weights.get(t, 1.0)) for t in self.task_list),
                                                     c.r1_sampling_rounds))
        s_base = self.stage("student-base", lambda d: self.pretrain(d, student, c.student_pretrain_steps))
        self.stage("student-distilled", lambda d: self.sft(d, s_base.checkpoint, c.distill_steps,
                                                           self.verified_set(self.out / "data" / "distill", r1.checkpoint,
                                                                             c.distill_problems, c.distill_k, c.seed + 2),
                                                           student))
        self.stage("student-rl", lambda d: self.grpo(d, s_base.checkpoint, student))
        final = self.out / "final"
        if not (final / "config.json").exists():
            shutil.copytree(r1.checkpoint, final, dirs_exist_ok=True)
        evals = self.evaluate()
        report = self.report(evals, time.perf_counter() - started)
        self.log(f"done: {report}  (final checkpoint: {final})")
        return report

    def evaluate(self) -> dict[str, dict[str, dict]]:
        import r1lab
        from .engine import Engine
        from .eval.evaluate import evaluate, load_problems, write_results

        path = self.out / "eval.json"
        evals: dict[str, dict[str, dict]] = json.loads(path.read_text()) if path.exists() else {}
        for name, record in self.records.items():
            if name in evals:
                continue
            self.log(f"eval {name}")
            model, tokenizer = r1lab.load(record.checkpoint)
            engine = Engine(model, tokenizer)
            results = []
            for task in self.task_list:
                problems = load_problems(task, self.cfg.eval_problems, seed=self.cfg.seed + 5, **self.cfg.knobs.get(task, {}))
                results.append(evaluate(engine, tokenizer, problems, task, k=self.cfg.eval_k, temperature=1.0,
                                        max_tokens=self.cfg.max_new_tokens, seed=self.cfg.seed))
            write_results(results, self.out / "eval" / f"{name}.jsonl")
            evals[name] = {r.task: r.summary() for r in results}
            path.write_text(json.dumps(evals, indent=2) + "\n")
        return evals

    def report(self, evals: dict, wall_s: float) -> Path:
        from .eval.report import Finding, Stage, read_metrics, write_report

        stages = {n: Stage(n, r.checkpoint, r.wall_s, r.train_flops, r.gen_flops, r.params, r.metrics, evals.get(n, {}))
                  for n, r in self.records.items()}

        def p1(stage: str, task: str) -> float | None:
            return (stages[stage].evals.get(task) or {}).get("pass1") if stage in stages else None

        def mean_p1(stage: str) -> float | None:
            vals = [p1(stage, t) for t in self.task_list]
            return None if any(v is None for v in vals) else sum(vals) / len(vals)

        findings = []
        gains = []
        for rl, start in (("r1-zero", "base"), ("r1-grpo1", "r1-cold-start"), ("r1", "r1-rs-sft"), ("student-rl", "student-base")):
            for t in self.task_list:
                a, b = p1(rl, t), p1(start, t)
                if a is not None and b is not None:
                    gains.append((a - b, rl, start, t))
        best = max(gains, default=None)
        findings.append(Finding(
            "GRPO improves on the model it starts from by >= 15 points of pass@1 on at least one task",
            None if best is None else best[0] >= 0.15,
            "not measured" if best is None else
            f"largest gain: {best[1]} over {best[2]} on {best[3]}, {100 * best[0]:+.1f} points "
            f"(all gains: {', '.join(f'{g[1]}/{g[3]} {100 * g[0]:+.1f}' for g in gains)})"))
        r1_scores = {t: p1("r1", t) for t in self.task_list}
        findings.append(Finding(
            "The R1 model is >= 90% (pass@1) on the in-distribution tasks",
            None if None in r1_scores.values() else all(v >= 0.9 for v in r1_scores.values()),
            ", ".join(f"{t}: {'–' if v is None else f'{100 * v:.1f}%'}" for t, v in r1_scores.items())))
        d, r, b = mean_p1("student-distilled"), mean_p1("student-rl"), mean_p1("student-base")
        findings.append(Finding(
            "The distilled student beats the RL-only student (the R1 paper's finding for small models)",
            None if d is None or r is None else d > r,
            "not measured" if d is None or r is None else
            f"mean pass@1 over tasks: {100 * d:.1f}% distilled vs {100 * r:.1f}% RL-only"
            + ("" if b is None else f" (both start from the student base at {100 * b:.1f}%)")))
        # does thinking get longer under RL, as it did for R1? (countdown rewards a longer search)
        trend, moves = [], []
        for name in ("r1-zero", "r1-grpo1", "r1"):
            rows = read_metrics(stages[name].metrics) if name in stages and stages[name].metrics else []
            if len(rows) >= 4:
                q = max(1, len(rows) // 4)
                first = sum(r_["response_length"] for r_ in rows[:q]) / q
                last = sum(r_["response_length"] for r_ in rows[-q:]) / q
                moves.append(last - first)
                trend.append(f"{name} {first:.0f} -> {last:.0f} tokens")
        verdict = ("grew" if all(m > 0 for m in moves) else "shrank" if all(m < 0 for m in moves) else "mixed") if moves else ""
        findings.append(Finding(f"Response length under GRPO: {verdict or 'not measured'} (R1's thinking grew with RL)", None,
                                "mean sampled response length, first vs last quarter of training: " + "; ".join(trend)
                                if trend else "no GRPO curves", observation=bool(trend)))
        order = ["base", "r1-zero", "r1-cold-start", "r1-grpo1", "r1-rs-sft", "r1", "student-base", "student-distilled",
                 "student-rl"]
        ordered = [stages[n] for n in order if n in stages]
        students = [stages[n] for n in ("student-base", "student-distilled", "student-rl") if n in stages]
        notes = [f"config: {json.dumps(asdict(self.cfg))}", f"total wall time including evaluation: {wall_s / 60:.1f} min",
                 "held-out problems: each task's test split (a hash of the problem decides; never trained on)"]
        return write_report(self.out, ordered, findings, self.task_list, title=f"r1lab speedrun: {self.out.name}",
                            notes=notes, extra_plots=[("Distilled vs RL-only student", students)])


def add_speedrun_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu", help=f"preset ({', '.join(PRESETS)}) or a YAML file (default cpu)")
    p.add_argument("--out", default="runs/speedrun", help="run folder (default runs/speedrun)")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. grpo_steps=60 tasks=addition")


def run_speedrun(args) -> int:
    cfg = build(SpeedrunConfig, PRESETS, args.preset, args.overrides)
    report = Speedrun(cfg, args.out).run()
    print(f"report card: {report}")
    print(f"serve it:    r1lab serve {Path(args.out) / 'final'}")
    return 0
