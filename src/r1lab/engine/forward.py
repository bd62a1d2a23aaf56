"""The model's forward pass for generation: the same network as r1lab.model, but attending over the KV
cache, with MLA in its absorbed form (DeepSeek-V2 §2.1.2), and with weights laid out for few, large ops.

Absorbed MLA. For head h, the training form builds k_nope = W_UK[h] c and v = W_UV[h] c from the cached
latent c, so
    q_nope · k_nope = (W_UK[h]^T q_nope) · c                 (the query moves into latent space)
    softmax(..) v  = W_UV[h] (softmax(..) c)                  (the value projection moves after attention)
and attention runs over the latents themselves: all heads share one "key" row [c, k_pe] per token (multi-
query attention with head dim kv_lora_rank + qk_rope_head_dim, whose first kv_lora_rank columns are the
value); the cache holds nothing else. W_UK and W_UV stay separate per-head matmuls (as in DeepSeek's
reference code) rather than being folded into q_proj / o_proj, which would cost more FLOPs whenever
kv_lora_rank exceeds the head dims.

Layouts derived from the live parameters by `refresh()` (again by `maybe_refresh()` when an optimizer
step or load_state_dict changed them in place):
  * one input projection per MLA layer, rows ordered [q_nope | latent | q_pe | k_pe] (or [q_lora latent |
    latent | k_pe]), the softmax scale folded into the query rows, the RoPE dims reordered into (real,
    imaginary) pairs, so RoPE is one in-place complex multiply for every head and the key at once;
  * gate and up projections concatenated; routed experts stacked (E, in, out) for grouped matmuls.
The cached k_pe is therefore in pair order, not the checkpoint's order; only this module reads it.

Shapes: B sequences, T new tokens each, L cached tokens attended to, nh heads, R kv_lora_rank, P rope dim.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..model import ModelConfig, Transformer
from ..model.lora import merged_view
from ..model.moe import MoE, route
from .cache import KVCache


@dataclass
class Norm:
    """An RMSNorm's live weight, its eps, and the shape F.rms_norm wants."""

    weight: torch.Tensor
    eps: float
    shape: tuple[int, ...]

    @classmethod
    def of(cls, module: nn.Module) -> "Norm":
        return cls(module.weight, module.eps, (module.weight.shape[0],))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The model's RMSNorm: float32 statistics, weight applied in the input dtype."""
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.shape, self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), self.shape, eps=self.eps).to(x.dtype)


@dataclass
class Layer:
    """What one decoder layer's pass touches: references to live parameters (so in-place updates show
    through) and derived layouts (rebuilt by Runner.refresh). None where the layer has no such part."""

    attn: nn.Module
    attn_norm: Norm
    mlp_norm: Norm
    o_proj: torch.Tensor
    # MLA
    w_in: torch.Tensor | None = None  # x -> [q_nope | latent | q_pe | k_pe], or [q_lora latent | latent | k_pe]
    w_q: torch.Tensor | None = None  # with q_lora: normalised q latent -> [q_nope | q_pe]
    q_norm: Norm | None = None
    kv_norm: Norm | None = None
    w_uk: torch.Tensor | None = None  # (nh, nope, R): q_nope -> latent space
    w_uv: torch.Tensor | None = None  # (nh, R, dv): attended latent -> head output
    # dense MLP or shared experts
    gate_up: torch.Tensor | None = None  # [gate; up] (2I, H)
    down: torch.Tensor | None = None  # (H, I)
    # routed experts
    router: torch.Tensor | None = None  # (E, H) router weight
    router_bias: torch.Tensor | None = None  # (E,) e_score_correction_bias (updated in place by balancing)
    experts_gate_up: torch.Tensor | None = None  # (E, H, 2I)
    experts_down: torch.Tensor | None = None  # (E, I, H)
    expert_gate_up: list[torch.Tensor] | None = None  # the same, one view per expert (no select op per use)
    expert_down: list[torch.Tensor] | None = None


def rope_pairs(cfg: ModelConfig) -> torch.Tensor:
    """Order of the P rope dims that puts each rotated pair side by side: (0,1),(2,3).. when the checkpoint
    interleaves them, (0,P/2),(1,P/2+1).. when it stores halves."""
    P = cfg.qk_rope_head_dim
    if cfg.rope_interleave:
        return torch.arange(P)
    return torch.stack([torch.arange(P // 2), torch.arange(P // 2, P)], dim=1).flatten()


def derive_layer(block: nn.Module, cfg: ModelConfig) -> Layer:
    attn, mlp = block.self_attn, block.mlp
    layer = Layer(attn=attn, attn_norm=Norm.of(block.input_layernorm), mlp_norm=Norm.of(block.post_attention_layernorm),
                  o_proj=attn.o_proj.weight)
    if cfg.attention == "mla":
        nh, nope, P, dv, R = (cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim,
                              cfg.kv_lora_rank)
        pairs = rope_pairs(cfg)
        kv_b = attn.kv_b_proj.weight.view(nh, nope + dv, R)
        q_weight = (attn.q_b_proj if cfg.q_lora_rank else attn.q_proj).weight
        wq = q_weight.view(nh, nope + P, -1) * attn.softmax_scale  # the scale of q.k, folded into the query
        q_nope_rows, q_pe_rows = wq[:, :nope].flatten(0, 1), wq[:, nope:][:, pairs].flatten(0, 1)
        kv_a = attn.kv_a_proj_with_mqa.weight
        latent_rows, k_pe_rows = kv_a[:R], kv_a[R:][pairs]
        if cfg.q_lora_rank:
            layer.w_in = torch.cat([attn.q_a_proj.weight, latent_rows, k_pe_rows])
            layer.w_q, layer.q_norm = torch.cat([q_nope_rows, q_pe_rows]), Norm.of(attn.q_a_layernorm)
        else:
            layer.w_in = torch.cat([q_nope_rows, latent_rows, q_pe_rows, k_pe_rows])
        layer.kv_norm = Norm.of(attn.kv_a_layernorm)
        layer.w_uk = kv_b[:, :nope].contiguous()
        layer.w_uv = kv_b[:, nope:].transpose(1, 2).contiguous()

    def fused(m):  # [gate; up] (2I, H)
        return torch.cat([m.gate_proj.weight, m.up_proj.weight])

    if isinstance(mlp, MoE):
        layer.router, layer.router_bias = mlp.gate.weight, mlp.gate.e_score_correction_bias
        layer.experts_gate_up = torch.stack([fused(e).t() for e in mlp.experts])
        layer.experts_down = torch.stack([e.down_proj.weight.t() for e in mlp.experts])
        layer.expert_gate_up, layer.expert_down = list(layer.experts_gate_up), list(layer.experts_down)
        if mlp.shared_experts is not None:
            layer.gate_up, layer.down = fused(mlp.shared_experts), mlp.shared_experts.down_proj.weight
    else:
        layer.gate_up, layer.down = fused(mlp), mlp.down_proj.weight
    return layer


def attend_heads(q, k, v, k_cache, v_cache, slot0: int, where, bias, scale: float, kv_len: int) -> torch.Tensor:
    """Attention of the new tokens' queries q (B, nh, T, d) over a head-major layer cache (slots, kvh, length,
    d), after storing their keys and values k, v (B, kvh, T, d) at the flat rows `where` (slot * capacity +
    position). Query heads j*g..(j+1)*g-1 share KV head j (g = nh / kvh: 1 for MHA), and attend together in one
    batched matmul per layer, reading the cache in place. bias (B, 1, T, L) is the causal mask. Returns the
    heads' outputs side by side, (B, T, nh * dv), for the output projection."""
    B, nh, T, d = q.shape
    out_dtype = q.dtype  # attention runs in the cache's dtype (float32 on CPU, see Engine)
    q, k, v = q.to(k_cache.dtype), k.to(k_cache.dtype), v.to(k_cache.dtype)
    kvh, capacity = k_cache.shape[1], k_cache.shape[2]
    slot, position = where // capacity, where % capacity
    k_cache.transpose(1, 2)[slot, position] = k.transpose(1, 2).reshape(B * T, kvh, d)
    v_cache.transpose(1, 2)[slot, position] = v.transpose(1, 2).reshape(B * T, kvh, -1)
    rows = slice(slot0 * kvh, (slot0 + B) * kvh)  # the batch's (slot, KV head) pairs, read in place
    keys, values = k_cache.flatten(0, 1)[rows, :kv_len], v_cache.flatten(0, 1)[rows, :kv_len]  # (B * kvh, L, d)
    group = nh // kvh
    scores = torch.bmm(q.reshape(B * kvh, group * T, d), keys.transpose(1, 2)).mul_(scale)  # (B * kvh, g*T, L)
    scores.view(B, kvh, group, T, kv_len).add_(bias[:, :, None])
    probs = scores.float().softmax(-1).to(q.dtype)
    out = torch.bmm(probs, values).view(B, nh, T, -1)  # (B, nh, T, dv)
    return out.transpose(1, 2).reshape(B, T, -1).to(out_dtype)


def swiglu(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    gate, up = F.linear(x, gate_up).split_with_sizes([gate_up.shape[0] // 2] * 2, -1)
    return F.linear(F.silu(gate).mul_(up), down)


def _grouped_mm_works(device: torch.device, dtype: torch.dtype) -> bool:
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        a, b = torch.ones(3, 8, device=device, dtype=dtype), torch.ones(2, 8, 8, device=device, dtype=dtype)
        out = torch._grouped_mm(a, b, offs=torch.tensor([1, 3], device=device, dtype=torch.int32))
        return bool((out == 8).all())
    except (RuntimeError, NotImplementedError, TypeError):
        return False


class LiveWeights:
    """What both runners (this module's and gqa.py's) share: decode layouts derived from the model's live
    parameters by `refresh()`, redone by `maybe_refresh()` when a parameter changed in place."""

    model: nn.Module
    _versions: list[tuple[int, int]]

    def _sources(self) -> list[torch.Tensor]:
        """The parameters the layers' references and derived weights come from."""
        return list(self.model.parameters())

    def refresh(self) -> None:
        raise NotImplementedError

    def _remember_versions(self) -> None:
        self._versions = [(p.data_ptr(), p._version) for p in self._sources()]

    def maybe_refresh(self) -> bool:
        """Refresh if a parameter was modified in place (optimizer step, load_state_dict) or replaced since
        the last refresh. Changes made through `.data` are invisible here: call refresh()."""
        if [(p.data_ptr(), p._version) for p in self._sources()] != self._versions:
            self.refresh()
            return True
        return False


class Runner(LiveWeights):
    """Runs the model over (B, T) new tokens per step, writing their keys/values into the cache."""

    def __init__(self, model: Transformer, max_len: int):
        self.model, self.cfg = model, model.config
        cfg = self.cfg
        self.mla = cfg.attention == "mla"
        param = next(model.parameters())
        with torch.inference_mode():
            cos, sin = model.rope(torch.arange(max_len, device=param.device))  # (max_len, P / 2), YaRN-scaled
            self.rot = torch.complex(cos.float(), sin.float())
            self.cos, self.sin = cos.to(param.dtype), sin.to(param.dtype)  # for MHA (the module's own RoPE)
        # RoPE as an in-place complex multiply needs float32/64 and even offsets and row widths
        nh, nope, R = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.kv_lora_rank
        P, ql = cfg.qk_rope_head_dim, cfg.q_lora_rank
        widths = [ql + R + P, ql + R, nh * (nope + P), nh * nope] if ql else [nh * nope + R + (nh + 1) * P, nh * nope + R]
        self.complex_rope = param.dtype in (torch.float32, torch.float64) and all(w % 2 == 0 for w in widths)
        self.grouped_mm = _grouped_mm_works(param.device, param.dtype)
        self.layers: list[Layer] = []
        self._versions: list[tuple[int, int]] = []
        self.refresh()

    # ---------------------------------------------------------------- derived weights

    @torch.inference_mode()
    def refresh(self) -> None:
        """Re-derive the decode layouts from the model's current parameters."""
        model = self.model
        with merged_view(model):  # LoRA: decode with the adapted weights W + scaling * B @ A
            self.layers = [derive_layer(block, self.cfg) for block in model.model.layers]
            self.embed, self.lm_head = model.model.embed_tokens.weight, model.lm_head.weight
            self.final_norm = Norm.of(model.model.norm)
        self._remember_versions()

    # ---------------------------------------------------------------- the pass

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, start: torch.Tensor, slot0: int, last: torch.Tensor | None,
                cache: KVCache, kv_len: int, all_positions: bool = False) -> torch.Tensor:
        """ids (B, T) are the new tokens of the sequences in slots slot0..slot0+B-1, whose first new token
        sits at position start[b]. Writes their cache entries, attends over cache positions < kv_len
        (causally), and returns the logits (B, V) at position `last[b]` of each row (the last, if None), or
        with all_positions those of every new token (B, T, V)."""
        B, T = ids.shape
        device = ids.device
        positions = start[:, None] + torch.arange(T, device=device) if T > 1 else start[:, None]  # (B, T)
        # causal mask as an additive bias, built once for all layers. Padded rows of a prefill batch attend
        # to junk; their outputs are never read.
        bias = torch.zeros(B, T, kv_len, dtype=cache.dtype, device=device)
        bias.masked_fill_(torch.arange(kv_len, device=device) > positions[..., None], float("-inf"))
        # where each new token's cache row goes, in a layer's cache viewed as (slots * capacity, row)
        where = ((torch.arange(slot0, slot0 + B, device=device) * cache.length)[:, None] + positions).view(-1)
        if self.mla:
            bias = bias if T == 1 else bias[:, :, None]  # (B, 1, L) for baddbmm, or (B, T, 1, L) to broadcast
            rot = self.rot[positions][:, :, None]  # (B, T, 1, P/2)
        else:
            bias, cos, sin = bias[:, None], self.cos[positions][:, None], self.sin[positions][:, None]
        x = F.embedding(ids, self.embed)
        for i, layer in enumerate(self.layers):
            h = layer.attn_norm(x)
            if self.mla:
                x = x + self._mla(layer, h, rot, cache.tensors[0][i], where, bias, slot0, kv_len)
            else:
                x = x + self._mha(layer, h, cos, sin, cache.tensors[0][i], cache.tensors[1][i], where, bias, slot0, kv_len)
            h = layer.mlp_norm(x)
            x = x + (self._moe(layer, h) if layer.router is not None else swiglu(h, layer.gate_up, layer.down))
        if all_positions:
            return F.linear(self.final_norm(x), self.lm_head)
        x = x.view(B, -1) if T == 1 else x[torch.arange(B, device=device), last]
        return F.linear(self.final_norm(x), self.lm_head)

    def _rope(self, x: torch.Tensor, rot: torch.Tensor) -> None:
        """Rotate x (..., P) in place, its dims being (real, imaginary) pairs, by rot (..., P/2) complex."""
        pairs = x.view(*x.shape[:-1], -1, 2)
        if self.complex_rope:
            torch.view_as_complex(pairs).mul_(rot)
        else:  # no complex half types: the same rotation in real arithmetic
            re, im = pairs.float().unbind(-1)
            pairs.copy_(torch.stack([re * rot.real - im * rot.imag, re * rot.imag + im * rot.real], dim=-1))

    def _mla(self, layer: Layer, h, rot, kv_cache, where, bias, slot0, kv_len):
        cfg = self.cfg
        B, T, _ = h.shape
        nh, nope, R = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.kv_lora_rank
        P, ql = cfg.qk_rope_head_dim, cfg.q_lora_rank
        proj = F.linear(h, layer.w_in)
        if ql:  # [q_lora latent | latent | k_pe], then the q latent -> [q_nope | q_pe]
            q_latent, latent, k_pe = proj.split_with_sizes([ql, R, P], -1)
            q_nope, q_pe = F.linear(layer.q_norm(q_latent), layer.w_q).split_with_sizes([nh * nope, nh * P], -1)
            self._rope(q_pe.view(B, T, nh, P), rot)
            self._rope(k_pe, rot.squeeze(2))
        else:  # [q_nope | latent | q_pe | k_pe]: RoPE for every query head and the shared key at once
            q_nope, latent, pes = proj.split_with_sizes([nh * nope, R, (nh + 1) * P], -1)
            self._rope(pes.view(B, T, nh + 1, P), rot)
            q_pe, k_pe = pes.split_with_sizes([nh * P, P], -1)
        entry = torch.cat([layer.kv_norm(latent), k_pe], -1).view(B * T, R + P).to(kv_cache.dtype)
        kv_cache.view(-1, R + P).index_copy_(0, where, entry)
        # query into latent space, per head: (nh, B*T, nope) @ (nh, nope, R)
        q_latent = torch.bmm(q_nope.reshape(B * T, nh, nope).transpose(0, 1), layer.w_uk)
        q = torch.cat([q_latent.transpose(0, 1), q_pe.reshape(B * T, nh, P)], dim=-1).to(kv_cache.dtype)  # (B*T, nh, R+P)
        # multi-query attention over latents: the T * nh query rows of a sequence share one key row per token
        kv = kv_cache[slot0:slot0 + B, :kv_len]  # (B, L, R + P)
        if T == 1:
            scores = torch.baddbmm(bias, q.view(B, nh, R + P), kv.transpose(1, 2))  # (B, nh, L)
        else:
            scores = torch.bmm(q.view(B, T * nh, R + P), kv.transpose(1, 2)).view(B, T, nh, kv_len).add_(bias)
        probs = scores.float().softmax(-1).to(kv.dtype).view(B, T * nh, kv_len)
        out = torch.bmm(probs, kv[..., :R]).to(layer.w_uv.dtype)  # (B, T * nh, R): attention-weighted latents
        out = torch.bmm(out.view(B * T, nh, R).transpose(0, 1), layer.w_uv)  # (nh, B*T, dv): the values, per head
        return F.linear(out.transpose(0, 1).reshape(B, T, -1), layer.o_proj)

    def _mha(self, layer: Layer, h, cos, sin, k_cache, v_cache, where, bias, slot0, kv_len):
        q, k, v = layer.attn.qkv(h, cos, sin)  # (B, nh, T, d), the module's own projections and RoPE
        return F.linear(attend_heads(q, k, v, k_cache, v_cache, slot0, where, bias, layer.attn.softmax_scale, kv_len),
                        layer.o_proj)

    def _route(self, layer: Layer, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's router (r1lab.model.moe.route): (N, k) expert ids and weights before normalisation
        and scaling."""
        _, experts, weights = route(flat, layer.router, layer.router_bias, self.cfg)
        return experts, weights

    def _moe(self, layer: Layer, h: torch.Tensor) -> torch.Tensor:
        """MoE.forward without its training bookkeeping (expert-load counters, balance loss), with the routed
        experts as two grouped matmuls over the (token, expert) pairs sorted by expert."""
        cfg = self.cfg
        shape = h.shape
        flat = h.view(-1, shape[-1])
        experts, weights = self._route(layer, flat)
        out = swiglu(flat, layer.gate_up, layer.down) if layer.gate_up is not None else None
        if flat.shape[0] == 1:  # one token (batch-1 decode): just its k experts, no dispatch
            weights = weights[0].tolist()
            scale = cfg.routed_scaling_factor / (sum(weights) + 1e-20 if cfg.norm_topk_prob else 1.0)
            for e, weight in zip(experts[0].tolist(), weights):
                gate_up = torch.mm(flat, layer.expert_gate_up[e])
                gate, up = gate_up.split_with_sizes([gate_up.shape[-1] // 2] * 2, -1)
                routed = torch.mm(F.silu(gate).mul_(up), layer.expert_down[e])
                out = routed.mul_(weight * scale) if out is None else out.add_(routed, alpha=weight * scale)
            return out.view(shape)
        if cfg.norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        weights = weights * cfg.routed_scaling_factor
        k = experts.shape[1]
        order = experts.flatten().argsort(stable=True)
        token_of = order // k
        counts = torch.bincount(experts.flatten(), minlength=layer.experts_down.shape[0])
        gate_up = self._grouped(flat[token_of], layer.experts_gate_up, counts)
        gate, up = gate_up.split_with_sizes([gate_up.shape[-1] // 2] * 2, -1)
        routed = self._grouped(F.silu(gate).mul_(up), layer.experts_down, counts)
        routed = routed * weights.flatten()[order, None].to(routed.dtype)
        out = torch.zeros_like(flat) if out is None else out
        return out.index_add_(0, token_of, routed).view(shape)

    def _grouped(self, x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Rows of x (sorted by expert, counts[e] rows for expert e) times their expert's weight (E, in, out)."""
        if self.grouped_mm:
            try:
                return torch._grouped_mm(x, weight, offs=counts.cumsum(0).to(torch.int32))
            except RuntimeError:  # a private op: some backends reject some shapes or dtypes
                self.grouped_mm = False
        out, start = x.new_empty(x.shape[0], weight.shape[-1]), 0
        for e, n in enumerate(counts.tolist()):
            if n:
                torch.mm(x[start:start + n], weight[e], out=out[start:start + n])
                start += n
        return out
