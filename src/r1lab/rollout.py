"""One rollout: problems -> chat template -> k seeded samples each -> full responses, token ids, finish
reasons and reward scores. GRPO, distillation, evaluation and the GRPO bench all sample through it.

Every sample's seed comes from the caller's `seed_of(problem_index, sample_index)` rule, so each caller
keeps the seeds it has always used (its runs stay reproducible bit for bit); `seed_of=None` samples
without seeds (greedy decoding needs none).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .engine import Engine, SamplingParams
from .rewards import columns_of
from .chat_tokenizer import recipe_messages
from .tokenizer import Tokenizer, response_prefix_of, thinking_prefilled


@dataclass
class Rollout:
    """k samples per problem, flattened problem by problem (sample j of problem i is row i * k + j)."""

    problems: list[dict]
    k: int
    prompt_ids: list[list[int]]  # one per problem: the chat template up to the assistant turn (and what it pre-fills)
    texts: list[str]  # full responses: response_prefix + the generated text (what rewards read)
    token_ids: list[list[int]]  # the generated tokens
    finish_reasons: list[str]  # "stop" or "length"
    columns: dict[str, list]  # the reward columns (answer, task, ...), repeated k times
    scores: Any = None  # what `scorer(texts, **columns)` returned, when a scorer was given
    logprobs: list[list[float]] | None = None  # with logprobs=True: the engine's raw log-prob of each generated token

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.token_ids]

    @property
    def truncated(self) -> list[bool]:
        return [reason == "length" for reason in self.finish_reasons]

    def group(self, index: int) -> slice:
        """Rows of problem `index`."""
        return slice(index * self.k, (index + 1) * self.k)


def chat_prompt(tokenizer: Tokenizer, problem: dict) -> list[int]:
    """A problem's prompt as token ids: one user turn, then the opened assistant turn (with what the template
    pre-fills, e.g. THINK_PREFIX); Open-R1's system prompt first where the template does not know <think>."""
    messages = recipe_messages(tokenizer, [{"role": "user", "content": problem["prompt"]}])
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True)


def budget_constraint(engine: Engine, tokenizer: Tokenizer, budget: int):
    """A constraint that closes one sequence's thinking after `budget` tokens (where the template opens the
    thinking; where the model opens it itself, after `budget` tokens of it)."""
    from .engine.constraint import ThinkingBudget

    if tokenizer.end_think_token_id is None:
        raise ValueError("a thinking budget needs a tokenizer with a </think> token")
    prefilled = thinking_prefilled(tokenizer)
    return ThinkingBudget(engine.model.config.vocab_size, thinking=prefilled,
                          think_id=None if prefilled else tokenizer.think_token_id,
                          end_think_id=tokenizer.end_think_token_id, budget=budget)


def rollout(engine: Engine, tokenizer: Tokenizer, problems: list[dict], k: int, *, max_tokens: int,
            temperature: float = 1.0, top_p: float = 1.0, seed_of: Callable[[int, int], int] | None = None,
            scorer: Callable[..., Any] | None = None, progress: bool = False, logprobs: bool = False,
            thinking_budget: int | None = None) -> Rollout:
    """Sample k completions of every problem with `engine` and score them with `scorer` (if given).
    logprobs: also keep each generated token's log-prob under the engine (raw, at temperature 1).
    thinking_budget: close each completion's thinking ("</think>") after that many tokens."""
    prompt_ids = [chat_prompt(tokenizer, p) for p in problems]
    if thinking_budget is not None:  # a budget keeps per-sequence state: one SamplingParams per row
        seeds = seed_of or (lambda i, j: None)
        params = [SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seeds(i, j),
                                 logprobs=logprobs, constraint=budget_constraint(engine, tokenizer, thinking_budget))
                  for i in range(len(problems)) for j in range(k)]
    elif seed_of is None:
        params: SamplingParams | list[SamplingParams] = SamplingParams(max_tokens=max_tokens, temperature=temperature,
                                                                       top_p=top_p, logprobs=logprobs)
    else:
        params = [SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed_of(i, j),
                                 logprobs=logprobs)
                  for i in range(len(problems)) for j in range(k)]
    outs = engine.generate([ids for ids in prompt_ids for _ in range(k)], params, progress=progress)
    prefix = response_prefix_of(tokenizer)
    texts = [prefix + o.text for o in outs]
    columns = columns_of(problems, k)
    return Rollout(problems, k, prompt_ids, texts, [list(o.token_ids) for o in outs], [o.finish_reason for o in outs],
                   columns, scorer(texts, **columns) if scorer is not None else None,
                   [list(o.logprobs) for o in outs] if logprobs else None)
