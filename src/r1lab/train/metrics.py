"""What a run reports: metrics.jsonl (and TensorBoard), a progress bar, and the peak FLOP/s behind MFU."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass
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
        self.peak = "?"  # the peak MFU divides by, Peak.label() (set by the loop)

    def update(self, step: int, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if "reward" in record:  # GRPO: the loss hovers near 0 by construction; the reward is what moves
            acc = f"  acc {record['accuracy']:.2f}" if "accuracy" in record else ""
            info = f"reward {record['reward']:.3f}{acc}  len {record['response_length']:.0f}  {record['tokens_per_s']:,.0f} tok/s"
            signs = (record.get("health") or {}).get("signs")
            info += f"  WARNING {', '.join(signs)}" if signs else ""  # health signs (train/health.py)
        else:
            info = f"loss {record['loss']:.4f}  {record['tokens_per_s']:,.0f} tok/s  MFU {record['mfu']:.1%} of {self.peak}"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif step % self.log_every == 0 or step == self.total:
            print(f"{self.desc} step {step}/{self.total}  {info}  lr {record['lr']:.2e}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# dense bf16 tensor-core peaks (FLOP/s) of common accelerators; others are measured
GPU_PEAKS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12,
             "A10G": 70e12, "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12}
PEAK_SIZE = 2048  # the one measurement: a PEAK_SIZE^2 fp32 matmul, best of several


@dataclass(frozen=True)
class Peak:
    """The FLOP/s MFU divides by, and where it came from (shown next to every MFU figure)."""

    flops: float
    source: str

    def label(self) -> str:
        return f"{self.flops / 1e9:,.0f} GFLOP/s {self.source}"


def peak_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "r1lab" / "peak.json"


def _machine_key(device: torch.device) -> str:
    """host|device type|CPU or GPU name (peak.json's keys add the thread count and a non-fp32 dtype)."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    return f"{platform.node()}|{device.type}|{name}"


def measure_peak(device: torch.device, repeats: int = 8, dtype: torch.dtype = torch.float32) -> float:
    """Best FLOP/s of a PEAK_SIZE^2 matmul in `dtype` over `repeats` tries (after one warm-up); its inputs come
    from a private generator, so measuring never moves the global RNG (resume stays exact)."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(PEAK_SIZE, PEAK_SIZE, device=device, generator=gen).to(dtype)
    b = torch.randn(PEAK_SIZE, PEAK_SIZE, device=device, generator=gen).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * PEAK_SIZE**3 / best


def device_peak(device: torch.device, refresh: bool = False, repeats: int = 8, dtype: torch.dtype = torch.float32) -> Peak:
    """The peak FLOP/s of this device, one way everywhere: R1LAB_PEAK_FLOPS if set; a known GPU's table
    figure; else the PEAK_SIZE^2 matmul in `dtype` (fp32, or bf16 for bf16 training), measured once per machine,
    thread count and dtype and cached in ~/.cache/r1lab/peak.json (the best seen so far). refresh: measure again
    and keep the better figure."""
    if os.environ.get("R1LAB_PEAK_FLOPS"):
        return Peak(float(os.environ["R1LAB_PEAK_FLOPS"]), "(R1LAB_PEAK_FLOPS)")
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for gpu, flops in GPU_PEAKS.items():
            if gpu in name:
                return Peak(flops, f"({gpu} bf16 dense, table)")
    kind = "fp32" if dtype == torch.float32 else str(dtype).removeprefix("torch.").replace("bfloat16", "bf16")
    machine, threads, suffix = _machine_key(device), torch.get_num_threads(), "" if kind == "fp32" else f"|{kind}"
    key, path = f"{machine}|{threads} threads{suffix}", peak_cache()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    best = float(cache.get(key, 0.0))
    if refresh or best <= 0:
        best = max(best, measure_peak(device, repeats, dtype))
        cache[key] = best
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=1))
            tmp.replace(path)
        except OSError:
            pass  # a read-only home: the figure is still right for this run
    # more threads never lose a core: a figure taken while another job held one (74 GFLOP/s on 2 threads
    # against 90 on 1, an AVX2 EPYC) must not stay below what fewer threads reached
    best = max([best, *(float(cache.get(f"{machine}|{t} threads{suffix}", 0.0)) for t in range(1, threads))])
    return Peak(best, f"({kind} {PEAK_SIZE}\u00b2 matmul, {threads} threads, best seen on this machine)")


def peak_flops(device: torch.device) -> float:
    """device_peak's FLOP/s."""
    return device_peak(device).flops
