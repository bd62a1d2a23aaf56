"""Task generators (teacher traces, noise, splits, determinism) and dataset loaders."""

from __future__ import annotations

import itertools
import json

import pytest

from r1lab import rewards, tasks
from r1lab.tasks.datasets import DatasetError, load_dataset

ALL = tasks.names()
WITH_MISCONCEPTION = ["addition", "subtraction", "multiplication", "linear"]
accuracy = rewards.get("accuracy")
format_reward = rewards.get("format")


def grade(rows: list[dict]) -> list[float]:
    """Accuracy of each row's reference trace against its own gold answer."""
    columns = {key: [row.get(key) for row in rows] for key in ("answer", "task", "numbers")}
    return accuracy([row["reference_trace"] for row in rows], **columns)


def test_registry_lists_tasks_and_rejects_unknown_names():
    assert set(ALL) == {"addition", "subtraction", "multiplication", "countdown", "linear", "word"}
    with pytest.raises(ValueError, match="addition"):
        tasks.get("division")
    with pytest.raises(ValueError, match="digits"):
        tasks.get("addition")(seed=0, digitz=3)
    with pytest.raises(ValueError):
        tasks.get("addition")(seed=0, digits=0)


@pytest.mark.parametrize("name", ALL)
def test_clean_teacher_is_always_right_and_well_formed(name):
    rows = tasks.sample(name, 200, seed=1)
    assert grade(rows) == [1.0] * 200
    assert format_reward([row["reference_trace"] for row in rows]) == [1.0] * 200
    for row in rows:
        assert row["reference_trace"].startswith("<think>\n")
        assert "\n</think>\nThe answer is \\boxed{" in row["reference_trace"]
        assert row["prompt"] and row["answer"] and row["task"] == name
        assert not row["affected"]


@pytest.mark.parametrize("name", ALL)
def test_slips_make_about_the_noise_fraction_wrong(name):
    rows = tasks.sample(name, 500, seed=2, noise=0.3, noise_kind="slip")
    scores = grade(rows)
    wrong = scores.count(0.0) / len(rows)
    assert 0.2 <= wrong <= 0.4
    # A slip always changes the answer, and only affected traces are wrong.
    assert [score == 0.0 for score in scores] == [row["affected"] for row in rows]


@pytest.mark.parametrize("name", WITH_MISCONCEPTION)
def test_misconception_teacher_is_wrong_exactly_where_its_rule_applies(name):
    rows = tasks.sample(name, 400, seed=3, noise=1.0, noise_kind="misconception")
    scores = grade(rows)
    touched = [row["touched"] for row in rows]
    assert 0 < sum(touched) < len(rows)  # the rule must split the problems to mean anything
    assert [score == 0.0 for score in scores] == touched
    assert [row["affected"] for row in rows] == touched


def test_addition_misconception_touches_exactly_the_carry_into_a_nine():
    for row in tasks.sample("addition", 300, seed=4, digits=3, noise=1.0, noise_kind="misconception"):
        a, b = map(int, row["prompt"].removeprefix("What is ").removesuffix("?").split(" + "))
        carry, rule_applies = 0, False
        for x, y in zip(reversed(str(a).zfill(4)), reversed(str(b).zfill(4))):
            rule_applies |= int(x) + int(y) == 9 and carry == 1
            carry = (int(x) + int(y) + carry) // 10
        assert row["touched"] == rule_applies
        assert (row["trace_answer"] != row["answer"]) == rule_applies


def test_partial_misconception_noise_only_affects_touched_problems():
    rows = tasks.sample("subtraction", 500, seed=5, noise=0.5, noise_kind="misconception")
    affected = [row["affected"] for row in rows]
    assert all(row["touched"] for row in rows if row["affected"])
    touched = sum(row["touched"] for row in rows)
    assert 0.35 <= sum(affected) / touched <= 0.65


@pytest.mark.parametrize("name", ["countdown", "word"])
def test_tasks_without_a_misconception_rule_refuse_one(name):
    with pytest.raises(ValueError, match="misconception"):
        tasks.get(name)(seed=0, noise=0.5, noise_kind="misconception")


@pytest.mark.parametrize("name", ALL)
def test_deterministic_by_seed(name):
    assert tasks.sample(name, 30, seed=7) == tasks.sample(name, 30, seed=7)
    assert tasks.sample(name, 30, seed=7) != tasks.sample(name, 30, seed=8)
    noisy = tasks.sample(name, 30, seed=7, noise=0.4)
    assert noisy == tasks.sample(name, 30, seed=7, noise=0.4)


def test_more_noise_keeps_problems_and_adds_affected_traces():
    low = tasks.sample("addition", 300, seed=9, noise=0.3)
    high = tasks.sample("addition", 300, seed=9, noise=0.6)
    assert [row["prompt"] for row in low] == [row["prompt"] for row in high]
    assert all(h["affected"] for lo, h in zip(low, high) if lo["affected"])
    assert sum(h["affected"] for h in high) > sum(lo["affected"] for lo in low)


SMALL = {"addition": {"digits": 2}, "subtraction": {"digits": 2}, "multiplication": {"digits_a": 2},
         "countdown": {"max_number": 10}, "linear": {"max_solution": 5}, "word": {}}


@pytest.mark.parametrize("name", ALL)
def test_train_and_test_splits_never_share_a_problem(name):
    # Small problem spaces, so that without a partition the streams would overlap.
    train = {row["prompt"] for row in tasks.sample(name, 1500, seed=0, split="train", **SMALL[name])}
    test = {row["prompt"] for row in tasks.sample(name, 300, seed=1, split="test", **SMALL[name])}
    assert train and test and not train & test
    everything = tasks.sample(name, 50, seed=0, split="all", **SMALL[name])
    assert len(everything) == 50


def test_difficulty_knobs():
    for row in tasks.sample("addition", 50, seed=0, digits=6):
        a, b = row["prompt"].removeprefix("What is ").removesuffix("?").split(" + ")
        assert len(a) == len(b) == 6
    lengths = {len(row["prompt"].split()[2]) for row in tasks.sample("addition", 200, seed=0, digits=5, min_digits=1)}
    assert lengths == {1, 2, 3, 4, 5}
    for row in tasks.sample("subtraction", 100, seed=0, digits=5, min_digits=2):
        assert int(row["answer"]) >= 0
    for row in tasks.sample("multiplication", 30, seed=0, digits_a=4, digits_b=2):
        a, b = row["prompt"].removeprefix("What is ").removesuffix("?").split(" * ")
        assert (len(a), len(b)) == (4, 2) and int(a) * int(b) == int(row["answer"])
    for row in tasks.sample("countdown", 30, seed=0, numbers=4):
        assert len(row["numbers"]) == 4 and row["answer"] == str(row["target"])
    for row in tasks.sample("word", 30, seed=0, templates="trip"):
        assert "km per hour" in row["prompt"]


def test_countdown_accepts_any_correct_expression():
    row = tasks.sample("countdown", 1, seed=0)[0]
    numbers, target = row["numbers"], row["target"]
    # Brute-force a different valid expression than the teacher's, if one exists.
    for a, b, c in itertools.permutations(numbers):
        for expression in (f"{a}+{b}+{c}", f"{a}*{b}-{c}", f"({a}+{b})*{c}", f"{a}*{b}+{c}", f"{a}-{b}+{c}"):
            if eval(expression) == target and expression != row["trace_answer"]:  # test-only eval of our own text
                completion = f"<think>\n</think>\nThe answer is \\boxed{{{expression}}}."
                assert accuracy([completion], answer=[row["answer"]], numbers=[numbers]) == [1.0]


def test_countdown_with_two_numbers_searches_in_a_fixed_order():
    """The trace is a function of the problem: + - * / in turn (larger number first, - only when positive,
    / only when it divides), up to the first that hits; a slip boxes the miss closest to the target."""
    ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y, "/": lambda x, y: x // y}
    clean = tasks.sample("countdown", 200, seed=3, numbers=2)
    noisy = tasks.sample("countdown", 200, seed=3, numbers=2, noise=1.0)
    # one, two, three attempts; then </think> and the answer
    assert {len(row["reference_trace"].splitlines()) for row in clean} >= {4, 5, 6}
    for row, slipped in zip(clean, noisy):
        (x, y), target = sorted(row["numbers"], reverse=True), row["target"]
        tried = [(op, ops[op](x, y)) for op in ops if not (op == "-" and x <= y or op == "/" and (y == 1 or x % y))]
        hit = next(i for i, (_, value) in enumerate(tried) if value == target)
        expected = [f"{x}{op}{y}: {x}{op}{y}={value} vs {target}, {'yes' if i == hit else 'no'}"
                    for i, (op, value) in enumerate(tried[:hit + 1])]
        assert row["reference_trace"].splitlines()[1:-2] == expected
        assert row["trace_answer"] == f"{x}{tried[hit][0]}{y}"
        misses = [(op, value) for op, value in tried if value != target]
        if misses:
            op, value = min(misses, key=lambda miss: abs(miss[1] - target))
            assert slipped["affected"] and slipped["trace_answer"] == f"{x}{op}{y}"
            assert slipped["reference_trace"].splitlines()[-3] == f"{x}{op}{y}: {x}{op}{y}={target} vs {target}, yes"


def test_format_samples_and_main_sample(capsys):
    text = tasks.format_samples(tasks.sample("addition", 2, seed=0))
    assert "prompt: What is" in text and "\\boxed{" in text
    tasks.main_sample("addition", 3, 0, {"digits": "2", "noise": "1.0"})
    printed = capsys.readouterr().out
    assert printed.count("prompt: What is") == 3 and "(affected" in printed
    assert tasks.knobs("multiplication") == {"digits_a": 3, "digits_b": 1}


# ---------------------------------------------------------------- dataset loaders


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_load_gsm8k(tmp_path):
    path = write_jsonl(tmp_path / "gsm8k.jsonl", [
        {"question": "How many?", "answer": "3 * 412 = 1236\n#### 1,236"},
        {"question": "Debt?", "answer": "she owes\n#### -5"},
    ])
    rows = list(load_dataset(path))
    assert rows[0] == {"prompt": "How many?", "answer": "1236", "solution": "3 * 412 = 1236"}
    assert rows[1]["answer"] == "-5"


def test_load_math_with_and_without_answer(tmp_path):
    path = write_jsonl(tmp_path / "math.jsonl", [
        {"problem": "Half of one?", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "answer": "\\frac{1}{2}"},
        {"problem": "Set?", "solution": "So $\\boxed{\\{1, 2\\}}$ or \\boxed{x^{2}}"},
    ])
    rows = list(load_dataset(path))
    assert rows[0]["answer"] == "\\frac{1}{2}" and rows[0]["solution"].startswith("It is")
    assert rows[1]["answer"] == "x^{2}"  # the last \boxed{}, nested braces kept


def test_load_openr1_chat_and_problem_rows(tmp_path):
    path = write_jsonl(tmp_path / "openr1.jsonl", [
        {"messages": [{"role": "user", "content": "What is 2+2?"},
                      {"role": "assistant", "content": "<think>2+2=4</think> \\boxed{4}"}]},
    ])
    row = next(load_dataset(path))
    assert row["prompt"] == "What is 2+2?" and row["answer"] == "4" and len(row["messages"]) == 2
    path = write_jsonl(tmp_path / "openr1b.jsonl", [
        {"problem": "P?", "solution": "... \\boxed{7}", "answer": "7", "messages": [], "numbers": [1, 2]},
    ])
    row = next(load_dataset(path, format="openr1"))
    assert row["answer"] == "7" and row["numbers"] == [1, 2]


def test_load_parquet_and_r1lab_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "math.parquet"
    pq.write_table(pa.table({"problem": [f"p{i}" for i in range(2500)],
                             "solution": [f"\\boxed{{{i}}}" for i in range(2500)]}), path)
    rows = list(load_dataset(path))
    assert len(rows) == 2500 and rows[2499] == {"prompt": "p2499", "answer": "2499", "solution": "\\boxed{2499}"}
    samples = tasks.sample("countdown", 3, seed=0)
    path = write_jsonl(tmp_path / "own.jsonl", samples)
    rows = list(load_dataset(path))
    assert [r["answer"] for r in rows] == [s["answer"] for s in samples] and rows[0]["numbers"] == samples[0]["numbers"]


def test_bad_records_name_the_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"question": "ok", "answer": "#### 1"}\n\n{"question": "bad json", \n')
    rows = load_dataset(path)
    assert next(rows)["answer"] == "1"  # lazy: the good line comes out before the bad one is read
    with pytest.raises(DatasetError, match=r"broken\.jsonl: line 3: bad JSON"):
        next(rows)
    path = write_jsonl(tmp_path / "missing.jsonl", [{"question": "q", "answer": "#### 2"}, {"question": "q2"}])
    with pytest.raises(DatasetError, match=r"missing\.jsonl: line 2: missing field 'answer'"):
        list(load_dataset(path))
    path = write_jsonl(tmp_path / "nomark.jsonl", [{"question": "q", "answer": "no marker"}])
    with pytest.raises(ValueError, match="line 1"):
        list(load_dataset(path))


def test_bad_parquet_row_is_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"problem": ["a", "b", "c"], "solution": ["\\boxed{1}", "\\boxed{2}", "none"]}), path)
    with pytest.raises(DatasetError, match=r"m\.parquet: row 2: no 'answer'"):
        list(load_dataset(path))
    with pytest.raises(DatasetError, match="unknown file type"):
        load_dataset(write_jsonl(tmp_path / "x.txt", [{}]))
