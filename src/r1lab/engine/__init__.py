"""Inference: KV cache (absorbed MLA), sampling, batched and continuous-batching generation, streaming.

    engine = Engine(model, tokenizer, max_running=64)
    completions = engine.generate(prompts, SamplingParams(max_tokens=128, temperature=0.7, seed=0))
"""
from .engine import Completion, Engine, EngineError, PromptTooLong, QueueFull, RequestHandle, StreamEvent
from .sampling import SamplingParams

__all__ = ["Completion", "Engine", "EngineError", "PromptTooLong", "QueueFull", "RequestHandle", "SamplingParams",
           "StreamEvent"]
