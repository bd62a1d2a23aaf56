"""The aha-moment experiment's parts: addition traces that check their answer (and fix what they catch), the
check read back from a response, check rate / fix rate in evaluation, and the report's verdict and transcripts."""
from __future__ import annotations

import json

import pytest

from r1lab import rewards, tasks
from r1lab.eval import aha
from r1lab.eval.evaluate import Sample, evaluate_with
from r1lab.eval.report import Stage
from r1lab.tasks.common import first_answer, review
from r1lab.train.data import DataConfig, TaskMixture

accuracy = rewards.get("accuracy")
format_reward = rewards.get("format")


def test_checked_traces_are_right_and_catch_every_slip():
    rows = tasks.sample("addition", 200, seed=3, noise=0.3, check=1.0)
    assert all(row["checked"] for row in rows)
    texts = [row["reference_trace"] for row in rows]
    assert accuracy(texts, answer=[row["answer"] for row in rows]) == [1.0] * len(rows)
    assert format_reward(texts) == [1.0] * len(rows)
    # a slip always makes an addition wrong, so the check catches exactly the affected traces
    assert [row["caught"] for row in rows] == [row["affected"] for row in rows] and 30 < sum(r["caught"] for r in rows) < 90
    assert [review(text) for text in texts] == [(True, row["caught"]) for row in rows]
    caught = next(row for row in rows if row["caught"])
    fix = caught["reference_trace"].split("\n")[-3]
    assert ", wait. " in fix and fix.endswith(f"= {caught['answer']}.") and ", not " in fix


def test_checks_only_append_to_the_same_problems_and_slips():
    plain = tasks.sample("addition", 100, seed=1, noise=0.3)
    checked = tasks.sample("addition", 100, seed=1, noise=0.3, check=0.2)
    assert "checked" not in plain[0]  # check = 0 leaves rows as they always were
    assert [r["prompt"] for r in plain] == [r["prompt"] for r in checked]
    for a, b in zip(plain, checked):
        first_pass = a["reference_trace"].split("</think>")[0]
        assert b["reference_trace"].startswith(first_pass)
        assert b["checked"] == ("Check:" in b["reference_trace"])
        assert (b["reference_trace"] == a["reference_trace"]) != b["checked"]
    assert 10 <= sum(r["checked"] for r in checked) <= 30


def test_check_needs_a_task_that_defines_one_and_a_share():
    with pytest.raises(ValueError, match="no check step"):
        tasks.get("countdown")(check=0.1)
    with pytest.raises(ValueError, match=r"check must be in \[0, 1\]"):
        tasks.get("addition")(check=1.5)
    with pytest.raises(ValueError, match="defines a check"):
        TaskMixture(DataConfig(tasks="countdown", check=0.1), seed=0)


def test_mixture_checks_only_the_tasks_that_can():
    mixture = TaskMixture(DataConfig(tasks="addition,countdown", noise=0.3, check=0.5), seed=0)
    rows = [mixture[i] for i in range(300)]
    addition = [r for r in rows if r["task"] == "addition"]
    assert all("checked" not in r for r in rows if r["task"] == "countdown")
    assert 0.35 < sum(r["checked"] for r in addition) / len(addition) < 0.65


def test_review_reads_the_check_from_a_response():
    assert review("<think>\n1+2=3\nSo 1 + 2 = 3.\n</think>\nThe answer is \\boxed{3}.") == (False, False)
    assert review("<think>\nSo 1 + 2 = 3.\nCheck: 2 + 1.\nSo 2 + 1 = 3.\nIt matches.\n</think>\n\\boxed{3}") == (True, False)
    assert review("<think>\nwait\nCheck: 2 + 1.\nIt matches.\n</think>\n\\boxed{3}") == (True, False)  # wait before the check
    assert review("<think>\nCheck: 2 + 1.\n4 is not 3, wait.\n</think>\n\\boxed{3}") == (True, True)
    assert review("<think>\n</think>\nCheck: wait \\boxed{3}") == (False, False)  # only the thinking counts


def test_the_check_ends_with_its_columns_so_it_matches_commits_to_the_first_answer():
    rows = tasks.sample("addition", 100, seed=4, noise=0.3, quick=True, check=1.0)
    for row in rows:
        thinking = row["reference_trace"].split("</think>")[0]
        first, check = thinking.split("Check:\n")
        assert check.count(" = ") == row["caught"]  # a whole answer after the check only in the fix line
        assert first_answer(row["reference_trace"]) == first.split(" = ")[-1].rstrip(".\n")
        if not row["caught"]:
            assert check.rstrip().endswith("It matches.") and row["trace_answer"] == first_answer(row["reference_trace"])
    assert first_answer("<think>\nSo 1 + 2 = 3.\n</think>") is None and first_answer("<think>\nCheck:\n") is None


def test_a_careless_check_keeps_the_wrong_first_answer():
    # check_miss: that share of the checks after a wrong first answer say "It matches." and box it, so the
    # box after "It matches." copies the first answer (not the sum of the checked columns) in the data
    careful = tasks.sample("addition", 200, seed=5, noise=0.3, quick=True, check=1.0)
    careless = tasks.sample("addition", 200, seed=5, noise=0.3, quick=True, check=1.0, miss=0.5)
    assert [r["prompt"] for r in careful] == [r["prompt"] for r in careless]
    assert tasks.sample("addition", 200, seed=5, noise=0.3, quick=True, check=1.0, miss=0.0) == careful
    missed = [b for a, b in zip(careful, careless) if a["caught"] and not b["caught"]]
    assert 0.3 < len(missed) / sum(a["caught"] for a in careful) < 0.7
    assert not any(b["caught"] and not a["caught"] for a, b in zip(careful, careless))
    for row in missed:
        assert row["reference_trace"].split("\n")[-3] == "It matches." and row["trace_answer"] != row["answer"]
        assert row["trace_answer"] == first_answer(row["reference_trace"])
    with pytest.raises(ValueError, match=r"miss must be in \[0, 1\]"):
        tasks.get("addition")(check=0.5, miss=2.0)
    rows = [TaskMixture(DataConfig(tasks="addition", noise=0.3, quick=True, check=1.0, check_miss=1.0), seed=0)[i]
            for i in range(100)]
    assert not any(r["caught"] for r in rows) and any(r["affected"] for r in rows)


def test_evaluation_counts_checks_and_fixes():
    problems = tasks.sample("addition", 8, seed=0, split="test")
    rows = {r["prompt"]: r for r in tasks.sample("addition", 400, seed=0, split="test", noise=0.5, check=0.5)}
    traced = [rows[p["prompt"]] for p in problems if p["prompt"] in rows]
    assert len(traced) == len(problems)

    def generate(requests):  # each problem's noisy, maybe checked reference trace, for every sample
        out = []
        for r in requests:
            trace = rows[r.messages[0]["content"]]["reference_trace"]
            out.append(Sample(trace, len(trace) // 4, "stop"))
        return out

    result = evaluate_with(generate, problems, "addition", k=2, max_tokens=400)
    checked = [r["checked"] for r in traced]
    assert result.check_rate == pytest.approx(sum(checked) / len(checked))
    fixed = sum(r["caught"] for r in traced)  # a caught slip is always fixed by the reference trace
    assert result.fix_rate == pytest.approx(fixed / max(sum(checked), 1))
    assert [len(row["fixes"]) for row in result.problems] == [2 * r["caught"] for r in traced]
    # the reference traces say "wait" exactly when the answer before the check was wrong
    assert result.wait_right_guess in (0.0, None) and result.wait_wrong_guess in (1.0, None)
    assert result.checks_right_guess == 2 * sum(r["checked"] and not r["caught"] for r in traced)
    low, high = result.mean_length_ci
    assert low <= result.mean_length <= high and result.problems[0]["sample_tokens"][0] == len(traced[0]["reference_trace"]) // 4
    # a task without a check step gets no check figures
    other = evaluate_with(lambda reqs: [Sample("<think>\n</think>\n\\boxed{1}", 3, "stop") for _ in reqs],
                          tasks.sample("countdown", 3, seed=0, split="test"), "countdown", k=2)
    assert other.check_rate is None and other.fix_rate is None and "fixes" not in other.problems[0]


def _eval(length, ci, check, pass1, fix=0.3):
    return {"addition": {"n": 100, "k": 4, "mean_length": length, "mean_length_ci": [length - ci, length + ci],
                         "check_rate": check, "check_rate_ci": [max(0, check - 0.05), min(1, check + 0.05)],
                         "fix_rate": fix, "pass1": pass1, "pass1_ci": [pass1 - 0.05, pass1 + 0.05]}}


STARTS = {"aha-zero": "aha-base", "aha-control": "aha-control-base"}


def _stages(tmp_path, zero, control):
    metrics = tmp_path / "m.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "response_length": 100 + 5 * s, "check_rate": 0.1 + s / 40,
                                           "accuracy": 0.6 + s / 100}) + "\n" for s in range(1, 21)))
    return {"aha-base": Stage("aha-base", "", 1, 1, evals=_eval(100, 4, 0.1, 0.6)),
            "base": Stage("base", "", 1, 1),
            "aha-zero": Stage("aha-zero", "", 1, 1, metrics=str(metrics), evals=zero),
            "aha-control-base": Stage("aha-control-base", "", 1, 1, evals=_eval(90, 3, 0.0, 0.6)),
            "aha-control": Stage("aha-control", "", 1, 1, metrics=str(metrics), evals=control)}


def test_aha_verdict_follows_the_targets(tmp_path):
    good = aha.aha_findings(starts=STARTS, stages=_stages(tmp_path, _eval(150, 5, 0.5, 0.8), _eval(92, 3, 0.0, 0.7)))
    assert good[0].claim.startswith("Response length grew 100 → 150 tokens under GRPO while the check rate rose 10% → 50%")
    assert "the control without checking traces stayed at 92 tokens" in good[0].claim
    assert good[1].passed is True and good[1].figure.startswith("length +50%, pass@1 +20.0 pts [")
    assert good[1].low > 0 and good[1].value == pytest.approx(0.2)
    short = aha.aha_findings(starts=STARTS, stages=_stages(tmp_path, _eval(120, 5, 0.5, 0.8), _eval(92, 3, 0.0, 0.7)))[1]
    assert short.passed is False and "length +20%" in short.detail and "✗" in short.detail
    drifting = aha.aha_findings(starts=STARTS, stages=_stages(tmp_path, _eval(150, 5, 0.5, 0.8), _eval(110, 3, 0.0, 0.7)))
    assert drifting[1].passed is False and "went 90 → 110 tokens" in drifting[0].claim
    noisy = aha.aha_findings(starts=STARTS, stages=_stages(tmp_path, _eval(150, 60, 0.5, 0.8), _eval(92, 3, 0.0, 0.7)))[1]
    assert noisy.passed is False  # +50% but the interval of the change includes 0
    assert aha.aha_findings({}, STARTS) == []


def test_aha_section_picks_the_first_two_fixes_in_order(tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "eval").mkdir()
    rows = [{"prompt": "p0", "answer": "1", "fixes": []}, {"prompt": "p1", "answer": "2", "fixes": ["A wait", "B wait"]},
            {"prompt": "p2", "answer": "3", "fixes": ["C wait"]}]
    (tmp_path / "eval" / "aha-zero.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = aha.aha_section(_stages(tmp_path, _eval(150, 5, 0.5, 0.8), _eval(92, 3, 0.0, 0.7)), tmp_path, STARTS)
    text = "\n".join(lines)
    assert "A wait" in text and "B wait" in text and "C wait" not in text
    assert "| aha-zero | 80.0% [75.0, 85.0] | 150.0 [145.0, 155.0] | 50.0% [45.0, 55.0] | 30.0% |" in text
    assert (tmp_path / "aha_curves.png").stat().st_size > 1000 and "![aha curves](aha_curves.png)" in text


def test_quick_first_pass_states_the_answer_and_the_check_works_it_out():
    plain = tasks.sample("addition", 60, seed=2, noise=0.3)
    quick = tasks.sample("addition", 60, seed=2, noise=0.3, quick=True)
    checked = tasks.sample("addition", 60, seed=2, noise=0.3, quick=True, check=1.0)
    for p, q, c in zip(plain, quick, checked):
        so_line = p["reference_trace"].split("\n</think>")[0].split("\n")[-1]
        assert q["reference_trace"].split("\n")[1] == so_line and q["trace_answer"] == p["trace_answer"]
        assert q["reference_trace"].count("\n") == 3  # <think>, the answer line, </think>, the boxed answer
        assert c["reference_trace"].startswith(q["reference_trace"].split("</think>")[0] + "Check:\n")
        assert c["trace_answer"] == c["answer"] and c["caught"] == p["affected"]
    fix = next(r for r in checked if r["caught"])["reference_trace"].split("\n")[-3]
    assert fix.endswith(", wait. So " + fix.split(", wait. So ")[1]) and "not" in fix
    assert DataConfig(quick=True).quick and TaskMixture(DataConfig(tasks="addition", check=0.2, quick=True), seed=0)[0]


def test_quick_holds_without_checks():
    # the aha control (quick first pass, no checking traces) must not train on the full working
    rows = [TaskMixture(DataConfig(tasks="addition", noise=0.3, quick=True), seed=0)[i] for i in range(50)]
    assert all(r["reference_trace"].count("\n") == 3 and "Check:" not in r["reference_trace"] for r in rows)
