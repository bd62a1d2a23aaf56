"""Attention: Multi-head Latent Attention (DeepSeek-V2/V3) and plain multi-head attention for ablations.

Shapes: B batch, T tokens, nh heads. MLA compresses keys and values into one latent per token
(`kv_lora_rank` wide, RMS-normalised) plus one RoPE key shared by all heads (`qk_rope_head_dim`);
the per-head keys and values are up-projected from the latent by `kv_b_proj`. This module is the
training form (latent expanded to full keys/values); the engine decodes in the absorbed form, which
caches only the latent and the shared RoPE key.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, yarn_mscale


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


# ---------------------------------------------------------------- rotary embeddings

def rope_inv_freq(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies for the rotary dims and the cos/sin scale (YaRN when configured)."""
    dim, base = cfg.qk_rope_head_dim, cfg.rope_theta
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    rs = cfg.rope_scaling or {}
    if rs.get("type", rs.get("rope_type")) != "yarn":
        return 1.0 / pos_freqs, 1.0
    factor = rs["factor"]
    orig = rs["original_max_position_embeddings"]
    beta_fast, beta_slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1
    mscale, mscale_all = rs.get("mscale"), rs.get("mscale_all_dim")
    attn_factor = rs.get("attention_factor")
    if attn_factor is None:
        attn_factor = (yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all) if mscale and mscale_all
                       else yarn_mscale(factor))

    def correction_dim(rotations: float) -> float:  # the dim whose wavelength fits `rotations` times in orig
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0) if rs.get("truncate", True) else max(correction_dim(beta_fast), 0)
    high = (min(math.ceil(correction_dim(beta_slow)), dim - 1) if rs.get("truncate", True)
            else min(correction_dim(beta_slow), dim - 1))
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1 - ramp  # 1 = keep the original frequency (high-frequency dims)
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate
    return inv_freq, float(attn_factor)


def rope_cos_sin(cfg: ModelConfig, positions: torch.Tensor, inv_freq: torch.Tensor, scale: float):
    """cos, sin of shape (*positions.shape, rope_dim // 2)."""
    angles = positions.float()[..., None] * inv_freq
    return angles.cos() * scale, angles.sin() * scale


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """Rotate the last dim of x (…, T, rope_dim) with cos/sin (…, T, rope_dim // 2).

    DeepSeek checkpoints store the rotary dims as interleaved pairs (x0, x1), (x2, x3), …; the rotated
    result is written de-interleaved (evens then odds), as transformers does: queries and keys get the
    same permutation, so their dot products are unchanged.
    """
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # tables are fp32; keep bf16 activations bf16
    if interleave:
        x1, x2 = x[..., 0::2], x[..., 1::2]
    else:
        x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


# ---------------------------------------------------------------- attention modules

class MLA(nn.Module):
    """Multi-head Latent Attention. Parameter names match Hugging Face's DeepseekV3Attention."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        nh, H = cfg.num_attention_heads, cfg.hidden_size
        if cfg.q_lora_rank:
            self.q_a_proj = nn.Linear(H, cfg.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, nh * cfg.qk_head_dim, bias=False)
        else:
            self.q_proj = nn.Linear(H, nh * cfg.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(H, cfg.kv_lora_rank + cfg.qk_rope_head_dim, bias=False)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank)
        self.kv_b_proj = nn.Linear(cfg.kv_lora_rank, nh * (cfg.qk_nope_head_dim + cfg.v_head_dim), bias=False)
        self.o_proj = nn.Linear(nh * cfg.v_head_dim, H, bias=False)
        self.softmax_scale = cfg.softmax_scale()

    def query(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, H) -> q_nope (B, nh, T, nope), q_pe (B, nh, T, rope), before RoPE."""
        cfg, (B, T, _) = self.cfg, x.shape
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if cfg.q_lora_rank else self.q_proj(x)
        q = q.view(B, T, cfg.num_attention_heads, cfg.qk_head_dim).transpose(1, 2)
        return q.split([cfg.qk_nope_head_dim, cfg.qk_rope_head_dim], dim=-1)

    def kv_latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, H) -> normalised kv latent (B, T, kv_lora_rank), shared k_pe (B, T, rope) before RoPE."""
        latent, k_pe = self.kv_a_proj_with_mqa(x).split([self.cfg.kv_lora_rank, self.cfg.qk_rope_head_dim], dim=-1)
        return self.kv_a_layernorm(latent), k_pe

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn_mask: torch.Tensor | None = None):
        cfg, (B, T, _) = self.cfg, x.shape
        nh = cfg.num_attention_heads
        q_nope, q_pe = self.query(x)
        latent, k_pe = self.kv_latent(x)
        kv = self.kv_b_proj(latent).view(B, T, nh, cfg.qk_nope_head_dim + cfg.v_head_dim).transpose(1, 2)
        k_nope, v = kv.split([cfg.qk_nope_head_dim, cfg.v_head_dim], dim=-1)
        q_pe = apply_rope(q_pe, cos, sin, cfg.rope_interleave)
        k_pe = apply_rope(k_pe[:, None], cos, sin, cfg.rope_interleave)  # (B, 1, T, rope), shared by all heads
        q = torch.cat([q_nope, q_pe], dim=-1)
        k = torch.cat([k_nope, k_pe.expand(B, nh, T, cfg.qk_rope_head_dim)], dim=-1)
        out = sdpa(q, k, v, attn_mask, self.softmax_scale)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, nh * cfg.v_head_dim))


class MHA(nn.Module):
    """Plain multi-head attention with the same head dims as MLA (RoPE on the last qk_rope_head_dim of each
    head's query and key), for `attention: mha` ablations. Its KV cache holds full per-head keys and values."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        nh, H = cfg.num_attention_heads, cfg.hidden_size
        self.q_proj = nn.Linear(H, nh * cfg.qk_head_dim, bias=False)
        self.k_proj = nn.Linear(H, nh * cfg.qk_head_dim, bias=False)
        self.v_proj = nn.Linear(H, nh * cfg.v_head_dim, bias=False)
        self.o_proj = nn.Linear(nh * cfg.v_head_dim, H, bias=False)
        self.softmax_scale = cfg.softmax_scale()

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x (B, T, H) -> q, k (B, nh, T, qk_head_dim) with RoPE applied, v (B, nh, T, v_head_dim)."""
        cfg, (B, T, _) = self.cfg, x.shape
        nh = cfg.num_attention_heads
        q = self.q_proj(x).view(B, T, nh, cfg.qk_head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, nh, cfg.qk_head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, nh, cfg.v_head_dim).transpose(1, 2)
        split = [cfg.qk_nope_head_dim, cfg.qk_rope_head_dim]
        (q_nope, q_pe), (k_nope, k_pe) = q.split(split, dim=-1), k.split(split, dim=-1)
        q = torch.cat([q_nope, apply_rope(q_pe, cos, sin, cfg.rope_interleave)], dim=-1)
        k = torch.cat([k_nope, apply_rope(k_pe, cos, sin, cfg.rope_interleave)], dim=-1)
        return q, k, v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn_mask: torch.Tensor | None = None):
        B, T, _ = x.shape
        q, k, v = self.qkv(x, cos, sin)
        out = sdpa(q, k, v, attn_mask, self.softmax_scale)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


def sdpa(q, k, v, attn_mask, scale):
    """Causal attention; attn_mask (bool, True = may attend) replaces the causal mask when given.
    MLA's values are narrower than its queries/keys (v_head_dim < qk_head_dim); PyTorch's fused CPU kernel
    wants one head size, so on CPU the values are zero-padded and the padding cut off again (the math
    fallback it avoids takes about twice as long in the forward pass; same result to 1e-6)."""
    dv = v.shape[-1]
    if dv < q.shape[-1] and q.device.type == "cpu":
        v = F.pad(v, (0, q.shape[-1] - dv))
    if attn_mask is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    return out[..., :dv]
