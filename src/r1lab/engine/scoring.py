"""Log-probs beyond the sampled token's own: the top alternatives of each decode step, and the prompt's
tokens scored during prefill (`prompt_logprobs`, what `echo` scoring through the server needs).

All are raw: log_softmax of the logits at temperature 1 (see SamplingParams). A prompt token's log-prob
is the model's prediction of it from the tokens before it, so prompt_logprobs[0] is None (nothing
predicts the first token) and prompt_logprobs[i] comes from the logits at position i - 1: the number a
direct forward pass over the prompt gives.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TokenScore:
    """One prompt token's score: its log-prob, its rank (1 = the most likely token there), and the top
    alternatives at its position as (token id, log-prob), best first."""

    logprob: float
    rank: int
    top: list[tuple[int, float]]


def top_logprobs(logits: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    """The k most likely tokens of each row of logits (B, V), as (token id, raw log-prob), best first."""
    values, ids = F.log_softmax(logits.float(), dim=-1).topk(min(k, logits.shape[-1]), dim=-1)
    return [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]


class PromptScorer:
    """Scores the prompts of the prefill-batch rows that asked for prompt_logprobs, chunk by chunk, into
    each request's `prompt_logprobs` list. `ids` is the batch's right-padded prompts (B, T)."""

    def __init__(self, batch: list, ids: torch.Tensor):
        self.batch, self.ids = batch, ids
        self.rows = [i for i, r in enumerate(batch) if r.params.prompt_logprobs is not None]
        self.k = max(batch[i].params.prompt_logprobs for i in self.rows)
        self.row_index = torch.tensor(self.rows, device=ids.device)
        # the token each position predicts: the next one (a pad column past the end, never read)
        self.targets = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)[self.row_index]
        for i in self.rows:
            batch[i].prompt_logprobs = [None]

    @classmethod
    def of(cls, batch: list, ids: torch.Tensor) -> "PromptScorer | None":
        """A scorer for the batch, or None when no request in it wants prompt_logprobs."""
        return cls(batch, ids) if any(r.params.prompt_logprobs is not None for r in batch) else None

    def add(self, logits: torch.Tensor, start: int) -> None:
        """logits (B, T', V) at prompt positions start .. start + T' - 1 of every row."""
        width = logits.shape[1]
        logprobs = F.log_softmax(logits[self.row_index].float(), dim=-1)  # (R, T', V)
        targets = self.targets[:, start:start + width]
        chosen = logprobs.gather(-1, targets[..., None])[..., 0]
        ranks = ((logprobs > chosen[..., None]).sum(-1) + 1).tolist()
        top_ids = top_values = None
        if self.k:
            top_values, top_ids = logprobs.topk(min(self.k, logprobs.shape[-1]), dim=-1)
            top_values, top_ids = top_values.tolist(), top_ids.tolist()
        chosen = chosen.tolist()
        for n, i in enumerate(self.rows):
            request = self.batch[i]
            k, length = request.params.prompt_logprobs, len(request.prompt)
            for j in range(min(width, length - 1 - start)):  # position start + j predicts token start + j + 1
                top = list(zip(top_ids[n][j][:k], top_values[n][j][:k])) if k else []
                request.prompt_logprobs.append(TokenScore(chosen[n][j], ranks[n][j], top))
