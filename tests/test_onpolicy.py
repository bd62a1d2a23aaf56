"""On-policy distillation: the per-token reverse-KL loss by hand, the endpoint teacher against the local
one, a student pulled toward its teacher, exact resume, and two ranks under torchrun (the accuracy gain of a
far student: test_onpolicy_gain.py)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

import r1lab
from r1lab.cli import main
from conftest import run_killed_and_resumed, tiny_config
from r1lab.config import ConfigError
from r1lab.model import Transformer, save_checkpoint
from r1lab.tokenizer import train_tokenizer
from r1lab.train.grpo_collect import Rollouts
from r1lab.train.grpo_config import GRPOSection
from r1lab.train.grpo_loss import make_loss_fn, policy_batch, token_logp
from r1lab.train.onpolicy import EndpointTeacher, LocalTeacher, OnPolicySection, dense_kl, dense_loss_fn, reverse_kl_advantages
from test_serve import serve


class TwoTokens(nn.Module):
    """A 'model' over a 2-token vocabulary whose next-token logits are one parameter, at every position."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits, dtype=torch.float32))

    def forward(self, input_ids, select):
        return self.logits.expand(int(select.sum()), 2)


def one_step_gradient(student: TwoTokens, teacher: TwoTokens) -> torch.Tensor:
    """The gradient of the on-policy loss over two samples, one of each token (prompt token 0, then y)."""
    ids = torch.tensor([[0, 0], [0, 1]])
    mask = torch.ones(2, 1)
    with torch.no_grad():
        student_logp = token_logp(student, ids, mask, 1.0)[0]
        teacher_logp = token_logp(teacher, ids, mask, 1.0)[0]
    batch = policy_batch(Rollouts([[0], [0]], [[0], [1]], [0.0, 0.0], [False, False]), torch.zeros(2), 0, False)
    batch.old_logp = student_logp
    batch.advantages = reverse_kl_advantages(student_logp, teacher_logp, batch.target_mask)
    loss, _ = make_loss_fn(GRPOSection(loss="dapo", pack=False), 2, 2)(student, batch)  # the toy has no positions
    student.zero_grad()
    loss.backward()
    return student.logits.grad.clone(), batch.advantages


def test_student_equal_to_teacher_has_zero_kl_and_no_update():
    grad, advantages = one_step_gradient(TwoTokens([0.3, -1.2]), TwoTokens([0.3, -1.2]))
    assert torch.equal(advantages, torch.zeros(2, 1))
    assert torch.equal(grad, torch.zeros(2))


def test_student_with_mass_where_the_teacher_has_none_is_pushed_toward_it():
    # student: p = (1/2, 1/2); teacher: p = (0.99, 0.01). Both tokens sampled once (their student probabilities).
    student, teacher = TwoTokens([0.0, 0.0]), TwoTokens([0.0, float(torch.log(torch.tensor(0.01 / 0.99)))])
    grad, advantages = one_step_gradient(student, teacher)
    # by hand: A(y) = log p_t(y) - log p_s(y); loss = -(1/2) sum_y A(y) log p_s(y) (ratio 1), d log p_s(y)/dz = e_y - p_s
    a0, a1 = torch.log(torch.tensor(0.99 / 0.5)), torch.log(torch.tensor(0.01 / 0.5))
    assert advantages[:, 0].tolist() == pytest.approx([a0.item(), a1.item()], abs=1e-6)
    expected = -0.5 * (a0 * torch.tensor([0.5, -0.5]) + a1 * torch.tensor([-0.5, 0.5]))
    assert grad.tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert grad[1] > 0 > grad[0]  # gradient descent moves mass from token 1 (teacher: 1%) to token 0
    # with both tokens sampled at the student's probabilities this is the gradient of KL(student || teacher)
    z = torch.zeros(2, requires_grad=True)
    p_s, p_t = torch.softmax(z, -1), torch.tensor([0.99, 0.01])
    (p_s * (p_s.log() - p_t.log())).sum().backward()
    assert grad.tolist() == pytest.approx(z.grad.tolist(), abs=1e-6)
    # one SGD step lowers the reverse KL
    before = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=student.logits.detach()),
                                               torch.distributions.Categorical(probs=p_t))
    after = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=student.logits.detach() - 0.5 * grad),
                                              torch.distributions.Categorical(probs=p_t))
    assert after < before


def test_reward_weight_adds_the_verified_reward_to_every_token():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv = reverse_kl_advantages(torch.zeros(1, 3), torch.full((1, 3), -1.0), mask, torch.tensor([1.0]), 0.5)
    assert adv.tolist() == [[-0.5, -0.5, 0.0]]


@pytest.mark.parametrize("divergence", ["forward", "reverse"])
def test_dense_divergences_by_hand_and_their_gradient_step(divergence):
    p_s, p_t = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.7, 0.2, 0.1])
    a, b = (p_t, p_s) if divergence == "forward" else (p_s, p_t)
    kl = dense_kl(p_s.log()[None], p_t.log()[None], divergence)
    assert kl.item() == pytest.approx(float((a * (a / b).log()).sum()), abs=1e-6)
    assert dense_kl(p_t.log()[None], p_t.log()[None], divergence).item() == pytest.approx(0.0, abs=1e-7)
    # the loss over a batch is the mean KL over its target tokens; a gradient step on the student lowers it
    student, teacher = TwoTokens([0.0, 0.0]), TwoTokens([2.0, -1.0])
    ids, mask = torch.tensor([[0, 0, 1], [0, 1, 1]]), torch.ones(2, 2)
    batch = policy_batch(Rollouts([[0], [0]], [[0, 1], [1, 1]], [0.0, 0.0], [False, False]), torch.zeros(2), 0, False)
    assert torch.equal(batch.input_ids, ids) and torch.equal(batch.target_mask, mask)
    loss_fn = dense_loss_fn(teacher, divergence, 4, pack=False)
    loss, parts = loss_fn(student, batch)
    assert loss.item() == pytest.approx(parts["dense_kl"], abs=1e-6)  # 4 tokens, all in this one micro-batch
    loss.backward()
    assert teacher.logits.grad is None  # the teacher is a target, never trained
    with torch.no_grad():
        student.logits -= 0.5 * student.logits.grad
    assert loss_fn(student, batch)[0].item() < loss.item()


@pytest.fixture(scope="module")
def pair(tokenizer, tmp_path_factory):
    """A random student and a random teacher (other seed) on one tokenizer, as checkpoints."""
    folder = tmp_path_factory.mktemp("onpolicy")
    cfg = tiny_config(tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                      moe_intermediate_size=16, n_routed_experts=4, kv_lora_rank=16)
    for name, seed in (("student", 0), ("teacher", 1)):
        torch.manual_seed(seed)
        save_checkpoint(Transformer(cfg), tokenizer, folder / name)
    return folder / "student", folder / "teacher"


def test_endpoint_teacher_scores_as_the_local_teacher(pair, tokenizer):
    student_dir, teacher_dir = pair
    rows = Rollouts()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 4821 + 1379?"}], add_generation_prompt=True)
    torch.manual_seed(5)
    for n in (3, 9, 6):
        rows.add(prompt, [torch.randint(10, tokenizer.vocab_size, (n,)).tolist()], [0.0], [False])
    batch = policy_batch(rows, torch.zeros(3), tokenizer.pad_token_id, False)
    lengths = [len(p) + len(c) for p, c in zip(rows.prompt_ids, rows.completion_ids)]
    local = LocalTeacher(teacher_dir, tokenizer, torch.device("cpu"), 2).score(batch, lengths)
    model, own = r1lab.load(teacher_dir)
    with serve(model, own, "teacher", max_model_len=128) as served:
        remote = EndpointTeacher(served.url, tokenizer, OnPolicySection())
        try:
            scored = remote.score(batch, lengths)
        finally:
            remote.close()
    assert (scored != 0).sum() == batch.target_mask.sum() == 18
    assert torch.allclose(scored, local, atol=1e-4)
    student, _ = r1lab.load(student_dir)
    with torch.no_grad():
        student_logp = token_logp(student, batch.input_ids, batch.target_mask, 1.0)[0]
    first_step = [reverse_kl_advantages(student_logp, t, batch.target_mask) for t in (local, scored)]
    assert (first_step[0] - first_step[1]).abs().max() <= 1e-4


def test_a_teacher_with_another_tokenizer_is_refused(pair, tokenizer, tmp_path):
    other = train_tokenizer(["completely different words here, " * 3, "and other text entirely"] * 20, vocab_size=300)
    torch.manual_seed(0)
    save_checkpoint(Transformer(tiny_config(other.vocab_size, hidden_size=32, num_hidden_layers=1)), other, tmp_path / "t")
    with pytest.raises(ConfigError, match="different tokenizer"):
        LocalTeacher(tmp_path / "t", tokenizer, torch.device("cpu"), 2)
    model, own = r1lab.load(tmp_path / "t")
    with serve(model, own, "other", max_model_len=128) as served:
        with pytest.raises(ConfigError, match="tokenizes differently"):
            EndpointTeacher(served.url, tokenizer, OnPolicySection())


def read(path):
    return [json.loads(line) for line in open(path)]


FAST = ["grpo.group_size=2", "grpo.prompts_per_step=2", "grpo.max_new_tokens=10", "log_every=1"]


def test_on_policy_distill_logs_its_metrics(pair, tmp_path):
    student_dir, teacher_dir = pair
    assert main(["distill", "--method", "on-policy", "--teacher", str(teacher_dir), "--student",
                           str(student_dir), "--out", str(tmp_path / "run"), "max_steps=2", *FAST]) == 0
    rows = read(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reverse_kl", "teacher_logp", "student_logp", "accuracy", "loss"):
        assert key in rows[0]
    assert rows[0]["reverse_kl"] == pytest.approx(rows[0]["student_logp"] - rows[0]["teacher_logp"], abs=1e-5)
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


def test_on_policy_forward_divergence_trains_and_refuses_an_endpoint(pair, tmp_path, capsys):
    student_dir, teacher_dir = pair
    assert main(["distill", "--method", "on-policy", "--teacher", str(teacher_dir), "--student", str(student_dir),
                 "--out", str(tmp_path / "run"), "max_steps=2", "onpolicy.divergence=forward", *FAST]) == 0
    rows = read(tmp_path / "run" / "metrics.jsonl")
    assert rows[0]["dense_kl"] > 0 and rows[0]["loss"] == pytest.approx(rows[0]["dense_kl"], rel=0.2)
    assert main(["distill", "--method", "on-policy", "--teacher", "http://127.0.0.1:9", "--student", str(student_dir),
                 "--out", str(tmp_path / "run2"), "max_steps=1", "onpolicy.divergence=reverse", *FAST]) == 2
    assert "needs the teacher's whole next-token distribution" in capsys.readouterr().err


@pytest.mark.slow  # three runs in subprocesses: about 100 s on a loaded 2-core machine
def test_on_policy_distill_resumes_bitwise_after_sigkill(pair, tmp_path):
    student_dir, teacher_dir = pair
    full, cut = run_killed_and_resumed(["distill", "--method", "on-policy", "--teacher", str(teacher_dir), "--student",
                                        str(student_dir), "max_steps=4", "save_every=2", *FAST], tmp_path)
    assert [r["step"] for r in cut] == [1, 2, 3, 4]
    for a, b in zip(full, cut):
        assert (a["loss"], a["reverse_kl"], a["response_length"]) == (b["loss"], b["reverse_kl"], b["response_length"])
    assert (tmp_path / "full" / "final" / "model.safetensors").read_bytes() == \
        (tmp_path / "cut" / "final" / "model.safetensors").read_bytes()


@pytest.mark.slow  # four runs in subprocesses, two of them two-rank torchrun jobs
def test_on_policy_under_torchrun_matches_one_process_and_resumes(pair, tmp_path):
    """Two ranks (gloo, CPU) split each step's prompts; every prompt keeps its global index and so its sampling
    seeds, and the loss is normalised over both ranks: the run follows the one-process run. Resume works too."""
    student_dir, teacher_dir = pair
    args = ["distill", "--method", "on-policy", "--teacher", str(teacher_dir), "--student", str(student_dir),
            "max_steps=4", "save_every=2", *FAST]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "r1lab.cli"]
    subprocess.run([sys.executable, "-m", "r1lab.cli", *args, "--out", str(tmp_path / "one")], check=True, env=env,
                   timeout=300, capture_output=True)
    done = subprocess.run(torchrun + args + ["--out", str(tmp_path / "two")], env=env, timeout=300, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "2 rank(s)" in done.stderr
    one, two = read(tmp_path / "one" / "metrics.jsonl"), read(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in two] == [1, 2, 3, 4]  # one line per step: only rank 0 writes
    for a, b in zip(one, two):
        assert b["response_length"] == a["response_length"]  # the same samples
        for key in ("loss", "reverse_kl", "teacher_logp", "student_logp"):
            assert b[key] == pytest.approx(a[key], abs=1e-4), key
    # resume the two-rank run from step 2: the same steps 3-4 and the same final weights as without the cut
    shutil.copytree(tmp_path / "two", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_4")
    shutil.rmtree(tmp_path / "cut" / "final")
    done = subprocess.run(torchrun + args + ["--out", str(tmp_path / "cut"), "--resume"], env=env, timeout=300,
                          capture_output=True, text=True)
    assert done.returncode == 0 and "(step 2)" in done.stderr, done.stderr[-4000:]
    cut = read(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in cut] == [1, 2, 3, 4]
    assert [(r["loss"], r["reverse_kl"]) for r in cut] == [(r["loss"], r["reverse_kl"]) for r in two]
    assert (tmp_path / "cut" / "final" / "model.safetensors").read_bytes() == \
        (tmp_path / "two" / "final" / "model.safetensors").read_bytes()
