"""On a CUDA GPU, the same numbers as on the CPU: a training step, GRPO's per-token log-probs and loss, and
greedy decoding. Skipped without a GPU (scripts/gpu_check.sh runs them where one is lent)."""
import pytest
import torch

from conftest import chain_model, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def _model(vocab=96):
    from r1lab.model import Transformer

    torch.manual_seed(0)
    return Transformer(tiny_config(vocab)).float()


def test_a_training_step_on_cuda_matches_the_cpu():
    import copy
    from pathlib import Path

    from r1lab.config import TrainConfig
    from r1lab.train.data import Batch
    from r1lab.train.dist import Dist, RunState
    from r1lab.train.step import make_optimizer, train_step, wrap_model

    ids = torch.randint(0, 96, (4, 32), generator=torch.Generator().manual_seed(1))
    base = _model()
    grads, stats = [], []
    for device in ("cpu", "cuda"):
        model = copy.deepcopy(base).to(device)
        loss, _ = model.loss(ids.to(device), ids.to(device))
        loss.backward()
        grads.append(torch.cat([p.grad.float().cpu().flatten() for p in model.parameters() if p.grad is not None]))
        model.zero_grad()
        # and the loop's own step (fp32 on both): the same loss and gradient norm (Adam's first step is
        # sign-like, so weights after it are not compared: a gradient of ~0 may round to either sign)
        train = TrainConfig(batch_size=4, seq_len=32, lr=1e-3, dtype="fp32")
        run = RunState(Path("."), Dist(device=torch.device(device)), train)
        step = train_step(wrap_model(model, run), model, make_optimizer(model, train), [Batch(ids, ids)], 1e-3, run)
        stats.append((step.loss, step.grad_norm))
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    assert stats[0][0] == pytest.approx(stats[1][0], rel=1e-5)
    assert stats[0][1] == pytest.approx(stats[1][1], rel=1e-4)


def test_grpo_logp_and_loss_on_cuda_match_the_cpu():
    from r1lab.train.grpo_config import GRPOSection
    from r1lab.train.grpo_loss import PolicyBatch, make_loss_fn, token_logp

    ids = torch.randint(0, 96, (6, 20), generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(6, 19)
    mask[:, 7:] = 1.0
    cfg = GRPOSection(loss="dapo", rollout_correction="tis")
    out = []
    for device in ("cpu", "cuda"):
        model = _model().to(device)
        logp = token_logp(model, ids.to(device), mask.to(device), 1.0, pack=True)[0]
        batch = PolicyBatch(ids, mask, torch.linspace(-1, 1, 6), engine_logp=logp.detach().cpu() - 0.01).to(device)
        with torch.no_grad():
            loss, _ = make_loss_fn(cfg, 6, int(mask.sum()), correction="tis")(model, batch)
        out.append((logp.detach().cpu(), loss.item()))
    assert torch.allclose(out[0][0], out[1][0], atol=1e-4)
    assert out[0][1] == pytest.approx(out[1][1], abs=1e-5)


def test_greedy_decoding_on_cuda_matches_the_cpu(tokenizer):
    from r1lab.engine import Engine, SamplingParams

    chain = list(range(10, 30))
    model = chain_model(tokenizer, chain)
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    got = [Engine(model.to(device), tokenizer, max_running=4).generate([[10], [15, 16]], params) for device in ("cpu", "cuda")]
    assert [c.token_ids for c in got[0]] == [c.token_ids for c in got[1]]
    assert list(got[1][0].token_ids) == chain[1:13]
