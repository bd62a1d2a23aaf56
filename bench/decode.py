"""Decode throughput: r1lab's engine against transformers' generate, same checkpoint, same prompts.

For each preset (random weights), the model is saved to disk once and loaded from there by both:
r1lab.load(dir) -> Engine.generate, and AutoModelForCausalLM.from_pretrained(dir).generate. Greedy, CPU (or --device cuda),
the same torch thread count, exactly --new-tokens new tokens per prompt (EOS ignored / suppressed), batch
1 and batch 32 (prompts of mixed lengths; transformers gets them left-padded); --device cuda runs both on
the GPU (scripts/gpu_check.sh). Precision: r1lab as
`r1lab serve` picks it (--dtype auto: bf16 weights where the CPU has bf16 units and the model is wide
enough to gain, else fp32); transformers twice, in the checkpoint's dtype (fp32, its default for these
folders: ratio_b*) and in bf16 (ratio_vs_hf_bf16_b*), so both "each side's default" and "each side at
the other precision" are on the record. Time = the best of --repeats runs (the runs alternate), prefill
included; the CPU time of that run is reported too, being steadier than wall time on a busy machine.
Also reports the KV-cache bytes per token of the engine's actual cache tensors for MLA and for the same
model with attention=mha.

The "qwen2-30m" preset is an open-model baseline: a Qwen2ForCausalLM of about 30M parameters with
grouped-query attention (8 query heads, 2 KV heads), built by transformers with random weights and run
by r1lab through its Qwen2 family and grouped-query KV cache (its KV bytes per token are those of that
cache; there is no MLA/MHA pair for it).

    python bench/decode.py                       # the three presets, about 5-6 minutes on 2 cores
    python bench/decode.py --presets qwen2-30m
    python bench/decode.py --presets cpu-tiny --repeats 1
    python bench/decode.py --threads 2          # both engines multi-threaded

    python bench/decode.py --spec ngram draft   # also r1lab with speculative decoding (docs/speculative.md)

--spec adds, per preset and batch size, r1lab with prompt lookup and/or a draft model (--draft CKPT, or the
target's first --draft-layers layers) against plain r1lab and transformers' best of fp32 and bf16, with the
acceptance rate, the tokens per verification forward and the share of greedy sequences equal to plain
r1lab's (the {kind}_* keys of each preset in the JSON).

Prints a table, then as the last line one JSON object. ratio_b1 / ratio_b32 are the minimum over the
presets (per-preset figures are in "presets").
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def prompts_for(vocab: int, n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(16, 49, (n,), generator=g).tolist()
    return [torch.randint(7, vocab, (length,), generator=g).tolist() for length in lengths]  # 0..6 are special


class Timer:
    """Best-of-N wall time and the CPU time of that same run. The CPU time (this process, all threads) is
    less disturbed by other programs on a busy machine; both are reported."""

    def __init__(self):
        self.wall, self.cpu, self.out = float("inf"), float("inf"), None

    def run(self, fn) -> None:
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        w, c = time.perf_counter() - w, time.process_time() - c
        if w < self.wall:
            self.wall, self.cpu, self.out = w, c, out


def load_ours(folder: Path, dtype: str, device: str, layers: int | None = None):
    import r1lab
    from r1lab.engine.precision import serving_dtype

    model, tokenizer = r1lab.load(folder)
    if layers is not None:  # a self-speculative draft: the model's first `layers` layers, then its own head
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
    model.to(device=device, dtype=serving_dtype(dtype, model.config.hidden_size, device)).eval()
    return model, tokenizer


def make_drafter(kind: str | None, folder: Path, args):
    """None (plain decoding), prompt lookup ("ngram") or a draft model ("draft": --draft, or by default the
    target's first --draft-layers layers)."""
    from r1lab.engine.speculative import ModelDrafter, NgramDrafter

    if kind is None:
        return None
    if kind == "ngram":
        return NgramDrafter(k=args.spec_k, max_n=args.ngram_max, min_n=args.ngram_min)
    if args.draft:
        return ModelDrafter(load_ours(Path(args.draft), args.dtype, args.device)[0], k=args.spec_k)
    return ModelDrafter(load_ours(folder, args.dtype, args.device, args.draft_layers)[0], k=args.spec_k)


def ours(folder: Path, prompts: list[list[int]], new_tokens: int, dtype: str, device: str = "cpu", drafter=None):
    """A function generating for `prompts` with r1lab's engine (warmed up), returning token id lists. dtype as
    `r1lab serve --dtype` (auto: bf16 where the device has bf16 units and the model is wide enough to gain).
    drafter: speculative decoding with it (r1lab.engine.speculative)."""
    from r1lab.engine import Engine, SamplingParams

    model, tokenizer = load_ours(folder, dtype, device)
    engine = Engine(model, tokenizer, max_running=max(len(prompts), 1), drafter=drafter)
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    engine.generate(prompts[:1], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))  # warm-up

    def go():
        return [c.token_ids for c in engine.generate(prompts, params)]

    go.kv_bytes_per_token = engine.cache.bytes_per_token
    go.engine = engine
    go.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return go


def theirs(folder: Path, prompts: list[list[int]], new_tokens: int, pad_id: int, dtype: torch.dtype, device: str = "cpu"):
    """The same with transformers' generate (prompts left-padded, EOS suppressed by min_new_tokens)."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    T = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (T - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts], device=device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id,
                  temperature=None, top_p=None)

    def go():
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, T:].tolist()

    with torch.inference_mode():
        model.generate(input_ids=ids[:1], attention_mask=mask[:1], **dict(kwargs, max_new_tokens=4, min_new_tokens=4))
    go.experts_implementation = getattr(model.config, "_experts_implementation", None)
    return go


def kv_bytes_per_token(name: str, vocab: int, attention: str) -> int:
    """Bytes per token of the engine's actual cache tensors (all layers), after a short generation."""
    from r1lab.engine import Engine, SamplingParams
    from r1lab.model import Transformer, preset

    model = Transformer(preset(name, vocab_size=vocab, attention=attention)).eval()
    engine = Engine(model, None, max_running=2)
    engine.generate([[7, 8, 9]], SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True))
    return engine.cache.bytes_per_token


QWEN2_30M = dict(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=9, num_attention_heads=8,
                 num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True)


def qwen2_folder(folder: Path) -> tuple[Path, int]:
    """A random ~30M-parameter Qwen2ForCausalLM saved by transformers; (folder, vocab size)."""
    import transformers

    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**QWEN2_30M)).eval()
    with torch.no_grad():  # transformers' init leaves biases at zero; give them values, as trained ones have
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.02)
    model.save_pretrained(folder)
    return folder, QWEN2_30M["vocab_size"]


def bench_preset(name: str, args, workdir: Path) -> dict:
    from r1lab.model import Transformer, preset, save_checkpoint

    if name == "qwen2-30m":
        folder, vocab = qwen2_folder(workdir / name)
    else:
        torch.manual_seed(0)
        cfg = preset(name)
        model = Transformer(cfg).eval()
        folder = save_checkpoint(model, None, workdir / name)
        vocab = cfg.vocab_size
        del model
    prompts = prompts_for(vocab, args.batch)
    row = {"preset": name}
    for batch in (1, args.batch):
        batch_prompts = prompts[:batch]
        run_ours = ours(folder, batch_prompts, args.new_tokens, args.dtype, args.device)
        # transformers in the checkpoint's dtype (fp32: what from_pretrained gives by default) and in bf16
        run_hf, run_hf16 = (theirs(folder, batch_prompts, args.new_tokens, 2, dt, args.device)
                            for dt in (torch.float32, torch.bfloat16))
        t_ours, t_hf, t_hf16 = Timer(), Timer(), Timer()
        for _ in range(args.repeats):  # alternate, so a burst of load elsewhere hits all alike
            t_ours.run(run_ours)
            t_hf.run(run_hf)
            t_hf16.run(run_hf16)
        assert all(len(t) == args.new_tokens for t in t_ours.out + t_hf.out + t_hf16.out)
        n = batch * args.new_tokens
        row["ours_dtype"] = run_ours.dtype
        row[f"ours_tps_b{batch}"] = n / t_ours.wall
        row[f"hf_tps_b{batch}"] = n / t_hf.wall
        row[f"hf_bf16_tps_b{batch}"] = n / t_hf16.wall
        row[f"ratio_b{batch}"] = t_hf.wall / t_ours.wall
        row[f"ratio_vs_hf_bf16_b{batch}"] = t_hf16.wall / t_ours.wall
        row[f"cpu_time_ratio_b{batch}"] = t_hf.cpu / t_ours.cpu
        for kind in args.spec:  # r1lab with a drafter, against r1lab plain (timed after the others: see --spec)
            run_spec = ours(folder, batch_prompts, args.new_tokens, args.dtype, args.device, make_drafter(kind, folder, args))
            t_spec = Timer()
            for _ in range(args.repeats):
                t_spec.run(run_spec)
            stats = run_spec.engine.stats()
            row[f"{kind}_tps_b{batch}"] = n / t_spec.wall
            row[f"{kind}_vs_plain_b{batch}"] = t_ours.wall / t_spec.wall
            row[f"{kind}_vs_hf_best_b{batch}"] = min(t_hf.wall, t_hf16.wall) / t_spec.wall
            row[f"{kind}_acceptance_b{batch}"] = stats["spec_acceptance_rate"]
            row[f"{kind}_tokens_per_forward_b{batch}"] = stats["spec_tokens_per_forward"]
            row[f"{kind}_same_as_plain_b{batch}"] = sum(a == b for a, b in zip(t_spec.out, t_ours.out)) / batch
            print(f"  {name} batch {batch}: r1lab + {kind} {n / t_spec.wall:8.1f} tok/s = {t_ours.wall / t_spec.wall:5.2f}x "
                  f"plain r1lab, {row[f'{kind}_vs_hf_best_b{batch}']:5.2f}x transformers' best; acceptance "
                  f"{stats['spec_acceptance_rate'] or 0:.2f}, tokens per forward {stats['spec_tokens_per_forward'] or 0:.2f}, "
                  f"greedy sequences as plain {row[f'{kind}_same_as_plain_b{batch}']:.0%}", file=sys.stderr, flush=True)
        # greedy sanity check against transformers at r1lab's precision: sequences identical token for token
        # (near-ties can flip under padding, and more often in bf16)
        same_as = t_hf16 if run_ours.dtype == "bfloat16" else t_hf
        row[f"same_tokens_b{batch}"] = sum(a == b for a, b in zip(t_ours.out, same_as.out)) / batch
        row["hf_experts_implementation"] = run_hf.experts_implementation
        print(f"  {name} batch {batch}: r1lab ({run_ours.dtype}) {n / t_ours.wall:8.1f} tok/s   transformers fp32 "
              f"{n / t_hf.wall:8.1f}, bf16 {n / t_hf16.wall:8.1f} tok/s   ratio {row[f'ratio_b{batch}']:5.2f}x "
              f"(cpu time {row[f'cpu_time_ratio_b{batch}']:5.2f}x; vs bf16 {row[f'ratio_vs_hf_bf16_b{batch}']:5.2f}x)   "
              f"identical greedy sequences {row[f'same_tokens_b{batch}']:.0%}", file=sys.stderr, flush=True)
    if name == "qwen2-30m":
        row["kv_bytes_per_token_gqa"] = run_ours.kv_bytes_per_token
        return row
    row["kv_bytes_per_token_mla"] = kv_bytes_per_token(name, vocab, "mla")
    row["kv_bytes_per_token_mha"] = kv_bytes_per_token(name, vocab, "mha")
    row["mla_over_mha_kv"] = row["kv_bytes_per_token_mla"] / row["kv_bytes_per_token_mha"]
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["cpu-tiny", "cpu-20m", "qwen2-30m"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2, help="timed runs per measurement; the best counts")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="r1lab's weights, as `r1lab serve --dtype` (default auto: bf16 where the CPU has bf16 units "
                        "and the model is wide enough to gain; transformers runs in fp32 and in bf16 either way)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda: both engines on that device (the token "
                   "lists both return wait for the device, so the wall times include its work)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for both (default 1: models this small gain little from more, and on a busy "
                        "machine every multi-threaded op waits for a free core)")
    p.add_argument("--spec", nargs="*", default=[], choices=["ngram", "draft"],
                   help="also time r1lab with speculative decoding: prompt lookup (ngram) and/or a draft model (draft); "
                        "each against plain r1lab (its runs follow the plain ones, not alternated)")
    p.add_argument("--spec-k", type=int, default=4, help="drafts per sequence and step")
    p.add_argument("--ngram-max", type=int, default=3)
    p.add_argument("--ngram-min", type=int, default=1)
    p.add_argument("--draft", help="draft checkpoint (same tokenizer) for --spec draft; default: the target's first "
                                   "--draft-layers layers (random weights: a measure of the machinery, not of a trained draft)")
    p.add_argument("--draft-layers", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"decode bench: greedy, {args.new_tokens} new tokens, r1lab --dtype {args.dtype}, {args.device}, "
          f"torch threads {args.threads}, best of {args.repeats}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench_preset(name, args, Path(tmp)) for name in args.presets]

    b = args.batch
    header = (f"{'preset':<10} {'batch':>5} {'r1lab':>8} {'tok/s':>8} {'hf fp32':>8} {'hf bf16':>8} {'ratio':>7} "
              f"{'cpu-time ratio':>15} {'vs hf bf16':>11} {'kv B/tok mla':>13} {'mha':>7} {'mla/mha':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        for batch in (1, b):
            kv = (f"{r['kv_bytes_per_token_mla']:>13} {r['kv_bytes_per_token_mha']:>7} {r['mla_over_mha_kv']:>8.3f}"
                  if batch == 1 and "mla_over_mha_kv" in r else
                  f"{'gqa ' + str(r['kv_bytes_per_token_gqa']):>13}" if batch == 1 else "")
            print(f"{r['preset']:<10} {batch:>5} {r['ours_dtype']:>8} {r[f'ours_tps_b{batch}']:>8.1f} "
                  f"{r[f'hf_tps_b{batch}']:>8.1f} {r[f'hf_bf16_tps_b{batch}']:>8.1f} {r[f'ratio_b{batch}']:>6.2f}x "
                  f"{r[f'cpu_time_ratio_b{batch}']:>14.2f}x {r[f'ratio_vs_hf_bf16_b{batch}']:>10.2f}x {kv}")
    summary = {
        "bench": "decode",
        "ratio_b1": min(r["ratio_b1"] for r in rows),
        f"ratio_b{b}": min(r[f"ratio_b{b}"] for r in rows),
        "ratio_vs_hf_bf16_b1": min(r["ratio_vs_hf_bf16_b1"] for r in rows),
        f"ratio_vs_hf_bf16_b{b}": min(r[f"ratio_vs_hf_bf16_b{b}"] for r in rows),
        "cpu_time_ratio_b1": min(r["cpu_time_ratio_b1"] for r in rows),
        f"cpu_time_ratio_b{b}": min(r[f"cpu_time_ratio_b{b}"] for r in rows),
        "mla_over_mha_kv": max((r["mla_over_mha_kv"] for r in rows if "mla_over_mha_kv" in r), default=None),
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "presets": {r["preset"]: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "preset"}
                    for r in rows},
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
