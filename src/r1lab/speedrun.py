"""`r1lab speedrun`: the whole R1 recipe on a laptop, stage by stage, then the report card.

    r1lab speedrun --preset cpu --out runs/speedrun
    r1lab speedrun --preset cpu --out runs/speedrun r1-zero.train.max_steps=60 r1.train.max_steps=120 seed=1
    r1lab speedrun --recipe my_recipe.yaml --out runs/mine
    r1lab speedrun --seeds 0,1,2 --out runs/seeds      # runs/seeds/seed-N each, then runs/seeds/findings.md

A recipe (recipe.py; the built-in ones are recipes/*.yaml) lists the stages as data. The built-in `cpu`:
  1. tokenizer on the task corpus
  2. base: pretrain on a task mixture whose teacher traces are noisy (slips)
  3. r1-zero: GRPO straight from the base (accuracy + format rewards)
  4. r1: cold-start SFT on a small clean set -> GRPO -> rejection sampling (the policy's own verified
     answers) -> SFT -> GRPO
  5. distillation: the R1 model teaches a smaller student (SFT on its verified traces), against the same
     student trained by GRPO alone from its own base, and R1 teaching it on-policy (student-onpolicy: the
     student samples, R1 scores every token) for a fixed number of steps that take about the SFT-distilled
     student's wall time
  6. evaluation of every stage on held-out problems; report.md, summary.json, plots; final/ = R1
Each stage is resumable: a stage whose `final/` exists is skipped and its record reused.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import tasks
from .config import ConfigError, build, parse_overrides, revalidate, set_key
from .engine import Engine
from .eval import aha
from .eval.compare import Curve, Point, plot as plot_curves, table as curve_table
from .eval.evaluate import evaluate, load_problems, write_results
from .eval.findings import findings
from .eval.report import Stage, read_metrics, write_report
from .eval.seeds import write_findings
from .model import load, load_model
from .model.config import PRESETS as MODEL_PRESETS
from .recipe import Recipe, StageSpec, builtin_recipes, eval_settings, load_recipe, split_traces
from .tokenizer import train_tokenizer
from .train.data import builtin_corpus
from .train.distill import TeacherSection, make_traces
from .train.grpo import GRPOConfig, PRESETS as GRPO_PRESETS, grpo
from .train.onpolicy import OnPolicyConfig, PRESETS as ONPOLICY_PRESETS, on_policy_distill
from .train.pretrain import PRESETS as PRETRAIN_PRESETS, PretrainConfig, pretrain
from .train.sft import PRESETS as SFT_PRESETS, SFTConfig, sft

# kind -> (the stage's config class, its command's presets, the stage function)
KINDS = {"pretrain": (PretrainConfig, PRETRAIN_PRESETS, pretrain), "sft": (SFTConfig, SFT_PRESETS, sft),
         "grpo": (GRPOConfig, GRPO_PRESETS, grpo), "onpolicy": (OnPolicyConfig, ONPOLICY_PRESETS, on_policy_distill)}


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


def _flops_from_metrics(metrics: Path, ckpt: Path, upto: int | None = None) -> tuple[float, float]:
    """(training FLOPs, generation FLOPs) of a run (its steps up to `upto`), from its metrics.jsonl and its
    model's accounting."""
    model = load_model(ckpt, verify=False)
    rows = [r for r in read_metrics(metrics) if upto is None or r.get("step", 0) <= upto]
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
    final = run_dir / "final"
    metrics = run_dir / "metrics.jsonl"
    train_f, gen_f = _flops_from_metrics(metrics, final) if metrics.exists() else (0.0, 0.0)
    is_grpo = metrics.exists() and any("gen_tokens" in line for line in metrics.read_text().splitlines()[:1])
    record = StageRecord(name, str(final), time.perf_counter() - started, train_f, gen_f + extra_gen_flops,
                         load_model(final, verify=False).param_count(), str(metrics) if is_grpo else None, notes or {})
    (folder / "stage.json").write_text(json.dumps(asdict(record), indent=2) + "\n")
    return record


STUDENTS = ("student-base", "student-rl", "student-sft", "student-distilled", "student-onpolicy", "student-grpo")


class Speedrun:
    def __init__(self, recipe: Recipe, out: str | Path):
        self.recipe, self.out = recipe, Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, StageRecord] = {}
        self.task_list = recipe.task_list

    def log(self, msg: str) -> None:
        print(f"\n=== speedrun: {msg}", file=sys.stderr, flush=True)

    # ---- stages, each skipped when already done

    def stage(self, spec: StageSpec) -> StageRecord:
        folder = self.out / spec.name
        done = _stage_done(folder)
        if done is not None:
            self.log(f"{spec.name}: done already ({done.checkpoint})")
            self.records[spec.name] = done
            return done
        self.log(f"{spec.name}")
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self.train(spec, folder)
        teacher_flops = self.teacher_flops(spec, folder) if spec.kind == "onpolicy" else 0.0
        record = _finish_stage(folder, spec.name, started, folder, extra_gen_flops=teacher_flops)
        self.records[spec.name] = record
        return record

    def stage_config(self, spec: StageSpec) -> tuple[object, dict]:
        """The stage's config: its command's preset, the recipe-wide values (seed, tasks, knobs, tokens),
        then its kind's defaults and its own `set`; and its traces spec (sft on traces)."""
        recipe = self.recipe
        cls, presets, _ = KINDS[spec.kind]
        cfg = build(cls, presets, spec.preset, [])
        cfg.train.seed = recipe.seed
        knobs = {k: v for k, v in recipe.knobs.items() if k in self.task_list}
        if spec.kind == "pretrain":
            cfg.data.tasks, cfg.data.knobs = recipe.tasks, knobs
        elif spec.kind in ("grpo", "onpolicy"):
            cfg.grpo.tasks, cfg.grpo.knobs, cfg.grpo.max_new_tokens = recipe.tasks, knobs, recipe.max_new_tokens
        items, traces = split_traces(spec, recipe)
        overrides = parse_overrides(items)
        for key, value in overrides:
            try:
                set_key(cfg, key, value)
            except ConfigError as e:
                raise ConfigError(f"stage {spec.name}: {e}") from None
        section = cfg.data if spec.kind == "pretrain" else cfg.grpo if spec.kind in ("grpo", "onpolicy") else None
        prefix = "data." if spec.kind == "pretrain" else "grpo."
        if section is not None and not any(key == prefix + "knobs" for key, _ in overrides):
            # a stage that trains on its own tasks (the aha stages: addition only) keeps the recipe's knobs of those
            own = [t.strip() for t in section.tasks.split(",") if t.strip()]
            section.knobs = {k: v for k, v in recipe.knobs.items() if k in own}
        return revalidate(cfg), traces

    def train(self, spec: StageSpec, folder: Path) -> None:
        cfg, traces = self.stage_config(spec)
        init = self.records[spec.start].checkpoint if spec.start else None
        if spec.kind == "pretrain":
            pretrain(cfg, folder, init=init, tokenizer=self.out / "tokenizer", resume=True)
        elif spec.kind == "sft":
            data = self.clean_set() if spec.data == "cold_start" else self.verified_set(traces)
            cfg.data.files = [str(data)]
            sft(cfg, folder, init=init, resume=True)
        elif spec.kind == "onpolicy":
            if spec.budget and not cfg.grpo.time_limit_s:  # the same wall-time budget as that stage
                cfg.grpo.time_limit_s = self.records[spec.budget].wall_s
            on_policy_distill(cfg, folder, teacher=self.records[spec.teacher].checkpoint, student=init, resume=True)
        else:
            grpo(cfg, folder, init=init, resume=True)

    def teacher_flops(self, spec: StageSpec, folder: Path, upto: int | None = None) -> float:
        """The teacher's scoring forward passes over the student's sampled tokens (counted as generation)."""
        teacher = load_model(self.records[spec.teacher].checkpoint, verify=False)
        tokens = sum(r.get("gen_tokens", 0) for r in read_metrics(folder / "metrics.jsonl")
                     if upto is None or r.get("step", 0) <= upto)
        return tokens * teacher.flops_per_token(256, training=False)

    # ---- SFT data

    def verified_set(self, traces: dict) -> Path:
        """Rejection sampling / distillation data (data/FOLDER/sft.jsonl): the teacher stage's verified-correct
        traces as chat rows, plus the cold-start rows if traces.add_cold_start (R1's second SFT mixes them
        in). A teacher with no correct trace at all leaves only the clean reference set, and says so in
        traces_stats.json."""
        recipe = self.recipe
        folder = self.out / "data" / traces.get("folder", "traces")
        data = folder / "sft.jsonl"
        if data.exists():
            return data
        add = self.clean_set() if traces.get("add_cold_start") else None
        teacher = TeacherSection(tasks=recipe.tasks, knobs=recipe.knobs, problems=traces.get("problems", 200),
                                 k=traces.get("k", 4), temperature=1.0, max_new_tokens=recipe.max_new_tokens,
                                 seed=recipe.seed + traces.get("seed", 0))
        try:
            stats = make_traces(self.records[traces["teacher"]].checkpoint, teacher, folder)
            rows = (folder / "traces.jsonl").read_text()
        except ConfigError as e:
            self.log(f"{e}; falling back to the clean reference traces")
            stats, rows = {"kept_traces": 0, "fallback": "clean reference traces"}, ""
            add = add or self.clean_set()
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "traces_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        self.log(f"verified traces in {folder}: {stats}")
        data.write_text(rows + (add.read_text() if add else ""))
        return data

    def clean_set(self) -> Path:
        """The cold-start data (data/cold_start.jsonl): clean_examples clean, well-formatted reference
        traces, an equal share per task."""
        recipe = self.recipe
        folder = self.out / "data"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "cold_start.jsonl"
        if not path.exists():
            per_task = max(1, recipe.clean_examples // len(self.task_list))
            with open(path, "w") as f:
                for name in self.task_list:
                    for row in tasks.sample(name, per_task, seed=recipe.seed + 99, **recipe.knobs.get(name, {})):
                        f.write(json.dumps({"messages": [{"role": "user", "content": row["prompt"]},
                                                         {"role": "assistant", "content": row["reference_trace"]}]}) + "\n")
        return path

    # ---- the run

    def run(self) -> Path:
        recipe = self.recipe
        started = time.perf_counter()
        tok_dir = self.out / "tokenizer"
        if not (tok_dir / "tokenizer.json").exists():
            self.log("tokenizer")
            vocab = MODEL_PRESETS[recipe.tokenizer]["vocab_size"]
            train_tokenizer(builtin_corpus(), vocab_size=vocab).save(tok_dir)
        for spec in recipe.stages:
            self.stage(spec)
        final = self.out / "final"
        if not (final / "config.json").exists():
            shutil.copytree(self.records[recipe.final].checkpoint, final, dirs_exist_ok=True)
        evals = self.evaluate()
        report = self.report(evals, time.perf_counter() - started)
        self.log(f"done: {report}  (final checkpoint: {final})")
        return report

    def evaluate(self) -> dict[str, dict[str, dict]]:
        """Every stage's final checkpoint on the held-out problems (eval.json, eval/NAME.jsonl); a stage with
        `eval: {curve: true}` also each of its kept checkpoints but the last, as NAME@STEP."""
        recipe = self.recipe
        path = self.out / "eval.json"
        evals: dict[str, dict[str, dict]] = json.loads(path.read_text()) if path.exists() else {}
        for name, record in self.records.items():
            task_list, max_tokens, curve = eval_settings(recipe.stage(name), recipe)
            points = [(name, record.checkpoint)]
            if curve:
                points += [(f"{name}@{step}", str(folder)) for step, folder in self.curve_checkpoints(name)]
            for key, checkpoint in points:
                if key in evals:
                    continue
                if not task_list:  # `eval: {tasks: ""}`: a stage on the way to another, not worth evaluating
                    evals[key] = {}
                    continue
                self.log(f"eval {key}")
                model, tokenizer = load(checkpoint)
                engine = Engine(model, tokenizer)
                results = []
                for task in task_list:
                    problems = load_problems(task, recipe.eval_problems, seed=recipe.seed + 5, **recipe.knobs.get(task, {}))
                    results.append(evaluate(engine, tokenizer, problems, task, k=recipe.eval_k, temperature=1.0,
                                            max_tokens=max_tokens, seed=recipe.seed))
                write_results(results, self.out / "eval" / f"{key}.jsonl")
                evals[key] = {r.task: r.summary() for r in results}
                path.write_text(json.dumps(evals, indent=2) + "\n")
        return evals

    def curve_checkpoints(self, name: str) -> list[tuple[int, Path]]:
        """A stage's kept checkpoints (step, folder) in step order, the last one (the final model) left out."""
        folders = sorted((int(f.name[5:]), f) for f in (self.out / name / "checkpoints").glob("step_*") if f.name[5:].isdigit())
        return folders[:-1]

    def curves(self, evals: dict) -> list[Curve]:
        """One line of accuracy against FLOPs per `curve` stage: its start at 0 FLOPs, its checkpoints, its final."""
        out = []
        for spec in self.recipe.stages:
            if spec.name not in self.records or not eval_settings(spec, self.recipe)[2] or spec.start not in evals:
                continue
            folder, record = self.out / spec.name, self.records[spec.name]
            points = [Point(0.0, evals[spec.start], "start")]
            for step, checkpoint in self.curve_checkpoints(spec.name):
                if f"{spec.name}@{step}" in evals:
                    points.append(Point(self.stage_flops(spec, folder, checkpoint, step), evals[f"{spec.name}@{step}"],
                                        f"step {step}"))
            points.append(Point(record.train_flops + record.gen_flops, evals.get(spec.name, {}), "final"))
            out.append(Curve(spec.name, spec.start, points))
        return out

    def stage_flops(self, spec: StageSpec, folder: Path, checkpoint: Path, step: int) -> float:
        """FLOPs a stage spent up to `step`: its update and sampling, and on-policy the teacher's scoring."""
        train_f, gen_f = _flops_from_metrics(folder / "metrics.jsonl", checkpoint, upto=step)
        return train_f + gen_f + (self.teacher_flops(spec, folder, upto=step) if spec.kind == "onpolicy" else 0.0)

    def report(self, evals: dict, wall_s: float) -> Path:
        stages = {n: Stage(n, r.checkpoint, r.wall_s, r.train_flops, r.gen_flops, r.params, r.metrics, evals.get(n, {}))
                  for n, r in self.records.items()}
        # the aha stages answer their own question (eval/aha.py), apart from the R1 pipeline's findings
        grpo_stages = [s.name for s in self.recipe.stages if s.kind == "grpo" and s.name not in aha.NAMES]
        starts = {s.name: s.start for s in self.recipe.stages if s.name in aha.NAMES}
        curves = self.curves(evals)
        found = findings(stages, self.task_list, self.chain(), self.recipe.final, curves,
                         grpo_stages=grpo_stages) + aha.aha_findings(stages, starts)
        students = [stages[n] for n in STUDENTS if n in stages]
        notes = [f"recipe: {json.dumps(asdict(self.recipe))}", f"total wall time including evaluation: {wall_s / 60:.1f} min",
                 "held-out problems: each task's test split (a hash of the problem decides; never trained on)"]
        sections = aha.aha_section(stages, self.out, starts)
        if curves:
            figure = plot_curves(curves, self.task_list, self.out / "students_by_flops.png",
                                 f"from {curves[0].start}: accuracy against compute")
            sections += ["## The students at equal compute", "",
                         f"Each continues the same student ({curves[0].start}); FLOPs count the "
                         "update, the sampling and, on-policy, the teacher's scoring (the SFT traces were paid for "
                         "before the start).", "", *curve_table(curves, self.task_list), ""]
            if figure:
                sections += [f"![accuracy against FLOPs]({figure.name})", ""]
        return write_report(self.out, list(stages.values()), found, self.task_list, title=f"r1lab speedrun: {self.out.name}",
                            notes=notes, extra_plots=[("Distilled vs RL-only student", students)] if students else None,
                            students=[s for s in students if s.name != "student-base"],
                            sections=sections, seed=self.recipe.seed)

    def chain(self) -> list[str]:
        """R1's pipeline: the stages the final model descends from, after the last pretraining stage (cold start
        first)."""
        out, name = [], self.recipe.final
        while name:
            spec = self.recipe.stage(name)
            if spec.kind == "pretrain":
                break
            out.append(name)
            name = spec.start
        return out[::-1]


def add_speedrun_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu", help=f"built-in recipe ({', '.join(builtin_recipes())}; default cpu)")
    p.add_argument("--recipe", metavar="FILE", help="a recipe YAML file instead (see recipes/cpu.yaml in the package)")
    p.add_argument("--out", default="runs/speedrun", help="run folder (default runs/speedrun)")
    p.add_argument("--seeds", metavar="0,1,2", help="run the recipe once per seed into OUT/seed-N (finished stages "
                                                    "are kept), then write the findings per seed to OUT/findings.md")
    p.add_argument("overrides", nargs="*", help="key=value: recipe-wide (seed=1 eval_k=8) or STAGE.KEY=VALUE "
                                                "(r1-zero.train.max_steps=60 r1.grpo.max_sampling_rounds=4)")


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected integers separated by commas, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: expected distinct integers separated by commas, e.g. 0,1,2")
    return seeds


def run_speedrun(args) -> int:
    source = args.recipe or args.preset
    if not args.seeds:
        recipe = load_recipe(source, args.overrides)
        report = Speedrun(recipe, args.out).run()
        print(f"report card: {report}")
        print(f"serve it:    r1lab serve {Path(args.out) / 'final'}")
        return 0
    if any(item.split("=", 1)[0].strip() == "seed" for item in args.overrides):
        raise ConfigError("give the seeds with --seeds or seed=N, not both")
    seeds = parse_seeds(args.seeds)
    out = Path(args.out)
    recipes = {seed: load_recipe(source, [*args.overrides, f"seed={seed}"]) for seed in seeds}  # all valid before any runs
    folders = []
    for seed, recipe in recipes.items():
        folders.append(out / f"seed-{seed}")
        print(f"report card (seed {seed}): {Speedrun(recipe, folders[-1]).run()}")
    sys.stdout.write(write_findings(folders, out / "findings.md"))
    print(f"findings across seeds: {out / 'findings.md'}")
    return 0
