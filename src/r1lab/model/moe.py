"""DeepSeekMoE: shared experts plus fine-grained routed experts, sigmoid router, aux-loss-free balancing.

N = B*T tokens, E routed experts, k experts per token. The router's per-expert bias
(`e_score_correction_bias`) only changes *which* experts are chosen, never the weights that mix their
outputs; after each optimizer step `update_router_bias` nudges it by ±γ towards an even load.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class MLP(nn.Module):
    """SwiGLU feed-forward; names match Hugging Face's DeepseekV3MLP."""

    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    """Sigmoid scores with node/group-limited top-k; names match Hugging Face's DeepseekV3TopkRouter."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(cfg.n_routed_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, H) -> scores (N, E) in (0, 1), chosen experts (N, k), their mixing weights (N, k)."""
        cfg = self.cfg
        scores, experts, weights = route(x, self.weight, self.e_score_correction_bias, cfg)
        if cfg.norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return scores, experts, weights * cfg.routed_scaling_factor


def route(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, cfg: ModelConfig
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The router, shared by training (Router) and decoding (engine/forward.py): x (N, H) -> sigmoid
    scores (N, E), the k experts chosen with the balancing bias and group-limited top-k (N, k), and their
    unbiased scores (N, k), before normalisation and scaling."""
    scores = F.linear(x.float(), weight.float()).sigmoid()
    choice = scores + bias
    if cfg.n_group > 1 and cfg.topk_group < cfg.n_group:
        # keep only the topk_group groups whose two best experts score highest
        grouped = choice.view(-1, cfg.n_group, cfg.n_routed_experts // cfg.n_group)
        group_scores = grouped.topk(2, dim=-1).values.sum(-1)
        keep = torch.zeros_like(group_scores, dtype=torch.bool)
        keep.scatter_(1, group_scores.topk(cfg.topk_group, dim=-1).indices, True)
        choice = grouped.masked_fill(~keep[..., None], float("-inf")).view_as(choice)
    experts = choice.topk(cfg.num_experts_per_tok, dim=-1).indices
    return scores, experts, scores.gather(1, experts)


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.gate = Router(cfg)
        self.experts = nn.ModuleList(MLP(cfg.hidden_size, cfg.moe_intermediate_size) for _ in range(cfg.n_routed_experts))
        shared = cfg.moe_intermediate_size * cfg.n_shared_experts
        self.shared_experts = MLP(cfg.hidden_size, shared) if cfg.n_shared_experts else None
        # tokens routed to each expert since the last bias update (not a parameter, not saved)
        self.register_buffer("load", torch.zeros(cfg.n_routed_experts), persistent=False)
        self.aux_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, H = x.shape
        flat = x.reshape(-1, H)
        scores, experts, weights = self.gate(flat)
        k = experts.shape[1]
        counts = torch.bincount(experts.flatten(), minlength=self.cfg.n_routed_experts)
        if self.training:
            self.load += counts.to(self.load.dtype)
            self.aux_loss = self._sequence_balance_loss(scores, experts, B, T) if self.cfg.seq_aux_loss_alpha > 0 else None
        # dispatch: sort the (token, slot) pairs by expert so each expert sees one contiguous slice
        order = experts.flatten().argsort(stable=True)
        token_of = order // k
        # split, not slices: the backward of E slices adds E zero-filled copies of routed_in's gradient, a
        # split's backward is one cat (the same values: x + 0)
        pieces = flat[token_of].split(counts.tolist())
        outs = [self.experts[e](piece) for e, piece in enumerate(pieces) if len(piece)]
        routed_out = torch.cat(outs) * weights.flatten()[order, None].to(flat.dtype)
        out = torch.zeros_like(flat).index_add_(0, token_of, routed_out)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        return out.view(B, T, H)

    def _sequence_balance_loss(self, scores, experts, B, T) -> torch.Tensor:
        """DeepSeek-V3's complementary sequence-wise balance loss: alpha * sum_i f_i * P_i per sequence."""
        E, k = self.cfg.n_routed_experts, self.cfg.num_experts_per_tok
        probs = (scores / scores.sum(-1, keepdim=True)).view(B, T, E)
        hits = torch.zeros(B, T, E, device=scores.device).scatter_(2, experts.view(B, T, k), 1.0)
        f = hits.sum(1) * E / (k * T)  # (B, E)
        P = probs.mean(1)  # (B, E)
        return self.cfg.seq_aux_loss_alpha * (f * P).sum(-1).mean()


@torch.no_grad()
def update_router_bias(model: nn.Module, speed: float | None = None) -> dict[str, float]:
    """Aux-loss-free balancing: after an optimizer step, raise the bias of under-loaded experts and lower
    that of over-loaded ones by γ, then reset the load counters. Returns the max/mean load ratio
    (1.0 = perfectly even) averaged over MoE layers, for logging. Under torch.distributed the loads are
    summed over ranks first so every rank applies the same update."""
    ratios = []
    for module in model.modules():
        if isinstance(module, MoE):
            load = module.load
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(load)
            if load.sum() == 0:
                continue
            gamma = module.cfg.bias_update_speed if speed is None else speed
            module.gate.e_score_correction_bias += gamma * torch.sign(load.mean() - load)
            ratios.append((load.max() / load.mean()).item())
            load.zero_()
    return {"moe_max_load_ratio": sum(ratios) / len(ratios)} if ratios else {}


def expert_load(model: nn.Module) -> list[list[float]]:
    """Per MoE layer, the fraction of routed tokens each expert received since the last bias update."""
    return [(m.load / m.load.sum().clamp(min=1)).tolist() for m in model.modules() if isinstance(m, MoE)]
