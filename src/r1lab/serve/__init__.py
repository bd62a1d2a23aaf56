"""Serving: an OpenAI-compatible API that streams the thinking (`reasoning_content`) apart from the answer
(`content`), a chat page at /, and a terminal chat.

    r1lab serve runs/speedrun/final      # http://127.0.0.1:8000
    r1lab chat  runs/speedrun/final
"""
from .reasoning import Delta, ReasoningSplitter, reasoning_token_count, split_reasoning


def create_app(*args, **kwargs):
    """See `r1lab.serve.app.create_app` (imported lazily: FastAPI is only needed to serve)."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["Delta", "ReasoningSplitter", "create_app", "reasoning_token_count", "split_reasoning"]
