"""`r1lab eval` finishes and shows its noise: prompts over the context are skipped and counted, every accuracy
has a 95% interval, dataset files get the R1 set-up, and a served model (--endpoint) is graded the same as
its checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace

import pytest

from conftest import chain_model, serve_in_background
from r1lab.eval import stats
from r1lab.eval.cli import settings_for
from r1lab.eval.evaluate import R1_MATH_INSTRUCTION, Sample, evaluate_with
from r1lab.eval.report import Stage, compare, write_report
from r1lab.model import save_checkpoint

REPLY = " \\boxed{1234}"  # what the scripted model answers to any prompt


def test_intervals():
    low, high = stats.wilson(0, 10)
    assert low == 0.0 and abs(high - 0.2775) < 1e-3  # the textbook Wilson upper bound for 0/10
    low, high = stats.binary_interval([1.0] * 6)
    assert high == 1.0 and 0.5 < low < 0.7  # 6/6 is not certainty
    assert stats.binary_interval([]) is None
    shares = [0.0, 0.5, 1.0, 0.5, 0.25, 0.75]
    low, high = stats.mean_interval(shares)
    assert low < 0.5 < high and abs((low + high) / 2 - 0.5) < 1e-9
    over_samples = stats.sample_interval(shares, 4)
    assert stats.half_width(over_samples) < stats.half_width((low, high))
    assert stats.sample_interval([1.0, 0.0], 4) == (0.5, 0.5)  # no spread inside problems: no sampling noise
    assert stats.inside_noise(0.5, (0.3, 0.7), 0.6, (0.4, 0.8)) and not stats.inside_noise(0.1, (0.05, 0.15), 0.9, (0.85, 0.95))


def test_r1_defaults_for_datasets_and_task_defaults_for_builtin_tasks():
    none = Namespace(temperature=None, top_p=None, instruction=None)
    assert settings_for("math500.jsonl", none) == {"temperature": 0.6, "top_p": 0.95, "instruction": R1_MATH_INSTRUCTION}
    assert settings_for("addition", none) == {"temperature": 1.0, "top_p": 1.0, "instruction": ""}
    given = Namespace(temperature=0.0, top_p=0.5, instruction="")
    assert settings_for("math500.jsonl", given) == {"temperature": 0.0, "top_p": 0.5, "instruction": ""}


def test_evaluate_skips_what_does_not_fit_and_gives_intervals():
    problems = [{"prompt": f"q{i}", "answer": str(i)} for i in range(6)] + [{"prompt": "long " * 50, "answer": "1"}]
    seen = []

    def generate(requests):  # right on even problems, for every sample; None (does not fit) for the long one
        seen.extend(requests)
        out = []
        for r in requests:
            question = r.messages[0]["content"].split("\n")[0]
            if question.startswith("long"):
                out.append(None)
            else:
                number = int(question[1:])
                out.append(Sample(f"<think>\nx\n</think>\n\\boxed{{{number if number % 2 == 0 else -1}}}", 5, "stop"))
        return out

    result = evaluate_with(generate, problems, "toy", k=3, temperature=0.6, top_p=0.95, instruction=R1_MATH_INSTRUCTION)
    assert (result.n, result.skipped) == (6, 1)
    assert result.pass1 == result.greedy == result.maj == 0.5
    for interval in (result.pass1_ci, result.greedy_ci, result.maj_ci):
        assert interval[0] < 0.5 < interval[1]
    assert result.pass1_ci_samples == (0.5, 0.5)  # each problem all right or all wrong: no sampling noise
    assert all(r.messages[0]["content"].endswith("\n" + R1_MATH_INSTRUCTION) for r in seen)
    assert {(r.temperature, r.top_p) for r in seen if r.seed is not None} == {(0.6, 0.95)}
    assert [row.get("skipped") for row in result.problems][-1] == "the prompt does not fit the context"  # in order
    summary = result.summary()
    assert summary["skipped"] == 1 and summary["pass1_ci"] and "Wilson" in summary["ci_method"]


def test_report_shows_intervals_health_and_noise(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "reward": 0.5, "response_length": 10.0,
                                           "health": {"signs": {"truncation": "60% cut"} if s > 1 else {}}}) + "\n"
                               for s in (1, 2, 3)))
    a = {"n": 20, "k": 4, "pass1": 0.55, "pass1_ci": [0.40, 0.70], "pass1_ci_samples": [0.5, 0.6], "greedy": 0.5,
         "greedy_ci": [0.3, 0.7], "maj": 0.5, "maj_ci": [0.3, 0.7], "mean_length": 9.0, "truncated": 0.0, "skipped": 2,
         "ci_method": "95% intervals: Wilson"}
    b = dict(a, pass1=0.60, pass1_ci=[0.45, 0.75])
    stages = [Stage("base", "x", 1.0, 0.0, evals={"toy": a}), Stage("rl", "y", 1.0, 0.0, metrics=str(metrics), evals={"toy": b})]
    diff, low, high = compare(b, a)  # +5 points, margin hypot(15, 15) = 21.2: inside the noise
    assert diff == pytest.approx(0.05) and low < 0 < high and high - diff == pytest.approx(0.2121, abs=1e-4)
    report = write_report(tmp_path, stages, [], ["toy"]).read_text()
    assert "55.0% [40.0, 70.0]" in report and "±5.0" in report and "20 (2 skipped)" in report
    assert "## GRPO health" in report and "| rl | truncation | 2 of 3 | 2 | 60% cut |" in report


# ---------------------------------------------------------------- the command, local and against a server

def scripted_checkpoint(tokenizer, folder) -> str:
    """A model whose every reply is "<think>\\nso</think>" + REPLY (a bigram chain over distinct tokens)."""
    last_prompt_token = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)[-1]
    chain = ([last_prompt_token] + tokenizer.encode("so") + [tokenizer.end_think_token_id] + tokenizer.encode(REPLY)
             + [tokenizer.eos_token_id])
    model = chain_model(tokenizer, chain)
    save_checkpoint(model, tokenizer, folder)
    return str(folder)


def _eval(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "r1lab.cli", "eval", *args], capture_output=True, text=True, timeout=300)


def _rows(path) -> dict[str, dict]:
    return {row["prompt"]: row for row in map(json.loads, open(path))}


@pytest.fixture(scope="module")
def problems_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "problems.jsonl"
    rows = [{"problem": f"Problem {i}: what is the number?", "answer": gold} for i, gold in
            enumerate(["1234", "1,234", "1235", "\\frac{2468}{2}", "12340"])]
    rows.insert(2, {"problem": "long " * 600, "answer": "1234"})  # ~600 tokens: over the 512 of the model
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_skips_long_prompts_and_endpoint_matches_checkpoint(tmp_path, tokenizer, problems_file):
    ckpt = scripted_checkpoint(tokenizer, tmp_path / "ckpt")
    local = _eval(ckpt, "--tasks", str(problems_file), "--k", "2", "--out", str(tmp_path / "local.jsonl"))
    assert local.returncode == 0, local.stderr
    assert "1 problem(s) skipped" in local.stdout
    summary = json.loads((tmp_path / "local.summary.json").read_text())[0]
    assert (summary["n"], summary["skipped"], summary["temperature"], summary["top_p"]) == (5, 1, 0.6, 0.95)
    assert summary["greedy"] == 0.6 and summary["greedy_ci"][0] < 0.6 < summary["greedy_ci"][1]

    # a loaded machine can take minutes to import torch and start
    server, url = serve_in_background([ckpt, "--model-name", "m"], {**os.environ, "R1LAB_API_KEY": "k"}, timeout=300)
    try:
        remote = _eval("--endpoint", url + "/v1", "--model", "m", "--api-key", "k", "--tasks", str(problems_file),
                       "--k", "2", "--concurrency", "4", "--out", str(tmp_path / "remote.jsonl"))
        assert remote.returncode == 0, remote.stderr
        wrong_key = _eval("--endpoint", url, "--model", "m", "--api-key", "nope", "--tasks", str(problems_file), "--k", "0")
        assert wrong_key.returncode == 2 and "HTTP 401" in wrong_key.stderr and "Traceback" not in wrong_key.stderr
    finally:
        server.terminate()
        server.communicate(timeout=30)
    mine, theirs = _rows(tmp_path / "local.jsonl"), _rows(tmp_path / "remote.jsonl")
    assert mine.keys() == theirs.keys()
    for prompt, row in mine.items():
        for key in ("greedy_correct", "sample_correct", "maj_correct", "skipped"):
            assert row.get(key) == theirs[prompt].get(key), (prompt[:40], key)
    assert [row.get("greedy_correct") for row in mine.values()] == [1.0, 1.0, None, 0.0, 1.0, 0.0]


def test_thinking_budget_curve(tmp_path, tokenizer, capsys):
    """A random model never closes its thinking; a budget closes it after exactly that many tokens, and
    `r1lab eval --thinking-budget` evaluates each budget and prints the curve budget -> pass@1."""
    import torch

    from conftest import tiny_config
    from r1lab.cli import main
    from r1lab.engine import Engine
    from r1lab.model import Transformer
    from r1lab.rollout import rollout

    torch.manual_seed(0)
    model = Transformer(tiny_config(tokenizer.vocab_size)).eval()
    problems = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(3)]
    engine = Engine(model, tokenizer, max_running=8)
    for budget in (0, 3):
        out = rollout(engine, tokenizer, problems, 2, max_tokens=8, temperature=1.0, thinking_budget=budget,
                      seed_of=lambda i, j: i * 10 + j)
        assert [ids.index(tokenizer.end_think_token_id) for ids in out.token_ids] == [budget] * 6
    save_checkpoint(model, tokenizer, tmp_path / "m")
    out = tmp_path / "curve.jsonl"
    assert main(["eval", str(tmp_path / "m"), "--tasks", "addition", "--n", "3", "--k", "2", "--max-tokens", "8",
                 "--thinking-budget", "0", "3", "--no-greedy", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "thinking budget -> pass@1" in printed and "addition (think <= 3)" in printed
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert [row["thinking_budget"] for row in summary] == [0, 3]
