"""Sampling parameters and the batched sampler.

One decode step hands the sampler the last-position logits of every running sequence (B, V); each row
has its own SamplingParams. A row with a seed draws its random number from its own generator, so a
seeded request gets the same tokens whatever else shares its batch (up to float rounding in the model).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .constraint import apply_masks, mask_logits


@dataclass
class SamplingParams:
    """What to generate for one request (the fields of vLLM's SamplingParams that r1lab uses).

    temperature 0 means greedy. top_k 0 (or -1) and top_p 1 switch those filters off. Generation stops at
    the EOS token (unless ignore_eos), at any of stop_token_ids, at any of the stop strings (the returned
    text ends right before it), or after max_tokens tokens. max_tokens 0 generates nothing (to score a
    prompt with prompt_logprobs).

    Log-probs are always the model's raw distribution, log_softmax(logits) at temperature 1, before
    temperature, top-k and top-p: what GRPO's importance ratio and a distillation teacher's score need, the
    same number however a token was sampled, and vLLM's default. logprobs=True returns one per sampled
    token; top_logprobs=k (implies logprobs) also the k most likely tokens of each step; prompt_logprobs=k
    (None = off) the log-prob of every prompt token after the first, with its rank and the step's top k.
    With a `constraint`, sampling sees the masked logits; the log-probs stay the model's own.
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    prompt_logprobs: int | None = None
    # a constraint.Constraint (one per request: it keeps the request's grammar state): masks the logits to
    # what a grammar allows after the thinking, or closes the thinking at a budget
    constraint: object | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # the OpenAI API allows one string
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k is None or self.top_k < 0:
            self.top_k = 0
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be at least 0, got {self.max_tokens}")
        if self.top_logprobs < 0 or (self.prompt_logprobs is not None and self.prompt_logprobs < 0):
            raise ValueError(f"top_logprobs and prompt_logprobs must be >= 0, got {self.top_logprobs}, {self.prompt_logprobs}")
        self.logprobs = self.logprobs or self.top_logprobs > 0
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Sampler:
    """The per-row settings of one batch as tensors, built once per batch composition (not per step).

    Sampling is by inverse CDF: one uniform number per row and step, drawn from the row's own generator
    when it has a seed (a random.Random: a draw costs far less than a torch.Generator call, and GRPO
    seeds every row), so its tokens do not depend on its neighbours; from torch's global RNG otherwise.
    Top-k / top-p look only at the top candidates (topk, not a full sort): top_k of them, or, for top-p
    alone, the first `nucleus_cap` when those hold at least top_p of the probability (the nucleus then
    lies inside them; otherwise the whole vocabulary is sorted).
    """

    nucleus_cap = 256

    def __init__(self, params: list[SamplingParams], generators: list[random.Random | None], vocab_size: int,
                 device: torch.device):
        self.params, self.generators, self.vocab_size = params, generators, vocab_size
        self.constraints = [p.constraint for p in params]
        self.constrained = any(c is not None for c in self.constraints)
        self.all_greedy = all(p.greedy for p in params)
        self.any_greedy = any(p.greedy for p in params)
        self.want_logprobs = any(p.logprobs for p in params)
        self.top_logprobs = max(p.top_logprobs for p in params)  # alternatives the widest row wants
        self.greedy_rows = torch.tensor([p.greedy for p in params], device=device)
        # greedy rows are divided by 1 and then overwritten by the argmax
        self.temperature = torch.tensor([p.temperature or 1.0 for p in params], device=device)[:, None]
        top_k = [p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in params]
        self.filtered = any(k < vocab_size for k in top_k) or any(p.top_p < 1 for p in params)
        self.candidates = vocab_size
        if self.filtered:  # how many top tokens can hold every row's allowed set
            need = [k if k < vocab_size else (vocab_size if p.top_p == 1 else self.nucleus_cap) for k, p in zip(top_k, params)]
            self.candidates = min(vocab_size, max(need))
        self.top_k = torch.tensor(top_k, device=device)[:, None]
        self.has_top_k = self.top_k < vocab_size
        self.top_p = torch.tensor([p.top_p for p in params], device=device)[:, None]
        self.ranks = torch.arange(vocab_size, device=device)
        seeded = [i for i, g in enumerate(generators) if g is not None and not params[i].greedy]
        self.seeded_generators = [generators[i] for i in seeded]
        self.seeded_rows = torch.tensor(seeded, device=device)
        self.all_seeded = len(seeded) == len(params)

    def __call__(self, logits: torch.Tensor, masks=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """logits (B, V) -> sampled token ids (B,), and their raw log-probs (B,) when any row wants them.
        Constrained rows: sampled from their masked logits (`masks`: constraint.submit_masks' future, when the
        engine started it already; the log-probs stay raw), and each constraint moved past its row's token."""
        raw = logits
        if self.constrained:
            logits = mask_logits(logits, masks.result()) if masks is not None else apply_masks(logits, self.constraints)
        tokens, logprobs = self._sample(logits, raw)
        if self.constrained:
            for c, t in zip(self.constraints, tokens.tolist()):
                if c is not None:
                    c.advance(t)
        return tokens, logprobs

    def _sample(self, logits: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = logits.float()
        if self.all_greedy:
            tokens = logits.argmax(-1)
        else:
            scaled = logits / self.temperature
            if self.filtered:
                probs, candidates = self._filter(scaled, self.candidates)
                tokens = candidates.gather(1, self._inverse_cdf(probs))[:, 0]
            else:
                tokens = self._inverse_cdf(F.softmax(scaled, dim=-1))[:, 0]
            if self.any_greedy:
                tokens = torch.where(self.greedy_rows, logits.argmax(-1), tokens)
        logprobs = None
        if self.want_logprobs:
            logprobs = F.log_softmax(raw.float(), dim=-1).gather(1, tokens[:, None])[:, 0]
        return tokens, logprobs

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (B, V) -> the distributions (B, V) that unconstrained sampling draws from: temperature, top-k
        and top-p applied, normalised; a point mass on the argmax for greedy rows."""
        logits = logits.float()
        greedy = F.one_hot(logits.argmax(-1), logits.shape[-1]).float() if self.any_greedy else None
        if self.all_greedy:
            return greedy
        scaled = logits / self.temperature
        if self.filtered:
            kept, candidates = self._filter(scaled, self.candidates)
            probs = torch.zeros_like(scaled).scatter_(1, candidates, kept)
            probs /= probs.sum(-1, keepdim=True)
        else:
            probs = F.softmax(scaled, dim=-1)
        return torch.where(self.greedy_rows[:, None], greedy, probs) if self.any_greedy else probs

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        """One token per row (B,) from unnormalised distributions (B, V), with the rows' own generators."""
        return self._inverse_cdf(probs)[:, 0]

    def _filter(self, scaled: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k, then top-p on the renormalised survivors (the order of vLLM and transformers). Returns
        unnormalised probabilities over K candidates (0 = filtered out) and the candidates' token ids."""
        values, candidates = scaled.topk(K, dim=-1)  # sorted, best first
        values = values.masked_fill(self.ranks[:K] >= self.top_k, float("-inf"))
        # rows with top_k normalise over their k survivors, rows with top-p alone over the whole vocabulary
        log_total = torch.where(self.has_top_k, values.logsumexp(-1, keepdim=True), scaled.logsumexp(-1, keepdim=True))
        probs = (values - log_total).exp()
        if K < scaled.shape[-1] and bool(((probs.sum(-1, keepdim=True) < self.top_p) & ~self.has_top_k).any()):
            return self._filter(scaled, scaled.shape[-1])  # the nucleus is wider than K tokens
        mass_before = probs.cumsum(-1) - probs  # the most likely token always survives
        return probs.masked_fill(mass_before > self.top_p, 0.0), candidates

    def _inverse_cdf(self, probs: torch.Tensor) -> torch.Tensor:
        """One draw per row from unnormalised probs (B, N): index (B, 1)."""
        cdf = probs.cumsum(-1)
        if self.all_seeded:
            u = torch.tensor([[g.random()] for g in self.seeded_generators], dtype=torch.float32).to(probs.device)
        else:
            u = torch.rand(probs.shape[0], 1, device=probs.device)
            if self.seeded_generators:
                u[self.seeded_rows] = torch.tensor([[g.random()] for g in self.seeded_generators]).to(u)
        index = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # first entry with cdf > u * total
        over = index >= probs.shape[-1]  # u * total rounded up to the total: take the last non-zero entry
        if bool(over.any()):
            index = torch.where(over, cdf.argmax(-1, keepdim=True), index)
        return index
