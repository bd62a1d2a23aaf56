"""GRPO with and without the rollout correction where sampler and trainer differ on a CPU: the trainer in bf16
autocast (train.dtype=bf16) beside r1lab's engine sampling from the fp32 weights.

    python bench/grpo_correction.py               # 3 seeds x (none, mis/sequence, tis/token), ~1.5 minutes on 1 thread

A random 2-layer MoE policy (of the tests' small policy's shape) learns a toy verifiable reward, the share of '7'
characters in its completion (tests/test_grpo.py), for --steps steps at lr 1e-2. Prints, per run, the mean reward
of the first and last 5 steps, the share of trained tokens the correction cut, its mean weight and the
sampler/trainer log-prob gap; then the mean over seeds per setting.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from r1lab import rewards
from r1lab.config import build
from r1lab.model import Transformer, preset, save_checkpoint
from r1lab.tokenizer import train_tokenizer
from r1lab.train.grpo import PRESETS, GRPOConfig, grpo

CORPUS = ["What is 4821 + 1379? <think>\n1+9=10, write 0 carry 1\n</think>\nThe answer is \\boxed{6200}.",
          "Solve for x: 3x + 7 = 22. Subtract 7, divide by 3, so x = 5.",
          "Hello world! The quick brown fox jumps over the lazy dog."] * 20
SETTINGS = (("none", "sequence"), ("mis", "sequence"), ("tis", "token"))


def sevens():
    def fn(completions, **_):
        bodies = [c[len("<think>\n"):] for c in completions]
        return [b.count("7") / max(1, len(b)) for b in bodies]
    return fn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=25)
    args = p.parse_args()
    torch.set_num_threads(1)
    rewards.FACTORIES["sevens"] = sevens
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        tokenizer = train_tokenizer(CORPUS, vocab_size=320)
        cfg = preset("cpu-tiny", vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                     moe_intermediate_size=16, n_routed_experts=4, kv_lora_rank=16, num_attention_heads=2,
                     qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, num_experts_per_tok=2)
        init = save_checkpoint(Transformer(cfg), tokenizer, Path(tmp) / "init")
        for seed in range(args.seeds):
            for correction, level in SETTINGS:
                run = Path(tmp) / f"seed{seed}-{correction}"
                grpo(build(GRPOConfig, PRESETS, "cpu-tiny", [
                    f"max_steps={args.steps}", "lr=1e-2", "warmup_steps=1", "grpo.group_size=8", "grpo.prompts_per_step=4",
                    "grpo.max_new_tokens=8", "grpo.rewards={sevens: 1.0}", "save_every=1000", "train.dtype=bf16",
                    f"seed={seed}", f"grpo.rollout_correction={correction}", f"grpo.correction_level={level}"]),
                     run, init=init)
                rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
                first, last = (sum(r["reward"] for r in part) / len(part) for part in (rows[:5], rows[-5:]))
                cut = sum(r.get("correction_masked", 0.0) + r.get("correction_truncated", 0.0) for r in rows) / len(rows)
                weight = sum(r.get("correction_ratio", 1.0) for r in rows) / len(rows)
                gap = sum(r.get("logp_gap_mean", 0.0) for r in rows) / len(rows)
                name = f"{correction}/{level}" if correction != "none" else "none"
                results.setdefault(name, []).append(last)
                print(f"seed {seed} {name:<14} reward first 5 steps {first:.3f}, last 5 {last:.3f}; cut {cut:.2%} of "
                      f"trained tokens, mean weight {weight:.4f}; log-prob gap {gap:.1e} nat/token", flush=True)
    for name, values in results.items():
        print(f"{name:<14} last-5 reward, mean over {len(values)} seeds: {sum(values) / len(values):.3f}")


if __name__ == "__main__":
    main()
