"""The accuracy verifier against reward hacking, and against plain math-verify.

Probes: answers a careful grader judges, each written the way a policy could game the reward. Differential:
generated answers where the verdict must be exactly plain math-verify's (parse with LaTeX + expression
extraction, then verify). Benchmark formats: GSM8K and MATH-500 files written here, graded through the
dataset loader, with gold answers boxed and unboxed (all right) and near misses (all wrong).
"""
from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r1lab import rewards
from r1lab.rewards.accuracy import gold_text, grade, prediction_config
from r1lab.tasks.datasets import load_dataset

accuracy = rewards.get("accuracy")


def judged(answer_part: str, gold: str) -> float:
    return accuracy(["<think>\nworking\n</think>\n" + answer_part], answer=[gold])[0]


@pytest.mark.parametrize("answer, gold, expected", [
    # several different boxes: a policy that boxes every candidate is not paid; one box, or the same twice, is
    ("\\boxed{3} or \\boxed{5}", "5", 0.0),
    ("\\boxed{5} or maybe \\boxed{3}", "5", 0.0),
    ("It is \\boxed{5}; indeed \\boxed{5}.", "5", 1.0),
    ("\\boxed{3}, \\boxed{5}", "\\{3, 5\\}", 1.0),  # a set gold is a set answer
    # the gold's digits inside a wrong expression, boxed or not
    ("The answer is $\\frac{1}{7}$.", "7", 0.0),
    ("The answer is $\\sqrt{7}$.", "7", 0.0),
    ("The answer is $2^{7}$.", "7", 0.0),
    ("\\boxed{\\frac{1}{7}}", "7", 0.0),
    ("\\boxed{17}", "7", 0.0),
    ("\\boxed{70}", "7", 0.0),
    # enumerations
    ("\\boxed{1, 2, \\ldots, 100}", "100", 0.0),
    ("1, 2, \\ldots, 100", "100", 0.0),
    ("It is one of 1, 2, ..., 100.", "100", 0.0),
    ("\\boxed{1, 2, 3, 4, 5}", "5", 0.0),
    # unicode look-alike digits are not digits
    ("\\boxed{\uff11\uff12}", "12", 0.0),
    ("\\boxed{\u0661\u0662}", "12", 0.0),
    ("\\boxed{\U0001d7cf\U0001d7d0}", "12", 0.0),
    ("The answer is \uff11\uff12.", "12", 0.0),
    # nested and unbalanced braces
    ("\\boxed{\\frac{14}{3}}", "\\frac{14}{3}", 1.0),
    ("\\boxed{\\boxed{12}}", "12", 1.0),
    ("\\boxed{12", "12", 0.0),
    ("\\boxed{{12}", "12", 0.0),
    ("\\boxed{3} and then \\boxed{12", "12", 0.0),
    ("\\boxed{12}}", "12", 1.0),
    # a box inside a code block is code, not the answer
    ("```\nprint('\\\\boxed{12}')\n```", "12", 0.0),
    ("```python\nx = '\\boxed{12}'\n```", "12", 0.0),
    ("```\ncode\n```\nThe answer is \\boxed{12}.", "12", 1.0),
    # plain right answers in the forms models write
    ("The answer is \\boxed{12}.", "12", 1.0),
    ("The answer is 12.", "12", 1.0),
    ("The final answer is $\\frac{14}{3}$.", "\\frac{14}{3}", 1.0),
    ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
    ("\\boxed{0.3333333}", "\\frac{1}{3}", 1.0),  # math-verify compares decimals to 6 places
    ("\\boxed{0.333}", "\\frac{1}{3}", 0.0),
])
def test_reward_hacking_probes(answer, gold, expected):
    assert judged(answer, gold) == expected


def test_answer_only_inside_think_does_not_count():
    assert accuracy(["<think>\nso it is \\boxed{12}\n</think>\n"], answer=["12"]) == [0.0]  # nothing after </think>
    assert accuracy(["<think>\nso it is \\boxed{12}"], answer=["12"]) == [0.0]  # still thinking
    assert accuracy(["<think>\nmaybe \\boxed{12}\n</think>\nThe answer is \\boxed{13}."], answer=["12"]) == [0.0]
    assert accuracy(["<think>\nmaybe \\boxed{13}\n</think>\nThe answer is \\boxed{12}."], answer=["12"]) == [1.0]
    assert accuracy(["No think tags: the answer is \\boxed{12}."], answer=["12"]) == [1.0]  # a non-reasoning model


def test_enormous_outputs_are_graded_quickly_and_only_by_their_end():
    filler = ("blah 12 " * 50 + "\n") * 2000  # ~800 kB of text full of the gold's digits
    started = time.monotonic()
    scores = accuracy(["<think>\n" + filler + "</think>\n" + filler + "So it is 13.",
                       "<think>\n" + filler,
                       "<think>\nx\n</think>\n" + filler + "The answer is \\boxed{12}.",
                       "<think>\nx\n</think>\n\\boxed{" + "1" * 100_000 + "}"], answer=["12"] * 4)
    assert scores == [0.0, 0.0, 1.0, 0.0]
    assert time.monotonic() - started < 10


# ---------------------------------------------------------------- differential test against plain math-verify

def _plain_math_verify(answer: str, gold: str) -> bool:
    from math_verify import parse, verify

    gold_parsed = parse(gold_text(gold), parsing_timeout=None)
    parsed = parse(answer, extraction_config=prediction_config(), parsing_timeout=None)
    return bool(verify(gold_parsed, parsed, timeout_seconds=None))


def _both_verdicts(gold: str, answer: str) -> tuple[bool, bool]:
    """(ours, plain math-verify's), computed off the main thread: no signal-based timeouts on either side
    (an alarm left by one would fire inside hypothesis's own code)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: (grade("<think>\nworking\n</think>\n" + answer, gold),
                                    _plain_math_verify(answer, gold))).result()


_digits = st.integers(0, 10**13).map(str)
_numbers = st.one_of(
    _digits, st.integers(-10**9, 10**9).map(str), st.integers(0, 10**9).map("{:,}".format),
    st.integers(0, 10**9).map(lambda n: f"{n:,}".replace(",", ",\\!")),
    st.tuples(st.integers(-999, 999), st.integers(0, 999)).map(lambda t: f"{t[0]}.{t[1]}"),
    st.integers(0, 999).map(lambda n: f".{n}"),
    st.tuples(st.integers(-30, 30), st.integers(0, 30)).map(lambda t: f"\\frac{{{t[0]}}}{{{t[1]}}}"),
    st.tuples(st.integers(-30, 30), st.integers(0, 30)).map(lambda t: f"{t[0]}/{t[1]}"),
    st.sampled_from(["0.3333333", "0.333333", "0.5", "0.50", "3.50", "1.0000001", "2.0", "0.1", "1e3", "-0", "+5", "05"]))
_latex = st.sampled_from(["\\frac{14}{3}", "\\text{(C)}", "(C)", "C", "(1,2]", "[-2, 7)", "10,\\!080", "\\$32,\\!348",
                          "\\sqrt{2}", "\\frac{\\sqrt{2}}{2}", "x^2+1", "3\\pi", "\\pi", "\\{1,2\\}", "\\infty"])
_wrappers = st.sampled_from(["{}", "${}$", "\\text{{{}}}", "\\({}\\)", "{}.", " {} ", "x = {}", "\\${}", "{}\\%"])
_golds = st.one_of(_numbers, _latex, st.tuples(_wrappers, _numbers).map(lambda t: t[0].format(t[1])))


@st.composite
def _answers(draw):
    gold = draw(_golds)
    base = draw(st.one_of(st.just(gold), _numbers, _latex, st.sampled_from(
        [f"\\frac{{1}}{{{gold}}}", f"\\sqrt{{{gold}}}", f"2^{{{gold}}}", f"1{gold}", f"{gold}0", f"-{gold}"])))
    base = draw(_wrappers).format(base)
    shape = draw(st.sampled_from(["\\boxed{{{}}}", "The answer is \\boxed{{{}}}.", "The answer is {}", "{}",
                                  "The final answer is ${}$.", "So we get 4 and then {}.", "\\boxed{{{}}} or \\boxed{{7}}",
                                  "Therefore, the final answer is: $\\boxed{{{}}}$. I hope it is correct."]))
    return gold, shape.format(base)


def _check_differential(case) -> None:
    gold, answer = case
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    ours, plain = _both_verdicts(gold, answer)
    assert ours == plain, (gold, answer)


@settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(case=_answers())
def test_differential_against_plain_math_verify(case):
    """Outside the documented cases (which these answers avoid), the verdict is plain math-verify's."""
    _check_differential(case)


@pytest.mark.slow
@settings(max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=_answers())
def test_differential_against_plain_math_verify_thousands(case):
    _check_differential(case)


# ---------------------------------------------------------------- GSM8K and MATH-500 formats

MATH500 = [  # (answer field, near misses)
    ("\\frac{14}{3}", ["\\frac{3}{14}", "\\frac{14}{5}", "4.66"]),
    ("\\text{(C)}", ["\\text{(D)}", "B"]),
    ("(1,2]", ["[1,2]", "(1,2)", "(1,3]"]),
    ("[-2, 7)", ["(-2, 7)", "[-2, 7]"]),
    ("10,\\!080", ["10,\\!081", "1008", "10,\\!800"]),
    ("\\$32,\\!348", ["\\$32,\\!349", "32,\\!384"]),
    ("\\frac{\\sqrt{3}}{2}", ["\\frac{\\sqrt{2}}{2}", "\\sqrt{3}"]),
    ("6 - 5i", ["6 + 5i", "5 - 6i"]),
    ("x^2 + 7x + 10", ["x^2 + 7x + 11", "x^2 - 7x + 10"]),
    ("3\\sqrt{13}", ["\\sqrt{13}", "13\\sqrt{3}"]),
]
GSM8K = [("1,234", ["1,243", "123", "12,340"]), ("18", ["81", "19", "-18"]), ("70000", ["7000", "700,000"]),
         ("0.5", ["5", "0.05"])]


def _reply(answer: str, boxed: bool) -> str:
    return "<think>\nworking it out\n</think>\n" + (f"The answer is $\\boxed{{{answer}}}$." if boxed
                                                  else f"The final answer is ${answer}$.")


def _grade_file(path, answers: list[tuple[str, list[str]]]) -> tuple[list[float], list[float]]:
    rows = list(load_dataset(path))
    right, wrong = [], []
    for row, (gold, misses) in zip(rows, answers, strict=True):
        shown = gold.replace(",", "") if "####" in path.read_text() and "\\" not in gold else gold
        for boxed in (True, False):
            right += accuracy([_reply(shown, boxed), _reply(gold, boxed)], answer=[row["answer"]] * 2)
            wrong += accuracy([_reply(miss, boxed) for miss in misses], answer=[row["answer"]] * len(misses))
    return right, wrong


def test_math500_format_gold_right_boxed_and_unboxed_near_misses_wrong(tmp_path):
    path = tmp_path / "math500.jsonl"
    path.write_text("".join(json.dumps({"problem": f"problem {i}", "solution": f"so $\\boxed{{{gold}}}$", "answer": gold,
                                        "subject": "Algebra", "level": 3, "unique_id": f"test/{i}.json"}) + "\n"
                            for i, (gold, _) in enumerate(MATH500)))
    right, wrong = _grade_file(path, MATH500)
    assert right == [1.0] * len(right) and len(right) == 4 * len(MATH500)
    assert wrong == [0.0] * len(wrong)


def test_gsm8k_format_gold_right_boxed_and_unboxed_near_misses_wrong(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps({"question": f"question {i}", "answer": f"Some steps <<1+1=2>>2.\n#### {gold}"}) + "\n"
                            for i, (gold, _) in enumerate(GSM8K)))
    right, wrong = _grade_file(path, GSM8K)
    assert right == [1.0] * len(right) and len(right) == 4 * len(GSM8K)
    assert wrong == [0.0] * len(wrong)
    plain = accuracy(["<think>\nx\n</think>\nThe answer is 1,234.", "<think>\nx\n</think>\nSo she pays $1234 in total."],
                     answer=["1234"] * 2)
    assert plain == [1.0, 1.0]
