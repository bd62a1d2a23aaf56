"""Training throughput and MFU of the shipped model against a plain PyTorch GPT, measured in the same run.

    python bench/train.py                 # 40 s to 3 minutes on a 2-core CPU
    python bench/train.py --quick         # fewer steps, for a smoke test

MFU = flops_per_token(seq_len) * tokens/s / peak, where peak is this machine's fp32 matmul FLOP/s measured
here (best of a few large torch.matmul). The r1lab models train through the real loop (`train_step`:
forward, backward, clipping, AdamW, router-bias update); the peer is a minimal GPT of about 1M parameters
(6N FLOPs per token, N = its non-embedding parameters). Each configuration is timed in several rounds,
interleaved with the others, and its best round is kept, so a busy moment on a shared machine hurts
every configuration alike instead of one. Prints a table, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from r1lab.config import TrainConfig
from r1lab.model import Transformer, preset
from r1lab.train.data import Batch
from r1lab.train.dist import Dist, RunState
from r1lab.train.metrics import device_peak
from r1lab.train.step import make_optimizer, train_step, wrap_model


def measure_peak(repeats: int = 8) -> float:
    """r1lab's one peak (train/metrics.device_peak, as the training progress line uses), measured again
    here and kept at the best seen on this machine."""
    return device_peak(torch.device("cpu"), refresh=True, repeats=repeats).flops


# ---------------------------------------------------------------- the peer: a plain GPT

class GPTBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.fc, self.out = nn.Linear(dim, 4 * dim, bias=False), nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int = 512, dim: int = 128, layers: int = 4, heads: int = 4, max_len: int = 512):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(GPTBlock(dim, heads) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)

    def forward(self, ids):
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))

    def flops_per_token(self) -> float:
        n = sum(p.numel() for p in self.parameters()) - self.tok.weight.numel() - self.pos.weight.numel()
        return 6 * n


# ---------------------------------------------------------------- timing

class Runner:
    """One configuration, ready to take optimizer steps on random tokens."""

    def __init__(self, name: str, batch: int, seq_len: int, **model_overrides):
        self.name, self.batch, self.seq_len = name, batch, seq_len
        torch.manual_seed(0)
        if name == "plain-gpt":
            self.model = GPT(max_len=seq_len)
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
            self.flops = self.model.flops_per_token()
            self.params = sum(p.numel() for p in self.model.parameters())
            self.active = self.params
            return
        base = name.split(" ")[0]
        cfg = preset(base, **model_overrides)
        self.model = Transformer(cfg)
        train = TrainConfig(batch_size=batch, seq_len=seq_len, lr=1e-3)
        self.run = RunState(Path("."), Dist(), train)
        self.wrapped = wrap_model(self.model, self.run)
        self.opt = make_optimizer(self.model, train)
        self.flops = self.model.flops_per_token(seq_len)
        counts = self.model.param_count()
        self.params, self.active = counts["total"], counts["activated"]
        self.vocab = cfg.vocab_size

    def step(self) -> None:
        vocab = 512 if self.name == "plain-gpt" else self.vocab
        ids = torch.randint(0, vocab, (self.batch, self.seq_len))
        if self.name == "plain-gpt":
            logits = self.model(ids)
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        else:
            train_step(self.wrapped, self.model, self.opt, [Batch(ids, ids)], 1e-3, self.run)

    def time_steps(self, steps: int) -> float:
        """tokens/s over `steps` optimizer steps."""
        t = time.perf_counter()
        for _ in range(steps):
            self.step()
        return steps * self.batch * self.seq_len / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds (smoke test)")
    args = parser.parse_args()
    rounds, scale = (1, 0.3) if args.quick else (3, 1.0)
    torch.set_num_threads(torch.get_num_threads())
    peak = measure_peak()
    # (label, preset, batch, seq_len, steps per round, overrides): the cpu-tiny shape is its pretraining shape
    configs = [
        ("plain-gpt", 16, 256, 10, {}),
        ("cpu-tiny", 16, 256, 10, {}),
        ("cpu-tiny dense", 16, 256, 10, {"mlp": "dense"}),
        ("cpu-20m", 4, 256, 4, {}),
        ("cpu-20m dense", 4, 256, 4, {"mlp": "dense"}),
    ]
    runners = [Runner(name, b, t, **ov) for name, b, t, _, ov in configs]
    steps = {r.name: max(2, math.ceil(s * scale)) for r, (_, _, _, s, _) in zip(runners, configs)}
    for r in runners:  # warm up: first steps allocate and pick kernels
        for _ in range(2):
            r.step()
    best = {r.name: 0.0 for r in runners}
    started = time.perf_counter()
    for _ in range(rounds):
        for r in runners:
            best[r.name] = max(best[r.name], r.time_steps(steps[r.name]))
        peak = max(peak, measure_peak(repeats=3))  # the peak, too, is a best over the whole run
    elapsed = time.perf_counter() - started

    gpt_mfu = runners[0].flops * best["plain-gpt"] / peak
    print(f"peak fp32 matmul: {peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads); "
          f"best of {rounds} round(s), {elapsed:.0f} s")
    print(f"{'model':<16}{'params':>9}{'active':>9}{'batch x seq':>13}{'MFLOP/tok':>11}{'tokens/s':>11}{'MFU':>8}{'vs GPT':>8}")
    figures = {"bench": "train", "peak_gflops": round(peak / 1e9, 2)}
    for r in runners:
        mfu = r.flops * best[r.name] / peak
        print(f"{r.name:<16}{r.params / 1e6:>8.2f}M{r.active / 1e6:>8.2f}M{f'{r.batch} x {r.seq_len}':>13}"
              f"{r.flops / 1e6:>11.2f}{best[r.name]:>11,.0f}{mfu:>8.1%}{mfu / gpt_mfu:>8.2f}")
        key = r.name.replace("-", "_").replace(" ", "_")
        figures[f"mfu_{key}"] = round(mfu, 4)
        figures[f"tokens_per_s_{key}"] = round(best[r.name], 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
