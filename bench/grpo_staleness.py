"""GRPO with grpo.max_staleness=1 (the next step's rollouts sampled while this step trains) against 0, on the
same start: wall time per step and held-out pass@1 after a fixed number of steps.

    python bench/grpo_staleness.py                  # 20 steps each, 1 torch thread
    python bench/grpo_staleness.py --threads 2 --steps 30

The start is bench/grpo.py's: cpu-tiny SFT'd on 4-digit addition traces of which 30% carry a slip (built once,
cached in ~/.cache/r1lab/bench; --checkpoint for another). Both runs use the speedrun's GRPO shapes (16 prompts x
8 samples, 128 new tokens, addition with 4 digits, lr 1e-4, dynamic sampling on) through `r1lab grpo`'s own
loop, then bench/grpo_accuracy.py's judge (pass@1 on 200 held-out problems, 2 samples each; the 95% interval
treats the 400 samples as independent). The step time is the mean of the steps after the first (whose
rollouts neither run samples ahead); gen_s is the sampling time (with staleness 1: the sampler thread's,
overlapping the update), train_s the update's, wait the time a staleness-1 step's end waited for the sampler.
cpu/wall is the process's CPU time over the run's wall time: how many cores it kept busy. Before the runs, a
probe gives the same figure for one thread and for two threads multiplying matrices (no GIL): what the machine
gives this process at all. Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grpo_accuracy  # noqa: E402  (the cached start and the judge)


def cores_probe(seconds: float = 3.0) -> dict[int, float]:
    """CPU time over wall time of 1 and of 2 threads multiplying 256x256 matrices for `seconds` (torch releases
    the GIL in the matmul): about 1 and 2 on an idle machine with two free cores."""
    a = torch.randn(256, 256)

    def work(stop: float) -> None:
        while time.perf_counter() < stop:
            a @ a

    out = {}
    for n in (1, 2):
        stop = time.perf_counter() + seconds
        wall, cpu = time.perf_counter(), time.process_time()
        threads = [threading.Thread(target=work, args=(stop,)) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out[n] = (time.process_time() - cpu) / (time.perf_counter() - wall)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch threads (each of the two concurrent streams uses them)")
    p.add_argument("--checkpoint", help="start from this checkpoint instead of the cached slip SFT model")
    p.add_argument("--eval-problems", type=int, default=200)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import r1lab
    from r1lab.config import build
    from r1lab.train.grpo import PRESETS, GRPOConfig, grpo

    probe = cores_probe()
    print(f"cores probe: cpu/wall {probe[1]:.2f} with 1 thread, {probe[2]:.2f} with 2", file=sys.stderr, flush=True)
    start = grpo_accuracy.slip_checkpoint(args.checkpoint)
    judge = grpo_accuracy.Judge(start, args.eval_problems, 2, 128)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for staleness in (0, 1):
            out = Path(tmp) / f"staleness{staleness}"
            cfg = build(GRPOConfig, PRESETS, "cpu-tiny", [
                f"max_steps={args.steps}", "lr=1e-4", "save_every=100000", "grpo.tasks=addition",
                "grpo.knobs={addition: {digits: 4}}", "grpo.group_size=8", "grpo.prompts_per_step=16",
                "grpo.max_new_tokens=128", f"grpo.max_staleness={staleness}"])
            wall, cpu = time.perf_counter(), time.process_time()
            grpo(cfg, out, init=start)
            cpu_per_wall = (time.process_time() - cpu) / (time.perf_counter() - wall)
            records = [json.loads(line) for line in open(out / "metrics.jsonl")]
            later = records[1:]
            step_s = (records[-1]["elapsed"] - records[0]["elapsed"]) / len(later)
            model, tokenizer = r1lab.load(out / "final")
            pass1 = judge(model, tokenizer)
            n = args.eval_problems * 2
            half = 1.96 * math.sqrt(max(pass1 * (1 - pass1), 1e-12) / n)
            rows[staleness] = {"step_s": step_s, "gen_s": sum(r["gen_s"] for r in later) / len(later),
                               "train_s": sum(r["train_s"] for r in later) / len(later),
                               "wait_s": sum(r.get("sampler_wait_s", 0.0) for r in later) / len(later),
                               "cpu_per_wall": cpu_per_wall, "pass1": pass1, "pass1_half_width": half,
                               "reward_last5": sum(r["reward"] for r in records[-5:]) / 5}
            print(f"staleness {staleness}: {step_s:.2f} s/step, pass@1 {pass1:.3f} ± {half:.3f}", file=sys.stderr, flush=True)
    print(f"cores probe (cpu/wall): 1 thread {probe[1]:.2f}, 2 threads {probe[2]:.2f}")
    print(f"{'staleness':>9} {'s/step':>8} {'gen_s':>7} {'train_s':>8} {'wait_s':>7} {'cpu/wall':>9} {'pass@1 (95%)':>16} "
          f"{'reward last 5':>14}")
    for staleness, r in rows.items():
        print(f"{staleness:>9} {r['step_s']:>8.2f} {r['gen_s']:>7.2f} {r['train_s']:>8.2f} {r['wait_s']:>7.2f} "
              f"{r['cpu_per_wall']:>9.2f} {r['pass1']:>9.3f} ± {r['pass1_half_width']:.3f} {r['reward_last5']:>14.3f}")
    print(json.dumps({"bench": "grpo_staleness", "steps": args.steps, "threads": args.threads, "cores_probe": probe,
                      "speedup": rows[0]["step_s"] / rows[1]["step_s"],
                      **{f"staleness{k}": {m: round(v, 4) for m, v in r.items()} for k, r in rows.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
