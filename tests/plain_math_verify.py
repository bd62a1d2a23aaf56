"""Plain math-verify, the reference the accuracy reward is compared with in tests/test_verifier.py: parse the gold
as \\boxed{gold} and the answer with LaTeX + expression extraction, then verify; no caps and no timeouts (the
tests run it in a BoundedWorker child, which bounds it in time and memory)."""
from __future__ import annotations

import logging

from r1lab.rewards.accuracy import gold_text, prediction_config


def plain_math_verify(answer: str, gold: str) -> bool:
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    gold_parsed = parse(gold_text(gold), parsing_timeout=None)
    parsed = parse(answer, extraction_config=prediction_config(), parsing_timeout=None)
    return bool(verify(gold_parsed, parsed, timeout_seconds=None))
