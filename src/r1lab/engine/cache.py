"""The KV cache: per-layer storage for the running sequences, one slot (row) per sequence.

MLA caches, per token and layer, only what DeepSeek-V3 needs for absorbed attention: the normalised kv
latent and the shared, already-rotated RoPE key, side by side in one row of kv_lora_rank +
qk_rope_head_dim values (one tensor also serves as keys and, through its first kv_lora_rank columns, as
values). MHA caches full per-head keys and values, and grouped-query attention those of its KV heads,
both head-major, (slots, heads, length, head_dim) per layer, so a batch's keys are a view that attention's
batched matmuls read in place (a token-major layout made them copy every layer's keys at every step).

Running sequences always occupy slots 0..n-1 (the scheduler moves the last one into a retired one's
slot), so a batch's cache is a plain view, never a gather. Storage grows by doubling, in slots up to
max_slots and in length up to max_len: no per-step concatenation, and no memory held for lengths
nobody asked for.
"""
from __future__ import annotations

import torch

from ..model import ModelConfig


class KVCache:
    def __init__(self, cfg: ModelConfig, max_slots: int, max_len: int, dtype: torch.dtype, device: torch.device,
                 initial_len: int = 256):
        self.cfg, self.max_slots, self.max_len = cfg, max_slots, max_len
        self.dtype, self.device = dtype, device
        self.mla = cfg.attention == "mla"
        self.length_dim = 2 if self.mla else 3  # of a stored tensor: (layers, slots, length, row) or (.., heads, length, d)
        self.slots, self.length = 0, 0
        self.tensors: list[torch.Tensor] = []
        self.ensure(1, min(initial_len, max_len))

    def _row_shapes(self) -> list[tuple[int, ...]]:
        """Shape of one token's entry in each stored tensor (all layers share a tensor); a two-dimensional
        entry (heads, d) is stored head-major."""
        cfg = self.cfg
        if self.mla:
            return [(cfg.kv_lora_rank + cfg.qk_rope_head_dim,)]
        return [(cfg.num_attention_heads, cfg.qk_head_dim), (cfg.num_attention_heads, cfg.v_head_dim)]

    def ensure(self, slots: int, length: int) -> None:
        """Make room for `slots` sequences of `length` tokens, keeping what is stored."""
        if slots <= self.slots and length <= self.length:
            return
        if slots > self.max_slots or length > self.max_len:
            raise ValueError(f"KV cache asked for {slots} x {length}, limit {self.max_slots} x {self.max_len}")
        new_slots = min(self.max_slots, max(slots, 2 * self.slots)) if slots > self.slots else self.slots
        new_len = min(self.max_len, max(length, 2 * self.length)) if length > self.length else self.length
        layers = self.cfg.num_hidden_layers
        # zeros, not empty: attention reads every slot up to the longest sequence and masks the positions past
        # a shorter one with an additive -inf, which does not neutralise NaN/inf left in uninitialised memory
        # (it made whole rows of logits NaN, hence token 0, in about half of the full test runs)
        grown = [torch.zeros(self._shape(layers, new_slots, new_len, row), dtype=self.dtype, device=self.device)
                 for row in self._row_shapes()]
        for old, new in zip(self.tensors, grown):
            new[self._prefix(slice(0, self.slots), self.length)] = old
        self.tensors, self.slots, self.length = grown, new_slots, new_len

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` cached tokens of slot src into slot dst (compaction on retirement)."""
        for t in self.tensors:
            t[self._prefix(dst, length)] = t[self._prefix(src, length)]

    def _shape(self, layers: int, slots: int, length: int, row: tuple[int, ...]) -> tuple[int, ...]:
        return (layers, slots, length, *row) if self.length_dim == 2 else (layers, slots, row[0], length, *row[1:])

    def _prefix(self, slots, length: int) -> tuple:
        """Index of the first `length` tokens of `slots` (an int or a slice) in every layer."""
        return (slice(None), slots) + (slice(None),) * (self.length_dim - 2) + (slice(0, length),)

    @property
    def bytes_per_token(self) -> int:
        """Cache bytes one token occupies, summed over layers."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        per_layer = sum(torch.Size(row).numel() for row in self._row_shapes())
        return self.cfg.num_hidden_layers * per_layer * itemsize

    @property
    def allocated_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)
