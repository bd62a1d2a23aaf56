"""A tiny Qwen2 with a Qwen-style ChatML template (no <think>: the R1 format comes from Open-R1's system
prompt) and a tiny R1-Distill-style Qwen2 (the template pre-fills "<think>\\n") through the commands:
`r1lab sft` (and its exact --resume), `r1lab grpo`, `r1lab eval` on a GSM8K-format file, `r1lab serve`
with the official openai client."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import kill_at_checkpoint, serve_in_background
from hf_tiny import make_model

openai = pytest.importorskip("openai")
ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
STYLES = ["chatml", "r1distill"]
GSM8K = [{"question": "Tom has 3 apples and buys 4 more. How many apples does he have?", "answer": "3 + 4 = 7\n#### 7"},
         {"question": "What is 10 + 25?", "answer": "10 + 25 = 35\n#### 35"}]


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "r1lab.cli", *map(str, args)]


def _run(*args, timeout=600):
    done = subprocess.run(_cli(*args), capture_output=True, text=True, env=ENV, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("style", STYLES)
def test_sft_resume_grpo_eval(tmp_path, style):
    make_model(tmp_path / "init", "qwen2", style)
    sft = ["sft", "--init", tmp_path / "init", "data.tasks=addition", "max_steps=40", "save_every=20", "seq_len=512",
           "batch_size=8", "seed=3"]
    _run(*sft, "--out", tmp_path / "sft")
    losses = [r["loss"] for r in _metrics(tmp_path / "sft")]
    assert losses[-1] < 0.7 * losses[0]
    config = json.loads((tmp_path / "sft" / "final" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    # what `r1lab sft` wrote loads in transformers with r1lab's logits, on a padded batch
    import r1lab
    import transformers

    ids, valid = torch.randint(5, 300, (2, 13)), torch.arange(13)[None] < torch.tensor([[13], [6]])
    mask = torch.ones(13, 13, dtype=torch.bool).tril()[None, None] & valid[:, None, None, :]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "sft" / "final", dtype=torch.float32).eval()
    with torch.no_grad():
        diff = (r1lab.load(tmp_path / "sft" / "final")[0](ids, attn_mask=mask) - hf(ids, attention_mask=valid.long()).logits)
    assert diff[valid].abs().max().item() <= 1e-4

    # --resume after a SIGKILL is bitwise exact
    killed = tmp_path / "killed"
    kill_at_checkpoint(_cli(*sft, "--out", killed), killed / "checkpoints" / "step_20", ENV)
    assert not (killed / "final").exists(), "the run finished before it was killed"
    _run(*sft, "--out", killed, "--resume")
    assert (killed / "final" / "model.safetensors").read_bytes() == \
        (tmp_path / "sft" / "final" / "model.safetensors").read_bytes()

    # GRPO samples with the engine on the live weights; the reward it optimises moves
    grpo = ["grpo", "--init", tmp_path / "sft" / "final", "grpo.tasks=addition", "max_steps=12", "save_every=6",
            "lr=3e-3", "grpo.rewards={tag_count: 1.0}", "grpo.group_size=4", "grpo.prompts_per_step=4",
            "grpo.max_new_tokens=48", "grpo.max_sampling_rounds=2", "log_every=1", "seed=1"]
    _run(*grpo, "--out", tmp_path / "grpo")
    rewards = [r["reward"] for r in _metrics(tmp_path / "grpo")]
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.05, rewards

    # and its --resume after a SIGKILL is bitwise exact too (the engine's rollouts, the RNG, the optimizer)
    cut = tmp_path / "grpo-cut"
    kill_at_checkpoint(_cli(*grpo, "--out", cut), cut / "checkpoints" / "step_6", ENV)
    assert not (cut / "final").exists(), "the run finished before it was killed"
    _run(*grpo, "--out", cut, "--resume")
    keys = ("step", "loss", "reward", "response_length")
    assert [[r[k] for k in keys] for r in _metrics(cut)] == [[r[k] for k in keys] for r in _metrics(tmp_path / "grpo")]
    assert (cut / "final" / "model.safetensors").read_bytes() == \
        (tmp_path / "grpo" / "final" / "model.safetensors").read_bytes()

    # eval on a GSM8K-format file; the scored text is the whole response (the template's prefix included)
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in GSM8K))
    _run("eval", tmp_path / "grpo" / "final", "--tasks", data, "--n", "2", "--k", "2", "--max-tokens", "24",
         "--out", tmp_path / "eval" / "out.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "eval" / "out.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in rows] == ["7", "35"]
    prefix = "<think>\n" if style == "r1distill" else ""
    assert all(s.startswith(prefix) for r in rows for s in r["samples"])


@pytest.mark.slow
def test_r1_zero_grpo_on_a_gsm8k_file_from_an_instruct_model(tmp_path):
    """docs/open-models.md's R1-Zero recipe in miniature: GRPO straight from a ChatML "instruct" model on a GSM8K file."""
    make_model(tmp_path / "init", "qwen2", "chatml")
    data = tmp_path / "gsm8k_train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in GSM8K))
    _run("grpo", "--init", tmp_path / "init", "--out", tmp_path / "grpo", f"grpo.tasks={data}", "max_steps=2",
         "grpo.group_size=2", "grpo.prompts_per_step=2", "grpo.max_new_tokens=8", "grpo.max_sampling_rounds=1",
         "grpo.dynamic_sampling=false", "log_every=1")
    rows = _metrics(tmp_path / "grpo")
    assert [r["step"] for r in rows] == [1, 2] and all("accuracy_gsm8k_train" in r or "accuracy" in r for r in rows)
    assert json.loads((tmp_path / "grpo" / "final" / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]


# ---------------------------------------------------------------- serve

def _scripted(folder, style, text: str) -> None:
    """A Qwen2 checkpoint that answers the USER prompt with exactly `text` then EOS (a bigram chain)."""
    import r1lab
    from r1lab.model import save_checkpoint

    make_model(folder, "qwen2", style, tie_word_embeddings=False)
    model, tokenizer = r1lab.load(folder)
    last = tokenizer.apply_chat_template(USER, add_generation_prompt=True)[-1]
    chain = [last] + tokenizer.encode(text) + [tokenizer.eos_token_id]
    assert len(set(chain)) == len(chain), "a bigram chain needs distinct tokens"
    H = model.config.hidden_size
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.zero_()  # blocks add nothing: the last hidden state is the token's embedding
        basis = torch.linalg.qr(torch.randn(H, H))[0].T * H**0.5
        model.lm_head.weight.zero_()
        for k, (token, following) in enumerate(zip(chain, chain[1:])):
            model.model.embed_tokens.weight[token] = basis[k]
            model.lm_head.weight[following] = 30.0 * basis[k] / H
    save_checkpoint(model, tokenizer, folder)


USER = [{"role": "user", "content": "What is 2 + 3?"}]
CASES = {  # style -> (what the model writes, expected reasoning_content, expected content)
    "r1distill": ("brown fox</think>Lazy!", "brown fox", "Lazy!"),
    "chatml": ("<think>brown fox</think>Lazy!", "brown fox", "Lazy!"),
}


@pytest.mark.parametrize("style", [pytest.param("chatml", marks=pytest.mark.slow), "r1distill"])
def test_serve_splits_reasoning_for_the_template(tmp_path, style):
    text, reasoning, content = CASES[style]
    _scripted(tmp_path / "m", style, text)
    proc, url = serve_in_background([tmp_path / "m", "--model-name", "tiny"], ENV)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        r = client.chat.completions.create(model="tiny", messages=USER, temperature=0)
        assert (r.choices[0].message.reasoning_content, r.choices[0].message.content) == (reasoning, content)
        assert r.choices[0].finish_reason == "stop"
        stream = client.chat.completions.create(model="tiny", messages=USER, temperature=0, stream=True)
        deltas = [c.choices[0].delta for c in stream if c.choices]
        assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == reasoning
        assert "".join(d.content or "" for d in deltas) == content
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
