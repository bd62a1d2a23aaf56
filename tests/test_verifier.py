"""The accuracy verifier against reward hacking, and against plain math-verify.

Probes: answers a careful grader judges, each written the way a policy could game the reward. Differential:
generated answers where the verdict must be exactly plain math-verify's (parse with LaTeX + expression
extraction, then verify). Benchmark formats: GSM8K and MATH-500 files written here, graded through the
dataset loader, with gold answers boxed and unboxed (all right) and near misses (all wrong).
"""
from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from r1lab import rewards
from r1lab.rewards.accuracy import CHILD_TIMEOUT_S, grade
from r1lab.rewards.bounded import BoundedWorker
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


@pytest.mark.parametrize("gold, answer, expected", [
    # a base subscript is part of the value: the same digits in another base are another number
    ("52_8", "52_8", 1.0), ("52_8", "52_{8}", 1.0), ("52_8", "52_{(8)}", 1.0), ("52_8", "\\text{52}_8", 1.0),
    ("52_{8}", "52_8", 1.0), ("\\text{52}_{8}", "52_8", 1.0),
    ("52_8", "52_9", 0.0), ("52_8", "52_{9}", 0.0), ("52_8", "52_7", 0.0), ("52_8", "\\text{52}_9", 0.0),
    ("52_8", "42_{10}", 1.0), ("52_8", "101010_2", 1.0), ("52_8", "2A_{16}", 1.0),  # the same value in other bases
    ("52_8", "101011_2", 0.0), ("52_8", "52_5", 0.0),  # 5 is no digit of base 5
    # a bare numeral is read in the other side's base, as graders read "express it in base 8"
    ("52_8", "52", 1.0), ("52_8", "42", 0.0), ("52", "52_8", 1.0), ("42", "52_8", 0.0),
    ("1011_2", "1011_2", 1.0), ("1011_2", "1011", 1.0), ("1011_2", "11", 0.0), ("1011_2", "1011_3", 0.0),
    ("1011_2", "11_{10}", 1.0), ("4210_{5}", "4210_5", 1.0), ("4210_{5}", "4210_6", 0.0),
    ("A3_{16}", "A3_{16}", 1.0), ("A3_{16}", "a3_{16}", 1.0), ("A3_{16}", "A3", 1.0), ("A3_{16}", "163_{10}", 1.0),
    ("A3_{16}", "A3_{15}", 0.0), ("A3_{16}", "163", 0.0),
    # subscripts that are not bases stay math-verify's
    ("x_1", "x_1", 1.0), ("x_1", "x_2", 0.0), ("a_{10}", "a_{10}", 1.0),
])
def test_numerals_in_a_base(gold, answer, expected):
    assert judged(f"The answer is \\boxed{{{answer}}}.", gold) == expected
    assert judged(f"The answer is ${answer}$.", gold) == expected


def test_hedging_over_bases_is_wrong():
    assert judged("\\boxed{52_8} or \\boxed{52_9}", "52_8") == 0.0
    assert judged("\\boxed{52_8} or \\boxed{52_9}", "52") == 0.0
    assert judged("\\boxed{52_8}, that is \\boxed{42_{10}}", "52_8") == 1.0


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

ORACLE_TIMEOUT_S, ORACLE_MEMORY_MB = 5, 3072  # per case: past either, the case is skipped and counted


@pytest.fixture
def oracle(request):
    """Plain math-verify in a child process, bounded per case: some answers (2^{10^13}) take it minutes and GBs.
    In the slow test it also watches for MemoryErrors math-verify swallows (a verdict made without memory is
    no verdict), at twice the cost."""
    with BoundedWorker("plain_math_verify:plain_math_verify", ORACLE_TIMEOUT_S, ORACLE_MEMORY_MB, warmup=("\\boxed{1}", "1"),
                       watch_memory=request.node.get_closest_marker("slow") is not None,
                       pythonpath=(str(Path(__file__).parent),)) as worker:
        yield worker


def _differential(case: tuple[str, str], oracle: BoundedWorker) -> str:
    """"compared" (ours equals plain math-verify's, else AssertionError), or why the oracle could not decide.
    Ours runs off the main thread (a signal-based timeout there would fire inside hypothesis's own code), while
    the oracle's child works on the same case."""
    gold, answer = case
    with ThreadPoolExecutor(1) as pool:
        ours = pool.submit(grade, "<think>\nworking\n</think>\n" + answer, gold)
        plain, why = oracle.call(answer, gold)
        ours = ours.result()
    if why is not None:
        return why.split(":")[0]
    assert ours == plain, (gold, answer)
    return "compared"


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


def _run_differential(oracle: BoundedWorker, examples: int, derandomize: bool, known: tuple = ()) -> Counter:
    """Compare `examples` drawn answers (and the `known` ones); at least 90% must be decided by the oracle."""
    tally: Counter = Counter()

    @settings(max_examples=examples, deadline=None, derandomize=derandomize, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=_answers())
    def run(case):
        tally[_differential(case, oracle)] += 1

    for case in known:
        run = example(case=case)(run)

    started = time.monotonic()
    run()
    print(f"differential against plain math-verify: {dict(tally)} in {time.monotonic() - started:.0f} s, "
          f"{oracle.starts} oracle children")
    assert tally["compared"] >= 0.9 * sum(tally.values()) and tally["compared"] >= 0.9 * examples, tally
    return tally


def test_differential_against_plain_math_verify(oracle):
    """Outside the documented cases (which these answers avoid), the verdict is plain math-verify's."""
    _run_differential(oracle, 600, derandomize=True)


@pytest.mark.slow
def test_differential_against_plain_math_verify_thousands(oracle):
    # plain math-verify alone spends minutes and GBs on the first (a draw of the strategy): skipped, not run out
    known = (("5", "\\boxed{2^{10000000000000}}"), ("5", "The answer is $2^{10000000000000}$."), ("5", "\\boxed{5}"))
    tally = _run_differential(oracle, 5000, derandomize=False, known=known)
    assert tally["timeout"] + tally["memory"] >= 2


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
    ("52_8", ["52_9", "42", "52_{7}"]),
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


# ---------------------------------------------------------------- answers built to explode

EXPLOSIVE = {  # name: (answer part, decided by the caps: quick)
    "huge power": ("\\boxed{2^{10000000000000}}", True),
    "huge power, unboxed": ("The answer is $2^{10000000000000}$.", True),
    "huge power, no braces": ("\\boxed{2^10000000000000}", True),
    "power tower": ("\\boxed{9^{9^{9^{9}}}}", True),
    "power tower, no braces": ("\\boxed{9^9^9^9}", True),
    "big factorial": ("\\boxed{100000!}", True),
    "big factorial, unboxed": ("The answer is 100000!", True),
    "100,000 digits": ("\\boxed{" + "7" * 100_000 + "}", True),
    "100,000 digits, unboxed": ("The answer is " + "7" * 100_000 + ".", True),
    "100,000 digits in lines": (("7" * 1000 + "\n") * 100, True),
    "braces 5,000 deep": ("\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}", True),
    "braces 5,000 deep, unboxed": ("The answer is $" + "{" * 5000 + "1" + "}" * 5000 + "$", True),
    "fractions 400 deep, unboxed": ("x\nThe answer is $" + "\\frac{1}{" * 400 + "2" + "}" * 400 + "$", True),
    # past the caps: math-verify's own timeouts end these (in a child off the main thread)
    "factorial of a factorial": ("\\boxed{(99!)!}", False),
    "parentheses 1,900 deep, unboxed": ("x\nThe answer is $" + "(" * 1900 + "1" + ")" * 1900 + "$", False),
    "power of a power": ("\\boxed{(10^{9999})^{9999}}", False),
    "power of a product": ("\\boxed{2^{9999 \\cdot 9999 \\cdot 9999}}", False),
    "braces 190 deep": ("\\boxed{" + "{" * 190 + "1" + "}" * 190 + "}", False),
    "huge binomial": ("\\boxed{\\binom{10^{999}}{10^{99}}}", False),
    "huge gamma": ("\\boxed{\\Gamma(10^{9})}", False),
}
GRADE_IN_A_BOX = r"""
import json, resource, sys, threading, time
def hwm_kib():  # this process's own peak (ru_maxrss would include the RSS of the pytest that forked it)
    return int(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')))
limit = int(sys.argv[1]) << 20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from r1lab.rewards import accuracy
cases, modes = json.loads(sys.stdin.read())
seconds, verdicts = {}, {}
def run(mode):
    accuracy.grade("</think> \\boxed{\\sqrt{4}}", "2")  # the child off the main thread starts here, untimed
    for name, answer in cases.items():
        started = time.monotonic()
        verdicts[f"{name} ({mode})"] = accuracy.grade("<think>\nworking\n</think>\n" + answer, "5")
        seconds[f"{name} ({mode})"] = time.monotonic() - started
if "main" in modes:
    run("main")
if "thread" in modes:
    thread = threading.Thread(target=run, args=("thread",))
    thread.start()
    thread.join()
if accuracy._child is not None:
    accuracy._child[1].close()
print(json.dumps({"seconds": seconds, "verdicts": verdicts,
                  "rss_mb": hwm_kib() >> 10,
                  "child_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss >> 10}))
"""


def _grade_in_a_box(cases: dict[str, str], modes: list[str], memory_mb: int = 2048) -> dict:
    """grade() each answer against gold 5 in a fresh process capped at memory_mb of address space, in its main
    thread and/or another thread: seconds and verdict per answer, peak resident memory of it and its child."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", GRADE_IN_A_BOX, str(memory_mb)], input=json.dumps([cases, modes]),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_grade_stays_bounded_on_answers_built_to_explode():
    """The caps answer at once, in any thread; off the main thread math-verify runs in a bounded child."""
    quick = {name: answer for name, (answer, capped) in EXPLOSIVE.items() if capped}
    hard = {"factorial of a factorial": EXPLOSIVE["factorial of a factorial"][0]}  # in minutes before
    report = _grade_in_a_box(quick, ["main", "thread"])
    assert not any(report["verdicts"].values()) and len(report["verdicts"]) == 2 * len(quick)
    assert max(report["seconds"].values()) < 1.0, report["seconds"]
    assert report["rss_mb"] < 500, report
    report = _grade_in_a_box(hard, ["thread"])
    assert not any(report["verdicts"].values())
    assert max(report["seconds"].values()) < CHILD_TIMEOUT_S + 1, report["seconds"]
    assert report["rss_mb"] < 500 and report["child_rss_mb"] < 1000, report


@pytest.mark.slow
def test_grade_stays_bounded_on_answers_built_to_explode_everywhere():
    report = _grade_in_a_box({name: answer for name, (answer, _) in EXPLOSIVE.items()}, ["main", "thread"])
    print(json.dumps(report, indent=1))
    assert not any(report["verdicts"].values()) and len(report["verdicts"]) == 2 * len(EXPLOSIVE)
    assert max(report["seconds"].values()) < CHILD_TIMEOUT_S + 1, report["seconds"]
    assert report["rss_mb"] < 1000 and report["child_rss_mb"] < 1000, report
