"""Muon for the hidden weight matrices, AdamW for the rest (train.optimizer=muon).

Muon (Jordan et al. 2024; "Muon is Scalable for LLM Training", Moonshot 2025) replaces each matrix's
momentum-averaged gradient by the nearest semi-orthogonal matrix (five Newton-Schulz iterations), so
every direction of the update moves at the same rate. On the small models here it learns the
arithmetic tasks in about a third of AdamW's steps. The update is rescaled by 0.2 * sqrt(max(rows, cols))
to match AdamW's update size, so the same lr and weight decay serve both.

Written here in fp32 with same-shape matrices (the same projection in every layer) orthogonalised in one
batched product: torch.optim.Muon works in bf16 one matrix at a time, which is slow on CPUs without bf16
units. make_optimizer (loop.py) decides which matrices Muon gets; the routed experts stay on AdamW.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic: fast to ~1, not exactly 1


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately U V^T of each matrix's SVD U S V^T; g is (n, rows, cols)."""
    a, b, c = NS_COEFFICIENTS
    tall = g.shape[-2] > g.shape[-1]
    x = g.mT if tall else g  # iterate on the wide side: x @ x^T is the smaller square
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, orthogonalised per matrix, decoupled weight decay. Params must be 2-D."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.95, weight_decay: float = 0.0, ns_steps: int = 5):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            by_shape: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(p.grad)
                by_shape[tuple(p.shape)].append((p, p.grad.add(buf, alpha=group["momentum"])))
            for shape, items in by_shape.items():
                updates = orthogonalize(torch.stack([u for _, u in items]), group["ns_steps"])
                scale = 0.2 * max(shape) ** 0.5
                for (p, _), update in zip(items, updates):
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(update, alpha=-group["lr"] * scale)


class Optimizers:
    """Several optimizers stepped as one (Muon + AdamW). param_groups lists all their groups, so a caller
    that sets group["lr"] reaches every parameter; the state dict holds each optimizer's own."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {f"{i}:{type(o).__name__}": o.state_dict() for i, o in enumerate(self.optimizers)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, o in enumerate(self.optimizers):
            o.load_state_dict(state[f"{i}:{type(o).__name__}"])
