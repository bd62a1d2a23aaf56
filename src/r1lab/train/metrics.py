"""What a run reports: metrics.jsonl (and TensorBoard), a progress bar, and the peak FLOP/s behind MFU."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

class MetricsLogger:
    """metrics.jsonl: one JSON object per step, flushed as written (and TensorBoard when installed).
    On resume, lines past the resumed step (written before the kill) are dropped first."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int | None = None):
        self.enabled = enabled
        self.file = None
        self.tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "metrics.jsonl"
        kept = []
        if resume_step is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
                except ValueError:
                    pass  # a line cut short by the kill
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
        self.file = open(path, "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:
            pass

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


class Progress:
    """A rich progress bar (step, loss, tokens/s, MFU, ETA) on rank 0; plain lines every log_every steps
    when the output is not a terminal (logs, CI)."""

    def __init__(self, total: int, start: int, desc: str, enabled: bool, log_every: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

        self.enabled, self.log_every = enabled, max(1, log_every)
        self.console = Console(stderr=True)
        self.bar = None
        if enabled and self.console.is_terminal:
            self.bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console)
            self.task = self.bar.add_task(desc, total=total, completed=start, info="")
            self.bar.start()
        self.desc, self.total = desc, total

    def update(self, step: int, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if "reward" in record:  # GRPO: the loss hovers near 0 by construction; the reward is what moves
            acc = f"  acc {record['accuracy']:.2f}" if "accuracy" in record else ""
            info = f"reward {record['reward']:.3f}{acc}  len {record['response_length']:.0f}  {record['tokens_per_s']:,.0f} tok/s"
            signs = (record.get("health") or {}).get("signs")
            info += f"  WARNING {', '.join(signs)}" if signs else ""  # health signs (train/health.py)
        else:
            info = f"loss {record['loss']:.4f}  {record['tokens_per_s']:,.0f} tok/s  MFU {record['mfu']:.1%}"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif step % self.log_every == 0 or step == self.total:
            print(f"{self.desc} step {step}/{self.total}  {info}  lr {record['lr']:.2e}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


_PEAK: dict[str, float] = {}
# dense bf16 tensor-core peaks (FLOP/s) of common accelerators; others are measured
GPU_PEAKS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12,
             "A10G": 70e12, "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


def peak_flops(device: torch.device, size: int = 1024, repeats: int = 10) -> float:
    """The device's matmul peak FLOP/s, the denominator of MFU. R1LAB_PEAK_FLOPS overrides; known GPUs
    come from a table; anything else is measured once (best of a few fp32 matmuls)."""
    if os.environ.get("R1LAB_PEAK_FLOPS"):
        return float(os.environ["R1LAB_PEAK_FLOPS"])
    key = f"{device}:{size}"
    if key in _PEAK:
        return _PEAK[key]
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for gpu, flops in GPU_PEAKS.items():
            if gpu in name:
                _PEAK[key] = flops
                return flops
    # its own generator: this runs after a resume restored the RNG states, which training (dropout) goes on using
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=gen)
    b = torch.randn(size, size, device=device, generator=gen)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    _PEAK[key] = 2 * size**3 / best
    return _PEAK[key]

