"""GRPO's configuration (`grpo.*` keys, with the shared `train.*`) and its presets."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import TrainConfig
from . import health
from .lora import LoRAConfig

LOSSES = ("grpo", "dr_grpo", "dapo", "gspo", "cispo", "sapo")  # grpo_loss.py


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
    loss: str = "grpo"  # grpo | dr_grpo | dapo | gspo | cispo | sapo (grpo_loss.py, docs/grpo.md)
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2  # DAPO's clip-higher uses e.g. 0.28; the GSPO paper 3e-4 / 4e-4 (sequence ratios)
    cispo_cap: float = 5.0  # cispo: the cap on the importance weight (TRL's epsilon_high for cispo; ScaleRL's 5)
    sapo_temperature_pos: float = 1.0  # sapo: the gate's temperature for A > 0 (TRL's defaults)
    sapo_temperature_neg: float = 1.05  # ... and for A <= 0
    # importance weights pi_trainer / pi_sampler from the sampler's own log-probs: none | tis (truncate at the cap)
    # | mis (drop above the cap) | auto: mis where sampler and trainer differ (vLLM rollouts, bf16 training beside
    # the engine's fp32 sampling), else none (grpo.py's rollout_correction)
    rollout_correction: str = "auto"
    correction_level: str = "sequence"  # token | sequence (the product of the sequence's token ratios)
    correction_cap: float = 3.0  # TRL's vllm_importance_sampling_clip_max
    mu: int = 1  # optimizer steps per batch of samples
    # 0: sample, then train on what the current weights sampled (exact on-policy); 1: the next step's rollouts are
    # sampled while this step trains, by a copy of the policy that gets the weights after each update, so each
    # batch is one policy version old (its own log-probs are the PPO ratio's old policy); grpo.py's AsyncSampler
    max_staleness: int = 0
    beta: float = 0.0  # KL weight to the frozen reference model (0: no reference model at all)
    mask_truncated: bool = False  # no loss on completions cut by max_new_tokens (DAPO's overlong filtering)
    overlong_buffer: int = 0  # DAPO's soft over-length penalty over the last N tokens (0: off)
    overlong_penalty: float = 1.0
    dynamic_sampling: bool = True
    max_sampling_rounds: int = 4  # tries to fill the batch with informative groups
    time_limit_s: float = 0.0  # stop (and save) after this much wall time, even before max_steps (0: no limit)
    # completions per forward/backward, rows of similar length together (PolicyBatch.by_length); cpu-tiny, 1 thread,
    # 128 real rollouts of the slip model: 32 rows 2.36 s, 64 rows 2.60 s (docs/training.md, "GRPO's update")
    micro_batch_size: int = 32
    # exact up to float summation order (tests/test_grpo_exact.py: gradients within 1e-5 of the padded update)
    skip_zero_advantage: bool = True  # beta = 0: rows with advantage 0 (no gradient) skip the forward/backward
    pack: bool = True  # lay a micro-batch's rows end to end (block-diagonal attention) instead of padding each
    samples_every: int = 10  # write a few completions to samples.jsonl every N steps
    samples_per_log: int = 4
    stop_on: str = ""  # health signs that stop (and save) the run, e.g. "truncation,kl_spike" or "any" (train/health.py)
    rollout: str = "r1lab"  # r1lab: the built-in engine | vllm: vLLM in this process (engine/vllm_rollout.py)
    vllm: dict = field(default_factory=dict)  # extra vllm.LLM arguments, e.g. {tensor_parallel_size: 2}

    def __post_init__(self) -> None:
        if self.advantage not in ("grpo", "dr_grpo"):
            raise ValueError(f"grpo.advantage must be grpo or dr_grpo, got {self.advantage!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"grpo.loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.rollout_correction not in ("auto", "none", "tis", "mis"):
            raise ValueError(f"grpo.rollout_correction must be auto, none, tis or mis, got {self.rollout_correction!r}")
        if self.correction_level not in ("token", "sequence"):
            raise ValueError(f"grpo.correction_level must be token or sequence, got {self.correction_level!r}")
        if self.correction_cap <= 0 or self.cispo_cap <= 0:
            raise ValueError("grpo.correction_cap and grpo.cispo_cap must be positive")
        if self.rollout_correction in ("tis", "mis") and self.rollout == "r1lab" and (
                self.temperature != 1.0 or self.top_p != 1.0):
            # r1lab's engine reports raw log-probs (temperature 1, no top-p): not the distribution it sampled
            raise ValueError("grpo.rollout_correction with r1lab's engine needs grpo.temperature=1 and grpo.top_p=1 "
                             "(its log-probs are raw); vLLM's are of the sampling distribution")
        if self.max_staleness not in (0, 1):
            raise ValueError(f"grpo.max_staleness must be 0 or 1 (one batch sampled ahead), got {self.max_staleness}")
        if self.max_staleness and self.rollout != "r1lab":
            raise ValueError("grpo.max_staleness=1 samples with r1lab's engine on a copy of the policy; "
                             "with grpo.rollout=vllm use max_staleness=0")
        if self.group_size < 2:
            raise ValueError("grpo.group_size must be at least 2 (advantages are relative to the group)")
        if self.mu < 1:
            raise ValueError("grpo.mu must be at least 1")
        health.check_stop_on(self.stop_on)
        if self.rollout not in ("r1lab", "vllm"):
            raise ValueError(f"grpo.rollout must be r1lab or vllm, got {self.rollout!r}")


@dataclass
class GRPOConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # lora.r > 0: train adapters only


# RL on a model that already computes precisely wants small steps: at lr 5e-4 the slip-teacher SFT model's
# sampled accuracy fell from 66% to 15% in 20 steps; at 5e-5 it rose to 85% in 30 (scripts/grpo_acceptance.py)
_CPU_TRAIN = dict(max_steps=100, lr=5e-5, warmup_steps=5, min_lr_ratio=0.5, weight_decay=0.0, grad_clip=1.0,
                  save_every=25, log_every=1, batch_size=1)
PRESETS: dict[str, dict] = {
    "cpu-tiny": {"train": _CPU_TRAIN},
    "cpu-micro": {"train": dict(_CPU_TRAIN, lr=8e-5)},
    "cpu-vllm": {"train": _CPU_TRAIN},
    "cpu-20m": {"train": dict(_CPU_TRAIN, lr=2e-5), "grpo": {"max_new_tokens": 256}},
    "gpu-small": {"train": dict(_CPU_TRAIN, max_steps=500, lr=1e-5, save_every=50),
                  "grpo": {"prompts_per_step": 64, "group_size": 16, "max_new_tokens": 1024, "micro_batch_size": 16}},
}
