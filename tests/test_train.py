"""The training loop: schedule, optimizer groups, SFT labels and packing, resumable data, checkpoints,
exact resume after SIGKILL (pretrain and SFT), and (slow) SFT to >= 95% on held-out additions."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import kill_at_checkpoint, tiny_config
from r1lab.config import TrainConfig
from r1lab.model import Transformer
from r1lab.train.data import (IGNORE, ChatStream, DataConfig, FileRows, PackedStream, TaskMixture,
                              chat_example, collate, read_rows)
from r1lab.train.checkpoint import Checkpointer, latest_checkpoint
from r1lab.train.dist import Dist, RunState
from r1lab.train.step import local_micro_batches, lr_at, make_optimizer, train_step, wrap_model

# a model small enough that a 40-step run takes seconds
TINY = ["hidden_size=32", "intermediate_size=64", "moe_intermediate_size=16", "num_hidden_layers=2",
        "num_attention_heads=2", "kv_lora_rank=16", "qk_nope_head_dim=8", "qk_rope_head_dim=8", "v_head_dim=8",
        "n_routed_experts=4", "num_experts_per_tok=2", "warmup_steps=5", "log_every=100"]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tok")
    tokenizer.save(folder)
    return folder


def tiny_model(tokenizer, **overrides):
    torch.manual_seed(0)
    return Transformer(tiny_config(tokenizer.vocab_size, **overrides))


# ---------------------------------------------------------------- schedule and optimizer

def test_lr_warmup_then_cosine_to_floor():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(110)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))  # warmup rises
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then only decays
    assert lrs[60] == pytest.approx(0.55e-3)  # cosine midpoint between lr and the floor
    assert lr_at(110, cfg) == pytest.approx(1e-4) and lr_at(500, cfg) == pytest.approx(1e-4)


def test_no_weight_decay_on_norms_and_embeddings(tokenizer):
    model = tiny_model(tokenizer)
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1))
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0
    assert all("norm" not in names[i] and "embed_tokens" not in names[i] for i in decayed)
    assert id(model.model.layers[0].self_attn.kv_b_proj.weight) in decayed
    assert id(model.lm_head.weight) in decayed
    assert len(decayed) + len(opt.param_groups[1]["params"]) == len(list(model.parameters()))


def test_muon_for_block_matrices_adamw_for_the_rest(tokenizer):
    from r1lab.train.optim import Muon, Optimizers, orthogonalize

    torch.manual_seed(0)
    g = torch.randn(3, 40, 24)
    s = torch.linalg.svdvals(orthogonalize(g))
    assert s.min() > 0.5 and s.max() < 1.3  # every direction moves at about the same rate
    model = tiny_model(tokenizer)
    opt = make_optimizer(model, TrainConfig(optimizer="muon"))
    assert isinstance(opt, Optimizers) and isinstance(opt.optimizers[0], Muon)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in opt.optimizers[0].param_groups for p in g["params"]}
    assert "model.layers.1.mlp.shared_experts.up_proj.weight" in in_muon and "model.layers.0.self_attn.o_proj.weight" in in_muon
    assert not any(n.endswith(("gate.weight", "norm.weight")) or "embed" in n or "lm_head" in n or ".experts." in n
                   for n in in_muon)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before = model.model.layers[0].self_attn.o_proj.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.model.layers[0].self_attn.o_proj.weight)
    again = make_optimizer(model, TrainConfig(optimizer="muon"))
    again.load_state_dict(opt.state_dict())
    assert torch.equal(again.optimizers[0].state[model.model.layers[0].self_attn.o_proj.weight]["momentum_buffer"],
                       opt.optimizers[0].state[model.model.layers[0].self_attn.o_proj.weight]["momentum_buffer"])


# ---------------------------------------------------------------- SFT examples

def test_loss_only_on_the_assistant_completion(tokenizer):
    row = {"prompt": "What is 12 + 34?",
           "reference_trace": "<think>\n2+4=6, write 6 carry 0\n</think>\nThe answer is \\boxed{46}."}
    ex = chat_example(row, tokenizer)
    ids, labels = ex.ids_and_labels(10_000)
    assert tokenizer.decode(ex.prompt).endswith("<｜Assistant｜><think>\n")
    assert ex.prompt == tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], add_generation_prompt=True)
    assert labels[:len(ex.prompt)] == [IGNORE] * len(ex.prompt)
    trained = [t for t in labels if t != IGNORE]
    assert trained == ex.completion and trained[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(trained) == row["reference_trace"][len("<think>\n"):] + "<｜end▁of▁sentence｜>"

    # multi-turn: only the last assistant turn is trained; the earlier one is context (its thinking stripped)
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>\nx\n</think>\nhello"},
                         {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>\nadd\n</think>\n4"}]}
    ex = chat_example(chat, tokenizer)
    assert "hello" in tokenizer.decode(ex.prompt) and "\nx\n" not in tokenizer.decode(ex.prompt)
    assert tokenizer.decode(ex.completion) == "add\n</think>\n4<｜end▁of▁sentence｜>"
    # a response without thinking gets an empty thought; prompt/completion rows work too
    ex = chat_example({"prompt": "hi", "completion": "hello"}, tokenizer)
    assert tokenizer.decode(ex.completion) == "</think>\nhello<｜end▁of▁sentence｜>"


def test_packing_does_not_leak_across_examples(tokenizer):
    model = tiny_model(tokenizer).eval()
    rows = [{"prompt": f"What is {a} + {b}?", "reference_trace": f"<think>\nadd\n</think>\nThe answer is \\boxed{{{a + b}}}."}
            for a, b in [(12, 34), (5, 678), (90, 1)]]
    examples = [chat_example(r, tokenizer) for r in rows]
    packed = collate([examples], seq_len=sum(map(len, examples)) + 5, pad_id=tokenizer.pad_token_id, masked=True)
    assert packed.attn_mask.shape == (1, 1, packed.input_ids.shape[1], packed.input_ids.shape[1])
    with torch.no_grad():
        together = model(packed.input_ids, packed.position_ids, packed.attn_mask)[0]
        at = 0
        for ex in examples:
            alone = model(torch.tensor([ex.prompt + ex.completion]))[0]
            assert torch.allclose(together[at:at + len(ex)], alone, atol=1e-5), "packed logits differ from alone"
            at += len(ex)
        # without the mask, the second example would see the first: the check above is not vacuous
        leaky = model(packed.input_ids, packed.position_ids)[0]
        assert not torch.allclose(leaky[len(examples[0]):len(examples[0]) + len(examples[1])],
                                  together[len(examples[0]):len(examples[0]) + len(examples[1])], atol=1e-3)
    # and the training loss of the packed row is the loss of the examples laid side by side
    loss_packed, _ = model.loss(packed.input_ids, packed.labels, packed.position_ids, packed.attn_mask)
    padded = collate([[e] for e in examples], seq_len=512, pad_id=tokenizer.pad_token_id, masked=False)
    loss_padded, _ = model.loss(padded.input_ids, padded.labels)
    assert loss_packed.item() == pytest.approx(loss_padded.item(), abs=1e-5)


# ---------------------------------------------------------------- data positions

def test_streams_resume_from_their_position(tokenizer):
    source = TaskMixture(DataConfig(tasks="addition,linear", weights="3,1", knobs={"addition": {"digits": 2}}), seed=1)
    for make in (lambda: PackedStream(source, tokenizer, 64, 4), lambda: ChatStream(source, tokenizer, 96, 4),
                 lambda: ChatStream(source, tokenizer, 96, 4, packing=False)):
        a = make()
        for _ in range(3):
            a.next_batch()
        state = json.loads(json.dumps(a.state_dict()))  # it goes through trainer_state.json
        expected = [a.next_batch() for _ in range(3)]
        b = make()
        b.load_state_dict(state)
        for want in expected:
            got = b.next_batch()
            assert torch.equal(got.input_ids, want.input_ids) and torch.equal(got.labels, want.labels)
    assert sum(r["task"] == "addition" for r in (source[i] for i in range(400))) > 250  # weights 3:1


def test_data_files(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                               {"role": "assistant", "content": "hello"}]}) + "\n\n"
                                      + json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    pq.write_table(pa.table({"text": ["first doc", "second doc"]}), tmp_path / "b.parquet")
    (tmp_path / "c.txt").write_text("para one\nstill one\n\npara two\n")
    assert len(read_rows(tmp_path / "a.jsonl")) == 2
    assert read_rows(tmp_path / "b.parquet")[1] == {"text": "second doc"}
    assert [r["text"] for r in read_rows(tmp_path / "c.txt")] == ["para one\nstill one", "para two"]
    rows = FileRows([str(tmp_path / "b.parquet"), str(tmp_path / "c.txt")], seed=0)
    epoch0, epoch1 = [rows[i]["text"] for i in range(4)], [rows[i]["text"] for i in range(4, 8)]
    assert sorted(epoch0) == sorted(epoch1) == sorted(["first doc", "second doc", "para one\nstill one", "para two"])
    stream = PackedStream(rows, tokenizer, 16, 2)
    batch = stream.next_batch()
    assert batch.input_ids[0, 0].item() == tokenizer.bos_token_id and (batch.input_ids == tokenizer.eos_token_id).any()
    chats = ChatStream(FileRows([str(tmp_path / "a.jsonl")], seed=0), tokenizer, 64, 2, packing=False).next_batch()
    assert chats.n_targets > 0


def test_data_files_then_overrides_on_the_command_line(tmp_path):
    import argparse

    from r1lab.train.pretrain import add_pretrain_arguments, split_data_args

    (tmp_path / "a.jsonl").write_text("{}\n")
    parser = argparse.ArgumentParser()
    add_pretrain_arguments(parser)
    args = parser.parse_args(["--out", "x", "--data", str(tmp_path / "a.jsonl"), "max_steps=5", "lr=1e-3"])
    split_data_args(args)
    assert args.data == [str(tmp_path / "a.jsonl")] and args.overrides == ["max_steps=5", "lr=1e-3"]


# ---------------------------------------------------------------- one step, checkpoints

def _run(tmp_path, **train):
    cfg = TrainConfig(**{"seq_len": 32, "batch_size": 4, "keep_checkpoints": 2, **train})
    return RunState(tmp_path, Dist(), cfg)


def test_a_seq_len_too_short_for_the_prompts_is_an_error_not_a_run_on_nothing(tokenizer):
    source = TaskMixture(DataConfig(tasks="addition"), seed=0)
    prompt = len(chat_example(source[0], tokenizer).prompt)
    for packing in (True, False):
        assert ChatStream(source, tokenizer, prompt + 2, 2, packing=packing).next_batch().n_targets > 0
        with pytest.raises(ValueError, match=r"fits in seq_len=\d+: its shortest prompt .* is \d+ tokens; raise seq_len"):
            ChatStream(source, tokenizer, 8, 2, packing=packing).next_batch()


def test_gradient_accumulation_and_empty_micro_batches(tmp_path, tokenizer):
    source = TaskMixture(DataConfig(tasks="addition"), seed=0)
    batch = ChatStream(source, tokenizer, 48, 4).next_batch()
    batch.labels[1] = IGNORE  # one micro-batch below has nothing to predict
    results = []
    for micro in (0, 1, 2):
        run = _run(tmp_path, micro_batch_size=micro)
        model = tiny_model(tokenizer)
        opt = make_optimizer(model, run.train)
        stats = train_step(wrap_model(model, run), model, opt, local_micro_batches(batch, run), 1e-3, run)
        results.append((stats, model.lm_head.weight.detach().clone()))
    (full, w_full), (one, w_one), (two, w_two) = results
    assert full.targets == batch.n_targets and all(torch.isfinite(w).all() for _, w in results)
    for stats, w in ((one, w_one), (two, w_two)):
        assert stats.loss == pytest.approx(full.loss, abs=1e-5)
        assert torch.allclose(w, w_full, atol=1e-6)


class Position:
    """A stand-in data stream: its state is one number."""

    index = 0

    def state_dict(self):
        return {"index": self.index}

    def load_state_dict(self, state):
        self.index = state["index"]


def test_latest_checkpoint_is_the_newest_complete_one(tmp_path, tokenizer):
    run = _run(tmp_path, keep_checkpoints=2)
    model = tiny_model(tokenizer)
    opt = make_optimizer(model, run.train)
    stream = Position()
    ckpt = Checkpointer(run, model, tokenizer, opt, stream)
    for step in (10, 20, 30):
        stream.index = step
        ckpt.save(step)
    root = run.checkpoint_dir
    assert sorted(p.name for p in root.iterdir()) == ["step_20", "step_30"]  # keeps the newest 2
    assert latest_checkpoint(root) == root / "step_30"
    (root / ".step_40.tmp-abc").mkdir()  # a save killed before its rename
    assert latest_checkpoint(root) == root / "step_30"
    with open(root / "step_30" / "optimizer.pt", "r+b") as f:  # damaged after the fact
        f.truncate(100)
    assert latest_checkpoint(root) == root / "step_20"
    (root / "step_20" / "r1lab_manifest.json").unlink()
    assert latest_checkpoint(root) is None
    # restore puts the optimizer state back
    stream.index = 40
    ckpt.save(40)
    fresh, other = make_optimizer(model, run.train), Position()
    assert Checkpointer(run, model, tokenizer, fresh, other).restore(root / "step_40") == 40
    assert other.index == 40 and fresh.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


# ---------------------------------------------------------------- exact resume after SIGKILL

def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "r1lab.cli", *map(str, args)]


# one thread: these models are too small to gain from two, and the tests then stay fast on a busy machine
ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def _kill_after_first_checkpoint(cmd: list[str], out: Path) -> None:
    kill_at_checkpoint(cmd, out / "checkpoints" / "step_10", ENV, timeout=120)
    assert not (out / "final").exists(), "the run finished before it could be killed: make it longer"


@pytest.mark.parametrize("command", ["pretrain", "sft"])
def test_resume_after_sigkill_is_bitwise_exact(tmp_path, tok_dir, command):
    shape = ["seq_len=64", "batch_size=4"] if command == "sft" else ["seq_len=32", "batch_size=4"]
    extra = ["data.tasks=addition,linear"] + shape
    args = [command, "--tokenizer", tok_dir, *TINY, *extra, "max_steps=40", "save_every=10", "seed=3"]
    subprocess.run(_cli(*args, "--out", tmp_path / "straight"), check=True, capture_output=True, env=ENV)
    killed = tmp_path / "killed"
    _kill_after_first_checkpoint(_cli(*args, "--out", killed), killed)
    resumed_from = max(int(p.name[5:]) for p in (killed / "checkpoints").glob("step_*"))
    assert resumed_from < 40
    done = subprocess.run(_cli(*args, "--out", killed, "--resume"), capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"(step {resumed_from})" in done.stderr
    straight, again = _losses(tmp_path / "straight"), _losses(killed)
    assert sorted(again) == list(range(1, 41))
    assert [again[s] for s in range(resumed_from + 1, 41)] == [straight[s] for s in range(resumed_from + 1, 41)]
    weights = "final/model.safetensors"
    assert (killed / weights).read_bytes() == (tmp_path / "straight" / weights).read_bytes()
    config = (killed / "config.yaml").read_text()
    assert "max_steps: 40" in config and "hidden_size: 32" in config


def test_fresh_run_refuses_a_used_folder(tmp_path, tokenizer):
    from r1lab.config import ConfigError
    from r1lab.train.loop import setup_run

    cfg = TrainConfig(max_steps=2)
    run = setup_run(tmp_path, None, resume=False, train_cfg=cfg)  # an empty folder is fine
    model = tiny_model(tokenizer)
    Checkpointer(run, model, tokenizer, make_optimizer(model, cfg), Position()).save(1)
    with pytest.raises(ConfigError, match="--resume"):
        setup_run(tmp_path, None, resume=False, train_cfg=cfg)
    assert setup_run(tmp_path, None, resume=True, train_cfg=cfg).resume_from == tmp_path / "checkpoints" / "step_1"


# ---------------------------------------------------------------- SFT learns addition

def greedy_answers(model, tokenizer, prompts: list[str], max_tokens: int) -> list[str]:
    """Greedy completions, through r1lab.engine when it is there."""
    ids = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True) for p in prompts]
    from r1lab.engine import Engine, SamplingParams

    outs = Engine(model, tokenizer).generate(ids, SamplingParams(max_tokens=max_tokens, temperature=0))
    return ["<think>\n" + o.text for o in outs]


@pytest.mark.slow
def test_sft_cpu_tiny_learns_four_digit_addition(tmp_path):
    from r1lab import rewards, tasks

    start = time.time()
    out = tmp_path / "sft"
    done = subprocess.run(_cli("sft", "--preset", "cpu-tiny", "--out", out, "data.tasks=addition"),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    train_time = time.time() - start
    import r1lab

    model, tok = r1lab.load(out / "final")
    rows = tasks.sample("addition", 200, seed=123, split="test", digits=4)
    completions = greedy_answers(model.eval(), tok, [r["prompt"] for r in rows], max_tokens=160)
    acc = sum(rewards.get("accuracy")(completions, answer=[r["answer"] for r in rows])) / len(rows)
    steps = len((out / "metrics.jsonl").read_text().splitlines())
    print(f"SFT cpu-tiny on addition: {steps} steps, {train_time:.0f} s (with startup), held-out accuracy {acc:.1%}")
    assert train_time < 300
    assert acc >= 0.95
