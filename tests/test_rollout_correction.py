"""The rollout correction against a deliberately-off sampler: its update points closer to the on-policy one.

A tiny policy pi (fp32, temperature 1) is trained on completions that a different sampler q drew: the same
weights at temperature 1.2 (the mismatch vLLM's or bf16 sampling brings, made large). On a fixed batch, the
GRPO gradient with the correction (q's log-probs -> weights pi / q) is closer to the gradient on a batch pi
drew itself than the uncorrected one: higher cosine, smaller norm of the difference.
"""
import pytest
import torch

from conftest import tiny_config
from r1lab.train.grpo_config import GRPOSection
from r1lab.train.grpo_loss import PolicyBatch, group_advantages, make_loss_fn, token_logp

V, PROMPT, LENGTH, G = 24, 2, 4, 8


def policy():
    from r1lab.model import Transformer

    torch.manual_seed(0)
    model = Transformer(tiny_config(V, hidden_size=32, num_hidden_layers=1, intermediate_size=64, moe_intermediate_size=16,
                                    n_routed_experts=4, kv_lora_rank=16))
    with torch.no_grad():
        model.lm_head.weight.mul_(25.0)  # peaked next-token distributions, so that temperature matters
    return model


@torch.no_grad()
def sample(model, prompts: torch.Tensor, temperature: float, seed: int) -> torch.Tensor:
    """G completions of LENGTH tokens per prompt, at `temperature`: rows prompt + completion."""
    g = torch.Generator().manual_seed(seed)
    rows = prompts.repeat_interleave(G, 0)
    for _ in range(LENGTH):
        logits = model(rows)[:, -1] / temperature
        rows = torch.cat([rows, torch.multinomial(torch.softmax(logits, -1), 1, generator=g)], 1)
    return rows


def batch_of(model, rows: torch.Tensor, sampler_temperature: float) -> PolicyBatch:
    """A policy batch of `rows`: reward = share of even tokens in the completion, group advantages, and the
    sampler's log-probs (its temperature applied, as vLLM's processed log-probs)."""
    mask = torch.zeros(rows.shape[0], rows.shape[1] - 1)
    mask[:, PROMPT - 1:] = 1.0
    rewards = (rows[:, PROMPT:] % 2 == 0).float().mean(1)
    batch = PolicyBatch(rows, mask, group_advantages(rewards, G))
    with torch.no_grad():
        batch.engine_logp = token_logp(model, rows, mask, sampler_temperature)[0]
    return batch


def gradient(model, batch: PolicyBatch, correction: str, level: str = "sequence") -> torch.Tensor:
    cfg = GRPOSection(loss="dapo", pack=False, correction_level=level, max_new_tokens=LENGTH)
    model.zero_grad()
    loss, _ = make_loss_fn(cfg, batch.input_ids.shape[0], batch.n_targets, correction=correction)(model, batch)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("correction,level", [("tis", "token"), ("tis", "sequence"), ("mis", "sequence")])
def test_corrected_gradient_is_closer_to_the_on_policy_gradient(correction, level):
    model = policy()
    prompts = torch.randint(0, V, (256, PROMPT), generator=torch.Generator().manual_seed(1))
    on_policy = gradient(model, batch_of(model, sample(model, prompts, 1.0, seed=2), 1.0), "none")
    off = batch_of(model, sample(model, prompts, 1.2, seed=3), 1.2)
    plain, fixed = gradient(model, off, "none"), gradient(model, off, correction, level)
    cos = lambda a, b: float(torch.nn.functional.cosine_similarity(a, b, dim=0))  # noqa: E731
    print(f"{correction}/{level}: cosine to on-policy {cos(plain, on_policy):.3f} -> {cos(fixed, on_policy):.3f}, "
          f"|g - g_on| / |g_on| {float((plain - on_policy).norm() / on_policy.norm()):.3f} -> "
          f"{float((fixed - on_policy).norm() / on_policy.norm()):.3f}")
    assert cos(fixed, on_policy) > cos(plain, on_policy)
    assert (fixed - on_policy).norm() < (plain - on_policy).norm()
