"""One GRPO step: r1lab's trainer against TRL's GRPOTrainer, same model, task, rewards and shapes.

One process, one model in Hugging Face format: by default cpu-tiny SFT'd on 4-digit addition traces of which
30% carry a slip (built once, cached in ~/.cache/r1lab/bench; the start of the --to-accuracy race, so rewards
vary and completions end where a trained model ends them), or with --random a cpu-tiny with random weights.
r1lab loads it with r1lab.load, TRL with AutoModelForCausalLM. Both run the built-in `addition` task (the same
problems, in the same order, rendered with the chat template, so the prompts end with "<think>\\n"), rewards
accuracy (weight 1) + format (weight 0.2), group size G,
B prompts per step, at most L new tokens, temperature 1, fp32, CPU, one optimizer step per batch of
B*G completions (no KL term, one policy update per generation: beta=0, mu=num_iterations=1). r1lab's other
GRPO settings are its defaults (rows with zero advantage skip the update, rows are packed), except dynamic
sampling, off so that both sample exactly B*G completions per step.

  r1lab: the trainer's own GRPOStep: engine.refresh + collect (engine sampling with continuous batching, reward
         scoring), group advantages, policy_batch, one train_step (forward/backward on the B*G rows, clip, AdamW).
  TRL:   GRPOTrainer, use_vllm=False (transformers' generate on the batch, left-padded), the B*G completions
         in one micro-batch (per_device_train_batch_size = generation_batch_size = B*G, no accumulation);
         a step is timed from on_step_begin to on_step_end by a TrainerCallback. Prompts are the rendered
         chat strings (checked to tokenize to r1lab's ids); the rewards get "<think>\\n" + completion, and
         TRL's tokenizer keeps <think>/</think> when decoding (they are not special tokens), so both score the same text.

Each side runs one warm-up step first (untimed), then --steps timed steps, the two sides' timed steps
alternating (r1lab's step i runs from TRL's callback right before TRL's step i), so that the load from other
programs on a shared machine falls on both alike; rates are totals over the timed steps. Completions may
end early at EOS on both sides (with random weights about 1 token in vocab_size; transformers' generate has no
per-request forcing that r1lab's collect shares), so the report gives completions/s and generated
tokens/s (EOS counted, as both trainers train on it).

    pip install trl datasets accelerate      # the peer (not an r1lab dependency)
    python bench/grpo.py                      # G=8, B=8, L=64, 2 timed steps: about 40 s on 2 cores
    python bench/grpo.py --prompts 16 --max-tokens 128 --steps 3     # the speedrun's shapes
    python bench/grpo.py --to-accuracy        # time to 90% held-out pass@1 (bench/grpo_accuracy.py)

Prints a table, then as the last line one JSON object ("ratio": r1lab completions/s over TRL's).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

import grpo_accuracy  # the --to-accuracy race, and the cached start both modes use (this folder is on sys.path)

TASK = "addition"
REWARDS = {"accuracy": 1.0, "format": 0.2}  # r1lab's default GRPO rewards and weights
LR = 5e-5  # the cpu-tiny GRPO preset's; at 5e-4 one step wrecks the SFT model (accuracy 60% -> 0%)


@dataclass
class Timing:
    """Per timed step: wall and CPU seconds (this process; steadier than wall time on a busy machine), the
    wall seconds spent sampling + scoring, completions, generated tokens."""

    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    sample_seconds: list[float] = field(default_factory=list)
    completions: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    def add(self, wall: float, cpu: float, sample: float, completions: int, tokens: int) -> None:
        self.seconds.append(wall)
        self.cpu_seconds.append(cpu)
        self.sample_seconds.append(sample)
        self.completions.append(completions)
        self.tokens.append(tokens)

    @property
    def completions_per_s(self) -> float:
        return sum(self.completions) / sum(self.seconds)

    @property
    def tokens_per_s(self) -> float:
        return sum(self.tokens) / sum(self.seconds)

    @property
    def completions_per_cpu_s(self) -> float:
        return sum(self.completions) / sum(self.cpu_seconds)


def report(side: str, step: int, wall: float, cpu: float, sample: float, n: int, tokens: int, reward: float,
           extra: str = "") -> None:
    print(f"  {side:5} step {step} ({'warm-up' if step == 0 else 'timed'}): {wall:6.2f} s (cpu {cpu:5.2f} s, "
          f"sample+score {sample:5.2f} s), {n} completions, {tokens} tokens, reward {reward:.3f}{extra}",
          file=sys.stderr, flush=True)


def make_checkpoint(folder: Path, seed: int) -> Path:
    """cpu-tiny with random weights and the 512-token tokenizer, in Hugging Face format."""
    from r1lab.model import Transformer, preset, save_checkpoint
    from r1lab.tokenizer import train_tokenizer
    from r1lab.train.data import builtin_corpus

    tok = train_tokenizer(builtin_corpus(), vocab_size=512)
    cfg = preset("cpu-tiny", vocab_size=tok.vocab_size, bos_token_id=tok.bos_token_id,
                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return Path(save_checkpoint(Transformer(cfg), tok, folder))


def grpo_section(args):
    from r1lab.train.grpo import GRPOSection

    # dynamic sampling off: with random weights every group's rewards are equal and r1lab would resample
    # up to 4 times; TRL has no such filter, so both take exactly B*G completions per step
    return GRPOSection(tasks=TASK, group_size=args.group_size, prompts_per_step=args.prompts,
                       max_new_tokens=args.max_tokens, temperature=1.0, rewards=dict(REWARDS), loss="grpo",
                       advantage="grpo", mu=1, beta=0.0, dynamic_sampling=False, max_staleness=args.staleness)


def problems_in_order(args, n: int) -> list[dict]:
    """The first n problems of r1lab's prompt stream (what r1lab's steps draw), for TRL's dataset."""
    from r1lab.train.grpo import PromptStream

    return [p for _, p in PromptStream(grpo_section(args), args.seed).take(n)]


# ---------------------------------------------------------------- r1lab

def r1lab_grpo_step(folder: Path, run_dir: Path, gc, tc):
    """r1lab's own GRPOStep (the function `r1lab grpo`'s loop calls) on the checkpoint `folder`, in one process,
    without the loop's logging and checkpointing; its prompt stream is seeded with tc.seed."""
    import r1lab
    from r1lab.train.dist import Dist, RunState
    from r1lab.train.grpo import GRPOStep, PromptStream
    from r1lab.train.loop import Trainer

    run = RunState(run_dir, Dist(), tc)
    run.out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = r1lab.load(folder)
    return GRPOStep(Trainer.build(run, model, tokenizer), gc, PromptStream(gc, tc.seed))


def r1lab_stepper(folder: Path, args) -> tuple[Callable[[int], None], Timing]:
    """A function running r1lab's GRPO step number i (step 0 is the untimed warm-up), and its Timing. The
    step is the trainer's own `GRPOStep` (the function `r1lab grpo`'s loop calls), on one process,
    without the loop's logging and checkpointing."""
    from r1lab.config import TrainConfig

    gc = grpo_section(args)
    # min_lr_ratio 1: a constant learning rate, as TRL's is here
    tc = TrainConfig(max_steps=1 + args.steps, lr=LR, weight_decay=0.0, grad_clip=1.0, warmup_steps=0, min_lr_ratio=1.0,
                     seed=args.seed, device="cpu")
    grpo_step = r1lab_grpo_step(folder, folder.parent / "r1lab_run", gc, tc)
    timing = Timing()

    def step(i: int) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        record = grpo_step(i)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        n, tokens = record["groups_seen"] * gc.group_size, record["gen_tokens"]
        report("r1lab", i, wall, cpu, record["gen_s"], n, tokens, record["reward"])
        if i > 0:
            timing.add(wall, cpu, record["gen_s"], n, tokens)

    return step, timing


# ---------------------------------------------------------------- TRL

def trl_rewards() -> tuple[list, list[float]]:
    """r1lab's rewards for TRL: TRL hands over the completion without the prompt's prefilled "<think>\\n"
    (it ends the prompt string), r1lab's rewards expect the whole response, so re-attach it."""
    from r1lab.rewards import get
    from r1lab.tokenizer import THINK_PREFIX

    def wrap(name):
        fn = get(name)

        def reward(completions, **columns):
            return fn([THINK_PREFIX + c for c in completions], **columns)

        reward.__name__ = name
        return reward

    return [wrap(name) for name in REWARDS], list(REWARDS.values())


def trl_rows(problems: list[dict]) -> list[dict]:
    """TRL's dataset rows: the rendered chat prompt (ending "<think>\\n") and the reward columns."""
    from r1lab.rewards import columns_of
    from r1lab.tokenizer import render_chat

    columns = columns_of(problems)
    return [{"prompt": render_chat([{"role": "user", "content": p["prompt"]}], add_generation_prompt=True),
             **{k: v[i] for k, v in columns.items()}} for i, p in enumerate(problems)]


def check_trl_prompts(tokenizer, folder: Path, rows: list[dict], problems: list[dict]) -> None:
    """TRL tokenizes a string prompt with the tokenizer's defaults: it must give r1lab's exact prompt ids, and
    its decoding must keep the think tags the rewards read."""
    from r1lab.tokenizer import Tokenizer

    ours = Tokenizer.load(folder)
    for row, problem in zip(rows, problems):
        expected = ours.apply_chat_template([{"role": "user", "content": problem["prompt"]}], add_generation_prompt=True)
        if tokenizer(text=row["prompt"])["input_ids"] != expected:
            raise RuntimeError(f"TRL would see other prompt ids than r1lab for {row['prompt']!r}")
    sample = "<think>\n1+1=2\n</think>\nThe answer is \\boxed{2}."
    if tokenizer.decode(tokenizer(text=sample)["input_ids"], skip_special_tokens=True) != sample:
        raise RuntimeError("TRL's decoding would not round-trip the think tags")


def trl_grpo(folder: Path, out_dir: Path, problems: list[dict], args, callback, **options):
    """TRL's GRPOTrainer on `folder` over `problems` in order, with what both benches share: G completions per
    prompt, the B*G completions of a step generated at once and trained in micro-batches of --trl-micro rows
    (gradient accumulation), at most L new tokens, temperature 1, r1lab's rewards and weights, a constant learning
    rate, fp32 on CPU, gradient checkpointing off (its default is on: it only costs time here); `options`
    (learning_rate, max_steps, ...) go to GRPOConfig."""
    import datasets
    import transformers
    import trl

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecation notices inside TRL
    datasets.disable_progress_bars()
    rows = trl_rows(problems)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    check_trl_prompts(tokenizer, folder, rows[:200], problems[:200])
    funcs, weights = trl_rewards()
    B, G = args.prompts, args.group_size
    micro = min(args.trl_micro, B * G)
    if (B * G) % micro:
        raise SystemExit(f"--trl-micro {micro} must divide B*G = {B * G}")
    config = trl.GRPOConfig(
        output_dir=str(out_dir), num_generations=G, per_device_train_batch_size=micro,
        gradient_accumulation_steps=B * G // micro, generation_batch_size=B * G, gradient_checkpointing=False,
        max_completion_length=args.max_tokens, temperature=1.0, reward_weights=weights,
        lr_scheduler_type="constant", logging_steps=1, report_to="none", use_cpu=True, bf16=False, save_strategy="no",
        shuffle_dataset=False, seed=args.seed, disable_tqdm=True, dataloader_num_workers=0, **options)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=funcs, args=config, train_dataset=datasets.Dataset.from_list(rows),
                              processing_class=tokenizer, callbacks=[callback])
    trainer.remove_callback(transformers.PrinterCallback)  # our own lines say what each step did
    return trainer


def bench_trl(folder: Path, args, before: Callable[[int], None]) -> tuple[Timing, str]:
    """TRL's steps 0 (warm-up) .. args.steps, calling before(i) ahead of timed step i."""
    import trl
    from transformers import TrainerCallback

    B, G = args.prompts, args.group_size
    timing, begun, sampled = Timing(), [0.0, 0.0], []

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if 0 < state.global_step <= args.steps:
                before(state.global_step)  # r1lab's step i runs right before TRL's step i: same load on both
            begun[:] = time.perf_counter(), time.process_time()

        def on_step_end(self, a, state, control, **kw):
            begun[:] = time.perf_counter() - begun[0], time.process_time() - begun[1]

        def on_log(self, a, state, control, logs=None, **kw):
            if not logs or "completions/mean_length" not in logs:  # the end-of-training summary
                return
            i, (wall, cpu), n = state.global_step - 1, begun, B * G
            sample_s = sampled[i] if len(sampled) == i + 1 else float("nan")
            tokens = round(logs["completions/mean_length"] * n)
            report("TRL", i, wall, cpu, sample_s, n, tokens, logs.get("reward", float("nan")),
                   f", torch threads {torch.get_num_threads()}")
            if i > 0:
                timing.add(wall, cpu, sample_s, n, tokens)

    trainer = trl_grpo(folder, folder.parent / "trl_run", problems_in_order(args, B * (1 + args.steps)), args, Clock(),
                       beta=0.0, num_iterations=1, loss_type="grpo", scale_rewards="group", learning_rate=LR,
                       weight_decay=0.0, max_grad_norm=1.0, max_steps=1 + args.steps)
    # for the breakdown only: time TRL's own sampling + scoring stage (generate, decode, rewards, advantages)
    stage = getattr(trainer, "_generate_and_score_completions", None)
    if stage is not None:
        def timed_stage(*a, **kw):
            t = time.perf_counter()
            out = stage(*a, **kw)
            sampled.append(time.perf_counter() - t)
            return out

        trainer._generate_and_score_completions = timed_stage
    trainer.train()
    if len(timing.seconds) != args.steps:
        raise RuntimeError(f"TRL logged {len(timing.seconds)} timed steps, expected {args.steps}")
    return timing, trl.__version__


# ---------------------------------------------------------------- main

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--group-size", type=int, default=8, help="G: completions per prompt")
    p.add_argument("--prompts", type=int, default=8, help="B: prompts per optimizer step")
    p.add_argument("--max-tokens", type=int, default=64, help="L: max completion length")
    p.add_argument("--steps", type=int, default=2, help="timed steps per side, after one warm-up step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random", action="store_true",
                   help="start from random weights (rewards all 0: r1lab's update then skips every row) instead of "
                        "the 30%%-slip SFT model the --to-accuracy race starts from")
    p.add_argument("--trl-micro", type=int, default=128,
                   help="TRL's rows per forward/backward (per_device_train_batch_size; gradient accumulation over the "
                        "B*G rows of a step); r1lab runs its default grpo.micro_batch_size")
    p.add_argument("--staleness", type=int, default=0, choices=[0, 1],
                   help="r1lab's grpo.max_staleness (1: the next step's rollouts sampled while a step trains)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for both (default 1: the machine is small and shared, and a "
                        "multi-threaded op waits for a free core)")
    race = p.add_argument_group("--to-accuracy: wall time until held-out pass@1 reaches --target (bench/grpo_accuracy.py)")
    race.add_argument("--to-accuracy", action="store_true",
                      help="race both trainers from the 30%%-slip SFT model to --target (defaults: B=16, L=128)")
    race.add_argument("--target", type=float, default=0.9)
    # each side's best of the same three tries, 5e-5, 1e-4 and 2e-4 (docs/results.md: 2e-4 collapsed both)
    race.add_argument("--lr-r1lab", type=float, default=1e-4, help="r1lab's learning rate (constant)")
    race.add_argument("--lr-trl", type=float, default=5e-5, help="TRL's learning rate (constant)")
    race.add_argument("--eval-every", type=int, default=5, help="steps between held-out evaluations (untimed)")
    race.add_argument("--eval-problems", type=int, default=200)
    race.add_argument("--eval-k", type=int, default=2, help="samples per problem for pass@1")
    race.add_argument("--max-minutes", type=float, default=25.0, help="each side's budget of step wall time")
    race.add_argument("--checkpoint", help="start from this checkpoint instead of the cached slip SFT model")
    race.add_argument("--plot", default="runs/bench/grpo_to_accuracy.png", help="PNG of pass@1 against wall time")
    args = p.parse_args()
    if args.to_accuracy:
        if "--prompts" not in sys.argv:
            args.prompts = 16
        if "--max-tokens" not in sys.argv:
            args.max_tokens = 128
        return grpo_accuracy.main(args, sys.modules[__name__])
    torch.set_num_threads(args.threads)
    B, G, L = args.prompts, args.group_size, args.max_tokens
    start = "random weights" if args.random else "the 30%-slip SFT model"
    print(f"GRPO step bench: cpu-tiny ({start}), task {TASK}, G={G}, B={B}, L={L}, temperature 1, fp32, CPU, "
          f"torch threads {args.threads} (set for both; the machine is shared, timings are noisy), "
          f"1 warm-up + {args.steps} timed steps each", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_checkpoint(Path(tmp) / "model", args.seed) if args.random else \
            grpo_accuracy.slip_checkpoint(args.checkpoint)
        r1lab_step, ours = r1lab_stepper(folder, args)
        r1lab_step(0)  # warm-up; the timed steps alternate with TRL's, r1lab's first
        theirs, trl_version = bench_trl(folder, args, r1lab_step)
    ratio = ours.completions_per_s / theirs.completions_per_s
    tokens_ratio = ours.tokens_per_s / theirs.tokens_per_s
    cpu_ratio = ours.completions_per_cpu_s / theirs.completions_per_cpu_s
    print(f"\n{'':10} {'s/step':>7} {'sample+score':>13} {'update':>7} {'cpu s/step':>11} {'completions/s':>14} "
          f"{'gen tokens/s':>13} {'tokens/completion':>18}")
    for name, t in (("r1lab", ours), (f"TRL {trl_version}", theirs)):
        step_s, sample_s = statistics.fmean(t.seconds), statistics.fmean(t.sample_seconds)
        print(f"{name:10} {step_s:7.2f} {sample_s:13.2f} {step_s - sample_s:7.2f} {statistics.fmean(t.cpu_seconds):11.2f} "
              f"{t.completions_per_s:14.1f} {t.tokens_per_s:13.1f} {sum(t.tokens) / sum(t.completions):18.1f}")
    print(f"{'r1lab/TRL':10} {'':7} {'':13} {'':7} {cpu_ratio:10.2f}x {ratio:13.2f}x {tokens_ratio:12.2f}x\n"
          f"(wall-clock rates over the timed steps; the cpu column's ratio is completions per CPU-second)\n")
    print(json.dumps({"bench": "grpo", "ratio": round(ratio, 3),
                      "r1lab_completions_per_s": round(ours.completions_per_s, 2),
                      "trl_completions_per_s": round(theirs.completions_per_s, 2), "tokens_ratio": round(tokens_ratio, 3),
                      "cpu_time_ratio": round(cpu_ratio, 3),
                      "r1lab_tokens_per_s": round(ours.tokens_per_s, 1), "trl_tokens_per_s": round(theirs.tokens_per_s, 1),
                      "r1lab_s_per_step": round(statistics.fmean(ours.seconds), 3),
                      "trl_s_per_step": round(statistics.fmean(theirs.seconds), 3),
                      "r1lab_sample_s_per_step": round(statistics.fmean(ours.sample_seconds), 3),
                      "trl_sample_s_per_step": round(statistics.fmean(theirs.sample_seconds), 3),
                      "group_size": G, "prompts_per_step": B, "max_completion_length": L, "timed_steps": args.steps,
                      "threads": args.threads, "trl_version": trl_version}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
