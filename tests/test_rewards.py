"""Reward functions: behaviour on known cases, and safety (finite, in range, never raising) on any text."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r1lab import rewards
from r1lab.rewards import countdown
from r1lab.rewards.bounded import BoundedWorker
from r1lab.rewards.core import last_boxed

RIGHT = "<think>\n1+9=10, write 0 carry 1\n</think>\nThe answer is \\boxed{6200}."
accuracy = rewards.get("accuracy")
format_reward = rewards.get("format")
tag_count = rewards.get("tag_count")

# Text built from the pieces rewards look at, so examples hit the interesting paths.
PIECES = ["<think>", "</think>", "\\boxed{", "{", "}", "\n", " ", "6200", "-3", "\\frac{1}{2}", "x = ", "^{9^{9}}",
          "(25-5)*4", "```python\n", "```", "answer is ", "1,234", "..", "\\"]
pieces = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=4)), max_size=12).map("".join)
texts = st.one_of(st.text(), pieces)
answers = st.one_of(st.text(max_size=20), st.integers(-10**6, 10**6).map(str), st.sampled_from(["\\frac{1}{2}", "6200"]))
completions = st.one_of(texts, texts.map(lambda t: [{"role": "assistant", "content": t}]))


def check_range(name: str, scores: list[float], count: int) -> None:
    low, high = rewards.get(name).reward_range
    assert len(scores) == count
    for score in scores:
        assert isinstance(score, float) and math.isfinite(score) and low <= score <= high


@pytest.mark.parametrize("name", ["accuracy", "format", "tag_count", "cosine_length", "repetition"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(st.tuples(completions, answers), min_size=1, max_size=4))
def test_rewards_are_finite_and_in_range_for_any_text(name, batch):
    fn = rewards.get(name)
    texts_, golds = [c for c, _ in batch], [a for _, a in batch]
    check_range(name, fn(texts_, answer=golds, prompts=golds, trainer_state=object()), len(batch))


@settings(max_examples=60, deadline=None)
@given(text=texts, numbers=st.lists(st.integers(-5, 200), max_size=5), target=answers)
def test_countdown_accuracy_is_safe_for_any_text(text, numbers, target):
    check_range("accuracy", accuracy([text], answer=[target], numbers=[numbers], task=["countdown"]), 1)


@settings(max_examples=4, deadline=None)
@given(text=texts, tests=st.lists(st.text(max_size=20), max_size=2))
def test_code_reward_is_safe_for_any_text(text, tests):
    code = rewards.get("code", timeout_s=2)
    check_range("code", code(["```python\n" + text + "\n```", text], tests=[tests, "not json"]), 2)


def test_reward_factories_and_registry():
    assert set(rewards.names()) == {"accuracy", "format", "tag_count", "cosine_length", "repetition", "code"}
    with pytest.raises(ValueError, match="accuracy"):
        rewards.get("nope")
    assert rewards.get("cosine_length", max_len=50).__name__ == "cosine_length"
    assert rewards.get("repetition", max_penalty=-2.0).reward_range == (-2.0, 0.0)
    with pytest.raises(ValueError):
        rewards.get("repetition", max_penalty=1.0)


# ---------------------------------------------------------------- accuracy


def test_last_boxed_handles_nesting_and_unclosed_boxes():
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{a}{b^{2}}}") == "\\frac{a}{b^{2}}"
    assert last_boxed("\\boxed{12") is None and last_boxed("no box") is None


@pytest.mark.parametrize("completion, gold, expected", [
    (RIGHT, "6200", 1.0),
    (RIGHT.replace("6200", "6,200"), "6200", 1.0),
    (RIGHT.replace("6200", "6201"), "6200", 0.0),
    ("<think>\n</think>\nThe answer is 6200.", "6200", 1.0),  # no box: the text after </think>
    ("<think>\nI think \\boxed{6200} maybe", "6200", 0.0),  # a box inside an unclosed <think> is no answer
    ("<think>\nstill thinking about 6200", "6200", 0.0),  # no box and no </think>: no answer yet
    ("</think> \\boxed{0.5}", "\\frac{1}{2}", 1.0),
    ("</think> \\boxed{\\frac{2}{4}}", "0.5", 1.0),
    ("</think> \\boxed{x = -3}", "-3", 1.0),
    ("</think> \\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}", 1.0),  # math-verify territory
    ("</think> \\boxed{\\pi}", "\\frac{\\sqrt{2}}{2}", 0.0),
    ("</think> \\boxed{(1, 2]}", "(1,2]", 1.0),
    ("", "1", 0.0),
])
def test_accuracy_cases(completion, gold, expected):
    assert accuracy([completion], answer=[gold]) == [expected]


def test_accuracy_takes_chat_messages_and_ignores_unknown_columns():
    chat = [{"role": "assistant", "content": RIGHT}]
    assert accuracy([chat, RIGHT], answer=["6200", "1"], prompts=["a", "b"], completion_ids=[[1], [2]]) == [1.0, 0.0]


def test_accuracy_survives_pathological_answers_quickly():
    started = time.monotonic()
    tower = "</think> \\boxed{9^{9^{9^{9}}}}"
    huge = "</think> \\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}"
    assert accuracy([tower, huge, "\\boxed{" * 10000], answer=["\\frac{1}{2}", "1", "2"]) == [0.0, 0.0, 0.0]
    assert time.monotonic() - started < 5


def test_accuracy_works_off_the_main_thread():
    # math-verify's signal timeouts only work in the main thread: off it, they must be disabled.
    def run():
        return accuracy(["</think> \\boxed{\\frac{\\sqrt{2}}{2}}"], answer=["\\sqrt{2}/2"])

    with ThreadPoolExecutor(2) as pool:
        assert [f.result() for f in [pool.submit(run) for _ in range(2)]] == [[1.0], [1.0]]


def test_bounded_worker_answers_and_survives_timeouts_deaths_and_errors():
    with BoundedWorker("math:factorial", timeout_s=1, memory_mb=512, warmup=(3,)) as worker:
        assert worker.call(5) == (120, None)
        started = time.monotonic()
        assert worker.call(10**7) == (None, "timeout")  # minutes in C, which no signal interrupts: killed
        assert time.monotonic() - started < 3
        assert worker.call(6) == (720, None) and worker.starts == 2  # a fresh child
        with ThreadPoolExecutor(4) as pool:  # one child serves many threads, one call at a time
            assert list(pool.map(lambda n: worker.call(n)[0], range(8))) == [math.factorial(n) for n in range(8)]
    with BoundedWorker("os:_exit", timeout_s=5, memory_mb=256) as worker:
        assert worker.call(3) == (None, "died") and worker.call(3) == (None, "died") and worker.starts == 2
    with BoundedWorker("builtins:int", timeout_s=5, memory_mb=256) as worker:
        assert worker.call("x") == (None, "error: ValueError: invalid literal for int() with base 10: 'x'")
        assert worker.call("12") == (12, None)


def test_bounded_worker_caps_memory_and_sees_a_memory_error_the_function_swallowed(tmp_path):
    (tmp_path / "swallow.py").write_text("def allocate(n):\n    try:\n        return len(bytearray(n))\n"
                                         "    except MemoryError:\n        return -1\n")
    with BoundedWorker("swallow:allocate", timeout_s=5, memory_mb=256, pythonpath=(str(tmp_path),)) as worker:
        assert worker.call(1 << 20) == (1 << 20, None)
        assert worker.call(1 << 30) == (-1, None)  # past RLIMIT_AS: the function's own answer to it
    with BoundedWorker("swallow:allocate", timeout_s=5, memory_mb=256, watch_memory=True,
                       pythonpath=(str(tmp_path),)) as worker:
        assert worker.call(1 << 30) == (None, "memory")  # seen, though swallowed: undecided
        assert worker.call(1 << 20) == (1 << 20, None) and worker.starts == 2


def test_countdown_checker():
    assert countdown.check("(25-5)*4", [25, 5, 4], 80)
    assert countdown.check("(25 - 5) \\times 4 = 80", [25, 5, 4], "80")
    assert countdown.check("7/2*2", [7, 2, 2], 7)  # exact fractions, not floats
    assert countdown.check("25*4", [25, 5, 4], 100)  # not every number must be used
    assert not countdown.check("25*4-5+5", [25, 5, 4], 100)  # 5 used twice
    assert not countdown.check("(25-5)*4", [25, 5, 3], 80)  # 4 is not given
    assert not countdown.check("-4+84", [84, 4], 80)  # no unary minus
    assert not countdown.check("4/(5-5)", [4, 5, 5], 1)
    assert not countdown.check("__import__('os').system('true')", [1], 1)
    assert not countdown.check("2**3", [2, 3], 8)
    assert not countdown.check("(" * 300 + "1" + ")" * 300, [1], 1)


def test_countdown_accuracy_uses_the_expression_not_the_number():
    numbers, target = [25, 5, 4], "80"
    done = ["</think> \\boxed{(25-5)*4}", "</think> \\boxed{80}", "</think>\n4*(25-5)", "\\boxed{25*4-5*4}"]
    assert accuracy(done, answer=[target] * 4, numbers=[numbers] * 4) == [1.0, 0.0, 1.0, 0.0]
    assert accuracy(done[:1], answer=[target], task=["countdown"], numbers=["[25, 5, 4]"]) == [1.0]
    # A mixed batch: the countdown row is judged by expression, the other by math.
    mixed = accuracy(["\\boxed{(25-5)*4}", RIGHT], answer=["80", "6200"], task=["countdown", "addition"],
                     numbers=[numbers, None])
    assert mixed == [1.0, 1.0]


# ---------------------------------------------------------------- format, length, repetition, combine


@pytest.mark.parametrize("completion, formatted, tags", [
    (RIGHT, 1.0, 1.0),
    ("  \n<think>x</think>answer", 1.0, 1.0),
    ("<think>x</think>   ", 0.0, 0.75),
    ("<think>x", 0.0, 0.25),
    ("</think>x<think>", 0.0, 0.75),
    ("hello <think>x</think>answer", 0.0, 1.0),
    ("<think><think>x</think>answer", 0.0, 0.75),
    ("plain answer", 0.0, 0.0),
])
def test_format_and_tag_count(completion, formatted, tags):
    assert format_reward([completion]) == [formatted]
    assert tag_count([completion]) == [tags]


def test_cosine_length_prefers_short_right_and_long_wrong():
    cosine = rewards.get("cosine_length", max_len=100)
    pad = "\n" + "a" * 80
    short_right, long_right = cosine([RIGHT, RIGHT.replace("\n</think>", pad + "\n</think>")], answer=["6200"] * 2)
    short_wrong, long_wrong = cosine([RIGHT, RIGHT.replace("\n</think>", pad + "\n</think>")], answer=["1"] * 2)
    assert 0.5 <= long_right < short_right <= 1.0
    assert -1.0 <= short_wrong < long_wrong <= -0.5
    by_tokens = cosine([RIGHT, RIGHT], answer=["6200"] * 2, completion_ids=[[0] * 5, [0] * 100])
    assert by_tokens[0] > 0.99 and by_tokens[1] == pytest.approx(0.5)


def test_repetition_penalty():
    repeat = rewards.get("repetition")
    looped, varied, short = repeat(["the cat sat " * 30, "one two three four five six", "hi"])
    assert -1.0 <= looped < -0.9 and varied == 0.0 and short == 0.0


def test_combine_weights_and_parts():
    total = rewards.combine({"accuracy": 2.0, "format": 0.5}, params={})
    scores = total([RIGHT, "nope"], answer=["6200", "6200"])
    assert scores.parts == {"accuracy": [1.0, 0.0], "format": [1.0, 0.0]}
    assert scores.total == [2.5, 0.0]
    cosine = rewards.combine({"cosine_length": 1.0}, params={"cosine_length": {"max_len": 10}})
    assert cosine([RIGHT], answer=["6200"]).total == [0.5]
