"""`python bench/grpo.py --to-accuracy`: wall time until held-out pass@1 >= 90%, r1lab's GRPO against TRL's.

Start: cpu-tiny SFT'd on 4-digit addition traces of a teacher that slips in 30% of them (the model of
scripts/grpo_acceptance.py's slip experiment: greedy mostly right, sampling at temperature 1 not), built once
and kept in ~/.cache/r1lab/bench/ (or --checkpoint). From it, both trainers run GRPO on the built-in addition
task: the same prompts in the same order, G completions per prompt, B prompts per step, at most L new tokens,
temperature 1, rewards accuracy + 0.2 format, fp32, CPU, one optimizer step per batch, a constant learning rate
(no warm-up, no decay: the step budget is open) and everything else at each trainer's defaults:
  r1lab: its GRPO defaults (loss grpo, std-scaled advantages, dynamic sampling: groups whose rewards are all equal
         are re-drawn up to 4 rounds, rows with zero advantage skip the update, rows packed).
  TRL:   GRPOTrainer's defaults (loss_type dapo, scale_rewards group, no masking of truncated completions, beta 0,
         one iteration), transformers' generate (no vLLM on CPU), gradient checkpointing off (its default is on:
         it saves memory at the cost of a second forward, which this small model does not need).
Every --eval-every steps each side's current policy is evaluated, outside the timed region, by one evaluator
(r1lab's engine; TRL's weights are saved in Hugging Face format and loaded into r1lab's model): pass@1 over k
samples at temperature 1 on the same held-out problems (the task's test split, 4 digits). A side's figure is
its summed step wall time when an evaluation first reads >= --target. The sides' steps alternate (r1lab's
step i right before TRL's step i, both in one process, 1 torch thread) so machine load falls on both; a side
that reaches the target stops, the other goes on alone up to --max-minutes of step time. A side that never gets
there within its budget is reported as not reached, and the ratio as a lower bound."""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

CACHE = Path.home() / ".cache" / "r1lab" / "bench"
SFT = ["max_steps=500", "data.tasks=addition", "data.noise=0.3", "data.noise_kind=slip",
       "data.knobs={addition: {digits: 4}}"]  # = scripts/grpo_acceptance.py slip


def slip_checkpoint(path: str | None) -> Path:
    """The SFT'd start (built on first use: 500 SFT steps of cpu-tiny, a few minutes on one thread)."""
    if path:
        return Path(path)
    from r1lab.config import build
    from r1lab.train.sft import PRESETS, SFTConfig, sft

    out = CACHE / "grpo-slip-sft"
    if not (out / "final" / "config.json").exists():
        print(f"building the start checkpoint once (SFT, {' '.join(SFT)}) in {out}", file=sys.stderr, flush=True)
        sft(build(SFTConfig, PRESETS, "cpu-tiny", SFT), out, resume=True)
    return out / "final"


@dataclass
class Side:
    """One trainer's progress: summed step seconds, steps, and the evaluations (step, seconds, pass@1)."""

    name: str
    seconds: float = 0.0
    steps: int = 0
    completions: int = 0
    curve: list[tuple[int, float, float]] = field(default_factory=list)
    reached_s: float | None = None
    reached_step: int | None = None

    def done(self, budget_s: float) -> bool:
        return self.reached_s is not None or self.seconds >= budget_s

    def record(self, pass1: float, target: float) -> None:
        self.curve.append((self.steps, self.seconds, pass1))
        print(f"  {self.name:5} eval after step {self.steps:3d} ({self.seconds:7.1f} s of steps): pass@1 {100 * pass1:5.1f}%",
              file=sys.stderr, flush=True)
        if pass1 >= target and self.reached_s is None:
            self.reached_s, self.reached_step = self.seconds, self.steps


class Judge:
    """pass@1 of a policy on the held-out problems, with r1lab's evaluator (the same for both sides)."""

    def __init__(self, start: Path, n: int, k: int, max_tokens: int):
        from r1lab.eval import load_problems

        self.start, self.k, self.max_tokens = start, k, max_tokens
        self.problems = load_problems("addition", n, seed=7, digits=4)
        self.folder = Path(tempfile.mkdtemp(prefix="r1lab-judge-"))

    def __call__(self, model, tokenizer) -> float:
        from r1lab.engine import Engine
        from r1lab.eval import evaluate

        was_training = model.training
        model.eval()
        result = evaluate(Engine(model, tokenizer), tokenizer, self.problems, "addition", k=self.k, temperature=1.0,
                          max_tokens=self.max_tokens, greedy=False)
        model.train(was_training)
        return result.pass1

    def hf_model(self, hf) -> float:
        """TRL's policy (a transformers model): saved in Hugging Face format beside the start's tokenizer and
        config, loaded into r1lab's model, then judged."""
        from r1lab.model.checkpoint import load

        if not (self.folder / "config.json").exists():
            shutil.copytree(self.start, self.folder, dirs_exist_ok=True)
        saved = self.folder / "hf"
        hf.save_pretrained(saved, safe_serialization=True)
        for f in self.folder.glob("model*.safetensors*"):
            f.unlink()
        for f in saved.glob("model*.safetensors*"):
            shutil.move(str(f), self.folder / f.name)
        shutil.rmtree(saved)
        model, tok = load(self.folder, verify=False)  # the start's manifest does not cover the new weights
        return self(model, tok)


def run(args, bench) -> dict:
    """The race; `bench` is bench/grpo.py (its TRL set-up and rewards)."""
    import transformers
    import trl
    from r1lab.config import build
    from r1lab.train.grpo import GRPOConfig, PRESETS, PromptStream

    start = slip_checkpoint(args.checkpoint)
    judge = Judge(start, args.eval_problems, args.eval_k, args.max_tokens)
    budget = args.max_minutes * 60
    tmp = Path(tempfile.mkdtemp(prefix="r1lab-race-"))
    B, G, L = args.prompts, args.group_size, args.max_tokens
    ours, theirs = Side("r1lab"), Side("TRL")

    # r1lab: the cpu-tiny GRPO preset with its defaults, on the shapes and learning rate of the race
    cfg = build(GRPOConfig, PRESETS, "cpu-tiny", [
        "grpo.tasks=addition", "grpo.knobs={addition: {digits: 4}}", f"grpo.group_size={G}", f"grpo.prompts_per_step={B}",
        f"grpo.max_new_tokens={L}", f"lr={args.lr_r1lab}", "warmup_steps=0", "min_lr_ratio=1.0", "max_steps=100000",
        f"seed={args.seed}", "device=cpu", f"grpo.max_staleness={args.staleness}"])
    stepper = bench.r1lab_grpo_step(start, tmp / "r1lab_run", cfg.grpo, cfg.train)
    model, tokenizer = stepper.trainer.model, stepper.trainer.tokenizer

    def r1lab_step() -> None:
        if ours.done(budget):
            return
        t0 = time.perf_counter()
        record = stepper(ours.steps)
        ours.seconds += time.perf_counter() - t0
        ours.steps += 1
        ours.completions += record["groups_seen"] * G
        if ours.steps % args.eval_every == 0:
            ours.record(judge(model, tokenizer), args.target)

    print(f"GRPO to {100 * args.target:.0f}% pass@1: G={G}, B={B}, L={L}, lr r1lab {args.lr_r1lab:g} / TRL "
          f"{args.lr_trl:g}, eval every {args.eval_every} steps on {args.eval_problems} problems x {args.eval_k} "
          f"samples, at most {args.max_minutes:g} min of steps per side", file=sys.stderr, flush=True)
    first = judge(model, tokenizer)
    print(f"  start: pass@1 {100 * first:.1f}%", file=sys.stderr, flush=True)
    ours.curve.append((0, 0.0, first))
    theirs.curve.append((0, 0.0, first))

    # TRL: the same prompts from r1lab's stream (r1lab may draw more: dynamic sampling)
    problems = [p for _, p in PromptStream(cfg.grpo, args.seed).take(B * 1000)]
    begun = [0.0]

    class Race(transformers.TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            r1lab_step()  # r1lab's step i right before TRL's step i: the same load on both
            begun[0] = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            theirs.seconds += time.perf_counter() - begun[0]
            theirs.steps += 1
            theirs.completions += B * G
            if theirs.steps % args.eval_every == 0:
                theirs.record(judge.hf_model(trainer.model), args.target)
            if theirs.done(budget):
                control.should_training_stop = True

    # TRL's defaults otherwise (loss dapo, scale_rewards group, beta 0, one iteration)
    trainer = bench.trl_grpo(start, tmp / "trl_run", problems, args, Race(), learning_rate=args.lr_trl, warmup_steps=0,
                             max_steps=100000)
    trainer.train()
    while not ours.done(budget):  # TRL got there (or ran out) first
        r1lab_step()
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(judge.folder, ignore_errors=True)
    return summarize(args, ours, theirs, trl.__version__)


def summarize(args, ours: Side, theirs: Side, trl_version: str) -> dict:
    print(f"\n{'':6} {'step':>5} {'seconds':>8} {'pass@1':>7}")
    for side in (ours, theirs):
        for step, seconds, pass1 in side.curve:
            print(f"{side.name:6} {step:5d} {seconds:8.1f} {100 * pass1:6.1f}%")
    if ours.reached_s is None:
        ratio, bound = None, "r1lab did not reach the target"
    elif theirs.reached_s is None:
        ratio, bound = theirs.seconds / ours.reached_s, "lower bound: TRL did not reach the target in its budget"
    else:
        ratio, bound = theirs.reached_s / ours.reached_s, ""
    print(f"\nseconds of steps to {100 * args.target:.0f}%: r1lab {ours.reached_s}, TRL {theirs.reached_s}"
          + (f" (TRL stopped at {theirs.seconds:.0f} s)" if theirs.reached_s is None else ""))
    if args.plot:
        plot(args.plot, ours, theirs, args.target)
    return {"bench": "grpo_to_accuracy", "time_to_90_ratio": None if ratio is None else round(ratio, 3),
            "ratio_note": bound, "target": args.target,
            "r1lab_seconds_to_target": ours.reached_s and round(ours.reached_s, 1), "r1lab_steps_to_target": ours.reached_step,
            "trl_seconds_to_target": theirs.reached_s and round(theirs.reached_s, 1), "trl_steps_to_target": theirs.reached_step,
            "r1lab_s_per_step": round(ours.seconds / max(ours.steps, 1), 2),
            "trl_s_per_step": round(theirs.seconds / max(theirs.steps, 1), 2),
            "r1lab_completions": ours.completions, "trl_completions": theirs.completions,
            "lr_r1lab": args.lr_r1lab, "lr_trl": args.lr_trl, "group_size": args.group_size,
            "prompts_per_step": args.prompts, "max_completion_length": args.max_tokens, "eval_every": args.eval_every,
            "eval_problems": args.eval_problems, "eval_k": args.eval_k, "threads": args.threads,
            "trl_version": trl_version,
            "curves": {s.name: [[st, round(sec, 1), round(p, 4)] for st, sec, p in s.curve] for s in (ours, theirs)}}


def plot(path: str, ours: Side, theirs: Side, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for side, style in ((ours, "o-"), (theirs, "s--")):
        ax.plot([s for _, s, _ in side.curve], [100 * p for _, _, p in side.curve], style, label=side.name, ms=3)
    ax.axhline(100 * target, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("wall seconds of GRPO steps (evaluation excluded)")
    ax.set_ylabel("held-out pass@1 (%)")
    ax.set_title("GRPO from the 30%-slip SFT model: time to accuracy", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"plot: {path}", file=sys.stderr)


def main(args, bench) -> int:
    torch.set_num_threads(args.threads)
    print(json.dumps(run(args, bench)))
    return 0
