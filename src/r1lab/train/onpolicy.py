"""`r1lab distill --method on-policy`: the student samples, the teacher grades every token it wrote.

For each prompt the student samples G completions with the engine (the rollout function, GRPO's prompt
stream and seeds); the teacher scores each sampled token -- a local checkpoint by one forward pass, or an
OpenAI-compatible endpoint through `/v1/completions` with `echo`, `max_tokens: 0` and `logprobs` -- and
the per-token advantage is the negative reverse KL estimate on the student's own tokens,

    A_t = log p_teacher(y_t | y_<t) - log p_student(y_t | y_<t)      (+ onpolicy.reward_weight * verified reward)

which GRPO's clipped policy loss (`grpo_loss.make_loss_fn`, micro-batches, `step.train_step`) turns into
an update: with one optimizer step per batch (grpo.mu=1) its gradient is the gradient of the reverse
KL(student || teacher) on the sampled tokens. The outer loop (resume, checkpoints, the time limit,
torchrun) is train/loop.py's `train`; this file holds the step function, `OnPolicyStep`.

The student's log-probs are of the distribution it sampled from (grpo.temperature, 1 by default); the
teacher's are raw (temperature 1), as r1lab's server returns them. Teacher and student must share a
tokenizer: the advantage compares the two models token by token. Cross-tokenizer distillation is out of
scope; a different tokenizer is an error at start.
"""
from __future__ import annotations

import concurrent.futures
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

from ..config import ConfigError, TrainConfig
from ..engine import Engine
from ..model import load
from ..rewards import combine, get as get_reward
from ..rollout import chat_prompt, rollout
from ..tokenizer import Tokenizer
from .dist import all_reduce_sum, distributed_job
from .grpo_collect import PromptStream, Rollouts
from .grpo_config import PRESETS as GRPO_PRESETS, GRPOSection
from .grpo_loss import PolicyBatch, selected_logits, fill_logp, make_loss_fn, policy_batch, token_logp
from .loop import Trainer, load_model_for, save_config, setup_run, train
from .step import lr_at, train_step


@dataclass
class OnPolicySection:
    # what the student minimises on its own samples: `sampled` -- the reverse KL estimated at each sampled token,
    # as a per-token advantage of GRPO's policy loss (one number per position); `forward` -- KL(teacher || student)
    # over the whole vocabulary at each position the student visited (the teacher's full next-token distribution
    # as a soft target, GKD's on-policy forward KL); `reverse` -- KL(student || teacher) over the whole vocabulary.
    # The dense two need a local teacher (an endpoint returns one token's log-prob) and carry no policy-gradient
    # noise, so they take SFT's step sizes
    divergence: str = "sampled"
    reward_weight: float = 0.0  # weight of the verified reward (grpo.rewards) added to every token's advantage
    model: str = ""  # model name to send to an endpoint teacher (default: the first one /v1/models lists)
    api_key: str = ""
    concurrency: int = 8  # scoring requests in flight to an endpoint teacher


@dataclass
class OnPolicyConfig:
    """train.* as everywhere; grpo.* for the sampling and the update (tasks, group_size, prompts_per_step,
    max_new_tokens, temperature, loss, clipping, micro_batch_size, time_limit_s); onpolicy.* above."""

    train: TrainConfig = field(default_factory=TrainConfig)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    onpolicy: OnPolicySection = field(default_factory=OnPolicySection)


# GRPO's presets, with a token-level mean loss (every token carries its own advantage) and the verified
# reward off (onpolicy.reward_weight=0: the teacher is the only signal)
PRESETS: dict[str, dict] = {name: {"train": dict(p["train"]), "grpo": {**p.get("grpo", {}), "loss": "dapo"}}
                            for name, p in GRPO_PRESETS.items()}


DIVERGENCES = ("sampled", "forward", "reverse")


def dense_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, divergence: str) -> torch.Tensor:
    """Per-position KL over the vocabulary (n,) between two sets of logits (n, vocab) at the same positions:
    `forward` KL(teacher || student), `reverse` KL(student || teacher). Gradients flow to the student only."""
    s = torch.log_softmax(student_logits.float(), dim=-1)
    t = torch.log_softmax(teacher_logits.float(), dim=-1).detach()
    if divergence == "forward":
        return (t.exp() * (t - s)).sum(-1)
    return (s.exp() * (s - t)).sum(-1)


def dense_loss_fn(teacher_model, divergence: str, n_tokens_total: int, pack: bool):
    """The loss of one micro-batch for a dense divergence: the summed per-position KL over the batch's tokens
    (all micro-batches and ranks), so that accumulation is exact; the teacher runs on the same rows, no grad."""

    def loss_fn(model, b: PolicyBatch):
        target = b.target_mask.bool()
        student = selected_logits(model, b.input_ids, target, pack)
        with torch.no_grad():
            teacher = selected_logits(teacher_model, b.input_ids, target, pack)
        kl = dense_kl(student, teacher, divergence)
        return kl.sum() / n_tokens_total, {"dense_kl": float(kl.detach().mean()) if len(kl) else 0.0}

    return loss_fn


def reverse_kl_advantages(student_logp: torch.Tensor, teacher_logp: torch.Tensor, mask: torch.Tensor,
                          rewards: torch.Tensor | None = None, reward_weight: float = 0.0) -> torch.Tensor:
    """Per-token advantages (N, L): teacher - student log-prob of each sampled token (the negative
    per-token reverse KL), plus reward_weight times the row's verified reward; zero off the mask."""
    advantages = teacher_logp - student_logp
    if rewards is not None and reward_weight:
        advantages = advantages + reward_weight * rewards.to(advantages.dtype)[:, None]
    return advantages * mask


def same_vocabulary(student: Tokenizer, teacher: Tokenizer, where: str) -> None:
    if student.backend.get_vocab() != teacher.backend.get_vocab():
        raise ConfigError(f"the teacher {where} has a different tokenizer from the student's; on-policy distillation "
                          "compares log-probs token by token and needs the same one (cross-tokenizer is not supported)")


class LocalTeacher:
    """A teacher checkpoint, scoring by one forward pass (raw log-probs, temperature 1)."""

    def __init__(self, path: str | Path, tokenizer: Tokenizer, device, micro_batch_size: int):
        model, own = load(path)
        if own is not None:
            same_vocabulary(tokenizer, own, str(path))
        self.model = model.to(device).eval().requires_grad_(False)
        self.micro = micro_batch_size

    @torch.no_grad()
    def score(self, batch: PolicyBatch, lengths: list[int]) -> torch.Tensor:
        parts = [token_logp(self.model, batch.input_ids[i:i + self.micro], batch.target_mask[i:i + self.micro], 1.0)[0]
                 for i in range(0, len(batch.input_ids), self.micro)]
        return torch.cat(parts).float()


class EndpointTeacher:
    """An OpenAI-compatible endpoint as the teacher: each row (prompt + completion token ids) is echoed back
    by `/v1/completions` with `max_tokens: 0` and `logprobs: 0`, whose `token_logprobs` are the teacher's."""

    def __init__(self, url: str, tokenizer: Tokenizer, section: OnPolicySection):
        base = url.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        headers = {"Authorization": f"Bearer {section.api_key}"} if section.api_key else {}
        self.client = httpx.Client(timeout=300, headers=headers)
        self.concurrency = section.concurrency
        self.model = section.model or self._first_model()
        self._check_tokenizer(tokenizer)

    def _first_model(self) -> str:
        listing = self.client.get(f"{self.base}/models")
        if listing.status_code != 200:
            raise ConfigError(f"teacher endpoint {self.base}/models answered {listing.status_code}: {listing.text[:200]}")
        return listing.json()["data"][0]["id"]

    def _echo(self, prompt) -> dict:
        body = {"model": self.model, "prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 0, "temperature": 1.0}
        answer = self.client.post(f"{self.base}/completions", json=body)
        if answer.status_code != 200:
            raise ConfigError(f"teacher endpoint {self.base} answered {answer.status_code}: {answer.text[:300]}")
        return answer.json()["choices"][0]["logprobs"]

    def _check_tokenizer(self, tokenizer: Tokenizer) -> None:
        """The endpoint tokenizes a probe text as the student does (same pieces), or it is refused."""
        probe = tokenizer.decode(chat_prompt(tokenizer, {"prompt": "What is 4821 + 1379? Think, then \\boxed{6200}."}))
        ours = tokenizer.encode(probe)
        theirs = self._echo(probe)["tokens"]
        if len(theirs) != len(ours):
            raise ConfigError(f"the teacher endpoint {self.base} tokenizes differently from the student ({len(theirs)} "
                              f"tokens against {len(ours)}); on-policy distillation needs the same tokenizer "
                              "(cross-tokenizer is not supported)")

    def score(self, batch: PolicyBatch, lengths: list[int]) -> torch.Tensor:
        rows = [batch.input_ids[i, :n].tolist() for i, n in enumerate(lengths)]
        with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
            answers = list(pool.map(self._echo, rows))
        out = torch.zeros(batch.target_mask.shape)
        for i, (answer, n) in enumerate(zip(answers, lengths)):
            values = answer["token_logprobs"][1:n]  # the first token has none: nothing predicts it
            out[i, :n - 1] = torch.tensor([0.0 if v is None else v for v in values])
        return out * batch.target_mask

    def close(self) -> None:
        self.client.close()


def make_teacher(teacher: str, tokenizer: Tokenizer, cfg: OnPolicyConfig, device):
    divergence = cfg.onpolicy.divergence
    if divergence not in DIVERGENCES:
        raise ConfigError(f"onpolicy.divergence must be one of {', '.join(DIVERGENCES)}, got {divergence!r}")
    if teacher.startswith(("http://", "https://")):
        if divergence != "sampled":
            raise ConfigError(f"onpolicy.divergence={divergence} needs the teacher's whole next-token distribution: a "
                              "local teacher checkpoint (an endpoint returns the sampled token's log-prob only)")
        return EndpointTeacher(teacher, tokenizer, cfg.onpolicy)
    return LocalTeacher(teacher, tokenizer, device, cfg.grpo.micro_batch_size)


class OnPolicyStep:
    """One on-policy distillation step: sample -> teacher scores -> per-token advantages -> GRPO's update."""

    def __init__(self, trainer: Trainer, cfg: OnPolicyConfig, prompts: PromptStream, teacher):
        self.trainer, self.cfg, self.prompts, self.teacher = trainer, cfg.grpo, prompts, teacher
        self.reward_weight, self.divergence = cfg.onpolicy.reward_weight, cfg.onpolicy.divergence
        self.n_local = cfg.grpo.prompts_per_step // trainer.run.dist.world_size
        self.scorer = combine(cfg.grpo.rewards)
        self.accuracy = get_reward("accuracy")
        self.engine = Engine(trainer.model, trainer.tokenizer, max_running=max(8, self.n_local * cfg.grpo.group_size))

    def collect(self, step: int) -> tuple[Rollouts, list[float]]:
        """G seeded samples of each of this step's prompts (GRPO's seeds), with their rewards and accuracy."""
        cfg, seed = self.cfg, self.trainer.run.train.seed * 100_003 + step
        drawn = self.prompts.take(self.n_local)
        out = rollout(self.engine, self.trainer.tokenizer, [p for _, p in drawn], cfg.group_size,
                      max_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                      seed_of=lambda i, j: (seed * 7919 + drawn[i][0]) * 1009 + j, scorer=self.scorer)
        rollouts = Rollouts()
        totals = list(out.scores.total)
        for g in range(len(drawn)):
            group = out.group(g)
            rollouts.add(out.prompt_ids[g], out.token_ids[group], totals[group], out.truncated[group])
        return rollouts, self.accuracy(out.texts, **out.columns)

    def __call__(self, step: int) -> dict[str, Any]:
        trainer, cfg, dist = self.trainer, self.cfg, self.trainer.run.dist
        started = time.perf_counter()
        trainer.model.eval()
        self.engine.refresh()  # the weights changed in place at the last optimizer step
        rollouts, accuracy = self.collect(step)
        gen_s = time.perf_counter() - started
        update_started = time.perf_counter()
        batch = policy_batch(rollouts, torch.zeros(len(rollouts.rewards)), trainer.tokenizer.pad_token_id,
                             cfg.mask_truncated)
        lengths = [len(p) + len(c) for p, c in zip(rollouts.prompt_ids, rollouts.completion_ids)]
        mask = batch.target_mask
        if self.divergence == "sampled":
            fill_logp(trainer.model, batch, cfg.temperature, cfg.micro_batch_size, "old_logp")  # the sampling policy's
            teacher_logp = self.teacher.score(batch, lengths).to(batch.old_logp.dtype)
            batch.advantages = reverse_kl_advantages(batch.old_logp, teacher_logp, mask, torch.tensor(rollouts.rewards),
                                                     self.reward_weight)
            sums = [float(((batch.old_logp - teacher_logp) * mask).sum()), float((teacher_logp * mask).sum()),
                    float((batch.old_logp * mask).sum())]
        else:
            sums = [0.0, 0.0, 0.0]  # the dense loss reports its own KL (dense_kl)
        n_rows, n_tokens, kl_sum, t_sum, s_sum, acc_sum, length_sum, reward_sum = all_reduce_sum(
            [float(len(lengths)), float(mask.sum()), *sums, float(sum(accuracy)),
             float(sum(map(len, rollouts.completion_ids))), float(sum(rollouts.rewards))], dist)
        trainer.model.train()
        if self.divergence == "sampled":
            loss_fn = make_loss_fn(cfg, int(n_rows), int(max(n_tokens, 1)))
        else:
            loss_fn = dense_loss_fn(self.teacher.model, self.divergence, int(max(n_tokens, 1)), cfg.pack)
        micro = batch.micro_batches(cfg.micro_batch_size)
        for _ in range(cfg.mu):
            stats = train_step(trainer.wrapped, trainer.model, trainer.optimizer, micro, lr_at(step, trainer.run.train),
                               trainer.run, loss_fn, [1.0] * len(micro))
        n_micro, = all_reduce_sum([float(len(micro))], dist)
        tokens = max(n_tokens, 1.0)
        sampled = {"reverse_kl": kl_sum / tokens, "teacher_logp": t_sum / tokens,
                   "student_logp": s_sum / tokens} if self.divergence == "sampled" else {}
        return {"loss": stats.loss, "grad_norm": stats.grad_norm, **{k: v / n_micro for k, v in stats.parts.items()},
                "lr": lr_at(step, trainer.run.train), **sampled, "accuracy": acc_sum / max(n_rows, 1.0),
                "reward": reward_sum / max(n_rows, 1.0), "tokens_per_s": length_sum / max(gen_s, 1e-9),
                "response_length": length_sum / max(n_rows, 1.0), "gen_s": gen_s,
                "train_s": time.perf_counter() - update_started, "gen_tokens": int(length_sum),
                "train_tokens": stats.tokens}

    def close(self) -> None:
        if hasattr(self.teacher, "close"):
            self.teacher.close()


def on_policy_distill(cfg: OnPolicyConfig, out: str | Path, *, teacher: str, student: str | Path,
                      resume: bool = False, overwrite: bool = False) -> Path:
    """On-policy distillation of `teacher` (a checkpoint or an endpoint URL) into `student`; returns out/final."""
    with distributed_job():
        run = setup_run(out, cfg, resume, overwrite=overwrite)
        if cfg.grpo.prompts_per_step % run.dist.world_size:
            raise ConfigError(f"grpo.prompts_per_step {cfg.grpo.prompts_per_step} is not divisible by "
                              f"{run.dist.world_size} ranks")
        model, tokenizer = load_model_for(run, student)
        save_config(run, cfg)
        trainer = Trainer.build(run, model, tokenizer)
        prompts = PromptStream(cfg.grpo, cfg.train.seed, run.dist.rank, run.dist.world_size)
        step_fn = OnPolicyStep(trainer, cfg, prompts, make_teacher(str(teacher), tokenizer, cfg, run.dist.device))
        if run.dist.is_main:
            print(f"on-policy distillation: {teacher} teaches {student}, {run.dist.world_size} rank(s) on "
                  f"{run.dist.device}", file=sys.stderr)
        try:
            train(trainer, prompts, step_fn, desc="on-policy", time_limit_s=cfg.grpo.time_limit_s)
        finally:
            step_fn.close()
    return Path(out) / "final"
