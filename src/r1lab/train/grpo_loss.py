"""GRPO's math on tensors: group-relative advantages, the policy losses and the rollout correction.

Shapes: N completions = P prompts x G samples per prompt, laid out group by group; L = completion
tokens (padded). `mask` (N, L) is 1 on real completion tokens.

Advantages (DeepSeekMath / R1, "Understanding R1-Zero-Like Training" (Dr. GRPO)):
  grpo:    (r - mean_group) / (std_group + eps)
  dr_grpo: r - mean_group            (no std: hard and easy questions weigh the same)

Losses (`grpo.loss`): a per-token objective on the importance ratio r = pi / pi_old against the sampling
policy, plus beta times the k3 estimate of KL(policy || reference), then a normaliser:

  loss     per-token objective                                   normaliser
  grpo     PPO's clip: -min(r A, clip(r, 1-el, 1+eh) A)          mean over each sequence's tokens, then sequences
  dr_grpo  PPO's clip                                            sum over tokens / (N * max_len) (no length bias)
  dapo     PPO's clip (usually clip-higher, eh > el)             sum over tokens / number of tokens
  gspo     PPO's clip on the sequence ratio s = exp(mean log r)  as grpo (GSPO: one ratio per sequence)
  cispo    -sg(min(r, cap)) A log pi  (the weight is clipped,    as dapo (MiniMax-M1: every token keeps a
           not the gradient)                                     gradient)
  sapo     -A * 4/tau sigmoid(tau (r - 1)), tau by sign of A     as grpo (SAPO: a soft trust region)

These are TRL GRPOTrainer's loss types of the same names (gspo: loss_type="grpo" with
importance_sampling_level="sequence"); tests/test_grpo_trl.py checks loss and gradients against TRL's code.

Rollout correction (`rollout_weights`): the sampler (vLLM, or an engine in another precision) is not
exactly the trainer. Its log-probs give a weight w = pi_trainer / pi_sampler per token or per sequence
(product over the sequence's tokens), with no gradient; tis truncates it at a cap, mis masks (zeroes)
what exceeds the cap; the per-token objective is multiplied by it (TRL's vllm_importance_sampling_*).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .grpo_config import LOSSES, GRPOSection
from .health import REWARD_TIE

SEQUENCE_MEAN = ("grpo", "gspo", "sapo")  # normalised per sequence; the others by a token count


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "grpo", eps: float = 1e-4) -> torch.Tensor:
    """rewards (N,) grouped consecutively by prompt -> advantages (N,)."""
    grouped = rewards.view(-1, group_size).float()
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "grpo":
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)  # sample std, as TRL computes it
    elif scale != "dr_grpo":
        raise ValueError(f"advantage scale must be 'grpo' or 'dr_grpo', got {scale!r}")
    # a group of equal rewards has advantage exactly 0 (the float mean of eight 0.2s is not 0.2: their
    # advantages came out ~1e-4, a gradient of rounding noise, and such rows escaped skip_zero_advantage)
    same = (grouped.amax(dim=1) - grouped.amin(dim=1)) < REWARD_TIE
    return centred.masked_fill(same[:, None], 0.0).view(-1)


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


# ---------------------------------------------------------------- per-token objectives (to minimise)

def clipped_objective(ratio: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (grpo, dr_grpo, dapo; gspo with a sequence ratio (N, 1)): the loss and where the
    clip is active (that token's gradient is zero)."""
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * adv
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def sequence_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO's importance ratio: the geometric mean of the token ratios over each sequence, (N, 1)."""
    log_ratio = ((logp - old_logp) * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)
    return torch.exp(log_ratio)


def cispo_objective(ratio: torch.Tensor, logp: torch.Tensor, adv: torch.Tensor, cap: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """CISPO (MiniMax-M1): REINFORCE on log pi weighted by the ratio truncated at `cap`, with no gradient
    through the weight, so clipped tokens still learn; the loss and where the cap bit."""
    return -ratio.clamp(max=cap).detach() * adv * logp, ratio > cap


def sapo_objective(ratio: torch.Tensor, adv: torch.Tensor, tau_pos: float, tau_neg: float, eps_low: float,
                   eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SAPO: a sigmoid gate 4/tau sigmoid(tau (r - 1)) in place of the hard clip (its gradient at r = 1 is the
    plain policy gradient, and fades smoothly away from it); tau_neg for A <= 0. Flags tokens outside
    [1 - eps_low, 1 + eps_high], where the gate has faded (a hard clip would have cut them)."""
    tau = torch.where(adv > 0, tau_pos, tau_neg)
    gate = torch.sigmoid(tau * (ratio - 1)) * 4 / tau
    return -gate * adv, (ratio < 1 - eps_low) | (ratio > 1 + eps_high)


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
    *,
    weights: torch.Tensor | None = None,
    cispo_cap: float = 5.0,
    sapo_tau: tuple[float, float] = (1.0, 1.05),
) -> LossOut:
    """logp, old_logp, ref_logp, mask: (N, L); advantages: (N,) or per token (N, L). Returns the loss to minimise.

    `token_normaliser` overrides the denominator of dr_grpo/dapo/cispo (e.g. the token count over all ranks
    or micro-batches, so that accumulated pieces add up to the full-batch loss). `weights` (N, L) or (N, 1),
    no gradient: the rollout correction's (rollout_weights), multiplied into the objective before the KL term."""
    mask = mask.float()
    adv = advantages if advantages.dim() == 2 else advantages[:, None]  # per token (on-policy distillation) or per row
    if variant in ("grpo", "dr_grpo", "dapo"):
        per_token, clipped = clipped_objective(torch.exp(logp - old_logp), adv, eps_low, eps_high)
    elif variant == "gspo":
        per_token, clipped = clipped_objective(sequence_ratio(logp, old_logp, mask), adv, eps_low, eps_high)
    elif variant == "cispo":
        per_token, clipped = cispo_objective(torch.exp(logp - old_logp), logp, adv, cispo_cap)
    elif variant == "sapo":
        per_token, clipped = sapo_objective(torch.exp(logp - old_logp), adv, *sapo_tau, eps_low, eps_high)
    else:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {variant!r}")
    if weights is not None:
        per_token = per_token * weights
    kl_value = 0.0
    if beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp")
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl
        kl_value = ((kl * mask).sum() / mask.sum().clamp(min=1)).item()
    per_token = per_token.expand(mask.shape)  # gspo without KL: one value per sequence
    if variant in SEQUENCE_MEAN:
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    elif variant == "dr_grpo":
        if max_len is None and token_normaliser is None:
            raise ValueError("dr_grpo needs max_len")
        denom = token_normaliser if token_normaliser is not None else mask.shape[0] * max_len
        loss = (per_token * mask).sum() / denom
    else:  # dapo, cispo: the token-level mean
        denom = token_normaliser if token_normaliser is not None else mask.sum().clamp(min=1)
        loss = (per_token * mask).sum() / denom
    clip_frac = ((clipped.expand(mask.shape).float() * mask).sum() / mask.sum().clamp(min=1)).item()
    return LossOut(loss, clip_frac, kl_value)


# ---------------------------------------------------------------- rollout correction

@dataclass
class Correction:
    weights: torch.Tensor  # (N, L) at token level, (N, 1) at sequence level; no gradient
    truncated: float  # share of trained tokens whose weight tis cut to the cap
    masked: float  # share of trained tokens mis dropped (weight 0)
    ratio_mean: float  # mean weight before the cap, over trained tokens


@torch.no_grad()
def rollout_weights(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, mode: str,
                    level: str = "sequence", cap: float = 3.0) -> Correction:
    """The importance weight pi_trainer / pi_sampler of each trained token (level token) or sequence (level
    sequence: the product of its tokens' ratios), both log-probs under the weights that sampled; tis: min(w, cap),
    mis: w where w <= cap, else 0 (TRL's vllm_importance_sampling_mode token_/sequence_ truncate/mask)."""
    if mode not in ("tis", "mis"):
        raise ValueError(f"rollout correction must be tis or mis, got {mode!r}")
    if level not in ("token", "sequence"):
        raise ValueError(f"correction level must be token or sequence, got {level!r}")
    mask = mask.float()
    diff = (trainer_logp - sampler_logp) * mask
    ratio = torch.exp(diff.sum(1, keepdim=True) if level == "sequence" else diff)
    over = (ratio > cap).expand(mask.shape).float() * mask
    weights = ratio.clamp(max=cap) if mode == "tis" else ratio.masked_fill(ratio > cap, 0.0)
    tokens = float(mask.sum().clamp(min=1))
    share = float(over.sum()) / tokens
    return Correction(weights, share if mode == "tis" else 0.0, share if mode == "mis" else 0.0,
                      float((ratio.expand(mask.shape) * mask).sum()) / tokens)


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
    engine_logp: torch.Tensor | None = None  # (N, T - 1): the sampler's raw log-prob of each completion token

    @property
    def n_targets(self) -> int:
        return int(self.target_mask.sum())

    def take(self, index: torch.Tensor) -> "PolicyBatch":
        """The rows `index`, cut to the width the longest of them needs."""
        width = int(self.target_mask[index].sum(0).nonzero().max()) + 2 if bool(self.target_mask[index].any()) else 2
        cut = lambda t: None if t is None else t[index][:, :width - 1]  # noqa: E731
        advantages = cut(self.advantages) if self.advantages.dim() == 2 else self.advantages[index]  # per token or row
        return PolicyBatch(self.input_ids[index][:, :width], self.target_mask[index][:, :width - 1],
                           advantages, cut(self.old_logp), cut(self.ref_logp), cut(self.engine_logp))

    def by_length(self, size: int) -> list[torch.Tensor]:
        """Row indices in micro-batches of `size`, shortest rows first, so that each micro-batch, cut to its
        own width (take), pads its rows to a neighbour's length rather than to the longest row of the batch.
        It saves what the lengths' spread pads: forward+backward of 128 cpu-tiny rows of 116 ± 15 tokens
        2.79 s in 32s by length against 4.13 s as one micro-batch; of 116 ± 5 tokens, little (docs/training.md)."""
        positions = torch.arange(1, self.target_mask.shape[1] + 1, device=self.target_mask.device)
        span = torch.where(self.target_mask.bool(), positions, 0).amax(1)  # 1 + the last trained position
        order = span.argsort(stable=True)
        return list(order.split(size))

    def micro_batches(self, size: int) -> list["PolicyBatch"]:
        return [self.take(index) for index in self.by_length(size)]

    def useful(self) -> "PolicyBatch":
        """Only the rows with a gradient when beta = 0: a non-zero advantage and at least one trained token
        (at least one row is kept, so that every rank still runs its backward)."""
        keep = ((self.advantages != 0) & self.target_mask.bool().any(1)).nonzero().squeeze(1)
        return self.take(keep if len(keep) else torch.arange(1))

    def to(self, device) -> "PolicyBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PolicyBatch(move(self.input_ids), move(self.target_mask), move(self.advantages), move(self.old_logp),
                           move(self.ref_logp), move(self.engine_logp))


def policy_batch(rollouts, advantages: torch.Tensor, pad_id: int, mask_truncated: bool) -> PolicyBatch:
    """The kept rollouts (grpo_collect.Rollouts) as right-padded prompt + completion rows."""
    rows = [p + c for p, c in zip(rollouts.prompt_ids, rollouts.completion_ids)]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width - 1)
    engine = torch.zeros(len(rows), width - 1) if rollouts.engine_logp else None
    old = torch.zeros(len(rows), width - 1) if rollouts.old_logp else None
    for i, (p, c) in enumerate(zip(rollouts.prompt_ids, rollouts.completion_ids)):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c)
        if engine is not None:
            engine[i, len(p) - 1:len(p) + len(c) - 1] = torch.tensor(rollouts.engine_logp[i])
        if old is not None:
            old[i, len(p) - 1:len(p) + len(c) - 1] = torch.tensor(rollouts.old_logp[i])
        if not (mask_truncated and rollouts.truncated[i]):
            mask[i, len(p) - 1:len(p) + len(c) - 1] = 1.0  # position t predicts token t + 1
    return PolicyBatch(ids, mask, advantages, old_logp=old, engine_logp=engine)


def pack_rows(input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Right-padded rows (N, T) -> fewer rows of at most T tokens, each holding several rows end to end
    (first fit, longest first), with per-row positions and a block-diagonal causal mask: ids, positions,
    attention mask (B, 1, T, T), the packed rows' select mask (B, T) and the padded rows' target mask in the
    same order, so that logits[select] line up with the padded layout's targets."""
    target = mask.bool()
    lengths = (input_ids.new_tensor([t.nonzero().max() + 2 if t.any() else 1 for t in target]))
    width = int(lengths.max())
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda r: -int(lengths[r])):
        n = int(lengths[i])
        slot = next((b for b, free in enumerate(room) if free >= n), None)
        if slot is None:
            bins.append([]), room.append(width)
            slot = len(bins) - 1
        bins[slot].append(i)
        room[slot] -= n
    ids = input_ids.new_zeros((len(bins), width))
    positions = input_ids.new_zeros((len(bins), width))
    segment = input_ids.new_zeros((len(bins), width))
    select = torch.zeros((len(bins), width), dtype=torch.bool, device=input_ids.device)
    for b, rows in enumerate(bins):
        at = 0
        for k, i in enumerate(rows, start=1):
            n = int(lengths[i])
            ids[b, at:at + n], positions[b, at:at + n] = input_ids[i, :n], torch.arange(n)
            segment[b, at:at + n] = k
            select[b, at:at + n - 1] = target[i, :n - 1]
            at += n
    causal = torch.ones(width, width, dtype=torch.bool, device=input_ids.device).tril()
    attn = ((segment[:, :, None] == segment[:, None, :]) & causal)[:, None]
    order = [i for rows in bins for i in rows]
    return ids, positions, attn, select, order


def selected_logits(model, input_ids: torch.Tensor, target: torch.Tensor, pack: bool) -> torch.Tensor:
    """The logits at the positions `target` (N, T - 1) marks, in row-major order of the padded layout."""
    if pack and len(input_ids) > 1:
        ids, positions, attn, select, order = pack_rows(input_ids, target)
        packed = model(ids, position_ids=positions, attn_mask=attn, select=select)
        counts = target[order].sum(1).tolist()
        pieces = dict(zip(order, packed.split(counts)))
        return torch.cat([pieces[i] for i in range(len(input_ids))])
    select = torch.zeros(input_ids.shape, dtype=torch.bool, device=input_ids.device)
    select[:, :-1] = target
    return model(input_ids, select=select)


def token_logp(model, input_ids: torch.Tensor, mask: torch.Tensor, temperature: float, pack: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """log-prob of each next token under the policy (at the sampling temperature), (N, T - 1), zero where
    `mask` is not set (the head runs only on the masked positions); and the mean entropy there (no grad).
    pack: the rows run packed end to end (pack_rows), the same function without the padding's work."""
    target = mask.bool()  # position t predicts token t + 1
    logits = selected_logits(model, input_ids, target, pack).float()  # (n, vocab)
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = torch.zeros(mask.shape, dtype=logp_all.dtype, device=logp_all.device)
    logp[target] = logp_all.gather(-1, input_ids[:, 1:][target][:, None]).squeeze(-1)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1).mean() if len(logp_all) else logp_all.new_zeros(())
    return logp, entropy


def make_loss_fn(cfg: GRPOSection, n_rows_total: int, n_tokens_total: int, parity: list | None = None,
                 correction: str = "none"):
    """The loss for one micro-batch, scaled so that the micro-batches' losses sum to the batch's loss.
    parity: a list that gets, per micro-batch, |log p_engine - log p_trainer| on its trained tokens (at
    temperature 1 only: r1lab's engine reports raw log-probs). correction: tis or mis weighs each token by
    rollout_weights against the sampler's log-probs (cfg.correction_level, cfg.correction_cap); none: off."""

    def loss_fn(model, b: PolicyBatch):
        logp, entropy = token_logp(model, b.input_ids, b.target_mask, cfg.temperature, cfg.pack)
        if parity is not None and b.engine_logp is not None and cfg.temperature == 1.0:
            parity.append((logp.detach() - b.engine_logp)[b.target_mask.bool()].abs())
        old = b.old_logp if b.old_logp is not None else logp.detach()
        parts = {}
        weights = None
        if correction != "none":
            if b.engine_logp is None:
                raise ValueError("the rollout correction needs the sampler's log-probs (the engine gave none)")
            fix = rollout_weights(old, b.engine_logp, b.target_mask, correction, cfg.correction_level,
                                  cfg.correction_cap)
            weights = fix.weights
            parts = {"correction_truncated": fix.truncated, "correction_masked": fix.masked,
                     "correction_ratio": fix.ratio_mean}
        rows = b.input_ids.shape[0]
        # normalisers over the whole batch (all micro-batches and ranks), so accumulation is exact
        if cfg.loss in SEQUENCE_MEAN:
            denom, scale = None, rows / n_rows_total
        else:
            denom = n_rows_total * cfg.max_new_tokens if cfg.loss == "dr_grpo" else n_tokens_total
            scale = 1.0
        out = policy_loss(logp, old, b.advantages, b.target_mask, cfg.loss, cfg.epsilon_low, cfg.epsilon_high,
                          cfg.beta, b.ref_logp, token_normaliser=denom, weights=weights, cispo_cap=cfg.cispo_cap,
                          sapo_tau=(cfg.sapo_temperature_pos, cfg.sapo_temperature_neg))
        return out.loss * scale, {"clip_frac": out.clip_frac, "kl": out.kl, "entropy": float(entropy), **parts}

    return loss_fn


@torch.no_grad()
def fill_logp(model, batch: PolicyBatch, temperature: float, micro: int, attr: str, pack: bool = False) -> None:
    """batch.<attr> = the model's log-prob of each trained token (N, T - 1), run in micro-batches by length on
    the model's device (the batch stays where it is)."""
    device = next(model.parameters()).device
    out = torch.zeros(batch.target_mask.shape)
    for index in batch.by_length(micro):
        part = batch.take(index).to(device)
        logp = token_logp(model, part.input_ids, part.target_mask, temperature, pack)[0]
        out[index, :logp.shape[1]] = logp.cpu()
    setattr(batch, attr, out)
