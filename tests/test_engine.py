"""The inference engine: cache vs recomputation, absorbed MLA, batching, sampling, stops, streaming,
cancellation, caps, weight refresh, the async surface and the CLI."""
import asyncio

import pytest
import torch

from conftest import tiny_config
from r1lab.engine import Engine, EngineError, PromptTooLong, QueueFull, SamplingParams
from r1lab.engine.detok import Detokenizer
from r1lab.engine.sampling import Sampler
from r1lab.model import Transformer

VARIANTS = {
    "mla-moe": {},
    "mla-dense": {"mlp": "dense"},
    "q-lora": {"q_lora_rank": 24, "n_group": 4, "topk_group": 2},
    "mha": {"attention": "mha"},
    "no-interleave-yarn": {"rope_interleave": False, "rope_scaling": {
        "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 32, "beta_slow": 1,
        "mscale": 1.0, "mscale_all_dim": 1.0}},
}
GREEDY = dict(temperature=0.0, ignore_eos=True)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine every parallel op waits for a
    second core to be free: one thread keeps these tests fast and steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(vocab_size, seed=0, **overrides):
    torch.manual_seed(seed)
    model = Transformer(tiny_config(vocab_size, **overrides)).eval()
    with torch.no_grad():  # a non-zero router bias, so the engine must read it
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.normal_(0, 0.05)
    return model


def prompts(n, vocab_size, seed=0, lo=3, hi=20):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(7, vocab_size, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


@torch.no_grad()
def greedy_by_recomputation(model, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        ids.append(model(torch.tensor([ids]))[0, -1].argmax().item())
    return ids[len(prompt):]


def chain_model(tokenizer, sequence, **overrides):
    """A model that, fed token sequence[i], predicts sequence[i + 1] (and EOS after the last): attention
    and MLP outputs are zeroed so the logits depend on the current token only, and lm_head row
    sequence[i + 1] points along embedding sequence[i]. The tokens of `sequence` must be distinct."""
    assert len(set(sequence)) == len(sequence)
    model = make_model(tokenizer.vocab_size, mlp="dense", **overrides)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        model.lm_head.weight.zero_()
        for current, following in zip(sequence, sequence[1:] + [tokenizer.eos_token_id]):
            model.lm_head.weight[following] = 10 * emb[current] / emb[current].norm()
    return model


def run_chain(tokenizer, text):
    """Token ids of `text` (distinct, as chain_model needs) and a model that emits them after the first."""
    ids = tokenizer.encode(text)
    return ids, chain_model(tokenizer, ids)


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_with_cache_equals_full_recomputation(tokenizer, variant):
    model = make_model(tokenizer.vocab_size, **VARIANTS[variant])
    engine = Engine(model, tokenizer, max_running=4)
    batch = prompts(3, tokenizer.vocab_size)
    out = engine.generate(batch, SamplingParams(max_tokens=12, **GREEDY))
    for p, c in zip(batch, out):
        assert c.finish_reason == "length" and c.prompt_token_ids == p
        expected = greedy_by_recomputation(model, p, 12)
        # equal token for token; only a genuine tie (top-2 logits within float noise) may break the chain
        for i, (got, want) in enumerate(zip(c.token_ids, expected)):
            if got != want:
                with torch.no_grad():
                    top2 = model(torch.tensor([p + expected[:i]]))[0, -1].topk(2).values
                assert (top2[0] - top2[1]).abs().item() < 1e-4, f"token {i}: {got} != {want}, not a tie"
                break


@pytest.mark.parametrize("variant", ["mla-moe", "q-lora", "no-interleave-yarn", "mha"])
def test_absorbed_logits_equal_training_form(tokenizer, variant):
    """Prefill of three ragged prompts, then decode steps: every logit within 1e-4 of model(ids)."""
    model = make_model(tokenizer.vocab_size, **VARIANTS[variant])
    engine = Engine(model, tokenizer, max_running=3, max_model_len=64)
    runner, cache = engine.runner, engine.cache
    full = prompts(3, tokenizer.vocab_size, lo=20, hi=30)
    lengths = [5, 13, 9]
    with torch.no_grad():
        expected = [model(torch.tensor([s]))[0] for s in full]
    T = max(lengths)
    ids = torch.tensor([s[:n] + [0] * (T - n) for s, n in zip(full, lengths)])
    cache.ensure(3, T)
    logits = runner.forward(ids, torch.zeros(3, dtype=torch.long), 0, torch.tensor(lengths) - 1, cache, T)
    worst = max((logits[i] - expected[i][n - 1]).abs().max().item() for i, n in enumerate(lengths))
    positions = list(lengths)
    for _ in range(8):
        kv_len = max(positions) + 1
        cache.ensure(3, kv_len)
        step = torch.tensor([[s[p]] for s, p in zip(full, positions)])
        logits = runner.forward(step, torch.tensor(positions), 0, None, cache, kv_len)
        worst = max(worst, max((logits[i] - expected[i][p]).abs().max().item() for i, p in enumerate(positions)))
        positions = [p + 1 for p in positions]
    assert worst <= 1e-4


def test_mla_cache_is_latent_plus_rope_key_only(tokenizer):
    cfg_mla = tiny_config(tokenizer.vocab_size)
    mla = Engine(make_model(tokenizer.vocab_size), tokenizer).cache
    mha = Engine(make_model(tokenizer.vocab_size, attention="mha"), tokenizer).cache
    L = cfg_mla.num_hidden_layers
    assert mla.bytes_per_token == L * (cfg_mla.kv_lora_rank + cfg_mla.qk_rope_head_dim) * 4
    assert mha.bytes_per_token == L * cfg_mla.num_attention_heads * (cfg_mla.qk_head_dim + cfg_mla.v_head_dim) * 4
    assert mla.bytes_per_token < mha.bytes_per_token  # the presets' ratio (<= 1/4) is in bench/decode.py


def test_batched_mixed_lengths_equal_alone_and_continuous_batching(tokenizer):
    model = make_model(tokenizer.vocab_size)
    batch = prompts(7, tokenizer.vocab_size, lo=2, hi=25)
    params = [SamplingParams(max_tokens=6 + 2 * i, **GREEDY) for i in range(len(batch))]  # finish at different steps
    alone = [Engine(model, tokenizer).generate([p], sp)[0].token_ids for p, sp in zip(batch, params)]
    together = Engine(model, tokenizer, max_running=16).generate(batch, params)
    assert [c.token_ids for c in together] == alone
    # fewer slots than requests: sequences retire, others take their slots mid-flight
    squeezed = Engine(model, tokenizer, max_running=3).generate(batch, params)
    assert [c.token_ids for c in squeezed] == alone


def test_long_prompts_are_prefilled_in_chunks(tokenizer, monkeypatch):
    import r1lab.engine.engine as engine_module

    model = make_model(tokenizer.vocab_size)
    batch = prompts(3, tokenizer.vocab_size, lo=20, hi=40)
    params = SamplingParams(max_tokens=6, **GREEDY)
    expected = [c.token_ids for c in Engine(model, tokenizer).generate(batch, params)]
    monkeypatch.setattr(engine_module, "PREFILL_SCORE_BUDGET", 3 * 2 * 40 * 7)  # about 7 prompt tokens a pass
    engine = Engine(model, tokenizer)
    widths = []
    forward = engine.runner.forward
    engine.runner.forward = lambda ids, *rest, **kw: widths.append(ids.shape[1]) or forward(ids, *rest, **kw)
    assert [c.token_ids for c in engine.generate(batch, params)] == expected
    assert sum(w > 1 for w in widths) >= 3 and max(widths) < max(map(len, batch))


# ---------------------------------------------------------------- sampling


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(tokenizer):
    model = make_model(tokenizer.vocab_size)
    engine = Engine(model, tokenizer, max_running=8)
    p = prompts(1, tokenizer.vocab_size)[0]
    sp = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, top_k=40, seed=1234, ignore_eos=True)
    first = engine.generate([p], sp)[0].token_ids
    assert engine.generate([p], sp)[0].token_ids == first
    others = prompts(5, tokenizer.vocab_size, seed=7)
    mixed = engine.generate(others[:2] + [p] + others[2:],
                            [SamplingParams(max_tokens=9, temperature=0.8, **{"ignore_eos": True})] * 2 + [sp]
                            + [SamplingParams(max_tokens=20, **GREEDY)] * 3)
    assert mixed[2].token_ids == first
    other_seed = engine.generate([p], SamplingParams(**{**sp.__dict__, "seed": 99}))[0].token_ids
    assert other_seed != first


def test_sampler_follows_the_filtered_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0, -5.0]])
    V, n = logits.shape[-1], 40000

    def frequencies(params):
        sampler = Sampler([params] * n, [None] * n, V, torch.device("cpu"))
        tokens, _ = sampler(logits.expand(n, V))
        return torch.bincount(tokens, minlength=V).float() / n

    def expected(T, k, p):
        probs = torch.softmax(logits[0] / T, -1)
        order = probs.argsort(descending=True)
        keep = torch.zeros(V, dtype=torch.bool)
        keep[order[:k or V]] = True
        probs = torch.where(keep, probs, 0.0)
        probs = probs / probs.sum()
        sorted_p = probs[order]
        keep_p = (sorted_p.cumsum(0) - sorted_p) <= p
        out = torch.zeros(V)
        out[order[keep_p]] = sorted_p[keep_p]
        return out / out.sum()

    for T, k, p in [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.8), (1.3, 5, 0.9)]:
        got = frequencies(SamplingParams(temperature=T, top_k=k, top_p=p))
        assert (got - expected(T, k, p)).abs().max() < 0.015, (T, k, p)


def test_wide_nucleus_falls_back_to_the_whole_vocabulary():
    """top-p over a flat distribution needs more than Sampler.nucleus_cap candidates."""
    V, n = 1000, 4000
    sampler = Sampler([SamplingParams(top_p=0.99)] * n, [None] * n, V, torch.device("cpu"))
    tokens, _ = sampler(torch.zeros(n, V))
    assert len(set(tokens.tolist())) > 900  # not confined to the first 256 candidates


def test_logprobs_are_raw_log_softmax_of_the_sampled_tokens(tokenizer):
    model = make_model(tokenizer.vocab_size)
    p = prompts(1, tokenizer.vocab_size)[0]
    c = Engine(model, tokenizer).generate([p], SamplingParams(max_tokens=10, temperature=1.5, top_k=20, seed=3,
                                                              ignore_eos=True, logprobs=True))[0]
    with torch.no_grad():
        logits = model(torch.tensor([p + c.token_ids]))[0, len(p) - 1:-1]
    want = torch.log_softmax(logits, -1).gather(1, torch.tensor(c.token_ids)[:, None])[:, 0]
    assert len(c.logprobs) == len(c.token_ids) == 10
    assert (torch.tensor(c.logprobs) - want).abs().max() < 1e-4


# ---------------------------------------------------------------- stopping


def test_eos_stop_token_ids_and_ignore_eos(tokenizer):
    ids, model = run_chain(tokenizer, "abc 123 xyz!")
    engine = Engine(model, tokenizer)
    c = engine.generate([ids[:1]], SamplingParams(max_tokens=50, temperature=0))[0]
    assert c.token_ids == ids[1:] + [tokenizer.eos_token_id]  # EOS is returned as a token...
    assert c.text == tokenizer.decode(ids[1:])  # ...but not as text
    assert c.finish_reason == "stop" and c.stop_reason is None
    stop_at = ids[4]
    c = engine.generate([ids[:1]], SamplingParams(max_tokens=50, temperature=0, stop_token_ids=[stop_at]))[0]
    assert c.token_ids == ids[1:5] and c.stop_reason == stop_at and c.text == tokenizer.decode(ids[1:4])
    c = engine.generate([ids[:1]], SamplingParams(max_tokens=len(ids) + 3, temperature=0, ignore_eos=True))[0]
    assert c.finish_reason == "length" and len(c.token_ids) == len(ids) + 3
    assert c.token_ids[len(ids) - 1] == tokenizer.eos_token_id


def test_stop_strings_cut_exactly(tokenizer):
    ids, model = run_chain(tokenizer, "Hel world! Thequick b")
    engine = Engine(model, tokenizer)
    full = tokenizer.decode(ids[1:])
    for stop in ["world", "d! T", "ck b", "q"]:
        c = engine.generate([ids[:1]], SamplingParams(max_tokens=50, temperature=0, stop=[stop, "never"]))[0]
        assert c.finish_reason == "stop" and c.stop_reason == stop
        assert c.text == full[:full.index(stop)]
        # no token after the one that completed the stop string
        assert tokenizer.decode(c.token_ids).startswith(c.text + stop)
        assert not tokenizer.decode(c.token_ids[:-1]).startswith(c.text + stop)


def test_max_model_len_and_prompt_too_long(tokenizer):
    model = make_model(tokenizer.vocab_size)
    engine = Engine(model, tokenizer, max_model_len=16)
    with pytest.raises(PromptTooLong):
        engine.generate([[9] * 3, [9] * 17], SamplingParams(max_tokens=4))
    assert engine.stats()["steps"] == 0  # rejected before any work
    assert issubclass(PromptTooLong, ValueError)
    c = engine.generate([[9] * 10], SamplingParams(max_tokens=50, **GREEDY))[0]
    assert c.finish_reason == "length" and len(c.token_ids) == 6  # 10 + 6 = max_model_len


# ---------------------------------------------------------------- streaming


def test_detokenizer_never_splits_a_character(tokenizer):
    text = "a🙂 中文 Ünï 🙂!"
    ids = tokenizer.encode(text)
    detok = Detokenizer(tokenizer, stop=[])
    pieces = []
    for t in ids:
        detok.add(t)
        pieces.append(detok.take_stream())
    detok.flush()
    pieces.append(detok.take_stream(final=True))
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert any(piece == "" for piece in pieces)  # some tokens were partial characters, held back


def test_streaming_matches_final_text_with_emoji_and_stop_holdback(tokenizer):
    ids, model = run_chain(tokenizer, "x🙂中文 The answer")
    engine = Engine(model, tokenizer)
    for stop in [[], ["answer"], ["中文 T"]]:
        params = SamplingParams(max_tokens=40, temperature=0, stop=stop)
        events = list(engine.submit(ids[:1], params).events())
        final = engine.generate([ids[:1]], params)[0]
        streamed = "".join(e.text for e in events)
        assert streamed == final.text
        assert all("\ufffd" not in e.text for e in events)
        assert [t for e in events for t in e.token_ids] == final.token_ids
        assert events[-1].finish_reason == final.finish_reason and all(e.finish_reason is None for e in events[:-1])
        if stop:  # no event ever showed text that the stop string later removed
            assert stop[0] not in streamed and final.text == tokenizer.decode(ids[1:]).split(stop[0])[0]


# ---------------------------------------------------------------- scheduling


def record_batches(engine):
    """Wrap the runner to record, per forward pass, the batch size and the engine's cached tokens."""
    seen = []
    forward = engine.runner.forward

    def spy(ids, start, slot0, last, cache, kv_len, **kw):
        stats = engine.stats()
        seen.append((ids.shape[0], stats["running"], stats["cached_tokens"], stats["reserved_tokens"]))
        return forward(ids, start, slot0, last, cache, kv_len, **kw)

    engine.runner.forward = spy
    return seen


def test_max_running_and_max_cached_tokens_are_respected(tokenizer):
    model = make_model(tokenizer.vocab_size)
    batch = prompts(9, tokenizer.vocab_size, lo=4, hi=6)
    params = SamplingParams(max_tokens=10, **GREEDY)
    expected = [c.token_ids for c in Engine(model, tokenizer).generate(batch, params)]
    engine = Engine(model, tokenizer, max_running=3)
    seen = record_batches(engine)
    assert [c.token_ids for c in engine.generate(batch, params)] == expected
    assert max(running for _, running, _, _ in seen) == 3
    # every request reserves prompt + max_tokens = 14 or 15 cache tokens: a cap of 30 lets two run at a time
    engine = Engine(model, tokenizer, max_running=64, max_cached_tokens=30)
    seen = record_batches(engine)
    assert [c.token_ids for c in engine.generate(batch, params)] == expected
    assert max(reserved for *_, reserved in seen) <= 30  # what is cached never exceeds what is reserved
    assert max(cached for _, _, cached, _ in seen) <= 30
    assert max(running for _, running, _, _ in seen) == 2
    assert engine.stats()["cached_tokens"] == engine.stats()["reserved_tokens"] == 0


def test_cancel_frees_the_slot_and_admits_a_waiting_request(tokenizer):
    model = make_model(tokenizer.vocab_size)
    engine = Engine(model, tokenizer, max_running=1)
    long = engine.submit([9, 10, 11], SamplingParams(max_tokens=200, **GREEDY))
    short = engine.submit([12, 13], SamplingParams(max_tokens=3, **GREEDY))
    events = long.events()
    first = next(events)  # runs the prefill of `long` in this thread (no background loop)
    assert first.finish_reason is None and len(first.token_ids) == 1
    assert engine.stats()["running"] == 1 and engine.stats()["waiting"] == 1
    long.cancel()
    assert engine.stats()["running"] == 0 and engine.stats()["cached_tokens"] == 0  # freed at once
    rest = list(events)
    assert rest[-1].finish_reason == "cancelled"
    assert long.result().finish_reason == "cancelled"
    c = short.result()
    assert c.finish_reason == "length" and len(c.token_ids) == 3
    assert engine.stats()["running"] == 0 and engine.stats()["waiting"] == 0


def test_submit_raises_queue_full_at_max_waiting(tokenizer):
    engine = Engine(make_model(tokenizer.vocab_size), tokenizer, max_waiting=2)
    handles = [engine.submit([9, 10], SamplingParams(max_tokens=2, **GREEDY)) for _ in range(2)]
    with pytest.raises(QueueFull):
        engine.submit([9], SamplingParams(max_tokens=1))
    assert [len(h.result().token_ids) for h in handles] == [2, 2]
    engine.submit([9], SamplingParams(max_tokens=1)).result()  # room again once they ran


def test_background_loop_submit_cancel_and_generate(tokenizer):
    model = make_model(tokenizer.vocab_size)
    engine = Engine(model, tokenizer, max_running=2)
    engine.start()
    try:
        handles = [engine.submit([9, 10, 11 + i], SamplingParams(max_tokens=10_000 if i < 2 else 5, **GREEDY))
                   for i in range(4)]
        for h in handles[:2]:
            next(h.events())
            h.cancel()
        results = [h.result() for h in handles]
        assert [r.finish_reason for r in results[:2]] == ["cancelled"] * 2
        assert [r.finish_reason for r in results[2:]] == ["length"] * 2
        assert all(len(r.token_ids) == 5 for r in results[2:])
        # generate() while the loop runs goes through the loop
        out = engine.generate([[9, 10]], SamplingParams(max_tokens=4, **GREEDY))
        assert len(out[0].token_ids) == 4
    finally:
        engine.stop()
    assert engine._thread is None and engine.stats()["running"] == 0


def test_async_stream_and_cancel_on_close(tokenizer):
    ids, model = run_chain(tokenizer, "x🙂中文 The answer")
    engine = Engine(model, tokenizer, max_running=1)

    async def main():
        pieces = [ev async for ev in engine.stream(ids[:1], SamplingParams(max_tokens=40, temperature=0))]
        endless = engine.stream(ids[:1], SamplingParams(max_tokens=100_000, temperature=0, ignore_eos=True))
        await endless.__anext__()
        await endless.aclose()  # the client went away: the request is cancelled
        for _ in range(100):
            if engine.stats()["running"] == 0:
                break
            await asyncio.sleep(0.01)
        return pieces

    try:
        pieces = asyncio.run(main())
    finally:
        engine.stop()
    assert "".join(p.text for p in pieces) == tokenizer.decode(ids[1:])
    assert pieces[-1].finish_reason == "stop"
    assert engine.stats()["running"] == 0


def test_a_failing_step_fails_its_requests_instead_of_hanging(tokenizer):
    engine = Engine(make_model(tokenizer.vocab_size), tokenizer)

    def boom(*args, **kw):
        raise RuntimeError("boom")

    engine.runner.forward = boom
    with pytest.raises(RuntimeError, match="boom"):  # synchronous: the original error
        engine.generate([[9, 10]], SamplingParams(max_tokens=3))
    engine.start()
    try:  # background loop: the request ends with an error, the loop lives on
        with pytest.raises(EngineError, match="boom"):
            list(engine.submit([9, 10], SamplingParams(max_tokens=3)).events())
        assert engine._thread.is_alive()
    finally:
        engine.stop()
    assert engine.stats()["running"] == engine.stats()["waiting"] == engine.stats()["reserved_tokens"] == 0


# ---------------------------------------------------------------- weights change under the engine


def test_engine_follows_in_place_weight_updates(tokenizer):
    model = make_model(tokenizer.vocab_size)
    engine = Engine(model, tokenizer)
    batch = prompts(2, tokenizer.vocab_size)
    params = SamplingParams(max_tokens=8, **GREEDY)
    before = [c.token_ids for c in engine.generate(batch, params)]
    # an optimizer step changes the weights in place (as in GRPO)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=2.0)
    loss, _ = model.loss(torch.tensor([batch[0][:3]]), torch.tensor([batch[0][:3]]))
    loss.backward()
    opt.step()
    model.eval()
    after = [c.token_ids for c in engine.generate(batch, params)]
    assert after == [greedy_by_recomputation(model, p, 8) for p in batch]
    assert after != before
    # `.data` writes bypass version counters: refresh() is the explicit way
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.kv_b_proj.weight.data.mul_(-1.5)
    engine.refresh()
    assert [c.token_ids for c in engine.generate(batch, params)] == [greedy_by_recomputation(model, p, 8) for p in batch]


def test_generation_leaves_training_state_alone(tokenizer):
    model = make_model(tokenizer.vocab_size).train()
    Engine(model, tokenizer).generate(prompts(2, tokenizer.vocab_size), SamplingParams(max_tokens=4, **GREEDY))
    assert model.training
    assert all(m.load.sum() == 0 for m in model.modules() if hasattr(m, "load"))  # no expert-load counting


# ---------------------------------------------------------------- the command


def test_generate_command_streams_the_completion(tmp_path, tokenizer, capsys):
    from r1lab.cli import main
    from r1lab.model import save_checkpoint

    ids, model = run_chain(tokenizer, "Hel world! Thequick b")
    save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    assert main(["generate", str(tmp_path / "ckpt"), tokenizer.decode(ids[:1]), "--temperature", "0",
                 "--max-tokens", "40"]) == 0
    assert capsys.readouterr().out == tokenizer.decode(ids[1:]) + "\n"
    assert main(["generate", str(tmp_path / "ckpt"), "Hi", "--chat", "--max-tokens", "3", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("<think>\n")
