"""Speculative decoding: prompt lookup and a draft model give the plain greedy sequences token for token (MLA,
MHA and grouped-query caches, continuous batching of prompts of different lengths), the accept/reject rule
keeps the target's distribution (a chi-square test that a wrong rule fails), sampled speculative decoding
draws sequences with the target's probabilities, and the counters."""
import itertools
import math

import pytest
import torch

from conftest import tiny_config
from r1lab.engine import Engine, SamplingParams
from r1lab.engine.speculative import Drafts, ModelDrafter, NgramDrafter, accept
from r1lab.model import Transformer

GREEDY = dict(temperature=0.0, ignore_eos=True)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(vocab_size=64, seed=0, **overrides):
    torch.manual_seed(seed)
    return Transformer(tiny_config(vocab_size, **overrides)).eval()


def prompts(n, vocab_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):  # a random stretch, repeated in part, so that prompt lookup finds matches
        base = torch.randint(3, vocab_size, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist()
        out.append(base + base[:int(torch.randint(0, len(base) + 1, (1,), generator=g))])
    return out


def chi_square_p(observed: list[int], probs: list[float]) -> float:
    """p-value of Pearson's chi-square test of counts against probabilities; cells expected below 5 pooled."""
    n = sum(observed)
    cells, pooled_o, pooled_e = [], 0, 0.0
    for o, p in zip(observed, probs):
        if n * p < 5:
            pooled_o, pooled_e = pooled_o + o, pooled_e + n * p
        else:
            cells.append((o, n * p))
    if pooled_e > 0:
        cells.append((pooled_o, pooled_e))
    stat = sum((o - e) ** 2 / e for o, e in cells)
    dof = len(cells) - 1
    # upper tail of the chi-square distribution (Wilson-Hilferty normal approximation)
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


# ------------------------------------------------------------------ the drafters


def test_prompt_lookup_proposes_what_followed_the_latest_longest_match():
    d = NgramDrafter(k=3, max_n=3)
    assert d.lookup([5, 6, 7, 8, 9, 1, 6, 7, 8], 3) == [9, 1, 6]  # the suffix 6 7 8 occurred before
    assert d.lookup([1, 2, 9, 1, 3, 9, 1], 3) == [3, 9, 1]  # latest match of "9 1" wins over the earlier one
    assert d.lookup([1, 2, 3, 4], 3) == []  # no earlier occurrence of any suffix
    assert d.lookup([4, 4], 3) == [4]
    assert d.lookup([5, 6, 7, 8, 9, 1, 6, 7, 8], 1) == [9]
    drafts = d.propose([[1, 2, 3, 1, 2], [7, 8]], [3, 3], [None, None], None)
    assert drafts.counts == [3, 0] and drafts.tokens.shape == (2, 3) and drafts.tokens[0].tolist() == [3, 1, 2]
    with pytest.raises(ValueError):
        NgramDrafter(k=0)


# ------------------------------------------------------------------ greedy: the plain sequence, token for token


def greedy_pair(model, drafter, prompt_list, max_tokens=24, max_running=3):
    plain = Engine(model, None, max_running=max_running).generate(prompt_list, SamplingParams(max_tokens=max_tokens, **GREEDY))
    engine = Engine(model, None, max_running=max_running, drafter=drafter)
    spec = engine.generate(prompt_list, SamplingParams(max_tokens=max_tokens, **GREEDY))
    return [c.token_ids for c in plain], [c.token_ids for c in spec], engine.stats()


@pytest.mark.parametrize("variant", [{}, {"attention": "mha"}, {"mlp": "dense", "q_lora_rank": 24}])
def test_prompt_lookup_greedy_equals_plain_under_continuous_batching(variant):
    model = make_model(**variant)
    ps = prompts(7, 64)  # 7 prompts through 3 slots: admissions, retirements and slot moves between steps
    plain, spec, stats = greedy_pair(model, NgramDrafter(k=4), ps)
    assert spec == plain
    assert stats["spec_drafted_tokens"] > 0 and stats["spec_accepted_tokens"] > 0  # the keeping path ran
    assert stats["spec_tokens_per_forward"] > 1


@pytest.mark.parametrize("same", [True, False])
def test_draft_model_greedy_equals_plain(same):
    model = make_model()
    draft = model if same else make_model(seed=1, num_hidden_layers=1)
    ps = prompts(7, 64, seed=2)
    plain, spec, stats = greedy_pair(model, ModelDrafter(draft, k=3), ps, max_tokens=17)
    assert spec == plain
    if same:  # the target drafting for itself: every draft is kept (up to the last steps' limits)
        assert stats["spec_acceptance_rate"] == 1.0 and stats["spec_tokens_per_forward"] > 3
    else:  # a poor draft: its rows ask for fewer drafts after rejections
        assert stats["spec_acceptance_rate"] < 1.0
        assert stats["spec_drafted_tokens"] < 3 * stats["spec_verified_sequences"]


def test_grouped_query_families_greedy_equals_plain(tmp_path):
    pytest.importorskip("transformers")
    import r1lab
    from hf_tiny import make_model as make_hf

    make_hf(tmp_path / "target", "qwen2", "chatml")
    make_hf(tmp_path / "draft", "qwen2", "chatml", seed=1)
    model, _ = r1lab.load(tmp_path / "target")
    draft, _ = r1lab.load(tmp_path / "draft")
    ps = prompts(5, model.config.vocab_size, seed=3)
    for drafter in (NgramDrafter(k=3), ModelDrafter(draft, k=3)):
        plain, spec, stats = greedy_pair(model, drafter, ps, max_tokens=16)
        assert spec == plain and stats["spec_drafted_tokens"] > 0


def test_streaming_on_the_background_loop_with_stop_strings_equals_plain(tmp_path):
    pytest.importorskip("transformers")
    import r1lab
    from hf_tiny import make_model as make_hf

    make_hf(tmp_path / "target", "qwen3", "qwen3")
    model, tokenizer = r1lab.load(tmp_path / "target")
    texts = ["The answer is", "12 + 34 =", "Once upon a time there was"]
    ids = [tokenizer.encode(t) for t in texts]
    free = Engine(model, tokenizer, max_running=2).generate(ids, SamplingParams(max_tokens=20, **GREEDY))
    stops = [c.text[4:7] for c in free]  # strings the greedy text reaches mid-way
    params = [SamplingParams(max_tokens=20, stop=[s] if s.strip() else [], **GREEDY) for s in stops]
    plain = Engine(model, tokenizer, max_running=2).generate(ids, params)

    def streamed(engine):
        engine.start()
        try:
            handles = [engine.submit(i, p) for i, p in zip(ids, params)]
            out = []
            for h in handles:
                events = list(h.events())
                out.append(("".join(e.text for e in events), sum((e.token_ids for e in events), []),
                            events[-1].finish_reason))
            return out
        finally:
            engine.stop()

    assert any(c.finish_reason == "stop" for c in plain)
    engine = Engine(model, tokenizer, max_running=2, drafter=NgramDrafter(k=3))
    assert streamed(engine) == [(c.text, c.token_ids, c.finish_reason) for c in plain]
    assert engine.stats()["spec_drafted_tokens"] > 0


def test_limits_logprobs_stops_and_a_vocabulary_mismatch():
    model = make_model()
    ps = prompts(4, 64, seed=4)
    params = SamplingParams(max_tokens=9, temperature=0.0, logprobs=True, top_logprobs=2, stop_token_ids=[5])
    plain = Engine(model, None, max_running=4).generate(ps, params)
    engine = Engine(model, None, max_running=4, drafter=ModelDrafter(model, k=4), max_model_len=20)
    spec = engine.generate(ps, params)
    for a, b in zip(plain, spec):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
        assert [[t for t, _ in top] for top in a.top_logprobs] == [[t for t, _ in top] for top in b.top_logprobs]
    with pytest.raises(ValueError, match="vocabulary"):
        Engine(model, None, drafter=ModelDrafter(make_model(vocab_size=80), k=2))


# ------------------------------------------------------------------ sampling: the target's distribution


def wrong_accept(p, drafts, u, draw):
    """A plausible mistake: on rejection, draw from p again instead of from the residual."""
    rows = accept(p, drafts, u, draw)
    out = []
    for b, row in enumerate(rows):
        if len(row) - 1 < drafts.counts[b]:  # rejected at position len(row) - 1
            row = row[:-1] + [int(draw(p[b:b + 1, len(row) - 1])[0])]
        out.append(row)
    return out


@pytest.mark.parametrize("point_mass", [False, True])
def test_accept_reject_rule_keeps_the_target_distribution_and_a_wrong_rule_fails(point_mass):
    g = torch.Generator().manual_seed(0)
    V, N = 6, 20000
    p = torch.softmax(torch.randn(V, generator=g) * 1.5, -1)
    q = torch.softmax(torch.randn(V, generator=g) * 1.5, -1)
    drafted = torch.multinomial(q, N, replacement=True, generator=g) if not point_mass else torch.full((N,), int(q.argmax()))
    drafts = Drafts(drafted[:, None], [1] * N, None if point_mass else q.expand(N, 1, V))
    P = p.expand(N, 2, V)  # position 0: the draft's position; 1: the bonus after it
    u = torch.rand(N, 1, generator=g)

    def draw(dist):
        return torch.multinomial(dist, 1, generator=g)[:, 0]

    for rule, should_pass in ((accept, True), (wrong_accept, False)):
        first = [row[0] for row in rule(P, drafts, u, draw)]
        counts = torch.bincount(torch.tensor(first), minlength=V).tolist()
        pvalue = chi_square_p(counts, p.tolist())
        assert (pvalue > 1e-3) == should_pass, (rule.__name__, pvalue)


@torch.no_grad()
def exact_sequence_probs(model, prompt, n, V, temperature, top_k=0):
    """P(first n tokens) for every sequence of n tokens, from full forwards (top_k: only the k most likely
    tokens of each step, renormalised)."""
    probs = {}
    for seq in itertools.product(range(V), repeat=n):
        ids = torch.tensor([prompt + list(seq)])
        logits = model(ids)[0].float() / temperature
        if top_k:
            logits = logits.masked_fill(logits < logits.topk(top_k, -1).values[:, -1:], float("-inf"))
        logp = torch.log_softmax(logits, -1)
        probs[seq] = math.exp(sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(seq)))
    return probs


@pytest.mark.parametrize("drafter_kind,top_k", [("model", 0), ("ngram", 0), ("model", 3)])
def test_sampled_speculative_sequences_have_the_target_distribution(drafter_kind, top_k):
    V = 5
    model = make_model(vocab_size=V)
    with torch.no_grad():  # sharper than a random tiny model's near-uniform logits, so a bias would show
        model.lm_head.weight.mul_(4)
    draft = make_model(vocab_size=V, seed=1, num_hidden_layers=1)
    prompt, n, N, temperature = [1, 2, 3, 1, 2], 3, 6000, 0.9
    drafter = ModelDrafter(draft, k=2) if drafter_kind == "model" else NgramDrafter(k=2, max_n=2)
    engine = Engine(model, None, max_running=512, drafter=drafter)
    torch.manual_seed(0)
    out = engine.generate([prompt] * N, SamplingParams(max_tokens=n, temperature=temperature, top_k=top_k, ignore_eos=True))
    stats = engine.stats()
    assert 0 < stats["spec_accepted_tokens"] < stats["spec_drafted_tokens"]  # both branches of the rule ran
    exact = exact_sequence_probs(model, prompt, n, V, temperature, top_k)
    keys = list(exact)
    index = {k: i for i, k in enumerate(keys)}
    counts = [0] * len(keys)
    for c in out:
        counts[index[tuple(c.token_ids)]] += 1
    assert chi_square_p(counts, [exact[k] for k in keys]) > 1e-3


def test_seeded_speculative_sampling_is_reproducible():
    model, draft = make_model(), make_model(seed=1, num_hidden_layers=1)
    ps = prompts(3, 64, seed=5)
    runs = []
    for _ in range(2):
        engine = Engine(model, None, max_running=3, drafter=ModelDrafter(draft, k=3))
        runs.append([c.token_ids for c in engine.generate(ps, SamplingParams(max_tokens=12, temperature=1.0, seed=7,
                                                                               ignore_eos=True))])
    assert runs[0] == runs[1]


def test_prompt_lookup_in_a_repeating_stretch_proposes_k_tokens():
    d = NgramDrafter(k=4, max_n=2)
    assert d.lookup([3, 7, 7, 7, 7, 7, 7], 4) == [7, 7, 7, 7]  # not just the one token after the latest match
    assert d.lookup([1, 2, 1, 2, 1, 2], 4) == [1, 2, 1, 2]
    assert d.lookup([9, 1, 2, 5, 1, 2], 4) == [5, 1, 2]  # as much as followed


def test_command_line_options_and_metrics(tmp_path):
    import argparse

    from r1lab.engine.cli import add_generate_arguments
    from r1lab.engine.speculative import drafter_from_args
    from r1lab.model import save_checkpoint
    from r1lab.serve.metrics import Metrics

    parser = argparse.ArgumentParser()
    add_generate_arguments(parser)
    model = make_model()
    folder = save_checkpoint(make_model(seed=1, num_hidden_layers=1), None, tmp_path / "draft")
    drafter = drafter_from_args(parser.parse_args(["ckpt", "hi", "--draft", str(folder), "--num-speculative-tokens", "3"]))
    assert isinstance(drafter, ModelDrafter) and drafter.k == 3 and drafter.model.config.num_hidden_layers == 1
    ps = prompts(2, 64, seed=6)
    plain, spec, stats = greedy_pair(model, drafter, ps, max_tokens=10)
    assert spec == plain and stats["spec_drafted_tokens"] > 0
    lookup = drafter_from_args(parser.parse_args(["ckpt", "hi", "--prompt-lookup"]))
    assert isinstance(lookup, NgramDrafter) and lookup.k == 4
    assert drafter_from_args(parser.parse_args(["ckpt", "hi"])) is None
    with pytest.raises(SystemExit):  # one drafter at a time
        parser.parse_args(["ckpt", "hi", "--prompt-lookup", "--draft", str(folder)])
    text = Metrics().render(stats)
    assert f"r1lab_spec_drafted_tokens_total {stats['spec_drafted_tokens']}" in text
    assert f"r1lab_spec_accepted_tokens_total {stats['spec_accepted_tokens']}" in text
    assert "r1lab_spec_" not in Metrics().render(Engine(model, None).stats())  # no speculation, no such lines


@pytest.mark.parametrize("kind", ["model", "ngram"])
def test_greedy_rows_beside_sampled_rows_equal_plain_greedy(kind):
    model = make_model()
    ps = prompts(4, 64, seed=8)
    greedy = SamplingParams(max_tokens=14, **GREEDY)
    sampled = SamplingParams(max_tokens=14, temperature=1.0, top_p=0.9, ignore_eos=True)
    plain = Engine(model, None, max_running=4).generate(ps, greedy)
    drafter = ModelDrafter(make_model(seed=1, num_hidden_layers=1), k=3) if kind == "model" else NgramDrafter(k=3)
    engine = Engine(model, None, max_running=4, drafter=drafter)
    mixed = engine.generate(ps, [greedy, sampled, greedy, sampled])
    assert [mixed[0].token_ids, mixed[2].token_ids] == [plain[0].token_ids, plain[2].token_ids]
    assert engine.stats()["spec_drafted_tokens"] > 0
