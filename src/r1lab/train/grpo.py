"""`r1lab grpo`: reinforcement learning on verifiable rewards (GRPO, Dr. GRPO, DAPO, GSPO, CISPO, SAPO), the heart of R1.

    r1lab grpo --init runs/sft/final --out runs/grpo                      # addition, accuracy + format
    r1lab grpo --init runs/sft/final --out runs/grpo grpo.tasks=addition,countdown grpo.loss=dapo

Each step: draw prompts, sample G completions per prompt with the engine (continuous batching, on the
live weights), score them with the configured rewards, turn rewards into group-relative advantages,
and take mu optimizer steps on the clipped policy objective. Dynamic sampling (DAPO) drops groups whose
rewards are all equal -- they carry no signal -- and samples more prompts until the batch is full, as
many at once as the share of informative groups seen so far calls for.

Under torchrun, prompts are sharded across ranks and each group stays whole on one rank; gradients are
averaged by DDP. Resume is exact: the prompt position and every RNG are in the checkpoint, and sampling
seeds are a function of (seed, step, prompt, sample).

In Python: `grpo(cfg, out, init=..., resume=False)`. The outer loop (resume, logging, checkpoints, the
time limit) is train/loop.py's `train`; this file holds GRPO's step, `GRPOStep`.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, build
from ..engine import Engine
from ..model.adapter import load_any
from ..rewards import combine
from . import health
from .dist import all_reduce_sum, distributed_job
from .grpo_collect import PromptStream, Rollouts, SampleStats, collect
from .grpo_config import PRESETS, GRPOConfig, GRPOSection
from .grpo_loss import fill_logp, group_advantages, make_loss_fn, policy_batch
from .lora import attach_lora
from .loop import Trainer, load_model_for, save_config, setup_run, train
from .step import autocast, lr_at, train_dtype, train_step


class Reference:
    """The frozen reference model of the KL term (grpo.beta > 0). Its checkpoint state is the folder it
    came from, so that a resumed run reloads the same reference rather than copying the resumed policy."""

    def __init__(self, model, source: str):
        self.model, self.source = model.eval().requires_grad_(False), source

    def state_dict(self) -> dict[str, Any]:
        return {"reference": self.source}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("reference"):
            self.source = state["reference"]
            self.model = load_any(self.source)[0].eval().requires_grad_(False)


def rollout_correction(cfg: GRPOSection, dtype: str) -> str:
    """The rollout correction a run applies: grpo.rollout_correction, or for auto, mis where the sampler is not
    the trainer (vLLM; bf16 autocast training while r1lab's engine samples with the fp32 weights) and its
    log-probs are of the distribution it sampled (vLLM's always; r1lab's engine's at temperature 1, no top-p),
    else none (today's fp32 CPU runs: sampler and trainer are one model in one precision)."""
    if cfg.rollout_correction != "auto":
        return cfg.rollout_correction
    differs = cfg.rollout == "vllm" or dtype == "bf16"
    exact = cfg.rollout == "vllm" or (cfg.temperature == 1.0 and cfg.top_p == 1.0)
    return "mis" if differs and exact else "none"


class AsyncSampler:
    """grpo.max_staleness=1: a copy of the policy and its own engine sample the next step's rollouts in a
    background thread while the trainer trains on this step's, which the copy sampled one update earlier.

    `take(step)` returns the rollouts for `step` (sampled ahead during the previous step; the first step's are
    sampled now, on the current weights), `ahead(step + 1)` copies the trainer's current weights into the copy and
    starts sampling the next step's, and `wait()` holds the step's end until they are done, so that a checkpoint
    never races the sampler. Every rollout carries its tokens' log-probs under the weights that sampled it,
    computed by the copy before those weights move on: the PPO ratio's old policy. The rollouts sampled ahead
    are part of the checkpoint (`state_dict`), so that a resumed run trains on exactly what the uninterrupted
    one would have. One rank only: the checkpoint holds rank 0's state."""

    def __init__(self, trainer: Trainer, cfg: GRPOSection, prompts: PromptStream, scorer, n_local: int):
        from concurrent.futures import ThreadPoolExecutor

        if trainer.run.dist.world_size > 1 or trainer.run.train.fsdp:
            raise ConfigError("grpo.max_staleness=1 runs on one rank (the rollouts sampled ahead are saved from rank 0)")
        self.trainer, self.cfg, self.prompts, self.scorer, self.n_local = trainer, cfg, prompts, scorer, n_local
        self.model = copy.deepcopy(trainer.model).eval().requires_grad_(False)
        self.engine = Engine(self.model, trainer.tokenizer, max_running=max(8, n_local * cfg.group_size))
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="grpo-sampler")
        self.pending = None  # the future of the next step's rollouts
        self.ready: tuple[int, Rollouts, SampleStats, float] | None = None  # (step, rollouts, stats, gen_s)

    def _sample(self, step: int) -> tuple[int, Rollouts, SampleStats, float]:
        started = time.perf_counter()
        run = self.trainer.run
        rollouts, stats = collect(self.engine, self.trainer.tokenizer, self.prompts, self.scorer, self.cfg, self.n_local,
                                  run.train.seed * 100_003 + step, step)
        if rollouts.rewards:  # the sampling weights' log-probs, in the trainer's precision (autocast is per thread)
            batch = policy_batch(rollouts, torch.zeros(len(rollouts.rewards)), self.trainer.tokenizer.pad_token_id, False)
            with autocast(run, self.model):
                fill_logp(self.model, batch, self.cfg.temperature, self.cfg.micro_batch_size, "old_logp", self.cfg.pack)
            rollouts.old_logp = [batch.old_logp[i, len(p) - 1:len(p) + len(c) - 1].tolist()
                                 for i, (p, c) in enumerate(zip(rollouts.prompt_ids, rollouts.completion_ids))]
        return step, rollouts, stats, time.perf_counter() - started

    def _load_weights(self) -> None:
        with torch.no_grad():
            self.model.load_state_dict(self.trainer.model.state_dict())
        self.engine.refresh()

    def take(self, step: int) -> tuple[Rollouts, SampleStats, float, int]:
        """This step's rollouts, their stats, the seconds sampling them took, and how many updates old they are."""
        staleness = 1
        if self.ready is None:  # the run's first step (or a resume from a run without): nothing was sampled ahead
            self._load_weights()
            self.ready, staleness = self._sample(step), 0
        ready_step, rollouts, stats, gen_s = self.ready
        if ready_step != step:
            raise RuntimeError(f"rollouts sampled ahead for step {ready_step}, asked for step {step}")
        self.ready = None
        return rollouts, stats, gen_s, staleness

    def ahead(self, step: int) -> None:
        self._load_weights()  # the weights of this step, before its update: the next batch is one version old
        self.pending = self.pool.submit(self._sample, step)

    def wait(self) -> float:
        """Seconds the step's end waited for the rollouts sampled ahead."""
        started = time.perf_counter()
        if self.pending is not None:
            self.ready, self.pending = self.pending.result(), None
        return time.perf_counter() - started

    def state_dict(self) -> dict[str, Any]:
        self.wait()
        if self.ready is None:
            return {}
        step, rollouts, stats, gen_s = self.ready
        return {"step": step, "rollouts": dataclasses.asdict(rollouts), "stats": dataclasses.asdict(stats), "gen_s": gen_s}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            stats = SampleStats(**state["stats"])
            stats.reviews = [tuple(r) for r in stats.reviews]
            self.ready = (state["step"], Rollouts(**state["rollouts"]), stats, state["gen_s"])

    def close(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
        self.pool.shutdown(wait=True)


class StepState:
    """What GRPO adds to a checkpoint: the reference model's source (beta > 0) and the rollouts sampled ahead
    (max_staleness > 0), in one state dict."""

    def __init__(self, reference: Reference | None, sampler: AsyncSampler | None):
        self.reference, self.sampler = reference, sampler

    def state_dict(self) -> dict[str, Any]:
        state = self.reference.state_dict() if self.reference is not None else {}
        return {**state, "ahead": self.sampler.state_dict()} if self.sampler is not None else state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.reference is not None:
            self.reference.load_state_dict(state)
        if self.sampler is not None:
            self.sampler.load_state_dict(state.get("ahead", {}))


class GRPOStep:
    """One GRPO step, the function the loop (and bench/grpo.py) calls: collect -> advantages -> policy
    batch -> update -> metrics record."""

    def __init__(self, trainer: Trainer, cfg: GRPOSection, prompts: PromptStream, reference: Reference | None = None):
        self.trainer, self.cfg, self.prompts, self.reference = trainer, cfg, prompts, reference
        self.n_local = cfg.prompts_per_step // trainer.run.dist.world_size
        self.scorer = combine(cfg.rewards)
        self.sampler = AsyncSampler(trainer, cfg, prompts, self.scorer, self.n_local) if cfg.max_staleness else None
        if self.sampler is not None:
            self.engine = self.sampler.engine  # the policy's copy samples; the trainer's weights only train
        elif cfg.rollout == "vllm":
            from ..engine.vllm_rollout import VLLMRollout  # vLLM is heavy and optional

            self.engine = VLLMRollout(trainer.model, trainer.tokenizer, cfg.vllm,
                                      seed=trainer.run.train.seed + trainer.run.dist.rank)
        else:
            self.engine = Engine(trainer.model, trainer.tokenizer, max_running=max(8, self.n_local * cfg.group_size))
        self.samples = None  # samples.jsonl on rank 0, opened at the first write
        self.monitor = health.Monitor(cfg.stop_on)  # the health signs of each step (train/health.py)
        self.correction = rollout_correction(cfg, train_dtype(trainer.run, trainer.model))

    def __call__(self, step: int) -> dict[str, Any]:
        trainer, run = self.trainer, self.trainer.run
        started = time.perf_counter()
        trainer.model.eval()
        if self.sampler is None:
            self.engine.refresh()  # the weights changed in place at the last optimizer step
            rollouts, stats = collect(self.engine, trainer.tokenizer, self.prompts, self.scorer, self.cfg, self.n_local,
                                      run.train.seed * 100_003 + step, step)
            gen_s = time.perf_counter() - started
        else:  # sampled during the last step (gen_s: the sampler's own time); the next step's start now
            rollouts, stats, gen_s, staleness = self.sampler.take(step)
            self.sampler.ahead(step + 1)
        update_started = time.perf_counter()
        # every rank must take part in the optimizer step, even one that kept no group
        n_rows_total, = all_reduce_sum([float(len(rollouts.rewards))], run.dist)
        update = self.update(rollouts, int(n_rows_total), step)
        train_s = time.perf_counter() - update_started
        if self.sampler is not None:  # the step ends when the next step's rollouts are in (checkpoints stay exact)
            update = {**update, "staleness": staleness, "sampler_wait_s": self.sampler.wait()}
        record = self.metrics(stats, int(n_rows_total), step, gen_s, train_s)
        self.write_samples(step + 1, stats)
        record = {**record, **update}
        record["health"] = self.monitor.check(record, stats.rewards, stats.repetition, self.cfg.group_size)
        sick = self.monitor.stop(record["health"])  # a grpo.stop_on sign: the loop stops as at the time limit
        return {**record, "stop": f"{', '.join(sick)} (grpo.stop_on)"} if sick else record

    def update(self, rollouts: Rollouts, n_rows_total: int, step: int) -> dict[str, Any]:
        """mu optimizer steps on the kept groups; the loss, gradient and MFU figures of the last one."""
        trainer, cfg, dist = self.trainer, self.cfg, self.trainer.run.dist
        n_kept = len(rollouts.rewards)
        if n_kept == 0:
            if n_rows_total > 0:
                raise ConfigError("a rank kept no group while others did; use one rank or turn off dynamic sampling")
            return {"loss": 0.0, "train_tokens": 0, "mfu": 0.0}
        started = time.perf_counter()
        advantages = group_advantages(torch.tensor(rollouts.rewards), cfg.group_size, cfg.advantage)
        batch = policy_batch(rollouts, advantages, trainer.tokenizer.pad_token_id, cfg.mask_truncated)
        # the normalisers count every kept row and token, also those skipped below (their loss is exactly 0)
        n_tokens_total, = all_reduce_sum([float(batch.n_targets)], dist)
        if cfg.beta == 0 and cfg.skip_zero_advantage:
            batch = batch.useful()
        if cfg.mu > 1 and batch.old_logp is None:  # the sampling policy's log-probs, fixed across the mu updates
            fill_logp(trainer.model, batch, cfg.temperature, cfg.micro_batch_size, "old_logp", cfg.pack)
        if self.reference is not None:
            fill_logp(self.reference.model.to(dist.device), batch, cfg.temperature, cfg.micro_batch_size, "ref_logp",
                      cfg.pack)
        trainer.model.train()
        parity: list[torch.Tensor] = []  # |log p_engine - log p_trainer| per micro-batch, first update only
        loss_fn = make_loss_fn(cfg, n_rows_total, int(max(n_tokens_total, 1)), parity, self.correction)
        micro = batch.micro_batches(cfg.micro_batch_size)
        weights = [1.0] * len(micro)  # loss_fn already scales each micro-batch
        for _ in range(cfg.mu):
            stats = train_step(trainer.wrapped, trainer.model, trainer.optimizer, micro, lr_at(step, trainer.run.train),
                               trainer.run, loss_fn, weights)
        n_micro, = all_reduce_sum([float(len(micro))], dist)
        flops = trainer.model.flops_per_token(batch.input_ids.shape[1]) * stats.tokens * cfg.mu
        return {"loss": stats.loss, "grad_norm": stats.grad_norm, **self.parity(parity[:len(micro)]),
                **{k: v / n_micro for k, v in stats.parts.items()},
                **stats.router, "train_tokens": stats.tokens,
                "mfu": flops / (time.perf_counter() - started) / trainer.peak}

    def parity(self, gaps: list[torch.Tensor]) -> dict[str, float]:
        """Rollouts against training: max (this rank) and mean (all ranks) |log p_engine - log p_trainer| over
        the trained tokens, under the weights that sampled them (empty at temperature != 1)."""
        if not gaps:
            return {}
        flat = torch.cat(gaps)
        total, count = all_reduce_sum([float(flat.sum()), float(len(flat))], self.trainer.run.dist)
        return {"logp_gap_max": float(flat.max()) if len(flat) else 0.0, "logp_gap_mean": total / max(count, 1.0)}

    def metrics(self, stats: SampleStats, n_rows_total: int, step: int, gen_s: float, train_s: float) -> dict[str, Any]:
        """The step's record over every sampled completion (the policy's quality), summed over ranks; with
        several tasks, accuracy per task too."""
        per_task = self.prompts.names if len(self.prompts.names) > 1 else []
        local = {"n": float(len(stats.rewards)), "reward": sum(stats.rewards), "length": float(sum(stats.lengths)),
                 "truncated": float(sum(stats.truncated)), "seen": float(stats.groups_seen),
                 "dropped": float(stats.groups_dropped), **{f"reward_{k}": sum(v) for k, v in sorted(stats.parts.items())}}
        if self.prompts.checks:  # how often the policy verifies its answer, and how often that fixed a wrong one
            local["checked"] = float(sum(checked for checked, _ in stats.reviews))
            pairs = zip(stats.reviews, stats.parts["accuracy"])
            local["fixed"] = float(sum(caught and right == 1.0 for (_, caught), right in pairs))
        for name in per_task:
            local[f"n_{name}"] = float(sum(t == name for t in stats.tasks))
            local[f"accuracy_{name}"] = sum(a for a, t in zip(stats.parts["accuracy"], stats.tasks) if t == name)
        total = dict(zip(local, all_reduce_sum(list(local.values()), self.trainer.run.dist)))  # same keys on every rank
        n_all = max(total["n"], 1.0)
        record = {"lr": lr_at(step, self.trainer.run.train), "reward": total["reward"] / n_all,
                  **{f"reward_{k}": total[f"reward_{k}"] / n_all for k in sorted(stats.parts)},
                  "response_length": total["length"] / n_all, "response_length_max": max(stats.lengths, default=0),
                  "truncated": total["truncated"] / n_all, "groups_seen": int(total["seen"]),
                  "groups_dropped": total["dropped"] / max(total["seen"], 1.0),
                  "groups_kept": n_rows_total // self.cfg.group_size, "sampling_rounds": stats.rounds, "gen_s": gen_s,
                  "train_s": train_s, "tokens_per_s": total["length"] / max(gen_s, 1e-9),
                  "completions_per_s": total["n"] / max(gen_s, 1e-9), "gen_tokens": int(total["length"])}
        if "reward_accuracy" in record:
            record["accuracy"] = record["reward_accuracy"]
        if self.prompts.checks:
            record["check_rate"] = total["checked"] / n_all  # share of responses with a check
            record["fix_rate"] = total["fixed"] / max(total["checked"], 1.0)  # share of checks that caught and fixed a slip
        for name in per_task:
            if total[f"n_{name}"] > 0:
                record[f"accuracy_{name}"] = total[f"accuracy_{name}"] / total[f"n_{name}"]
        return record

    def write_samples(self, step: int, stats: SampleStats) -> None:
        """A few completions to samples.jsonl at step 1 and every grpo.samples_every steps (rank 0)."""
        run = self.trainer.run
        if not run.dist.is_main or not (step % max(1, self.cfg.samples_every) == 0 or step == 1):
            return
        if self.samples is None:
            self.samples = open(run.out_dir / "samples.jsonl", "a")
        for example in stats.examples:
            self.samples.write(json.dumps(example) + "\n")
        self.samples.flush()

    def close(self) -> None:
        if self.cfg.rollout == "vllm":
            self.engine.close()  # vLLM shuts down before the trainer tears the process group down
        if self.sampler is not None:
            self.sampler.close()
        if self.samples is not None:
            self.samples.close()


def grpo(cfg: GRPOConfig, out: str | Path, *, init: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    """GRPO from the policy `init` into `out`; returns out/final. overwrite: replace a trained run (guard.py)."""
    with distributed_job():
        run = setup_run(out, cfg, resume, overwrite=overwrite)
        if cfg.grpo.prompts_per_step % run.dist.world_size:
            raise ConfigError(f"grpo.prompts_per_step {cfg.grpo.prompts_per_step} is not divisible by "
                              f"{run.dist.world_size} ranks")
        model, tokenizer = load_model_for(run, init)
        model = attach_lora(model, cfg.lora, init, run)  # LoRA hook
        save_config(run, cfg)
        reference = Reference(copy.deepcopy(model), str(init)) if cfg.grpo.beta > 0 else None
        trainer = Trainer.build(run, model, tokenizer)
        prompts = PromptStream(cfg.grpo, cfg.train.seed, run.dist.rank, run.dist.world_size)
        step_fn = GRPOStep(trainer, cfg.grpo, prompts, reference)
        extra = StepState(reference, step_fn.sampler) if step_fn.sampler is not None else reference
        try:
            train(trainer, prompts, step_fn, desc="grpo", extra=extra, time_limit_s=cfg.grpo.time_limit_s)
        finally:
            step_fn.close()
    return Path(out) / "final"


# ---------------------------------------------------------------- command

def add_grpo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--init", required=True, metavar="CKPT",
                   help="the policy to start from (a base model: R1-Zero; an SFT'd one: R1)")
    p.add_argument("--out", required=True, help="run folder: config.yaml, metrics.jsonl, samples.jsonl, checkpoints/, final/")
    p.add_argument("--preset", default="cpu-tiny", help=f"preset ({', '.join(PRESETS)}) or a YAML file (default cpu-tiny)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds (checkpoints, final/, metrics)")
    p.add_argument("overrides", nargs="*",
                   help="key=value, e.g. max_steps=50 grpo.loss=dapo grpo.epsilon_high=0.28 "
                        "'grpo.rewards={accuracy: 1, format: 0.2}'")


def run_grpo(args) -> int:
    grpo(build(GRPOConfig, PRESETS, args.preset, args.overrides), args.out, init=args.init, resume=args.resume,
         overwrite=args.overwrite)
    return 0
