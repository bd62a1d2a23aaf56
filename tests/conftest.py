import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tests use tiny models: one thread per process is faster than two fighting over a 2-core machine
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

CORPUS = [
    "What is 4821 + 1379? <think>\n1+9=10, write 0 carry 1\n</think>\nThe answer is \\boxed{6200}.",
    "Solve for x: 3x + 7 = 22. Subtract 7, divide by 3, so x = 5.",
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "Ünïcödé text, 中文, emoji 🙂 and tabs\tand newlines\n",
] * 20


@pytest.fixture(scope="session")
def tokenizer():
    from r1lab.tokenizer import train_tokenizer

    return train_tokenizer(CORPUS, vocab_size=320)


def tiny_config(vocab_size: int, **overrides):
    from r1lab.model import preset

    base = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                num_hidden_layers=3, num_attention_heads=2, kv_lora_rank=32, qk_nope_head_dim=16,
                qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=8, num_experts_per_tok=2)
    base.update(overrides)
    return preset("cpu-tiny", **base)


def chain_model(tokenizer, chain: list[int]):
    """A model that writes `chain` (distinct token ids) as a bigram chain: after chain[k] it puts logit 30 on
    chain[k + 1] and 0 on every other token (attention and MLPs zeroed, the last hidden state is the embedding)."""
    from r1lab.model import Transformer

    assert len(set(chain)) == len(chain), "a bigram chain needs distinct tokens"
    torch.manual_seed(0)
    cfg = tiny_config(tokenizer.vocab_size)
    model = Transformer(cfg).eval()
    hidden = cfg.hidden_size
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.zero_()
        basis = torch.linalg.qr(torch.randn(hidden, hidden))[0].T * hidden**0.5  # orthogonal rows, RMS 1 (RMSNorm keeps them)
        model.lm_head.weight.zero_()
        for k, (token, following) in enumerate(zip(chain, chain[1:])):
            model.model.embed_tokens.weight[token] = basis[k]
            model.lm_head.weight[following] = 30.0 * basis[k] / hidden
    return model


def small_policy_checkpoint(tokenizer, folder):
    """A random 2-layer MoE policy (seed 0) saved to `folder`, the starting point of the GRPO tests."""
    from r1lab.model import Transformer, save_checkpoint

    torch.manual_seed(0)
    cfg = tiny_config(tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                      moe_intermediate_size=16, n_routed_experts=4, kv_lora_rank=16)
    save_checkpoint(Transformer(cfg), tokenizer, folder)
    return folder


def serve_in_background(args, env, timeout: float = 60):
    """Start `r1lab serve ARGS` on a free port and wait (up to `timeout` s) until /health answers; returns
    (process, base URL). The process's output is piped: read it with communicate() after terminate()."""
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "r1lab.cli", "serve", *map(str, args), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"server did not come up: {proc.communicate()[0][-2000:]}")
        time.sleep(0.2)


def kill_at_checkpoint(cmd: list[str], checkpoint, env, timeout: float = 300) -> None:
    """Run `cmd` until `checkpoint` (a checkpoints/step_N folder) is complete, then SIGKILL it: the kill the
    exact-resume tests resume from."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while not (checkpoint / "r1lab_manifest.json").exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {checkpoint.name}: {proc.stderr.read().decode()[-2000:]}")
        assert time.time() < deadline, f"no {checkpoint.name} after {timeout:.0f} s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def run_killed_and_resumed(args: list[str], tmp_path) -> tuple[list[dict], list[dict]]:
    """`r1lab ARGS` run whole into tmp_path/full, and into tmp_path/cut killed at checkpoint step_2 and resumed
    (one thread each, in subprocesses): the two runs' metrics.jsonl rows, to be compared by the caller."""
    import json
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "r1lab.cli", *args]
    subprocess.run(cmd + ["--out", str(tmp_path / "full")], check=True, env=env, timeout=300, capture_output=True)
    kill_at_checkpoint(cmd + ["--out", str(tmp_path / "cut")], tmp_path / "cut" / "checkpoints" / "step_2", env)
    assert not (tmp_path / "cut" / "final").exists(), "the run finished before it was killed"
    subprocess.run(cmd + ["--out", str(tmp_path / "cut"), "--resume"], check=True, env=env, timeout=300, capture_output=True)
    return tuple([json.loads(line) for line in open(tmp_path / run / "metrics.jsonl")] for run in ("full", "cut"))
