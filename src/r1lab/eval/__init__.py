"""Evaluation of every stage, and the report card."""
from .evaluate import TaskResult, evaluate, load_problems, write_results

__all__ = ["TaskResult", "evaluate", "load_problems", "write_results"]
