"""GRPO math against values worked out by hand."""
import math

import pytest
import torch

from r1lab.train.grpo_loss import group_advantages, k3_kl, overlong_penalty, policy_loss


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
