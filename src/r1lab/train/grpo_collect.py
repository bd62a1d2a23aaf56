"""GRPO's samples: the prompt stream (an endless, seeded draw of task problems) and `collect`, which
rolls out groups of completions until the step's batch holds enough informative groups."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import tasks
from ..config import ConfigError
from ..engine import Engine
from ..rewards import get as get_reward
from ..rollout import rollout
from ..tasks.common import review
from ..tasks.datasets import DATASET_SUFFIXES, dataset_stream
from ..tokenizer import Tokenizer
from . import health
from .grpo_config import GRPOSection
from .grpo_loss import overlong_penalty


class PromptStream:
    """An endless, seeded stream of task problems; position = how many were drawn (over all ranks).
    Rank r takes the problems whose global index is r mod world_size, so groups never straddle ranks."""

    def __init__(self, cfg: GRPOSection, seed: int, rank: int = 0, world: int = 1):
        self.names = [t.strip() for t in cfg.tasks.split(",") if t.strip()]
        if not self.names:
            raise ConfigError("grpo.tasks is empty")
        weights = [float(w) for w in cfg.task_weights.split(",")] if cfg.task_weights else [1.0] * len(self.names)
        if len(weights) != len(self.names):
            raise ConfigError("grpo.task_weights needs one weight per task in grpo.tasks")
        self.weights, self.seed, self.rank, self.world = weights, seed, rank, world
        # tasks whose traces may verify their answer: the step records how often responses check (check_rate)
        self.checks = [n for n in self.names if n in tasks.TASKS and tasks.TASKS[n].check is not None]
        self.knobs = cfg.knobs
        self._make = lambda name, s: (dataset_stream(name, s) if name.endswith(DATASET_SUFFIXES)
                                      else tasks.get(name)(seed=s, split="train", **cfg.knobs.get(name, {})))
        self.position = 0
        self._iters: dict[str, Any] = {}
        self._drawn: dict[str, int] = {}

    def _problem(self, index: int) -> dict:
        """The index-th problem of the stream: the task by a seeded draw, then that task's next problem."""
        name = random.Random(self.seed * 1_000_003 + index).choices(self.names, self.weights)[0]
        it = self._iters.get(name)
        if it is None:
            it = self._iters[name] = self._make(name, self.seed)
            self._drawn[name] = 0
        self._drawn[name] += 1
        return next(it)

    def take(self, n_local: int) -> list[tuple[int, dict]]:
        """n_local problems for this rank (consuming n_local * world from the global stream)."""
        out = []
        for _ in range(n_local * self.world):
            problem = self._problem(self.position)
            if self.position % self.world == self.rank:
                out.append((self.position, problem))
            self.position += 1
        return out

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        # replay the draws: problems are cheap to generate and this keeps the stream a pure function of seed
        target = int(state["position"])
        while self.position < target:
            self._problem(self.position)
            self.position += 1


@dataclass
class Rollouts:
    """The kept groups of one step, flattened group by group (N = groups * G)."""

    prompt_ids: list[list[int]] = field(default_factory=list)
    completion_ids: list[list[int]] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    engine_logp: list[list[float]] = field(default_factory=list)  # the sampler's raw log-prob of each token
    # grpo.max_staleness > 0: each token's log-prob under the weights that sampled it, in the trainer's precision
    # (grpo.py's AsyncSampler computes them before those weights move on); empty: the trainer's own serve
    old_logp: list[list[float]] = field(default_factory=list)

    def add(self, prompt_ids: list[int], completions: list[list[int]], rewards: list[float], truncated: list[bool],
            logprobs: list[list[float]] | None = None) -> None:
        """One group: its prompt's ids once per completion (and the sampler's log-probs, when it gave them:
        every group of a batch or none)."""
        for completion, reward, cut in zip(completions, rewards, truncated):
            self.prompt_ids.append(prompt_ids)
            self.completion_ids.append(completion)
            self.rewards.append(reward)
            self.truncated.append(cut)
        self.engine_logp += logprobs or []


@dataclass
class SampleStats:
    rewards: list[float] = field(default_factory=list)  # every sampled completion, kept or not
    parts: dict[str, list[float]] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)  # each completion's task
    lengths: list[int] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    repetition: list[float] = field(default_factory=list)  # each completion's repeated n-gram share (health)
    reviews: list[tuple[bool, bool]] = field(default_factory=list)  # each completion's (checked, caught): tasks.common.review
    groups_seen: int = 0
    groups_dropped: int = 0
    rounds: int = 0
    examples: list[dict] = field(default_factory=list)

    def record(self, out, totals: list[float], parts: dict[str, list[float]]) -> None:
        """Every sampled completion of a rollout, kept or not."""
        self.rewards += totals
        for name, values in parts.items():
            self.parts.setdefault(name, []).extend(values)
        self.tasks += [p["task"] for p in out.problems for _ in range(out.k)]
        self.lengths += out.lengths
        self.truncated += out.truncated
        self.repetition += [health.repetition(ids) for ids in out.token_ids]
        self.reviews += [review(text) for text in out.texts]
        self.groups_seen += len(out.problems)


def collect(engine: Engine, tokenizer: Tokenizer, prompts: PromptStream, scorer, cfg: GRPOSection, n_local: int,
            seed: int, step: int) -> tuple[Rollouts, SampleStats]:
    """Sample until n_local informative groups are kept (or max_sampling_rounds is reached).

    The first round draws n_local prompts; each later one draws enough to fill the batch at the share of
    informative groups seen so far (at most 4x what is missing), so one large batch of generation
    replaces several small ones when most groups are all-correct (DAPO's over-sampling). Groups beyond a
    full batch are counted in the stats and not trained on. Sample j of the prompt at stream position p
    has the seed (seed * 7919 + p) * 1009 + j."""
    group_size = cfg.group_size
    kept, stats = Rollouts(), SampleStats()
    while len(kept.rewards) < n_local * group_size and stats.rounds < cfg.max_sampling_rounds:
        stats.rounds += 1
        need = n_local - len(kept.rewards) // group_size
        informative = stats.groups_seen - stats.groups_dropped
        if stats.groups_seen:
            need = min(4 * need, math.ceil(need * stats.groups_seen / max(informative, 1)))
        drawn = prompts.take(need)
        problems = [p for _, p in drawn]
        out = rollout(engine, tokenizer, problems, group_size, max_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                      top_p=cfg.top_p, seed_of=lambda i, j: (seed * 7919 + drawn[i][0]) * 1009 + j, scorer=scorer,
                      logprobs=True)
        scores, totals = out.scores, list(out.scores.total)
        if "accuracy" not in scores.parts:  # always logged, even when it is not a reward of this run
            scores.parts["accuracy"] = get_reward("accuracy")(out.texts, **out.columns)
        if cfg.overlong_buffer > 0:
            penalty = overlong_penalty(torch.tensor(out.lengths), cfg.max_new_tokens, cfg.overlong_buffer,
                                       cfg.overlong_penalty)
            totals = [t + p for t, p in zip(totals, penalty.tolist())]
        stats.record(out, totals, scores.parts)
        for g in range(len(problems)):
            group = out.group(g)
            if cfg.dynamic_sampling and max(totals[group]) - min(totals[group]) < health.REWARD_TIE:
                stats.groups_dropped += 1
            elif len(kept.rewards) < n_local * group_size:
                kept.add(out.prompt_ids[g], out.token_ids[group], totals[group], out.truncated[group], out.logprobs[group])
        for g, problem in enumerate(problems[:max(0, cfg.samples_per_log - len(stats.examples))]):
            stats.examples.append({"step": step, "prompt": problem["prompt"], "answer": problem.get("answer"),
                                   "completion": out.texts[g * group_size], "reward": totals[g * group_size]})
    return kept, stats
