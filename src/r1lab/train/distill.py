"""`r1lab distill`: a teacher's verified reasoning, distilled into a (smaller) student by SFT.

    r1lab distill --teacher runs/r1/final --student runs/student-base/final --out runs/distill
    r1lab distill --teacher http://127.0.0.1:8000/v1 --student runs/student-base/final --out runs/distill

The teacher is a local checkpoint (sampled with r1lab's engine) or any OpenAI-compatible endpoint (its
thinking read from `reasoning_content`, or from <think> tags in `content`). For each problem it writes k
traces; the verifier keeps the correct, well-formed ones; they become `traces.jsonl` (chat `messages`),
and the student is fine-tuned on them with `r1lab sft`'s loop.

    r1lab distill --method on-policy --teacher runs/r1/final --student runs/student-base/final --out runs/opd

`--method on-policy` (train/onpolicy.py) has the student sample and the teacher score every sampled token
instead (per-token reverse KL as the advantage of GRPO's update); its keys are grpo.* and onpolicy.*.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .. import tasks
from ..config import ConfigError, TrainConfig, build
from ..engine import Engine
from ..guard import PRECIOUS, check_output
from ..model import load
from ..rewards import columns_of, get as get_reward
from ..rollout import rollout
from ..tokenizer import THINK_PREFIX
from .data import DataConfig
from .onpolicy import PRESETS as ONPOLICY_PRESETS, OnPolicyConfig, on_policy_distill
from .lora import LoRAConfig
from .sft import PRESETS as SFT_PRESETS, SFTConfig, sft


@dataclass
class TeacherSection:
    tasks: str = "addition"
    knobs: dict = field(default_factory=dict)  # per task difficulty, e.g. {"addition": {"digits": 4}}
    problems: int = 400  # problems per task
    k: int = 4  # traces per problem
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 256
    keep_per_problem: int = 2  # verified traces kept per problem (distinct ones)
    seed: int = 0
    model: str = ""  # model name to send to an endpoint (default: the first one /v1/models lists)
    api_key: str = ""  # better not on the command line (other local users can read it): see api_key_env
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the endpoint's key (when api_key is empty)
    concurrency: int = 8


@dataclass
class DistillConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # lora.r > 0: the student trains adapters only


PRESETS = {name: {"train": dict(p["train"])} for name, p in SFT_PRESETS.items()}


def teacher_problems(cfg: TeacherSection) -> list[dict]:
    out = []
    for name in [t.strip() for t in cfg.tasks.split(",") if t.strip()]:
        out += tasks.sample(name, cfg.problems, seed=cfg.seed + 17, split="train", **cfg.knobs.get(name, {}))
    return out


def responses_from_checkpoint(path: str, problems: list[dict], cfg: TeacherSection) -> list[list[str]]:
    """k full responses ("<think>\\n...") per problem from a local checkpoint; sample j of problem i has
    the seed teacher.seed * 100_003 + i * k + j."""
    model, tokenizer = load(path)
    out = rollout(Engine(model, tokenizer), tokenizer, problems, cfg.k, max_tokens=cfg.max_new_tokens,
                  temperature=cfg.temperature, top_p=cfg.top_p, seed_of=lambda i, j: cfg.seed * 100_003 + i * cfg.k + j,
                  progress=True)
    return [out.texts[out.group(i)] for i in range(len(problems))]


def response_from_message(message: dict) -> str:
    """An OpenAI-style assistant message as one R1 response: thinking from `reasoning_content` (DeepSeek
    API, vLLM) or already inside <think> tags in `content`."""
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning:
        return f"<think>\n{reasoning.strip()}\n</think>\n{content.strip()}"
    content = content.lstrip()
    if "</think>" in content and not content.startswith("<think>"):
        content = THINK_PREFIX + content  # a template that pre-fills <think> leaves it out of the output
    return content


def responses_from_endpoint(url: str, problems: list[dict], cfg: TeacherSection) -> list[list[str]]:
    base = url.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    key = cfg.api_key or (os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(timeout=300, headers=headers) as client:
        model = cfg.model
        if not model:
            listing = endpoint_call(lambda: client.get(f"{base}/models"), base, cfg)
            model = listing.json()["data"][0]["id"]

        def ask(i: int) -> list[str]:
            body = {"model": model, "messages": [{"role": "user", "content": problems[i]["prompt"]}], "n": cfg.k,
                    "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_new_tokens,
                    "seed": cfg.seed * 100_003 + i}
            answer = endpoint_call(lambda: client.post(f"{base}/chat/completions", json=body), base, cfg)
            return [response_from_message(choice["message"]) for choice in answer.json()["choices"]]

        with concurrent.futures.ThreadPoolExecutor(cfg.concurrency) as pool:
            return list(pool.map(ask, range(len(problems))))


def endpoint_call(request, base: str, cfg: TeacherSection) -> httpx.Response:
    """request() -> a 200 response; anything else is a one-line ConfigError (a wrong key says how to give one)."""
    try:
        response = request()
    except httpx.HTTPError as e:
        raise ConfigError(f"cannot reach teacher endpoint {base}: {type(e).__name__}: {e}") from None
    if response.status_code == 401:
        source = "teacher.api_key" if cfg.api_key else f"${cfg.api_key_env}" if cfg.api_key_env else "no key"
        raise ConfigError(f"teacher endpoint {base} refused the API key (401; key from {source}): put the right key in "
                          f"${cfg.api_key_env or 'OPENAI_API_KEY'} (or name another variable with teacher.api_key_env=NAME)")
    if response.status_code != 200:
        raise ConfigError(f"teacher endpoint {base} answered {response.status_code}: {' '.join(response.text[:300].split())}")
    return response


def verified_traces(problems: list[dict], responses: list[list[str]], keep: int) -> tuple[list[dict], dict]:
    """Chat rows of the correct, well-formed responses (at most `keep` distinct ones per problem)."""
    accuracy, fmt = get_reward("accuracy"), get_reward("format")
    rows, n_total, n_correct = [], 0, 0
    for problem, texts in zip(problems, responses):
        cols = columns_of([problem], len(texts))
        ok = [a * f for a, f in zip(accuracy(texts, **cols), fmt(texts, **cols))]
        n_total += len(texts)
        n_correct += sum(ok)
        seen: set[str] = set()
        for text, good in zip(texts, ok):
            if good and text not in seen and len(seen) < keep:
                seen.add(text)
                rows.append({"messages": [{"role": "user", "content": problem["prompt"]},
                                          {"role": "assistant", "content": text}],
                             "task": problem.get("task"), "answer": problem.get("answer")})
    return rows, {"teacher_traces": n_total, "teacher_correct": n_correct / max(n_total, 1),
                  "problems_with_a_trace": len({r["messages"][0]["content"] for r in rows}) / max(len(problems), 1)}


def make_traces(teacher: str, cfg: TeacherSection, out: Path) -> dict:
    problems = teacher_problems(cfg)
    if teacher.startswith(("http://", "https://")):
        responses = responses_from_endpoint(teacher, problems, cfg)
    else:
        responses = responses_from_checkpoint(teacher, problems, cfg)
    rows, stats = verified_traces(problems, responses, cfg.keep_per_problem)
    if not rows:
        raise ConfigError(f"the teacher {teacher} got no problem right: nothing to distill")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "traces.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    stats["kept_traces"] = len(rows)
    (out / "traces_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def distill(cfg: DistillConfig, out: str | Path, *, teacher: str, student: str | Path, resume: bool = False,
            overwrite: bool = False) -> dict:
    """The teacher's verified traces (out/traces.jsonl), then the student's SFT on them (out/sft; the
    distilled model is out/sft/final). Returns the traces' statistics. overwrite: replace a finished run."""
    out_dir = Path(out)
    check_output(out_dir, overwrite=overwrite, resume=resume, names=("traces.jsonl", *PRECIOUS))
    traces = out_dir / "traces.jsonl"
    if resume and traces.exists() and (out_dir / "traces_stats.json").exists():
        stats = json.loads((out_dir / "traces_stats.json").read_text())
    else:
        stats = make_traces(teacher, cfg.teacher, out_dir)
    print(f"distill: {stats['kept_traces']} verified traces (teacher right on {stats['teacher_correct']:.0%} of its samples)",
          file=sys.stderr)
    sft_cfg = SFTConfig(train=cfg.train, data=DataConfig(files=[str(traces)]), lora=cfg.lora)
    sft(sft_cfg, out_dir / "sft", init=student, resume=resume, desc="distill", overwrite=overwrite)
    return stats


def add_distill_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="teacher checkpoint folder, or an OpenAI-compatible base URL")
    p.add_argument("--student", required=True, metavar="CKPT", help="student checkpoint to fine-tune (e.g. a smaller base model)")
    p.add_argument("--out", required=True, help="run folder: traces.jsonl, then the SFT run in sft/ (final model: sft/final); "
                                                "on-policy: the run itself (final model: final)")
    p.add_argument("--method", choices=("sft", "on-policy"), default="sft",
                   help="sft (default): SFT on the teacher's verified traces; on-policy: the student samples, the teacher "
                        "scores every token (same tokenizer needed)")
    p.add_argument("--preset", default="cpu-micro", help=f"preset for the student ({', '.join(PRESETS)}) or YAML")
    p.add_argument("--resume", action="store_true", help="reuse traces.jsonl and resume the SFT run (on-policy: resume the run)")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds (traces, the SFT or on-policy run)")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. teacher.k=8 teacher.tasks=addition,countdown max_steps=300; "
                                                "on-policy: grpo.tasks=addition grpo.group_size=4 onpolicy.reward_weight=0.5")


def run_distill(args) -> int:
    if args.method == "on-policy":
        cfg = build(OnPolicyConfig, ONPOLICY_PRESETS, args.preset, args.overrides)
        final = on_policy_distill(cfg, args.out, teacher=args.teacher, student=args.student, resume=args.resume,
                                  overwrite=args.overwrite)
        print(f"student: {final}")
        return 0
    cfg = build(DistillConfig, PRESETS, args.preset, args.overrides)
    distill(cfg, args.out, teacher=args.teacher, student=args.student, resume=args.resume,
            overwrite=args.overwrite)
    print(f"student: {Path(args.out) / 'sft' / 'final'}")
    return 0
