"""GRPO math against values worked out by hand."""
import math

import pytest
import torch

from r1lab.train.grpo_config import GRPOSection
from r1lab.train.grpo_loss import group_advantages, k3_kl, overlong_penalty, policy_loss, rollout_weights


def test_grpo_advantages_by_hand():
    # group 1: rewards 1, 0, 0, 1 -> mean 0.5, sample std sqrt(1/3) = 0.57735
    # group 2: all equal -> zero advantage
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(r, 4, "grpo", eps=0.0)
    s = 0.5 / math.sqrt(1 / 3)
    assert torch.allclose(adv[:4], torch.tensor([s, -s, -s, s]), atol=1e-6)
    assert torch.equal(group_advantages(r, 4, "grpo")[4:], torch.zeros(4))


@pytest.mark.parametrize("scale", ["grpo", "dr_grpo"])
@pytest.mark.parametrize("value", [0.2, 1.2, 0.7, 1 / 3])
def test_a_group_of_equal_rewards_has_advantage_exactly_zero(scale, value):
    # format-only (0.2) and all-correct (1.2) groups: their float mean is not the value itself, and the
    # rounding used to come out as advantages of ~1e-4 that skip_zero_advantage could not see
    r = torch.tensor([value] * 8 + [1.2, 0.2] * 4, dtype=torch.float64)
    adv = group_advantages(r, 8, scale)
    assert torch.equal(adv[:8], torch.zeros(8)) and bool((adv[8:] != 0).all())


def test_dr_grpo_advantages_are_centred_only():
    r = torch.tensor([3.0, 1.0, 0.0, 0.0])
    assert torch.allclose(group_advantages(r, 2, "dr_grpo"), torch.tensor([1.0, -1.0, 0.0, 0.0]))


def test_k3_kl_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # ref/p = 0.5: 0.5 - ln(0.5) - 1 = 0.19315
    assert k3_kl(logp, ref).item() == pytest.approx(0.5 - math.log(0.5) - 1, abs=1e-6)
    assert k3_kl(ref, ref).item() == 0.0


def test_overlong_penalty_by_hand():
    lengths = torch.tensor([50, 80, 90, 100, 120])
    # max 100, buffer 20: free up to 80, then linear to -1 at 100, capped at -1
    assert torch.allclose(overlong_penalty(lengths, 100, 20), torch.tensor([0.0, 0.0, -0.5, -1.0, -1.0]))


def _case():
    # two sequences; seq 0 has 2 tokens (ratios 1.5 and 0.5), seq 1 has 1 real token (ratio 1.0) + padding
    old = torch.zeros(2, 2)
    logp = torch.log(torch.tensor([[1.5, 0.5], [1.0, 7.0]]))
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = torch.tensor([1.0, -2.0])
    return logp, old, adv, mask


def test_grpo_loss_sequence_mean_with_clipping():
    logp, old, adv, mask = _case()
    out = policy_loss(logp, old, adv, mask, "grpo", eps_low=0.2, eps_high=0.2)
    # seq 0, A=+1: min(1.5, 1.2) = 1.2 ; min(0.5, 0.8) = 0.5 -> mean -(1.2 + 0.5)/2 = -0.85
    # seq 1, A=-2: min(-2, -2) = -2 -> 2
    assert out.loss.item() == pytest.approx((-0.85 + 2.0) / 2, abs=1e-6)
    # only the 1.5 ratio at A > 0 is clipped (its gradient is cut); 0.5 at A > 0 keeps its gradient
    assert out.clip_frac == pytest.approx(1 / 3, abs=1e-6)


def test_dr_grpo_loss_constant_normaliser():
    logp, old, adv, mask = _case()
    out = policy_loss(logp, old, adv, mask, "dr_grpo", max_len=4)
    # token sum: -1.2 - 0.5 + 2 = 0.3 over N * max_len = 8
    assert out.loss.item() == pytest.approx(0.3 / 8, abs=1e-6)


def test_dapo_token_mean_and_clip_higher():
    logp, old, adv, mask = _case()
    out = policy_loss(logp, old, adv, mask, "dapo", eps_low=0.2, eps_high=0.28)
    # A=+1: min(1.5, 1.28) = 1.28; min(0.5, 0.8) = 0.5; A=-2 -> +2 ; token mean over 3 tokens
    assert out.loss.item() == pytest.approx((-1.28 - 0.5 + 2.0) / 3, abs=1e-6)


def test_negative_advantage_clip_low():
    # ratio 0.5 with A = -1: min(-0.5, -0.8) = -0.8 -> loss 0.8 (the pessimistic clipped term)
    logp = torch.log(torch.tensor([[0.5]]))
    out = policy_loss(logp, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1), "grpo")
    assert out.loss.item() == pytest.approx(0.8, abs=1e-6)


def test_kl_term_added_and_gradient_flows():
    logp = torch.log(torch.tensor([[0.5, 0.5]])).requires_grad_()
    ref = torch.log(torch.tensor([[0.25, 0.5]]))
    out = policy_loss(logp, logp.detach(), torch.tensor([0.0]), torch.ones(1, 2), "grpo", beta=0.1, ref_logp=ref)
    kl0 = 0.5 - math.log(0.5) - 1
    assert out.loss.item() == pytest.approx(0.1 * kl0 / 2, abs=1e-6)
    assert out.kl == pytest.approx(kl0 / 2, abs=1e-6)
    out.loss.backward()
    assert logp.grad is not None and logp.grad.abs().sum() > 0


def test_on_policy_gradient_equals_advantage_weighted_logprob_gradient():
    # at ratio 1 the clipped surrogate's gradient is -A * grad(logp) / tokens
    logits = torch.randn(2, 3, 5, requires_grad=True)
    tokens = torch.randint(0, 5, (2, 3))
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    adv = torch.tensor([1.0, -0.5])
    mask = torch.ones(2, 3)
    out = policy_loss(logp, logp.detach(), adv, mask, "dapo")
    (g1,) = torch.autograd.grad(out.loss, logits, retain_graph=True)
    ref = -(adv[:, None] * logp).sum() / 6
    (g2,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(g1, g2, atol=1e-6)


def test_gspo_uses_the_geometric_mean_ratio_per_sequence():
    logp, old, adv, mask = _case()
    out = policy_loss(logp, old, adv, mask, "gspo", eps_low=0.2, eps_high=0.2)
    # seq 0: sqrt(1.5 * 0.5) = 0.866 with A=+1 -> -0.866 (inside the clip); seq 1: ratio 1 (padding ignored), A=-2 -> 2
    assert out.loss.item() == pytest.approx((-math.sqrt(0.75) + 2.0) / 2, abs=1e-6)
    assert out.clip_frac == 0.0


def test_cispo_keeps_a_gradient_on_tokens_over_the_cap():
    logp = torch.log(torch.tensor([[3.0, 1.0]])).requires_grad_()
    out = policy_loss(logp, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2), "cispo", cispo_cap=2.0)
    # weights min(3, 2) = 2 and 1, no gradient through them: loss -(2 log 3 + 1 log 1) / 2 tokens
    assert out.loss.item() == pytest.approx(-(2 * math.log(3.0)) / 2, abs=1e-6)
    out.loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1.0, -0.5]]))  # PPO's clip would give the first token 0
    assert out.clip_frac == 0.5


def test_sapo_gradient_at_ratio_one_is_the_policy_gradient():
    logp = torch.zeros(1, 2, requires_grad=True)
    out = policy_loss(logp, torch.zeros(1, 2), torch.tensor([-2.0]), torch.ones(1, 2), "sapo")
    out.loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[1.0, 1.0]]))  # -A / tokens, whatever the gate's temperature


def test_rollout_weights_by_hand():
    trainer = torch.log(torch.tensor([[0.5, 0.4, 1.0], [0.9, 0.9, 1.0]]))
    sampler = torch.log(torch.tensor([[0.1, 0.4, 0.3], [0.9, 0.6, 1.0]]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # the last token of row 0 is not trained
    tis = rollout_weights(trainer, sampler, mask, "tis", "token", cap=3.0)
    assert torch.allclose(tis.weights, torch.tensor([[3.0, 1.0, 1.0], [1.0, 1.5, 1.0]]))
    assert tis.truncated == pytest.approx(1 / 5) and tis.masked == 0.0
    mis = rollout_weights(trainer, sampler, mask, "mis", "sequence", cap=3.0)
    # sequence ratios: 5 * 1 = 5 (over the cap: dropped) and 1 * 1.5 * 1 = 1.5
    assert torch.allclose(mis.weights, torch.tensor([[0.0], [1.5]]))
    assert mis.masked == pytest.approx(2 / 5) and mis.truncated == 0.0
    assert mis.ratio_mean == pytest.approx((5 * 2 + 1.5 * 3) / 5)


@pytest.mark.parametrize("bad", [{"loss": "ppo"}, {"rollout_correction": "is"}, {"correction_level": "batch"},
                                 {"rollout_correction": "mis", "temperature": 0.7}, {"correction_cap": 0.0}])
def test_bad_loss_and_correction_settings_are_clear_errors(bad):
    with pytest.raises(ValueError, match="grpo\\."):
        GRPOSection(**bad)
    GRPOSection(**{**bad, "rollout": "vllm"}) if "temperature" in bad else None  # vLLM's log-probs are processed


def test_auto_correction_is_on_only_where_sampler_and_trainer_differ():
    from r1lab.train.grpo import rollout_correction

    assert rollout_correction(GRPOSection(), "fp32") == "none"  # today's CPU runs: one model, one precision
    assert rollout_correction(GRPOSection(), "bf16") == "mis"  # bf16 autocast training, fp32 engine sampling
    assert rollout_correction(GRPOSection(rollout="vllm", temperature=0.7), "fp32") == "mis"
    assert rollout_correction(GRPOSection(temperature=0.7), "bf16") == "none"  # r1lab's log-probs are raw
    assert rollout_correction(GRPOSection(rollout_correction="tis"), "fp32") == "tis"


def test_on_policy_the_losses_differ_only_in_their_normaliser():
    # mu = 1: r = 1 at the update, so grpo, gspo and sapo share a gradient, and so do dapo and cispo (docs/grpo.md)
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 7)
    tokens = torch.randint(0, 7, (4, 5))
    mask = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2, [1.0] * 4 + [0.0], [1.0] * 2 + [0.0] * 3])
    adv = torch.tensor([1.0, -0.5, 0.3, -0.8])

    def grad(variant):
        x = logits.clone().requires_grad_()
        logp = torch.log_softmax(x, -1).gather(-1, tokens[..., None]).squeeze(-1)
        (g,) = torch.autograd.grad(policy_loss(logp, logp.detach(), adv, mask, variant).loss, x)
        return g

    for same in (("grpo", "gspo", "sapo"), ("dapo", "cispo")):
        assert all(torch.allclose(grad(same[0]), grad(v), atol=1e-7) for v in same[1:]), same
    assert not torch.allclose(grad("grpo"), grad("dapo"), atol=1e-4)  # the normalisers do differ
