"""Countdown verifier: is this expression a legal way to reach the target?

Legal means: only integer literals, + - * / and parentheses (no unary minus, no other
syntax); every literal is one of the given numbers, each used at most as often as it
is given; exact rational arithmetic (Fractions, so 7/2*2 is 7) equals the target.
The text is parsed with `ast` and walked by hand: nothing is ever evaluated by Python.
LaTeX operators (\\times, \\cdot, \\div) and a trailing "= target" are tolerated.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction
from typing import Any

MAX_EXPRESSION_CHARS = 200
_LATEX = [("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"), ("×", "*"), ("÷", "/"), ("·", "*"), ("−", "-"),
          ("\\left", ""), ("\\right", ""), ("{", "("), ("}", ")"), ("[", "("), ("]", ")"), ("$", "")]
_ALLOWED = re.compile(r"[0-9+\-*/() ]+")
_OPS = {ast.Add: lambda x, y: x + y, ast.Sub: lambda x, y: x - y,
        ast.Mult: lambda x, y: x * y, ast.Div: lambda x, y: x / y}


def normalize(expression: str) -> str:
    for latex, plain in _LATEX:
        expression = expression.replace(latex, plain)
    if "=" in expression:  # "(25-5)*4 = 80": judge the left side
        expression = expression.split("=", 1)[0]
    return expression.strip().rstrip(".").strip()


def _evaluate(node: ast.AST, used: list[int]) -> Fraction:
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _evaluate(node.left, used), _evaluate(node.right, used)
        return _OPS[type(node.op)](left, right)  # ZeroDivisionError -> caller says no
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    raise ValueError(f"not allowed in countdown: {type(node).__name__}")


def parse_numbers(numbers: Any) -> list[int]:
    """The given numbers, from a list or a string such as "[25, 5, 4]"."""
    if isinstance(numbers, str):
        return [int(n) for n in re.findall(r"-?\d+", numbers)]
    return [int(n) for n in numbers]


def check(expression: str, numbers: Any, target: Any) -> bool:
    """True when `expression` uses each of `numbers` at most once and equals `target` exactly."""
    try:
        text = normalize(str(expression))
        if not text or len(text) > MAX_EXPRESSION_CHARS or not _ALLOWED.fullmatch(text):
            return False
        tree = ast.parse(text, mode="eval")
        used: list[int] = []
        value = _evaluate(tree.body, used)
        if Counter(used) - Counter(parse_numbers(numbers)):
            return False  # a number not given, or used too often
        return value == Fraction(str(target).strip())
    except (ValueError, TypeError, SyntaxError, ZeroDivisionError, RecursionError, MemoryError, ArithmeticError):
        return False
