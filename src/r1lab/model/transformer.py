"""The DeepSeek-V3 network: embeddings, decoder blocks (the first k dense, the rest MoE), final norm,
LM head, and optional multi-token prediction (MTP) modules.

Module names mirror Hugging Face's DeepseekV3ForCausalLM (`model.layers.3.self_attn.kv_b_proj.weight`,
…) so a state dict is a checkpoint; only the MTP modules live under `mtp.*` here and are renamed to
`model.layers.{num_hidden_layers + i}.*` on disk, as DeepSeek-V3 stores them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MHA, MLA, RMSNorm, rope_cos_sin, rope_inv_freq
from .config import ModelConfig
from .moe import MLP, MoE


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = MLA(cfg) if cfg.attention == "mla" else MHA(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MoE(cfg) if cfg.is_moe_layer(layer) else MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, cos, sin, attn_mask=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class MTPModule(nn.Module):
    """One multi-token-prediction depth: combines the previous depth's hidden state at position i with the
    embedding of token i+d, runs one block, and predicts token i+d+1 through the shared head."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.enorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.block = Block(cfg, layer)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)  # "shared_head.norm" on disk

    def forward(self, hidden, next_embeds, cos, sin, attn_mask=None):
        x = self.eh_proj(torch.cat([self.enorm(next_embeds), self.hnorm(hidden)], dim=-1))
        return self.block(x, cos, sin, attn_mask)


class Decoder(nn.Module):
    """Holds what Hugging Face calls `model.*`: embed_tokens, layers, norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.mtp = nn.ModuleList(MTPModule(cfg, cfg.num_hidden_layers + i) for i in range(cfg.num_nextn_predict_layers))
        inv_freq, self.rope_scale = rope_inv_freq(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                # GPT-2's scaled init on projections that write into the residual stream
                residual_out = name.endswith(("o_proj.weight", "down_proj.weight"))
                scale = 1 / math.sqrt(2 * self.config.num_hidden_layers) if residual_out else 1.0
                p.normal_(0.0, std * scale)
        for m in self.modules():
            if isinstance(m, MoE):
                m.gate.e_score_correction_bias.zero_()

    def rope(self, positions: torch.Tensor):
        return rope_cos_sin(self.config, positions, self.inv_freq, self.rope_scale)

    def hidden_states(self, input_ids: torch.Tensor, position_ids=None, attn_mask=None):
        """input_ids (B, T) -> last hidden state before the final norm (B, T, H), and cos/sin."""
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device)
        cos, sin = self.rope(position_ids)
        if cos.dim() == 3:  # per-sequence positions: broadcast over heads
            cos, sin = cos[:, None], sin[:, None]
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin, attn_mask)
        return x, (cos, sin)

    def forward(self, input_ids: torch.Tensor, position_ids=None, attn_mask=None, select=None) -> torch.Tensor:
        """input_ids (B, T) -> logits (B, T, vocab). attn_mask: optional bool (B, 1, T, T), True = may attend.
        select: optional bool (B, T); then only those positions' logits, flattened to (n, vocab) (a loss that
        reads a few positions skips the head's matmul on the rest)."""
        x, _ = self.hidden_states(input_ids, position_ids, attn_mask)
        if select is not None:
            x = x[select]
        return self.lm_head(self.model.norm(x))

    def loss(self, input_ids, labels, position_ids=None, attn_mask=None) -> tuple[torch.Tensor, dict[str, float]]:
        """Next-token cross-entropy (labels aligned with input_ids, -100 = ignore), plus the MTP loss
        (weight λ) and the MoE sequence balance loss when configured. Returns (total, parts for logging)."""
        cfg = self.config
        h, (cos, sin) = self.hidden_states(input_ids, position_ids, attn_mask)
        logits = self.lm_head(self.model.norm(h))
        main = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        total, parts = main, {"lm_loss": main.item()}
        if self.mtp and self.training:
            mtp_losses = []
            for d, module in enumerate(self.mtp, start=1):
                # depth d at position i sees token i+d and predicts token i+d+1
                T = input_ids.shape[1] - d
                if T <= 1:
                    break
                emb = self.model.embed_tokens(input_ids[:, d:])
                mask = attn_mask[..., :T, :T] if attn_mask is not None else None
                h = module(h[:, :T], emb, cos[..., :T, :], sin[..., :T, :], mask)
                logits_d = self.lm_head(module.norm(h))
                mtp_losses.append(F.cross_entropy(logits_d[:, :-1].flatten(0, 1).float(), labels[:, d + 1:].flatten(),
                                                  ignore_index=-100))
            if mtp_losses:
                mtp = torch.stack(mtp_losses).mean()
                total = total + cfg.mtp_loss_weight * mtp
                parts["mtp_loss"] = mtp.item()
        aux = [m.aux_loss for m in self.modules() if isinstance(m, MoE) and m.aux_loss is not None]
        if aux:
            aux_total = torch.stack(aux).sum()
            total = total + aux_total
            parts["balance_loss"] = aux_total.item()
        return total, parts

    # ---------------------------------------------------------------- accounting

    def param_count(self) -> dict[str, int]:
        """total: every parameter; activated: those a token touches (shared + top-k routed experts only);
        embedding: the input embedding table (a lookup, not a matmul)."""
        cfg = self.config
        total = sum(p.numel() for p in self.parameters())
        expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
        n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers)) + (len(self.mtp) if cfg.mlp == "moe" else 0)
        inactive = n_moe * (cfg.n_routed_experts - cfg.num_experts_per_tok) * expert
        return {"total": total, "activated": total - inactive, "embedding": self.model.embed_tokens.weight.numel()}

    def flops_per_token(self, seq_len: int, training: bool = True) -> float:
        """Matmul FLOPs per token: 2 per activated non-embedding weight forward (6 with the backward pass),
        plus attention scores and mixing over a context of seq_len (PaLM's accounting, no causal discount).
        MTP modules count only in training."""
        cfg = self.config
        counts = self.param_count()
        n = counts["activated"] - counts["embedding"]
        layers = cfg.num_hidden_layers
        if not training and self.mtp:
            per_mtp = sum(p.numel() for p in self.mtp[0].parameters())
            if cfg.mlp == "moe":
                per_mtp -= (cfg.n_routed_experts - cfg.num_experts_per_tok) * 3 * cfg.hidden_size * cfg.moe_intermediate_size
            n -= per_mtp * len(self.mtp)
        else:
            layers += len(self.mtp)
        attn = 2 * layers * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim) * seq_len
        return (3 if training else 1) * (2 * n + attn)
