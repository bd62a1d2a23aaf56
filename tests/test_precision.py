"""The serving dtype (`r1lab serve / generate / chat --dtype`) and the engine on bf16 weights: KV cache and
attention stay float32 on CPU, and greedy decoding follows the bf16 model's own full forward pass."""
import pytest
import torch

from hf_tiny import make_model
from r1lab.engine import Engine, SamplingParams
from r1lab.engine import precision
from r1lab.engine.precision import serving_dtype


def test_serving_dtype_rules(monkeypatch):
    assert serving_dtype("float32", 4096) == torch.float32
    assert serving_dtype("bfloat16", 64) == torch.bfloat16
    with pytest.raises(ValueError, match="--dtype must be one of"):
        serving_dtype("bf16", 512)
    monkeypatch.setattr(precision, "has_fast_bf16", lambda device="cpu": True)
    assert serving_dtype("auto", precision.MIN_BF16_HIDDEN) == torch.bfloat16
    assert serving_dtype("auto", precision.MIN_BF16_HIDDEN - 1) == torch.float32  # too narrow to gain
    monkeypatch.setattr(precision, "has_fast_bf16", lambda device="cpu": False)
    assert serving_dtype("auto", 4096) == torch.float32  # no bf16 units (e.g. an AVX2-only CPU)


def _bf16_models(tmp_path):
    import r1lab
    from r1lab.model import Transformer, preset

    make_model(tmp_path / "qwen2", "qwen2", "chatml")
    qwen2, _ = r1lab.load(tmp_path / "qwen2", dtype=torch.bfloat16)
    torch.manual_seed(0)
    mla = Transformer(preset("cpu-micro")).to(torch.bfloat16)
    return {"qwen2": qwen2.eval(), "deepseek-mla": mla.eval()}


def test_bf16_engine_decodes_as_the_bf16_model_with_a_float32_cache(tmp_path):
    torch.manual_seed(3)
    for name, model in _bf16_models(tmp_path).items():
        engine = Engine(model, None, max_running=2)
        assert {t.dtype for t in engine.cache.tensors} == {torch.float32}, name
        prompts = [torch.randint(5, 300, (n,)).tolist() for n in (9, 4, 13)]
        outs = engine.generate(prompts, SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, logprobs=True))
        for prompt, out in zip(prompts, outs):
            ids = torch.tensor([prompt + out.token_ids])
            with torch.no_grad():
                logits = model(ids).float()[0, len(prompt) - 1:-1]
            full = logits.log_softmax(-1)
            chosen = full.gather(-1, torch.tensor(out.token_ids)[:, None])[:, 0]
            # the engine's log-prob of each token it chose, against the bf16 model's full forward pass (bf16
            # rounding differs between the two orders of computation: ~1e-2, not fp32's 1e-5)
            assert (chosen - torch.tensor(out.logprobs)).abs().max().item() < 0.1, name
            # greedy: each chosen token is the forward pass's argmax or within bf16 noise of it
            assert (full.max(-1).values - chosen).max().item() < 0.1, name


def test_training_autocast_auto_picks_bf16_only_where_it_pays(monkeypatch):
    from contextlib import nullcontext
    from pathlib import Path
    from types import SimpleNamespace

    from r1lab.config import TrainConfig
    from r1lab.train import step
    from r1lab.train.dist import Dist, RunState

    run = RunState(Path("."), Dist(), TrainConfig())
    wide, narrow = (SimpleNamespace(config=SimpleNamespace(hidden_size=h)) for h in (precision.MIN_BF16_HIDDEN, 128))
    monkeypatch.setattr(step, "has_fast_bf16", lambda device: True)
    ctx = step.autocast(run, wide)
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    assert isinstance(step.autocast(run, narrow), nullcontext)  # small matrices: fp32 was faster (step.autocast)
    monkeypatch.setattr(step, "has_fast_bf16", lambda device: False)
    assert isinstance(step.autocast(run, wide), nullcontext)  # no bf16 units
    forced = RunState(Path("."), Dist(), TrainConfig(dtype="bf16"))
    assert isinstance(step.autocast(forced, narrow), torch.autocast)
