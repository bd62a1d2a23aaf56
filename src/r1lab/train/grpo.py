"""`r1lab grpo`: reinforcement learning on verifiable rewards (GRPO, Dr. GRPO, DAPO), the heart of R1.

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
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..config import ConfigError, TrainConfig, build
from ..rewards import columns_of
from .grpo_loss import group_advantages, overlong_penalty, policy_loss
from .loop import (Checkpointer, distributed_job, MetricsLogger, Progress, all_reduce_sum, autocast, full_state, init_model, make_optimizer,
                   lr_at, peak_flops, save_config, seed_everything, setup_run, train_step, wrap_model, _is_fsdp)

THINK_PREFIX = "<think>\n"  # pre-filled by the chat template; rewards see the whole response


@dataclass
class GRPOSection:
    tasks: str = "addition"  # comma-separated built-in tasks, sampled in proportion to task_weights
    task_weights: str = ""  # comma-separated, default equal
    knobs: dict = field(default_factory=dict)  # difficulty per task, e.g. {"addition": {"digits": 4}}
    group_size: int = 8  # G completions per prompt
    prompts_per_step: int = 16  # groups per step over all ranks (after dynamic sampling)
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    rewards: dict = field(default_factory=lambda: {"accuracy": 1.0, "format": 0.2})
    advantage: str = "grpo"  # grpo: (r - mean) / std | dr_grpo: r - mean
    loss: str = "grpo"  # grpo | dr_grpo | dapo
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2  # DAPO's clip-higher uses e.g. 0.28
    mu: int = 1  # optimizer steps per batch of samples
    beta: float = 0.0  # KL weight to the frozen reference model (0: no reference model at all)
    mask_truncated: bool = False  # no loss on completions cut by max_new_tokens (DAPO's overlong filtering)
    overlong_buffer: int = 0  # DAPO's soft over-length penalty over the last N tokens (0: off)
    overlong_penalty: float = 1.0
    dynamic_sampling: bool = True
    max_sampling_rounds: int = 4  # tries to fill the batch with informative groups
    time_limit_s: float = 0.0  # stop (and save) after this much wall time, even before max_steps (0: no limit)
    micro_batch_size: int = 64  # completions per forward/backward
    samples_every: int = 10  # write a few completions to samples.jsonl every N steps
    samples_per_log: int = 4

    def __post_init__(self) -> None:
        if self.advantage not in ("grpo", "dr_grpo"):
            raise ValueError(f"grpo.advantage must be grpo or dr_grpo, got {self.advantage!r}")
        if self.loss not in ("grpo", "dr_grpo", "dapo"):
            raise ValueError(f"grpo.loss must be grpo, dr_grpo or dapo, got {self.loss!r}")
        if self.group_size < 2:
            raise ValueError("grpo.group_size must be at least 2 (advantages are relative to the group)")
        if self.mu < 1:
            raise ValueError("grpo.mu must be at least 1")


@dataclass
class GRPOConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    grpo: GRPOSection = field(default_factory=GRPOSection)


# RL on a model that already computes precisely wants small steps: at lr 5e-4 the slip-teacher SFT model's
# sampled accuracy fell from 66% to 15% in 20 steps; at 5e-5 it rose to 85% in 30 (scripts/grpo_acceptance.py)
_CPU_TRAIN = dict(max_steps=100, lr=5e-5, warmup_steps=5, min_lr_ratio=0.5, weight_decay=0.0, grad_clip=1.0,
                  save_every=25, log_every=1, batch_size=1)
PRESETS: dict[str, dict] = {
    "cpu-tiny": {"train": _CPU_TRAIN},
    "cpu-micro": {"train": dict(_CPU_TRAIN, lr=8e-5)},
    "cpu-20m": {"train": dict(_CPU_TRAIN, lr=2e-5), "grpo": {"max_new_tokens": 256}},
    "gpu-small": {"train": dict(_CPU_TRAIN, max_steps=500, lr=1e-5, save_every=50),
                  "grpo": {"prompts_per_step": 64, "group_size": 16, "max_new_tokens": 1024, "micro_batch_size": 16}},
}


# ---------------------------------------------------------------- prompts

class PromptStream:
    """An endless, seeded stream of task problems; position = how many were drawn (over all ranks).
    Rank r takes the problems whose global index is r mod world_size, so groups never straddle ranks."""

    def __init__(self, cfg: GRPOSection, seed: int, rank: int = 0, world: int = 1):
        from .. import tasks

        self.names = [t.strip() for t in cfg.tasks.split(",") if t.strip()]
        if not self.names:
            raise ConfigError("grpo.tasks is empty")
        weights = [float(w) for w in cfg.task_weights.split(",")] if cfg.task_weights else [1.0] * len(self.names)
        if len(weights) != len(self.names):
            raise ConfigError("grpo.task_weights needs one weight per task in grpo.tasks")
        self.weights, self.seed, self.rank, self.world = weights, seed, rank, world
        self.knobs = cfg.knobs
        self._make = lambda name, s: tasks.get(name)(seed=s, split="train", **cfg.knobs.get(name, {}))
        self.position = 0
        self._iters: dict[str, Any] = {}
        self._drawn: dict[str, int] = {}

    def _problem(self, index: int) -> dict:
        """The index-th problem of the stream: the task by a seeded draw, then that task's next problem."""
        name = random.Random(self.seed * 1_000_003 + index).choices(self.names, self.weights)[0]
        it = self._iters.get(name)
        if it is None:
            it = self._iters[name] = self._make(name, self.seed)
            self._drawn[name] = 0
        self._drawn[name] += 1
        return next(it)

    def take(self, n_local: int) -> list[tuple[int, dict]]:
        """n_local problems for this rank (consuming n_local * world from the global stream)."""
        out = []
        for _ in range(n_local * self.world):
            problem = self._problem(self.position)
            if self.position % self.world == self.rank:
                out.append((self.position, problem))
            self.position += 1
        return out

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        # replay the draws: problems are cheap to generate and this keeps the stream a pure function of seed
        target = int(state["position"])
        while self.position < target:
            self._problem(self.position)
            self.position += 1


# ---------------------------------------------------------------- rollouts

@dataclass
class Rollouts:
    """The kept groups of one step, flattened group by group (N = groups * G)."""

    prompt_ids: list[list[int]] = field(default_factory=list)
    completion_ids: list[list[int]] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)


@dataclass
class SampleStats:
    rewards: list[float] = field(default_factory=list)  # every sampled completion, kept or not
    parts: dict[str, list[float]] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)  # each completion's task
    lengths: list[int] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    groups_seen: int = 0
    groups_dropped: int = 0
    rounds: int = 0
    examples: list[dict] = field(default_factory=list)


def collect(engine, tokenizer, prompts: PromptStream, scorer, cfg: GRPOSection, n_local: int, seed: int, step: int
            ) -> tuple[Rollouts, SampleStats]:
    """Sample until n_local informative groups are kept (or max_sampling_rounds is reached).

    The first round draws n_local prompts; each later one draws enough to fill the batch at the share of
    informative groups seen so far (at most 4x what is missing), so one large batch of generation
    replaces several small ones when most groups are all-correct (DAPO's over-sampling). Groups beyond a
    full batch are counted in the stats and not trained on."""
    from ..engine import SamplingParams
    from ..rewards import get as get_reward

    G = cfg.group_size
    kept, stats = Rollouts(), SampleStats()
    while len(kept.rewards) < n_local * G and stats.rounds < cfg.max_sampling_rounds:
        stats.rounds += 1
        need = n_local - len(kept.rewards) // G
        informative = stats.groups_seen - stats.groups_dropped
        if stats.groups_seen:
            need = min(4 * need, math.ceil(need * stats.groups_seen / max(informative, 1)))
        drawn = prompts.take(need)
        problems = [p for _, p in drawn]
        prompt_ids = [tokenizer.apply_chat_template([{"role": "user", "content": p["prompt"]}], add_generation_prompt=True)
                      for p in problems]
        params = [SamplingParams(max_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                 seed=(seed * 7919 + index) * 1009 + j)
                  for index, _ in drawn for j in range(G)]
        outs = engine.generate([ids for ids in prompt_ids for _ in range(G)], params)
        texts = [THINK_PREFIX + o.text for o in outs]
        columns = columns_of(problems, G)
        scores = scorer(texts, **columns)
        totals = list(scores.total)
        if "accuracy" not in scores.parts:  # always logged, even when it is not a reward of this run
            scores.parts["accuracy"] = get_reward("accuracy")(texts, **columns)
        lengths = [len(o.token_ids) for o in outs]
        if cfg.overlong_buffer > 0:
            penalty = overlong_penalty(torch.tensor(lengths), cfg.max_new_tokens, cfg.overlong_buffer, cfg.overlong_penalty)
            totals = [t + p for t, p in zip(totals, penalty.tolist())]
        stats.rewards += totals
        for name, values in scores.parts.items():
            stats.parts.setdefault(name, []).extend(values)
        stats.tasks += [p["task"] for p in problems for _ in range(G)]
        stats.lengths += lengths
        stats.truncated += [o.finish_reason == "length" for o in outs]
        for g, problem in enumerate(problems):
            group = slice(g * G, (g + 1) * G)
            stats.groups_seen += 1
            if cfg.dynamic_sampling and max(totals[group]) - min(totals[group]) < 1e-9:
                stats.groups_dropped += 1
                continue
            if len(kept.rewards) >= n_local * G:
                continue
            for o, r in zip(outs[group], totals[group]):
                kept.prompt_ids.append(prompt_ids[g])
                kept.completion_ids.append(list(o.token_ids))
                kept.rewards.append(r)
                kept.truncated.append(o.finish_reason == "length")
        if len(stats.examples) < cfg.samples_per_log:
            for g, problem in enumerate(problems[:cfg.samples_per_log - len(stats.examples)]):
                stats.examples.append({"step": step, "prompt": problem["prompt"], "answer": problem.get("answer"),
                                       "completion": texts[g * G], "reward": totals[g * G]})
    return kept, stats


# ---------------------------------------------------------------- the policy update

@dataclass
class PolicyBatch:
    """Prompt + completion rows, right-padded; `target_mask` marks the positions whose next token is a
    completion token (the ones the policy is trained on)."""

    input_ids: torch.Tensor  # (N, T)
    target_mask: torch.Tensor  # (N, T - 1)
    advantages: torch.Tensor  # (N,)
    old_logp: torch.Tensor | None = None  # (N, T - 1)
    ref_logp: torch.Tensor | None = None

    @property
    def n_targets(self) -> int:
        return int(self.target_mask.sum())

    def rows(self, start: int, stop: int) -> "PolicyBatch":
        cut = lambda t: None if t is None else t[start:stop]  # noqa: E731
        return PolicyBatch(self.input_ids[start:stop], self.target_mask[start:stop], self.advantages[start:stop],
                           cut(self.old_logp), cut(self.ref_logp))

    def to(self, device) -> "PolicyBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PolicyBatch(move(self.input_ids), move(self.target_mask), move(self.advantages), move(self.old_logp),
                           move(self.ref_logp))


def policy_batch(rollouts: Rollouts, advantages: torch.Tensor, pad_id: int, mask_truncated: bool) -> PolicyBatch:
    rows = [p + c for p, c in zip(rollouts.prompt_ids, rollouts.completion_ids)]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width - 1)
    for i, (p, c) in enumerate(zip(rollouts.prompt_ids, rollouts.completion_ids)):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c)
        if not (mask_truncated and rollouts.truncated[i]):
            mask[i, len(p) - 1:len(p) + len(c) - 1] = 1.0  # position t predicts token t + 1
    return PolicyBatch(ids, mask, advantages)


def token_logp(model, input_ids: torch.Tensor, mask: torch.Tensor, temperature: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """log-prob of each next token under the policy (at the sampling temperature), (N, T - 1), zero where
    `mask` is not set (the head runs only on the masked positions); and the mean entropy there (no grad)."""
    target = mask.bool()  # position t predicts token t + 1
    select = torch.zeros(input_ids.shape, dtype=torch.bool, device=input_ids.device)
    select[:, :-1] = target
    logits = model(input_ids, select=select).float()  # (n, vocab)
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = torch.zeros(mask.shape, dtype=logp_all.dtype, device=logp_all.device)
    logp[target] = logp_all.gather(-1, input_ids[:, 1:][target][:, None]).squeeze(-1)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1).mean() if len(logp_all) else logp_all.new_zeros(())
    return logp, entropy


def make_loss_fn(cfg: GRPOSection, n_rows_total: int, n_tokens_total: int):
    """The loss for one micro-batch, scaled so that the micro-batches' losses sum to the batch's loss."""

    def loss_fn(model, b: PolicyBatch):
        logp, entropy = token_logp(model, b.input_ids, b.target_mask, cfg.temperature)
        old = b.old_logp if b.old_logp is not None else logp.detach()
        rows = b.input_ids.shape[0]
        # normalisers over the whole batch (all micro-batches and ranks), so accumulation is exact
        if cfg.loss == "grpo":
            out = policy_loss(logp, old, b.advantages, b.target_mask, "grpo", cfg.epsilon_low, cfg.epsilon_high,
                              cfg.beta, b.ref_logp)
            scale = rows / n_rows_total
        else:
            denom = n_rows_total * cfg.max_new_tokens if cfg.loss == "dr_grpo" else n_tokens_total
            out = policy_loss(logp, old, b.advantages, b.target_mask, cfg.loss, cfg.epsilon_low, cfg.epsilon_high,
                              cfg.beta, b.ref_logp, token_normaliser=denom)
            scale = 1.0
        return out.loss * scale, {"clip_frac": out.clip_frac, "kl": out.kl, "entropy": float(entropy)}

    return loss_fn


@torch.no_grad()
def fill_logp(model, batch: PolicyBatch, temperature: float, micro: int, attr: str) -> None:
    parts = [token_logp(model, batch.input_ids[i:i + micro], batch.target_mask[i:i + micro], temperature)[0]
             for i in range(0, len(batch.input_ids), micro)]
    setattr(batch, attr, torch.cat(parts))


# ---------------------------------------------------------------- the loop

def train_grpo(cfg: GRPOConfig, init: str, out: str, resume: bool = False) -> None:
    from ..engine import Engine
    from ..rewards import combine

    run = setup_run(out, cfg, resume)
    dist, tc, gc = run.dist, cfg.train, cfg.grpo
    if gc.prompts_per_step % dist.world_size:
        raise ConfigError(f"grpo.prompts_per_step {gc.prompts_per_step} is not divisible by {dist.world_size} ranks")
    n_local = gc.prompts_per_step // dist.world_size
    model, tokenizer = init_model(run, None, init, None, lambda: [])
    save_config(run, cfg)
    reference = copy.deepcopy(model).eval().requires_grad_(False) if gc.beta > 0 else None
    wrapped = wrap_model(model, run)
    optimizer = make_optimizer(model, tc)
    ckpt = Checkpointer(run)
    prompts = PromptStream(gc, tc.seed, dist.rank, dist.world_size)
    step = 0
    if run.resume_from is not None:
        state = ckpt.restore(run.resume_from, optimizer, wrapped)
        step = state.step
        prompts.load_state_dict(state.data)
        if state.extra.get("reference") and reference is not None:
            from ..model import load_model

            reference = load_model(state.extra["reference"]).eval().requires_grad_(False)
        if dist.is_main:
            print(f"resuming from {run.resume_from} (step {step})", file=sys.stderr)
    else:
        seed_everything(tc.seed + 1 + dist.rank)
    scorer = combine(gc.rewards)
    engine = Engine(model, tokenizer, max_running=max(8, n_local * gc.group_size))
    logger = MetricsLogger(run.out_dir, dist.is_main, step if run.resume_from is not None else None)
    progress = Progress(tc.max_steps, step, "grpo", dist.is_main, tc.log_every)
    peak = peak_flops(dist.device) * dist.world_size if dist.is_main else 1.0
    samples = open(run.out_dir / "samples.jsonl", "a") if dist.is_main else None
    started = time.perf_counter()
    try:
        while step < tc.max_steps:
            t0 = time.perf_counter()
            model.eval()
            engine.refresh()  # the weights changed in place at the last optimizer step
            rollouts, stats = collect(engine, tokenizer, prompts, scorer, gc, n_local, tc.seed * 100_003 + step, step)
            gen_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            n_kept = len(rollouts.rewards)
            # every rank must take part in the optimizer step, even one that kept no group
            n_rows_total, = all_reduce_sum([float(n_kept)], dist)
            record: dict[str, Any] = {}
            if n_rows_total > 0 and n_kept > 0:
                adv = group_advantages(torch.tensor(rollouts.rewards), gc.group_size, gc.advantage)
                batch = policy_batch(rollouts, adv, tokenizer.pad_token_id, gc.mask_truncated)
                n_tokens_total, = all_reduce_sum([float(batch.n_targets)], dist)
                if gc.mu > 1:  # the sampling policy's log-probs, fixed across the mu updates
                    fill_logp(model, batch, gc.temperature, gc.micro_batch_size, "old_logp")
                if reference is not None:
                    fill_logp(reference.to(dist.device), batch, gc.temperature, gc.micro_batch_size, "ref_logp")
                model.train()
                loss_fn = make_loss_fn(gc, int(n_rows_total), int(max(n_tokens_total, 1)))
                micro = [batch.rows(i, i + gc.micro_batch_size) for i in range(0, n_kept, gc.micro_batch_size)]
                weights = [1.0] * len(micro)  # loss_fn already scales each micro-batch
                for _ in range(gc.mu):
                    s = train_step(wrapped, model, optimizer, micro, lr_at(step, tc), run, loss_fn, weights)
                n_micro, = all_reduce_sum([float(len(micro))], dist)
                record.update(loss=s.loss, grad_norm=s.grad_norm, **{k: v / n_micro for k, v in s.parts.items()}, **s.router)
                train_tokens = s.tokens
                mfu = model.flops_per_token(batch.input_ids.shape[1]) * train_tokens * gc.mu / (time.perf_counter() - t1) / peak
            elif n_rows_total > 0:
                raise ConfigError("a rank kept no group while others did; use one rank or turn off dynamic sampling")
            else:
                record.update(loss=0.0)
                train_tokens, mfu = 0, 0.0
            train_s = time.perf_counter() - t1
            step += 1
            # metrics over every sampled completion (the policy's quality), summed over ranks; with several
            # tasks, accuracy per task too
            per_task = prompts.names if len(prompts.names) > 1 else []
            local = {"n": float(len(stats.rewards)), "reward": sum(stats.rewards), "length": float(sum(stats.lengths)),
                     "truncated": float(sum(stats.truncated)), "seen": float(stats.groups_seen),
                     "dropped": float(stats.groups_dropped), **{f"reward_{k}": sum(v) for k, v in sorted(stats.parts.items())}}
            for name in per_task:
                local[f"n_{name}"] = float(sum(t == name for t in stats.tasks))
                local[f"accuracy_{name}"] = sum(a for a, t in zip(stats.parts["accuracy"], stats.tasks) if t == name)
            total = dict(zip(local, all_reduce_sum(list(local.values()), dist)))  # same keys, same order on every rank
            n_all = max(total["n"], 1.0)
            record = {"step": step, "lr": lr_at(step - 1, tc), "reward": total["reward"] / n_all,
                      **{f"reward_{k}": total[f"reward_{k}"] / n_all for k in sorted(stats.parts)},
                      "response_length": total["length"] / n_all, "response_length_max": max(stats.lengths, default=0),
                      "truncated": total["truncated"] / n_all, "groups_seen": int(total["seen"]),
                      "groups_dropped": total["dropped"] / max(total["seen"], 1.0), "groups_kept": int(n_rows_total) // gc.group_size,
                      "sampling_rounds": stats.rounds, "gen_s": gen_s, "train_s": train_s,
                      "tokens_per_s": total["length"] / max(gen_s, 1e-9), "completions_per_s": total["n"] / max(gen_s, 1e-9),
                      "gen_tokens": int(total["length"]), "train_tokens": train_tokens, "mfu": mfu,
                      "elapsed": time.perf_counter() - started, **record}
            if "reward_accuracy" in record:
                record["accuracy"] = record["reward_accuracy"]
            for name in per_task:
                if total[f"n_{name}"] > 0:
                    record[f"accuracy_{name}"] = total[f"accuracy_{name}"] / total[f"n_{name}"]
            if not math.isfinite(record["loss"]):
                raise FloatingPointError(f"GRPO loss is {record['loss']} at step {step}")
            logger.log(record)
            progress.update(step, record)
            if samples is not None and (step % max(1, gc.samples_every) == 0 or step == 1):
                for ex in stats.examples:
                    samples.write(json.dumps(ex) + "\n")
                samples.flush()
            out_of_time = gc.time_limit_s > 0 and time.perf_counter() - started >= gc.time_limit_s
            if dist.enabled:  # every rank must stop at the same step
                out_of_time = bool(all_reduce_sum([float(out_of_time)], dist)[0])
            if out_of_time and dist.is_main:
                print(f"grpo: time limit of {gc.time_limit_s:.0f} s reached at step {step}", file=sys.stderr)
            if step % max(1, tc.save_every) == 0 or step == tc.max_steps or out_of_time:
                ckpt.save(step, model, tokenizer, optimizer, prompts.state_dict(),
                          extra={"reference": init} if reference is not None else None, wrapped=wrapped)
            if out_of_time:
                break
    finally:
        progress.close()
        logger.close()
        if samples is not None:
            samples.close()
    final_model, _ = full_state(model, optimizer, wrapped, dist) if _is_fsdp(wrapped) else (model, None)
    if dist.is_main:
        from ..model import save_checkpoint

        save_checkpoint(final_model, tokenizer, run.out_dir / "final")
        print(f"wrote {run.out_dir / 'final'}", file=sys.stderr)


# ---------------------------------------------------------------- command

def add_grpo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--init", required=True, metavar="CKPT", help="the policy to start from (a base model: R1-Zero; an SFT'd one: R1)")
    p.add_argument("--out", required=True, help="run folder: config.yaml, metrics.jsonl, samples.jsonl, checkpoints/, final/")
    p.add_argument("--preset", default="cpu-tiny", help=f"preset ({', '.join(PRESETS)}) or a YAML file (default cpu-tiny)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    p.add_argument("overrides", nargs="*",
                   help="key=value, e.g. max_steps=50 grpo.loss=dapo grpo.epsilon_high=0.28 'grpo.rewards={accuracy: 1, format: 0.2}'")


def run_grpo(args) -> int:
    cfg = build(GRPOConfig, PRESETS, args.preset, args.overrides)
    with distributed_job():
        train_grpo(cfg, args.init, args.out, args.resume)
    return 0
