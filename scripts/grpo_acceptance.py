"""GRPO's two acceptance experiments on cpu-tiny, 4-digit addition, measured on held-out problems.

    .venv/bin/python scripts/grpo_acceptance.py slip runs/accept-slip
    .venv/bin/python scripts/grpo_acceptance.py misconception runs/accept-misc

slip:          SFT on a teacher whose traces carry a random slip 30% of the time (greedy is mostly right,
               sampling at temperature 1 is not), then GRPO; pass@1 (mean of 4 samples at T=1) should
               rise by >= 15 points.
misconception: SFT on a teacher that forgets the carry into a column whose digits sum to 9 (in a share
               `--noise` of its traces), so the model is wrong greedily on the problems the rule
               touches; then GRPO; greedy accuracy on those problems should go from < 50% to >= 90%.
Each GRPO run gets a wall-time budget (default 15 minutes). Results and curves go to OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def sft(out: Path, noise: float, kind: str, steps: int) -> Path:
    from r1lab.config import build
    from r1lab.train.sft import PRESETS, SFTConfig, sft as run_sft

    if (out / "final" / "config.json").exists():
        return out / "final"
    cfg = build(SFTConfig, PRESETS, "cpu-tiny", [f"max_steps={steps}", "data.tasks=addition", f"data.noise={noise}",
                                                 f"data.noise_kind={kind}", "data.knobs={addition: {digits: 4}}"])
    run_sft(cfg, out, resume=True)
    return out / "final"


def measure(ckpt: Path, n: int, k: int) -> dict:
    import r1lab
    from r1lab.engine import Engine
    from r1lab.eval import evaluate, load_problems

    model, tok = r1lab.load(ckpt)
    problems = load_problems("addition", n, seed=7, digits=4)
    result = evaluate(Engine(model, tok), tok, problems, "addition", k=k, temperature=1.0, max_tokens=128)
    touched = [p for p in result.problems if p.get("touched")]
    return {"pass1": result.pass1, "greedy": result.greedy, "maj": result.maj, "n": result.n,
            "touched_n": len(touched),
            "touched_greedy": sum(p["greedy_correct"] for p in touched) / max(1, len(touched)),
            "touched_pass1": sum(p["pass1"] for p in touched) / max(1, len(touched)),
            "mean_length": result.mean_length}


def grpo(init: Path, out: Path, minutes: float, overrides: list[str]) -> Path:
    from r1lab.config import build
    from r1lab.train.grpo import GRPOConfig, PRESETS, grpo as run_grpo

    if not (out / "final" / "config.json").exists():
        cfg = build(GRPOConfig, PRESETS, "cpu-tiny", ["max_steps=1000", "save_every=20", "grpo.tasks=addition",
                                                      "grpo.knobs={addition: {digits: 4}}", f"grpo.time_limit_s={minutes * 60}",
                                                      *overrides])
        run_grpo(cfg, out, init=init, resume=True)
    return out / "final"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["slip", "misconception"])
    p.add_argument("out")
    p.add_argument("--noise", type=float, help="share of teacher traces affected (default 0.3 slip, 1.0 misconception: "
                                                "at 0.8 the SFT model was already 95%% right greedily on touched problems)")
    p.add_argument("--sft-steps", type=int, default=500, help="SFT steps (the cpu-tiny SFT preset: 500, Muon)")
    p.add_argument("--minutes", type=float, default=15.0, help="GRPO wall-time budget")
    p.add_argument("--n", type=int, default=400, help="held-out problems (misconception: only the touched ones matter)")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("overrides", nargs="*", help="GRPO key=value overrides")
    args = p.parse_intermixed_args()
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    noise = args.noise if args.noise is not None else (0.3 if args.kind == "slip" else 1.0)
    t0 = time.time()
    start = sft(out / "sft", noise, args.kind, args.sft_steps)
    sft_s = time.time() - t0
    before = measure(start, args.n, args.k)
    print(f"before GRPO: {before}", file=sys.stderr)
    t1 = time.time()
    final = grpo(start, out / "grpo", args.minutes, args.overrides)
    grpo_s = time.time() - t1
    after = measure(final, args.n, args.k)
    print(f"after GRPO:  {after}", file=sys.stderr)
    curve = [{k: r.get(k) for k in ("step", "reward", "accuracy", "response_length", "groups_dropped", "elapsed")}
             for r in map(json.loads, (out / "grpo" / "metrics.jsonl").read_text().splitlines())]
    result = {"kind": args.kind, "noise": noise, "sft_steps": args.sft_steps, "sft_s": sft_s, "grpo_s": grpo_s,
              "before": before, "after": after, "curve": curve}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    key = "pass1" if args.kind == "slip" else "touched_greedy"
    print(f"{args.kind}: {key} {100 * before[key]:.1f}% -> {100 * after[key]:.1f}% "
          f"(GRPO {grpo_s / 60:.1f} min, {len(curve)} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
