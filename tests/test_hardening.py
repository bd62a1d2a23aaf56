"""The hostile-input probe of issue 22, kept as tests: one case per finding (numbers as in the issue).

Data loss (1-4), the server (8-9), memory (10), errors (11-13) and secrets (14); the sandbox cases
(5-7) are in test_sandbox.py. Commands run in-process through `r1lab.cli.main` where that is safe (an
error must be exit code 2 and one line on stderr, never a traceback).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

import r1lab
import test_serve as ts
from conftest import tiny_config
from r1lab.cli import main
from r1lab.config import ConfigError, TrainConfig
from r1lab.model import Transformer, load_model, save_checkpoint
from r1lab.model.checkpoint import CheckpointError
from r1lab.train.checkpoint import Checkpointer
from r1lab.train.dist import Dist, RunState
from r1lab.train.loop import setup_run
from r1lab.train.step import make_optimizer

TINY = ["hidden_size=32", "intermediate_size=64", "moe_intermediate_size=16", "num_hidden_layers=2",
        "num_attention_heads=2", "kv_lora_rank=16", "qk_nope_head_dim=8", "qk_rope_head_dim=8", "v_head_dim=8",
        "n_routed_experts=4", "num_experts_per_tok=2", "warmup_steps=1", "log_every=100", "seq_len=32", "batch_size=2"]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tok")
    tokenizer.save(folder)
    return str(folder)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    return save_checkpoint(Transformer(tiny_config(tokenizer.vocab_size)), tokenizer,
                           tmp_path_factory.mktemp("ckpt") / "model")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fails(capsys, argv: list[str], *needles: str) -> str:
    """Run `r1lab argv` in-process: exit 2, one error line on stderr naming every needle, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"r1lab {argv[0]}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- 1-4: data loss

def test_01_training_into_a_finished_run_folder_is_refused(tmp_path, tokenizer, tok_dir, capsys):
    run = tmp_path / "speedrun"  # the speedrun's layout: final/ and metrics, no checkpoints/
    torch.manual_seed(0)
    save_checkpoint(Transformer(tiny_config(tokenizer.vocab_size)), tokenizer, run / "final")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    before = digest(run / "final" / "model.safetensors")
    sft = ["sft", "--out", str(run), "--tokenizer", tok_dir, *TINY, "max_steps=1", "data.tasks=addition"]
    fails(capsys, sft, str(run), "--overwrite", "final/")
    fails(capsys, [*sft, "--resume"], str(run), "--overwrite", "no checkpoints/")
    assert digest(run / "final" / "model.safetensors") == before
    assert (run / "metrics.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n' and not (run / "config.yaml").exists()
    assert main([*sft, "--overwrite"]) == 0  # the explicit flag replaces it
    assert digest(run / "final" / "model.safetensors") != before


def test_02_init_and_tokenizer_do_not_overwrite_a_checkpoint(tmp_path, ckpt, tok_dir, capsys):
    weights, vocab = digest(ckpt / "model.safetensors"), digest(ckpt / "tokenizer.json")
    fails(capsys, ["init", "--out", str(ckpt), "--tokenizer", tok_dir, *TINY[:11]], str(ckpt), "--overwrite")
    text = tmp_path / "t.txt"
    text.write_text("some words to train on\n" * 50)
    fails(capsys, ["tokenizer", "--out", str(ckpt), "--text", str(text), "--vocab-size", "300"], str(ckpt), "--overwrite")
    assert digest(ckpt / "model.safetensors") == weights and digest(ckpt / "tokenizer.json") == vocab
    load_model(ckpt)  # still verifies
    assert main(["tokenizer", "--out", str(tmp_path / "tok"), "--text", str(text), "--vocab-size", "300"]) == 0
    assert main(["tokenizer", "--out", str(tmp_path / "tok"), "--text", str(text), "--vocab-size", "300",
                 "--overwrite"]) == 0


class _Position:
    """A data stream's position, all a checkpoint needs from it."""

    def state_dict(self) -> dict:
        return {"doc": 0, "offset": 0}

    def load_state_dict(self, state: dict) -> None:
        pass


def _checkpointer(run: RunState, model: Transformer, tokenizer) -> Checkpointer:
    return Checkpointer(run, model, tokenizer, make_optimizer(model, run.train), _Position())


def _saved_run(folder: Path, tokenizer, steps: list[int], keep: int = 5) -> RunState:
    cfg = TrainConfig(max_steps=10, seq_len=32, batch_size=2, keep_checkpoints=keep)
    run = RunState(folder, Dist(), cfg)
    torch.manual_seed(0)
    model = Transformer(tiny_config(tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2))
    for step in steps:
        _checkpointer(run, model, tokenizer).save(step)
    return run


def _damage(folder: Path) -> None:
    data = bytearray((folder / "rng.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "rng.pt").write_bytes(bytes(data))


def test_03_resume_with_every_checkpoint_damaged_is_refused(tmp_path, tokenizer, tok_dir, capsys):
    out = tmp_path / "run"
    _saved_run(out, tokenizer, [1, 2])
    for step in (1, 2):
        _damage(out / "checkpoints" / f"step_{step}")
    metrics = '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
    (out / "metrics.jsonl").write_text(metrics)
    line = fails(capsys, ["pretrain", "--out", str(out), "--tokenizer", tok_dir, *TINY, "max_steps=2",
                          "data.tasks=addition", "--resume"], "damaged", "step_1", "step_2", "--overwrite")
    assert str(out / "checkpoints") in line
    assert (out / "metrics.jsonl").read_text() == metrics  # not truncated
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1", "step_2"]


def test_03_damaged_newer_checkpoints_do_not_prune_good_ones(tmp_path, tokenizer):
    out = tmp_path / "run"
    run = _saved_run(out, tokenizer, [2, 4], keep=5)
    _damage(out / "checkpoints" / "step_4")
    cfg = TrainConfig(max_steps=10, seq_len=32, batch_size=2, keep_checkpoints=1)
    resumed = setup_run(out, None, resume=True, train_cfg=cfg)
    assert resumed.resume_from == out / "checkpoints" / "step_2"
    model = load_model(resumed.resume_from)
    _checkpointer(resumed, model, tokenizer).save(3)
    # step_3 is the newest good checkpoint: kept, although the damaged step_4 is numbered higher
    assert (out / "checkpoints" / "step_3").is_dir()
    assert run.train.keep_checkpoints == 5


def test_04_a_kill_between_the_renames_of_final_is_recovered(tmp_path, ckpt, tokenizer):
    final = tmp_path / "final"
    save_checkpoint(load_model(ckpt), tokenizer, final)
    # what a kill between "final -> .final.old-PID" and ".final.tmp-* -> final" leaves behind
    dead_pid = 2**22 + 12345  # above pid_max's default: no such process
    old = tmp_path / f".final.old-{dead_pid}"
    os.rename(final, old)
    half = tmp_path / f".final.tmp-{dead_pid}-x1y2"
    half.mkdir()
    (half / "config.json").write_text("{")
    load_model(final)  # final/ is back
    assert final.is_dir() and not old.exists() and not half.exists()
    # a stale temporary of a killed save is cleaned by the next save
    stale = tmp_path / f".final.tmp-{dead_pid}-abcd"
    stale.mkdir()
    save_checkpoint(load_model(final), tokenizer, final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


# ---------------------------------------------------------------- 8-9: the server

@pytest.fixture(scope="module")
def keyless(tokenizer, tmp_path_factory):
    folder = ts.scripted_checkpoint(tokenizer, tmp_path_factory.mktemp("srv") / "reasoner")
    model, tok = r1lab.load(folder)
    with ts.serve(model, tok, "reasoner") as s:
        yield s


def _health_latencies(url: str, busy: threading.Thread) -> list[float]:
    times = []
    with httpx.Client(timeout=30) as c:
        while busy.is_alive() or not times:
            t = time.perf_counter()
            assert c.get(url + "/health").status_code == 200
            times.append(time.perf_counter() - t)
            time.sleep(0.02)
    return times


@pytest.mark.parametrize("size_mb, status", [(10, 413), (1, 400)])
def test_08_a_huge_request_does_not_stall_the_server(keyless, size_mb, status):
    body = json.dumps({"messages": [{"role": "user", "content": "1 + 2 = ? " * (size_mb * 2**20 // 10)}]})
    result = {}

    def post():
        with httpx.Client(timeout=60) as c:
            result["r"] = c.post(keyless.url + "/v1/chat/completions", content=body,
                                 headers={"content-type": "application/json"})

    busy = threading.Thread(target=post)
    busy.start()
    latencies = _health_latencies(keyless.url, busy)
    busy.join()
    assert result["r"].status_code == status, result["r"].text[:200]
    assert "error" in result["r"].json()
    assert max(latencies) < 0.5, latencies


def test_08_body_limit_applies_before_the_api_key(keyless):
    with ts.serve(None, keyless.tokenizer, "reasoner", engine=keyless.engine, api_key="sekret", max_body_bytes=1000) as s:
        r = httpx.post(s.url + "/v1/chat/completions", content=b"x" * 5000, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunks():
            for _ in range(10):
                yield b"y" * 500

        r = httpx.post(s.url + "/v1/chat/completions", content=chunks())  # chunked: no Content-Length
        assert r.status_code == 413


def test_09_host_check_key_on_docs_and_metrics_security_headers(keyless):
    port = keyless.url.rsplit(":", 1)[1]
    for host, status in [(f"evil.example:{port}", 403), (f"localhost:{port}", 200), (f"127.0.0.1:{port}", 200),
                         (f"[::1]:{port}", 200), (f"app.localhost:{port}", 200)]:
        r = httpx.get(keyless.url + "/health", headers={"host": host})
        assert r.status_code == status, (host, r.text)
    page = httpx.get(keyless.url + "/")
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self';" in csp and "style-src 'self';" in csp
    assert "unsafe-inline" not in csp and "sha256-" not in csp and "http" not in csp
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["x-frame-options"] == "DENY"
    with ts.serve(None, keyless.tokenizer, "reasoner", engine=keyless.engine, api_key="sekret") as s:
        for path in ("/docs", "/openapi.json", "/metrics"):
            assert httpx.get(s.url + path).status_code == 401, path
            assert httpx.get(s.url + path, headers={"authorization": "Bearer sekret"}).status_code == 200, path
        # with a key, other host names are fine (the key is the protection)
        assert httpx.get(s.url + "/health", headers={"host": "my-box.lan"}).status_code == 200


# ---------------------------------------------------------------- 10: memory

class CountingTokenizer:
    def __init__(self, tok):
        self.tok, self.chars = tok, 0

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def encode(self, text):
        self.chars += len(text)
        return self.tok.encode(text)

    def encode_batch(self, texts):
        self.chars += sum(map(len, texts))
        return self.tok.encode_batch(texts)

    def apply_chat_template(self, messages, add_generation_prompt=False):
        self.chars += sum(len(m["content"]) for m in messages)
        return self.tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)


def test_10_one_huge_document_is_tokenized_once(tmp_path, tokenizer):
    from r1lab.train.data import ChatStream, FileRows, PackedStream

    doc = "12 + 34 = 46. " * 20_000  # 280 kB
    (tmp_path / "big.jsonl").write_text(json.dumps({"text": doc}) + "\n")
    counting = CountingTokenizer(tokenizer)
    stream = PackedStream(FileRows([str(tmp_path / "big.jsonl")], 0), counting, 32, 4)
    stream.chunk_chars = 100_000  # the budget of one tokenizer call (1M characters by default; smaller: a quick test)
    for _ in range(3):
        stream.next_batch()
    assert counting.chars == len(doc)  # the packer used to tokenize 256 copies of the one row
    (tmp_path / "chat.jsonl").write_text(json.dumps({"prompt": "What?", "completion": doc}) + "\n")
    counting = CountingTokenizer(tokenizer)
    chats = ChatStream(FileRows([str(tmp_path / "chat.jsonl")], 0), counting, 32, 2, packing=False)
    batch = chats.next_batch()
    assert batch.input_ids.shape == (2, 32) and counting.chars < 32 * 64  # cut before tokenizing


def test_10_pretrain_on_one_large_document_peak_memory(tmp_path, tok_dir):
    """Two pretrain steps on a 1-row file with a 1 MB document, in a subprocess reporting its peak RSS (with a
    10 MB one the issue saw 18.6 GB and no finished step; 1 MB keeps the test short: tokenizing takes seconds)."""
    (tmp_path / "big.jsonl").write_text(json.dumps({"text": "The answer is 1234. " * 50_000}) + "\n")
    script = (
        "import sys\n"
        "from r1lab.cli import main\n"
        f"code = main(['pretrain', '--out', {str(tmp_path / 'run')!r}, '--tokenizer', {tok_dir!r}, '--data', "
        f"{str(tmp_path / 'big.jsonl')!r}, *{TINY!r}, 'max_steps=2'])\n"
        # VmHWM, this process's own peak: ru_maxrss would include the RSS of the pytest process it was forked from
        "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM'))\n"
        "print('peak_mb', int(hwm.split()[1]) // 1024)\n"
        "sys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = int(proc.stdout.split("peak_mb")[1].split()[0])
    assert peak < 1000, f"peak RSS {peak} MB"
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


# ---------------------------------------------------------------- 11-13: errors

@pytest.mark.parametrize("argv, needles", [
    (["pretrain", "model.hidden_size=0"], ["model.hidden_size"]),
    (["pretrain", "model.num_attention_heads=0"], ["model.num_attention_heads"]),
    (["pretrain", "max_steps=0"], ["train.max_steps"]),
    (["pretrain", "max_steps=-3"], ["train.max_steps"]),
])
def test_11_12_bad_config_values(tmp_path, capsys, argv, needles):
    fails(capsys, [argv[0], "--out", str(tmp_path / "run"), *argv[1:]], *needles)
    assert not (tmp_path / "run").exists()


def test_11_device_cuda_without_a_gpu(tmp_path, tok_dir, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    fails(capsys, ["pretrain", "--out", str(tmp_path / "run"), "--tokenizer", tok_dir, *TINY, "device=cuda"],
          "train.device=cuda")


def test_11_out_naming_a_file(tmp_path, tok_dir, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    fails(capsys, ["sft", "--out", str(target), "--tokenizer", tok_dir, *TINY], str(target), "is a file")
    fails(capsys, ["init", "--out", str(target), "--tokenizer", tok_dir], str(target))
    assert target.read_text() == "keep me"


def test_11_yaml_preset_with_a_syntax_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_steps: 5\n  lr: [1e-3\n")
    fails(capsys, ["pretrain", "--preset", str(bad), "--out", str(tmp_path / "run")], str(bad), "YAML")


@pytest.mark.parametrize("command", ["sft", "pretrain"])
@pytest.mark.parametrize("content, needle", [
    ('{"prompt": "a", "completion": "b"}\n[1, 2, 3]\n', ":2: expected a JSON object"),
    (b'{"prompt": "a", "completion": "b"}\n{"prompt": "\xff\xfe", "completion": "b"}\n', ":2: not UTF-8"),
    ('{"prompt": "a", "completion": "b"}\n\n{"question_text": "a", "reply": "b"}\n', ":3: cannot read a chat example"),
    ('{"messages": [{"role": "user", "content": "a"}, "oops"]}\n', ":1:"),
])
def test_11_12_bad_data_is_named_by_file_and_line_before_anything_is_written(tmp_path, tok_dir, capsys, command,
                                                                           content, needle):
    data = tmp_path / "data.jsonl"
    data.write_bytes(content if isinstance(content, bytes) else content.encode())
    fails(capsys, [command, "--out", str(tmp_path / "run"), "--tokenizer", tok_dir, "--data", str(data), *TINY,
                   "max_steps=1"], str(data) + needle)
    assert not (tmp_path / "run").exists()


def test_11_config_json_with_a_wrong_type_and_no_manifest(tmp_path, ckpt, capsys):
    folder = tmp_path / "hf"
    folder.mkdir()
    for f in ckpt.iterdir():
        if f.name != "r1lab_manifest.json":
            (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] = str(config["hidden_size"])
    (folder / "config.json").write_text(json.dumps(config))
    fails(capsys, ["generate", str(folder), "hi", "--max-tokens", "2"], "config.json", "hidden_size")


def test_11_a_diverging_run_is_one_line(tmp_path, tok_dir, capsys):
    fails(capsys, ["pretrain", "--out", str(tmp_path / "run"), "--tokenizer", tok_dir, *TINY, "lr=1e9", "max_steps=8",
                   "data.tasks=addition"], "loss is", "lower lr")


def test_12_eval_arguments_and_empty_files(tmp_path, ckpt, capsys):
    fails(capsys, ["eval", str(ckpt), "--k", "-1"], "--k")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    fails(capsys, ["eval", str(ckpt), "--tasks", str(empty), "--k", "0", "--max-tokens", "2"], str(empty), "no problems")
    out = tmp_path / "results.jsonl"
    out.write_text("earlier results\n")
    fails(capsys, ["eval", str(ckpt), "--n", "1", "--k", "0", "--out", str(out)], str(out), "--overwrite")
    assert out.read_text() == "earlier results\n"


def test_13_hand_edited_config_rehash_and_missing_manifest(tmp_path, ckpt, tokenizer, capsys):
    folder = tmp_path / "edited"
    save_checkpoint(load_model(ckpt), tokenizer, folder)
    config = json.loads((folder / "config.json").read_text())
    config["rope_theta"] = 20000.0
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    with pytest.raises(CheckpointError, match="r1lab checkpoint rehash"):
        load_model(folder)
    assert main(["checkpoint", "rehash", str(folder)]) == 0
    assert load_model(folder).config.rope_theta == 20000.0
    config["hidden_size"] = 48  # an edit the weights cannot follow: rehash refuses it
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    fails(capsys, ["checkpoint", "rehash", str(folder)], "config implies")
    (folder / "r1lab_manifest.json").unlink()
    config["hidden_size"] = load_model(ckpt).config.hidden_size
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    capsys.readouterr()
    load_model(folder)
    warning = [line for line in capsys.readouterr().err.splitlines() if "r1lab_manifest.json" in line]
    assert len(warning) == 1 and str(folder) in warning[0]


def test_13_serve_refuses_a_folder_without_a_tokenizer(tmp_path, ckpt):
    folder = tmp_path / "weights-only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((ckpt / name).read_bytes())
    proc = subprocess.run([sys.executable, "-m", "r1lab.cli", "serve", str(folder), "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "tokenizer.json" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- 14: secrets

def test_14_endpoint_key_from_the_environment_and_a_one_line_401(keyless, monkeypatch, capsys, tmp_path, ckpt):
    from r1lab.train.distill import TeacherSection, responses_from_endpoint

    problems = [{"prompt": "What is 1 + 2?"}]
    with ts.serve(None, keyless.tokenizer, "reasoner", engine=keyless.engine, api_key="sekret") as s:
        monkeypatch.setenv("OPENAI_API_KEY", "sekret")
        assert len(responses_from_endpoint(s.url, problems, TeacherSection(k=1, max_new_tokens=8))[0]) == 1
        monkeypatch.setenv("MY_KEY", "sekret")
        monkeypatch.setenv("OPENAI_API_KEY", "wrong")
        section = TeacherSection(k=1, max_new_tokens=8, api_key_env="MY_KEY")
        assert len(responses_from_endpoint(s.url, problems, section)[0]) == 1
        assert len(responses_from_endpoint(s.url, problems, TeacherSection(k=1, max_new_tokens=8, api_key="sekret"))[0]) == 1
        with pytest.raises(ConfigError, match="401.*OPENAI_API_KEY"):
            responses_from_endpoint(s.url, problems, TeacherSection(k=1, max_new_tokens=8))
        fails(capsys, ["distill", "--teacher", s.url, "--student", str(ckpt), "--out", str(tmp_path / "d"),
                       "teacher.problems=1", "teacher.k=1"], "401", "OPENAI_API_KEY")
