"""Speculative decoding: a drafter proposes up to k tokens per running sequence, the target model checks
them all in one forward over k + 1 positions, and the accept/reject rule keeps a prefix of them plus one
token of its own, so every verification forward yields 1 to k + 1 tokens.

The rule (Leviathan et al. 2023; Chen et al. 2023). With p the target's sampling distribution at a position
(after temperature, top-k and top-p) and q the drafter's distribution the draft x was drawn from, x is kept
with probability min(1, p(x) / q(x)); at the first rejection the token is drawn from the residual
max(p - q, 0) (normalised) and the rest of the drafts are dropped; if all are kept, one more token is drawn
from p at the position after the last draft. Each emitted token is then distributed exactly as p. A
drafter that proposes deterministically (prompt lookup) has q = a point mass: x is kept with probability
p(x) and the residual is p without x. Greedy rows have p = a point mass on the argmax, so they keep drafts
while they equal the target's argmax and then take the argmax: the plain greedy sequence.

Rollback is free for both caches the engine has (MLA latents, grouped-query keys and values): they are
indexed by position, a sequence attends only to positions up to its own, and a position past what was
kept is overwritten before anything reads it; the engine only sets the sequence's cached length back.

Drafters (the `Drafter` interface): `NgramDrafter` (prompt lookup in the sequence's own prompt and output)
and `ModelDrafter` (a smaller checkpoint with the same vocabulary, run with its own KV cache).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from .gqa import runner_and_cache
from .sampling import Sampler
from .scoring import top_logprobs


@dataclass
class Drafts:
    """What a drafter proposes for the B running sequences: tokens (B, k) (entries past a row's count are
    padding), counts[b] <= k real drafts in row b, and q (B, k, V), the distributions they were drawn from
    (None: each draft was proposed deterministically, a point mass)."""

    tokens: torch.Tensor
    counts: list[int]
    q: torch.Tensor | None = None


class Drafter(Protocol):
    k: int  # most drafts per sequence and step

    def attach(self, max_running: int, max_model_len: int, vocab_size: int) -> None:
        """Called once by the engine that will use this drafter, with its limits."""
        ...

    def propose(self, sequences: list[list[int]], limits: list[int], slots: list[object], sampler: Sampler) -> Drafts:
        """Drafts for each sequence (its prompt + output so far), at most limits[b] for row b. slots[b]
        identifies row b's request (stable across steps while it runs; the row index is its cache slot).
        sampler: the target's per-row sampling settings (a drafter that samples draws with them)."""
        ...


class NgramDrafter:
    """Prompt lookup: find the latest earlier occurrence of the sequence's last n tokens (n from max_n down
    to min_n) in the sequence itself and propose the k tokens that followed it. Costs no forward; pays where
    outputs copy their context (quoting, code edits, retrieval answers)."""

    def __init__(self, k: int = 4, max_n: int = 3, min_n: int = 1):
        if k < 1 or not 1 <= min_n <= max_n:
            raise ValueError(f"need k >= 1 and 1 <= min_n <= max_n, got k={k}, min_n={min_n}, max_n={max_n}")
        self.k, self.max_n, self.min_n = k, max_n, min_n

    def attach(self, max_running: int, max_model_len: int, vocab_size: int) -> None:
        pass

    def lookup(self, seq: list[int], limit: int) -> list[int]:
        """What followed an earlier occurrence of seq's longest matching suffix (n from max_n down to min_n):
        the latest occurrence followed by `limit` tokens, else the one followed by the most (in a repeating
        stretch the latest occurrence is followed by one token only)."""
        L = len(seq)
        for n in range(min(self.max_n, L - 1), self.min_n - 1, -1):
            tail = seq[L - n:]
            first, best = tail[0], None
            for start in range(L - n - 1, -1, -1):  # latest first; a match must end before the tail does
                if seq[start] == first and seq[start:start + n] == tail:
                    follow = seq[start + n:start + n + limit]
                    if best is None or len(follow) > len(best):
                        best = follow
                    if len(best) == limit:
                        break
            if best is not None:
                return best
        return []

    def propose(self, sequences, limits, slots, sampler) -> Drafts:
        found = [self.lookup(seq, min(self.k, limit)) for seq, limit in zip(sequences, limits)]
        width = max(1, max(len(f) for f in found))
        rows = [f + [f[-1] if f else seq[-1]] * (width - len(f)) for f, seq in zip(found, sequences)]
        return Drafts(torch.tensor(rows), [len(f) for f in found])


class ModelDrafter:
    """A draft model (r1lab Transformer or family model with the target's vocabulary) decoding k tokens per
    step with its own KV cache, in the rows' own sampling settings (so q is the distribution its drafts
    were drawn from). It remembers, per request, how much of the sequence its cache holds: the prompt is
    fed on the request's first step, then only the tokens the target emitted that it had not drafted."""

    prefill_chunk = 512  # prompt tokens per draft prefill forward

    def __init__(self, model, k: int = 4):
        if k < 1:
            raise ValueError(f"need k >= 1 drafts, got {k}")
        self.model, self.k = model, k
        self.runner = self.cache = None

    def attach(self, max_running: int, max_model_len: int, vocab_size: int) -> None:
        """Size the draft cache for the engine that uses this drafter."""
        model, k = self.model, self.k
        if model.config.vocab_size != vocab_size:
            raise ValueError(f"the draft model's vocabulary has {model.config.vocab_size} tokens, the target's "
                             f"{vocab_size}: a draft model must share the target's tokenizer")
        param = next(model.parameters())
        cache_dtype = torch.float32 if param.device.type == "cpu" else param.dtype
        self.device = param.device
        self.runner, self.cache = runner_and_cache(model, max_running, max_model_len + k, cache_dtype, param.device)
        # request -> (its slot in this cache, tokens of its sequence cached here, the drafts proposed last)
        self._state: dict[object, tuple[int, int, list[int]]] = {}

    def _valid(self, key, seq: list[int], slot: int) -> int:
        """How much of seq this cache holds for request `key` (moving its rows to `slot` if the engine moved it)."""
        if key not in self._state:
            return 0
        old_slot, cached, drafted = self._state[key]
        if old_slot != slot:  # the engine compacted its slots (moves only go down, into retired rows)
            self.cache.move(old_slot, slot, cached)
        kept = 0  # the drafts (all but the last are in the cache) that the sequence now continues with
        for d, t in zip(drafted[:-1], seq[cached:]):
            if d != t:
                break
            kept += 1
        return min(cached + kept, len(seq) - 1)  # always feed at least the newest token

    def propose(self, sequences, limits, slots, sampler) -> Drafts:
        B, device = len(sequences), self.device
        k = min(self.k, max(limits))  # draft steps: as many as the row that asks for most
        if k <= 0:  # nobody wants drafts; the cache catches up next time
            return Drafts(torch.zeros(B, 1, dtype=torch.long), [0] * B)
        if any(key not in self._state for key in slots):  # new work: with the draft's current weights (as the engine)
            self.runner.maybe_refresh()
        live = set(slots)
        self._state = {key: s for key, s in self._state.items() if key in live}  # forget finished requests
        valid = [self._valid(key, seq, b) for b, (key, seq) in enumerate(zip(slots, sequences))]
        for b, seq in enumerate(sequences):  # a new request: its prompt alone, in chunks (its draft prefill)
            while len(seq) - valid[b] > k + 1:
                n = min(self.prefill_chunk, len(seq) - 1 - valid[b])
                self.cache.ensure(B, valid[b] + n)
                self.runner.forward(torch.tensor([seq[valid[b]:valid[b] + n]], device=device),
                                    torch.tensor([valid[b]], device=device), b, None, self.cache, valid[b] + n)
                valid[b] += n
        # then every row at once: at most k + 1 new tokens each, right-padded
        feeds = [seq[v:] for seq, v in zip(sequences, valid)]
        T = max(len(f) for f in feeds)
        kv_len = max(v + T for v in valid)
        self.cache.ensure(B, kv_len + k)
        ids = torch.tensor([f + [f[-1]] * (T - len(f)) for f in feeds], device=device)
        start = torch.tensor(valid, device=device)
        last = torch.tensor([len(f) - 1 for f in feeds], device=device)
        logits = self.runner.forward(ids, start, 0, last, self.cache, kv_len)
        position = torch.tensor([len(seq) for seq in sequences], device=device)  # where each row's next draft goes
        tokens, qs = [], []
        for j in range(k):
            if sampler.all_greedy:  # the argmax; q is a point mass on it, which the greedy rule never reads
                token = logits.argmax(-1)
            else:
                q = sampler.probs(logits)
                token = sampler.draw(q)
                qs.append(q)
            tokens.append(token)
            if j + 1 < k:
                kv = int(position.max()) + 1
                logits = self.runner.forward(token[:, None], position, 0, None, self.cache, kv)
                position = position + 1
        drafted = torch.stack(tokens, 1)
        for b, key in enumerate(slots):
            self._state[key] = (b, len(sequences[b]), drafted[b].tolist())
        return Drafts(drafted, [max(0, min(k, limit)) for limit in limits], torch.stack(qs, 1) if qs else None)


def verify(runner, cache, running: list, drafts: Drafts, sampler: Sampler):
    """The target's forward over each running sequence's last token and drafts (positions r.cached.., the cache
    entries written as it goes), and the rule's verdict: (the tokens each row gains: its kept drafts, then one
    of the target's; the raw log-probs (B, T, V) when the sampler wants them, else None; each position's top
    log-probs when it wants those, else None)."""
    device = cache.device
    T = max(drafts.counts) + 1
    drafts.tokens = drafts.tokens[:, :T - 1]
    if drafts.q is not None:
        drafts.q = drafts.q[:, :T - 1]
    ids = torch.cat([torch.tensor([[r.output[-1]] for r in running]), drafts.tokens.cpu()], 1).to(device)
    kv_len = max(r.cached for r in running) + T
    cache.ensure(len(running), kv_len)
    start = torch.tensor([r.cached for r in running], device=device)
    logits = runner.forward(ids, start, 0, None, cache, kv_len, all_positions=True)  # (B, T, V)
    if sampler.all_greedy:
        rows = accept_greedy(logits, drafts)
    else:
        p = torch.stack([sampler.probs(logits[:, j]) for j in range(T)], 1)
        rows = accept(p, drafts, uniforms(sampler.generators, T - 1, device), sampler.draw)
    logprobs = F.log_softmax(logits.float(), -1) if sampler.want_logprobs else None
    tops = [top_logprobs(logits[:, j], sampler.top_logprobs) for j in range(T)] if sampler.top_logprobs else None
    return rows, logprobs, tops


class SpeculativeStep:
    """The engine's decode step that verifies drafts, and its counters (a part of `Engine`, which it is mixed
    into: it uses the engine's running requests, sampler, runner, cache and drafter)."""

    def _attach_drafter(self, drafter: Drafter | None, max_running: int) -> int:
        """Set up the drafter (None: no speculation) and the counters; the cache positions a verification forward
        may write past max_model_len (its drafts, then dropped)."""
        self.drafter = drafter
        self._verify_rows = self._drafted = self._accepted = 0  # sequence-steps that verified, drafts, kept
        if drafter is None:
            return 0
        drafter.attach(max_running, self.max_model_len, self.model.config.vocab_size)
        if getattr(drafter, "device", self.device) != self.device:
            raise ValueError(f"the draft model is on {drafter.device}, the model on {self.device}: put both on one device")
        return drafter.k

    def _speculate(self) -> None:
        """A decode step that verifies drafts: each sequence feeds its last token and its drafts (one forward
        over k + 1 positions), keeps the drafts the accept/reject rule keeps plus one token of the target's,
        and its cached length moves past the kept tokens only (what lies beyond is overwritten later)."""
        running, sampler = self._running, self._sampler
        # drafts each row asks for: its draft length, within its remaining tokens less the one every verification yields
        k = self.drafter.k
        limits = [min(r.draft_len or k, r.params.max_tokens - len(r.output) - 1, r.max_total - len(r.prompt) - len(r.output) - 1)
                  for r in running]
        drafts = self.drafter.propose([r.prompt + r.output for r in running], limits, running, sampler)
        drafts.counts = [max(0, min(c, n)) for c, n in zip(drafts.counts, limits)]
        if not any(drafts.counts):  # nothing to verify: a plain step costs less
            return self._decode()
        rows, logprobs, tops = verify(self.runner, self.cache, running, drafts, sampler)
        self._verify_rows += len(running)
        self._drafted += sum(drafts.counts)
        self._accepted += sum(len(row) - 1 for row in rows)
        finished = []
        for b, (r, row) in enumerate(zip(running, rows)):
            r.cached += len(row)  # the fed last token and the kept drafts
            if drafts.counts[b]:  # all kept: 2 more next time (up to k); else 1 fewer (down to 1)
                r.draft_len = min(k, (r.draft_len or k) + 2) if len(row) > drafts.counts[b] else max(1, (r.draft_len or k) - 1)
            if r.cancelled:
                continue
            for j, t in enumerate(row):
                self._generated += r.record(t, logprobs[b, j, t].item() if logprobs is not None else None,
                                            tops[j][b] if tops else None, self.eos_token_ids)
                if r.finish_reason is not None:
                    finished.append(r)
                    break
            if r.sink is not None:
                r.emit()
        self._retire(finished)

    def _spec_stats(self) -> dict:
        return {
            "spec_verified_sequences": self._verify_rows,  # sequence-steps that verified drafts
            "spec_drafted_tokens": self._drafted,
            "spec_accepted_tokens": self._accepted,
            "spec_acceptance_rate": self._accepted / self._drafted if self._drafted else None,
            # tokens a sequence gains per verification forward (1 + its kept drafts), averaged
            "spec_tokens_per_forward": (self._verify_rows + self._accepted) / self._verify_rows if self._verify_rows else None,
        }


def add_speculative_arguments(parser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--draft", default=None, metavar="CKPT",
                       help="speculative decoding with this draft checkpoint (the target's tokenizer; docs/speculative.md)")
    group.add_argument("--prompt-lookup", action="store_true",
                       help="speculative decoding with prompt lookup (n-gram matches in the sequence itself)")
    parser.add_argument("--num-speculative-tokens", type=int, default=4, metavar="K",
                        help="drafts per sequence and step with --draft or --prompt-lookup (default 4)")


def drafter_from_args(args, device=None) -> Drafter | None:
    """The drafter add_speculative_arguments' options ask for (None: plain decoding)."""
    if args.prompt_lookup:
        return NgramDrafter(k=args.num_speculative_tokens)
    if args.draft:
        from .precision import load_for_serving

        draft, _ = load_for_serving(args.draft, args.dtype, device)
        return ModelDrafter(draft.eval(), k=args.num_speculative_tokens)
    return None


def uniforms(generators: list[random.Random | None], n: int, device) -> torch.Tensor:
    """(B, n) uniform numbers: from a row's own generator when it has one, from torch's RNG otherwise."""
    u = torch.rand(len(generators), n)
    for b, g in enumerate(generators):
        if g is not None:
            u[b] = torch.tensor([g.random() for _ in range(n)])
    return u.to(device)


def accept(p: torch.Tensor, drafts: Drafts, u: torch.Tensor, draw) -> list[list[int]]:
    """The accept/reject rule (module docstring). p (B, k + 1, V): the target's sampling distributions at the
    positions of the last token and the k drafts; u (B, k) uniforms; draw(dist (B, V)) -> (B,) one token
    per row from unnormalised distributions. Returns each row's tokens: its kept drafts, then one drawn."""
    B, k = drafts.tokens.shape
    tokens = drafts.tokens.to(p.device)
    counts = torch.tensor(drafts.counts, device=p.device)
    p_x = p[:, :k].gather(2, tokens[..., None])[..., 0]  # (B, k) target probability of each draft
    q_x = drafts.q.gather(2, tokens[..., None])[..., 0] if drafts.q is not None else torch.ones_like(p_x)
    ok = (u * q_x < p_x) & (torch.arange(k, device=p.device) < counts[:, None])  # u < p/q, without dividing by 0
    kept = ok.int().cumprod(1).sum(1)  # (B,) drafts kept: up to the first rejection
    rows = torch.arange(B, device=p.device)
    dist = p[rows, kept].clone()  # after a rejection: the residual max(p - q, 0); after all kept: p itself
    rejected = kept < counts
    at = kept.clamp(max=k - 1)
    if drafts.q is not None:
        residual = (dist - drafts.q[rows, at]).clamp_(min=0)
    else:
        residual = dist.scatter(1, tokens[rows, at][:, None], 0.0)
    # rounding can leave a residual with no mass (p == q up to float error): then p is the right law again
    usable = rejected & (residual.sum(-1) > 0)
    dist = torch.where(usable[:, None], residual, dist)
    last = draw(dist).tolist()
    kept_list, token_rows = kept.tolist(), drafts.tokens.tolist()
    return [token_rows[b][:kept_list[b]] + [last[b]] for b in range(B)]


def accept_greedy(logits: torch.Tensor, drafts: Drafts) -> list[list[int]]:
    """The rule for greedy rows, without distributions: keep drafts while they equal the target's argmax,
    then take the argmax. logits (B, k + 1, V)."""
    best = logits.argmax(-1)  # (B, k + 1)
    B, k = drafts.tokens.shape
    match = (drafts.tokens.to(best.device) == best[:, :k]) & (torch.arange(k, device=best.device) <
                                                            torch.tensor(drafts.counts, device=best.device)[:, None])
    kept = match.int().cumprod(1).sum(1).tolist()
    best_rows, token_rows = best.tolist(), drafts.tokens.tolist()
    return [token_rows[b][:kept[b]] + [best_rows[b][kept[b]]] for b in range(B)]
