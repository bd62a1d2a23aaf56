"""GRPO's math on tensors: group-relative advantages and the clipped policy losses.

Shapes: N completions = P prompts x G samples per prompt, laid out group by group; L = completion
tokens (padded). `mask` (N, L) is 1 on real completion tokens.

Variants (DeepSeekMath / R1, "Understanding R1-Zero-Like Training" (Dr. GRPO), DAPO):
  advantages  grpo:    (r - mean_group) / (std_group + eps)
              dr_grpo: r - mean_group            (no std: hard and easy questions weigh the same)
  loss        grpo:    mean over each sequence's tokens, then over sequences (length-normalised)
              dr_grpo: sum over all tokens / (N * max_len), a constant normaliser (no length bias)
              dapo:    sum over all tokens / number of tokens (token-level mean), usually with
                       clip-higher (eps_high > eps_low)
The per-token objective is PPO's clipped surrogate on the importance ratio against the sampling
policy, plus beta times the k3 estimate of KL(policy || reference).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .grpo_config import GRPOSection


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "grpo", eps: float = 1e-4) -> torch.Tensor:
    """rewards (N,) grouped consecutively by prompt -> advantages (N,)."""
    grouped = rewards.view(-1, group_size).float()
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "grpo":
        # sample std, as TRL computes it; groups with equal rewards get advantage 0 either way
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    elif scale != "dr_grpo":
        raise ValueError(f"advantage scale must be 'grpo' or 'dr_grpo', got {scale!r}")
    return centred.view(-1)


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, penalty: float = 1.0) -> torch.Tensor:
    """DAPO's soft over-length punishment: 0 up to max_len - buffer, then falling linearly to -penalty at max_len."""
    if buffer <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    over = (lengths.float() - (max_len - buffer)).clamp(min=0) / buffer
    return -penalty * over.clamp(max=1.0)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1 (always >= 0)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


@dataclass
class LossOut:
    loss: torch.Tensor
    clip_frac: float
    kl: float


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    variant: str = "grpo",
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.0,
    ref_logp: torch.Tensor | None = None,
    max_len: int | None = None,
    token_normaliser: float | None = None,
) -> LossOut:
    """logp, old_logp, ref_logp, mask: (N, L); advantages: (N,) or per token (N, L). Returns the loss to minimise.

    `token_normaliser` overrides the denominator of dr_grpo/dapo (e.g. the token count over all ranks
    or micro-batches, so that accumulated pieces add up to the full-batch loss)."""
    mask = mask.float()
    ratio = torch.exp(logp - old_logp)
    adv = advantages if advantages.dim() == 2 else advantages[:, None]  # per token (on-policy distillation) or per row
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    kl_value = 0.0
    if beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp")
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl
        kl_value = ((kl * mask).sum() / mask.sum().clamp(min=1)).item()
    if variant == "grpo":
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    elif variant == "dr_grpo":
        if max_len is None and token_normaliser is None:
            raise ValueError("dr_grpo needs max_len")
        denom = token_normaliser if token_normaliser is not None else mask.shape[0] * max_len
        loss = (per_token * mask).sum() / denom
    elif variant == "dapo":
        denom = token_normaliser if token_normaliser is not None else mask.sum().clamp(min=1)
        loss = (per_token * mask).sum() / denom
    else:
        raise ValueError(f"loss must be grpo, dr_grpo or dapo, got {variant!r}")
    is_clipped = (clipped < unclipped).float()  # the clip is active: this token's gradient is zero
    clip_frac = ((is_clipped * mask).sum() / mask.sum().clamp(min=1)).item()
    return LossOut(loss, clip_frac, kl_value)


# ---------------------------------------------------------------- the policy batch and its loss

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


def policy_batch(rollouts, advantages: torch.Tensor, pad_id: int, mask_truncated: bool) -> PolicyBatch:
    """The kept rollouts (grpo_collect.Rollouts) as right-padded prompt + completion rows."""
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


def sampler_logp_gap(trainer_logp: torch.Tensor, target_mask: torch.Tensor, rollouts) -> dict[str, float]:
    """|log p_trainer - log p_sampler| over the trained completion tokens, when the sampler (vLLM) returned
    its own log-probs: `rollouts.sampler_logp[i][j]` is token j of completion i, which the trainer predicts
    at position len(prompt_i) - 1 + j. A gap near 0 means the two compute the same policy; a large one is
    where an importance-sampling correction (TRL's vllm_importance_sampling_*) would be needed."""
    gaps = []
    for i, (prompt, sampled) in enumerate(zip(rollouts.prompt_ids, rollouts.sampler_logp)):
        span = slice(len(prompt) - 1, len(prompt) - 1 + len(sampled))
        keep = target_mask[i, span].bool()
        theirs = torch.tensor(sampled, dtype=trainer_logp.dtype, device=trainer_logp.device)
        gaps.append((trainer_logp[i, span] - theirs)[keep].abs())
    gap = torch.cat(gaps) if gaps else trainer_logp.new_zeros(0)
    if not len(gap):
        return {}
    return {"sampler_dlogp_mean": float(gap.mean()), "sampler_dlogp_max": float(gap.max())}
