"""GRPO's losses against TRL's own GRPOTrainer._compute_loss on the same tensors: loss and gradients.

TRL's loss is a method of its trainer; the test calls it on a minimal stand-in for the trainer (the
attributes the method reads) and a bigram "model" whose logits are a table, so both sides see the very
same per-token log-probs. r1lab's side is make_loss_fn over micro-batches by length, as GRPO runs it.
TRL comes with the dev extra (pip install -e '.[dev]'; scripts/setup.sh installs it).
"""
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from r1lab.train.grpo_config import GRPOSection
from r1lab.train.grpo_loss import PolicyBatch, group_advantages, make_loss_fn, rollout_weights

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer",
                               reason="TRL is not installed: pip install -e '.[dev]' (scripts/setup.sh does)")

V, P, L, N, G = 11, 3, 6, 8, 4  # vocabulary, prompt length (all equal), max completion length, rows, group size


class Bigram(torch.nn.Module):
    """Next-token logits from the current token alone: the same numbers whatever the layout or padding."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())

    def forward(self, input_ids, select=None, **_):
        logits = self.table[input_ids]
        return logits[select] if select is not None else logits


def _trl_logps(self, model, input_ids, attention_mask, logits_to_keep, compute_entropy=False, **_):
    logits = model(input_ids)[:, -logits_to_keep - 1:-1]
    logp_all = torch.log_softmax(logits.float(), -1)
    logps = logp_all.gather(-1, input_ids[:, -logits_to_keep:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if compute_entropy else None
    return logps, entropy, None


def trl_loss(model, data, loss_type, level="token", beta=0.0, eps=(0.2, 0.28), correction=None):
    """TRL's _compute_loss on `data`, through a stand-in holding just what the method reads."""
    completion_mask = data["mask"]
    args = SimpleNamespace(delta=None, use_bias_correction_kl=False, sapo_temperature_pos=1.0, sapo_temperature_neg=1.05,
                           steps_per_generation=1)
    fake = SimpleNamespace(
        args=args, model=model, beta=beta, loss_type=loss_type, importance_sampling_level=level,
        epsilon_low=eps[0], epsilon_high=eps[1], top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        use_vllm=correction is not None, vllm_importance_sampling_correction=correction is not None,
        aux_loss_enabled=False, _entropy_bonus_enabled=False, use_adaptive_entropy=False,
        current_gradient_accumulation_steps=1, max_completion_length=L, _metrics=defaultdict(lambda: defaultdict(list)),
        accelerator=SimpleNamespace(num_processes=1, gather=lambda x: x, gather_for_metrics=lambda x: x,
                                    reduce=lambda x, reduction="sum": x, sync_gradients=True))
    fake._get_per_token_logps_and_entropies = _trl_logps.__get__(fake)
    inputs = {"prompt_ids": data["prompt"], "prompt_mask": torch.ones_like(data["prompt"]),
              "completion_ids": data["completion"], "completion_mask": completion_mask,
              "advantages": data["advantages"], "old_per_token_logps": data["old"], "ref_per_token_logps": data["ref"],
              "num_items_in_batch": completion_mask.sum()}
    if correction is not None:
        inputs["importance_sampling_ratio"] = correction
    return trl_grpo.GRPOTrainer._compute_loss(fake, model, inputs)


def make_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(V, V, generator=g)
    prompt = torch.randint(1, V, (N, P), generator=g)
    lengths = torch.randint(1, L + 1, (N,), generator=g)
    lengths[0] = L
    mask = (torch.arange(L)[None] < lengths[:, None]).float()
    completion = torch.randint(1, V, (N, L), generator=g) * mask.long()  # padded with 0
    with torch.no_grad():
        logp, _, _ = _trl_logps(None, Bigram(table), torch.cat([prompt, completion], 1), None, L)
    # the sampling policy and the reference: the policy's log-probs moved by up to ~0.4 nat
    old = (logp + 0.3 * torch.randn(N, L, generator=g)) * mask
    ref = (logp + 0.3 * torch.randn(N, L, generator=g)) * mask
    sampler = (old + 0.15 * torch.randn(N, L, generator=g)) * mask  # the sampler's own log-probs, a little off
    rewards = torch.randint(0, 2, (N,), generator=g).float()
    rewards[:G] = torch.tensor([1.0, 0.0, 0.0, 1.0])
    return {"table": table, "prompt": prompt, "completion": completion, "mask": mask, "old": old, "ref": ref,
            "sampler": sampler, "advantages": group_advantages(rewards, G)}


def widen(t):
    """(N, L) in completion coordinates -> (N, P + L - 1), position t predicting token t + 1."""
    return torch.cat([torch.zeros(N, P - 1), t], 1)


def r1lab_loss(model, data, loss, beta=0.0, eps=(0.2, 0.28), correction="none", level="sequence", cap=3.0,
               cispo_cap=5.0):
    cfg = GRPOSection(loss=loss, beta=beta, epsilon_low=eps[0], epsilon_high=eps[1], max_new_tokens=L, pack=False,
                      correction_level=level, correction_cap=cap, cispo_cap=cispo_cap)
    batch = PolicyBatch(torch.cat([data["prompt"], data["completion"]], 1), widen(data["mask"]), data["advantages"],
                        old_logp=widen(data["old"]), ref_logp=widen(data["ref"]), engine_logp=widen(data["sampler"]))
    loss_fn = make_loss_fn(cfg, N, int(data["mask"].sum()), correction=correction)
    return sum(loss_fn(model, part)[0] for part in batch.micro_batches(3))  # micro-batches add up to the batch


def both(data, trl_kwargs, r1lab_kwargs):
    out = []
    for fn, kwargs in ((trl_loss, trl_kwargs), (r1lab_loss, r1lab_kwargs)):
        model = Bigram(data["table"])
        loss = fn(model, data, **kwargs)
        loss.backward()
        out.append((loss.detach(), model.table.grad))
    return out


CASES = {  # r1lab's grpo.loss: TRL's loss_type and importance_sampling_level
    "grpo": ("grpo", "token"), "dr_grpo": ("dr_grpo", "token"), "dapo": ("dapo", "token"),
    "gspo": ("grpo", "sequence"), "cispo": ("cispo", "token"), "sapo": ("sapo", "token"),
}


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss", list(CASES))
def test_loss_and_gradients_equal_trls(loss, beta):
    data = make_data()
    loss_type, level = CASES[loss]
    # cispo: TRL's epsilon_high is the cap on the weight itself; 1.2 so that the cap bites on these ratios
    trl_eps, cap = ((0.2, 1.2), 1.2) if loss == "cispo" else ((0.2, 0.28), 5.0)
    (trl, trl_grad), (ours, grad) = both(data, dict(loss_type=loss_type, level=level, beta=beta, eps=trl_eps),
                                         dict(loss=loss, beta=beta, cispo_cap=cap))
    assert grad.abs().max() > 1e-3  # a gradient worth comparing
    assert torch.allclose(ours, trl, atol=1e-5, rtol=0), (ours, trl)
    assert torch.allclose(grad, trl_grad, atol=1e-5, rtol=0), (grad - trl_grad).abs().max()


def test_the_clip_and_cap_are_active_in_these_cases():
    # the equality above covers the clipped branches only if they are taken
    data = make_data()
    with torch.no_grad():
        logp, _, _ = _trl_logps(None, Bigram(data["table"]), torch.cat([data["prompt"], data["completion"]], 1), None, L)
    ratio = torch.exp(logp - data["old"])[data["mask"].bool()]
    assert bool((ratio > 1.28).any()) and bool((ratio < 0.8).any()) and bool((ratio > 1.2).any())


@pytest.mark.parametrize("mode,level", [("mis", "sequence"), ("tis", "token"), ("tis", "sequence"), ("mis", "token")])
@pytest.mark.parametrize("loss", ["grpo", "dapo"])
def test_rollout_correction_equals_trls(loss, mode, level):
    """TRL multiplies its per-token loss by vllm_importance_sampling_ratio; r1lab computes the same weights from
    the trainer's log-prob under the sampling weights (old) and the sampler's, with the cap (TRL's clip_max)."""
    data = make_data(1)
    cap = 1.1  # low, so that these weights are cut
    fix = rollout_weights(data["old"], data["sampler"], data["mask"], mode, level, cap)
    assert fix.masked + fix.truncated > 0
    # TRL's vllm_importance_sampling_ratio, as _generate_and_score_completions computes it (clip_min None)
    diff = (data["old"] - data["sampler"]) * data["mask"]
    ratio = torch.exp(diff.sum(-1, keepdim=True) if level == "sequence" else diff)
    ratio = ratio.clamp(max=cap) if mode == "tis" else ratio.masked_fill(ratio > cap, 0.0)
    assert torch.equal(fix.weights, ratio)
    (trl, trl_grad), (ours, grad) = both(data, dict(loss_type=loss, correction=ratio),
                                         dict(loss=loss, correction=mode, level=level, cap=cap))
    assert torch.allclose(ours, trl, atol=1e-5, rtol=0)
    assert torch.allclose(grad, trl_grad, atol=1e-5, rtol=0)
