"""What r1lab does on one CUDA GPU, as one table (scripts/gpu_check.sh runs this; about 5-8 minutes).

    python bench/gpu_check.py               # on a machine with a CUDA GPU
    python bench/gpu_check.py --cpu-smoke   # the same parts on the CPU at toy sizes: checks this script itself

Each part runs in its own process under a time limit, so one that fails or hangs is a FAIL row and the rest
still run:

    tests      tests/test_gpu.py (CUDA against CPU: a training step, GRPO's log-probs and loss, greedy decoding)
               and tests/test_grpo_trl.py (the losses against TRL's code)
    train      bf16 training steps of the gpu-small preset (272M parameters, 123M active per token), batch
               8 x 1024 tokens: tokens/s and MFU against the GPU's table peak (train/metrics.GPU_PEAKS)
    decode     bench/decode.py --device cuda on gpu-small: r1lab's engine against transformers' generate,
               greedy, 128 new tokens, batch 1 and 32
    torchrun   2 GRPO steps of a random cpu-tiny policy under torchrun (1 process on the GPU); on CUDA the
               training autocasts to bf16, so the rollout correction turns on by itself (grpo.rollout_correction
               auto): the row shows what it cut
    vllm       only where vLLM is installed: the same GRPO steps with grpo.rollout=vllm

Exit status 1 if any part failed.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ["What is 4821 + 1379? <think>\n1+9=10, write 0 carry 1\n</think>\nThe answer is \\boxed{6200}.",
          "Using the numbers [3, 5], create an equation that equals 15. <answer>3 * 5</answer>",
          "Hello world! The quick brown fox jumps over the lazy dog."] * 20


def part_train(device: str, smoke: bool) -> dict:
    from r1lab.config import TrainConfig
    from r1lab.model import Transformer, preset
    from r1lab.train.data import Batch
    from r1lab.train.dist import Dist, RunState
    from r1lab.train.metrics import device_peak
    from r1lab.train.step import make_optimizer, train_step, wrap_model

    name, batch, seq, steps = ("cpu-tiny", 2, 64, 2) if smoke else ("gpu-small", 8, 1024, 10)
    torch.manual_seed(0)
    cfg = preset(name)
    model = Transformer(cfg)
    train = TrainConfig(batch_size=batch, seq_len=seq, lr=1e-4, dtype="bf16")
    run = RunState(Path("."), Dist(device=torch.device(device)), train)
    wrapped = wrap_model(model, run)
    optimizer = make_optimizer(model, train)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):  # warm-up: allocation, kernel choice
        train_step(wrapped, model, optimizer, [Batch(ids, ids)], 1e-4, run)
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        stats = train_step(wrapped, model, optimizer, [Batch(ids, ids)], 1e-4, run)
    sync()
    tokens_per_s = steps * batch * seq / (time.perf_counter() - started)
    peak = device_peak(torch.device(device), dtype=torch.bfloat16)
    counts = model.param_count()
    mfu = model.flops_per_token(seq) * tokens_per_s / peak.flops
    memory = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    return {"ok": bool(torch.isfinite(torch.tensor(stats.loss))),
            "figure": f"{name} ({counts['total'] / 1e6:.0f}M, {counts['activated'] / 1e6:.0f}M active) bf16, {batch}x{seq}: "
                      f"{tokens_per_s:,.0f} tokens/s, MFU {mfu:.1%} of {peak.label()}, loss {stats.loss:.3f}, "
                      f"peak memory {memory:.1f} GiB"}


def part_decode(device: str, smoke: bool) -> dict:
    preset, batch, tokens = ("cpu-tiny", 4, 16) if smoke else ("gpu-small", 32, 128)
    cmd = [sys.executable, str(ROOT / "bench" / "decode.py"), "--device", device, "--presets", preset, "--batch",
           str(batch), "--new-tokens", str(tokens), "--repeats", "1", "--dtype", "bfloat16" if device == "cuda" else "auto"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    row = json.loads(out.strip().splitlines()[-1])["presets"][preset]
    return {"ok": True,
            "figure": f"{preset} {row['ours_dtype']}, tokens/s r1lab vs transformers bf16: batch 1 {row['ours_tps_b1']:,.0f} "
                      f"vs {row['hf_bf16_tps_b1']:,.0f} ({row['ratio_vs_hf_bf16_b1']:.2f}x), batch {batch} "
                      f"{row[f'ours_tps_b{batch}']:,.0f} vs {row[f'hf_bf16_tps_b{batch}']:,.0f} "
                      f"({row[f'ratio_vs_hf_bf16_b{batch}']:.2f}x); identical greedy sequences "
                      f"{row[f'same_tokens_b{batch}']:.0%}"}


def part_grpo(device: str, smoke: bool, rollout: str = "r1lab") -> dict:
    from r1lab.model import Transformer, preset, save_checkpoint
    from r1lab.tokenizer import train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_tokenizer(CORPUS, vocab_size=320)
        torch.manual_seed(0)
        init = save_checkpoint(Transformer(preset("cpu-vllm" if rollout == "vllm" else "cpu-tiny",
                                                  vocab_size=tokenizer.vocab_size)), tokenizer, Path(tmp) / "init")
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "r1lab.cli",
               "grpo", "--init", str(init), "--out", str(out), "max_steps=2", "save_every=100", f"device={device}",
               "grpo.group_size=4", "grpo.prompts_per_step=4", "grpo.max_new_tokens=32",
               "grpo.rewards={repetition: 1.0, tag_count: 1.0}", f"grpo.rollout={rollout}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    correction = (f"correction: masked {last['correction_masked']:.1%}, mean weight {last['correction_ratio']:.4f}"
                  if "correction_ratio" in last else "correction off")
    gap = f", log-prob gap sampler/trainer {last['logp_gap_mean']:.4f} nat" if "logp_gap_mean" in last else ""
    return {"ok": len(rows) == 2 and all(r.get("loss") == r.get("loss") for r in rows),
            "figure": f"{len(rows)} steps, loss {last.get('loss', 0.0):.4f}, {last.get('gen_s', 0):.1f} s sampling + "
                      f"{last.get('train_s', 0):.1f} s update; {correction}{gap}"}


def part_tests(device: str, smoke: bool) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_gpu.py"),
           str(ROOT / "tests" / "test_grpo_trl.py")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr.strip()[-200:]
    return {"ok": done.returncode == 0, "figure": summary.strip("= ")}


PARTS = {"tests": (part_tests, 90), "train": (part_train, 80), "decode": (part_decode, 150),  # seconds: 8 minutes in all
         "torchrun": (part_grpo, 80), "vllm": (lambda d, s: part_grpo(d, s, "vllm"), 90)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="run the parts on the CPU at toy sizes (checks the script)")
    p.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)  # one part, in a child process
    args = p.parse_args()
    device = "cpu" if args.cpu_smoke else "cuda"
    if args.part:
        try:
            result = PARTS[args.part][0](device, args.cpu_smoke)
        except Exception as e:  # the row says what went wrong
            result = {"ok": False, "figure": f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"}
        print("GPU_CHECK " + json.dumps(result))
        return 0
    if device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: torch {torch.__version__} sees no CUDA device (a CPU-only build?); nothing checked")
        return 1
    where = "CPU smoke run (toy sizes)" if args.cpu_smoke else torch.cuda.get_device_name(0)
    print(f"gpu_check on {where}, torch {torch.__version__}", flush=True)
    import importlib.util

    rows, failed = [], False
    for name, (_, limit) in PARTS.items():
        if name == "vllm" and importlib.util.find_spec("vllm") is None:
            rows.append((name, "skip", "vLLM is not installed", 0.0))
            continue
        started = time.perf_counter()
        cmd = [sys.executable, __file__, "--part", name] + (["--cpu-smoke"] if args.cpu_smoke else [])
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, cwd=ROOT)
            line = next((x for x in reversed(done.stdout.splitlines()) if x.startswith("GPU_CHECK ")), None)
            result = json.loads(line[10:]) if line else {"ok": False, "figure": (done.stderr.strip() or "no output")[-200:]}
        except subprocess.TimeoutExpired:
            result = {"ok": False, "figure": f"timed out after {limit} s"}
        seconds = time.perf_counter() - started
        failed |= not result["ok"]
        rows.append((name, "ok" if result["ok"] else "FAIL", result["figure"], seconds))
        print(f"  {name}: {rows[-1][1]} ({seconds:.0f} s)", file=sys.stderr, flush=True)
    print("\n| check | result | figures | s |\n|---|---|---|---|")
    for name, status, figure, seconds in rows:
        print(f"| {name} | {status} | {figure.replace('|', '/')} | {seconds:.0f} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
