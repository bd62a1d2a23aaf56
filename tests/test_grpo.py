"""The GRPO trainer end to end on a tiny model: it logs what it should, learns, and resumes exactly."""
import json

import pytest
import torch

from conftest import run_killed_and_resumed, small_policy_checkpoint


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory, tokenizer):
    return small_policy_checkpoint(tokenizer, tmp_path_factory.mktemp("grpo") / "init")


FAST = ["grpo.group_size=4", "grpo.prompts_per_step=2", "grpo.max_new_tokens=12", "grpo.samples_every=1",
        "grpo.rewards={repetition: 1.0, tag_count: 1.0}", "grpo.max_sampling_rounds=2", "log_every=1"]


def read(path):
    return [json.loads(line) for line in open(path)]


def test_grpo_logs_and_writes_a_checkpoint(tmp_path, init_ckpt):
    from r1lab.cli import main

    assert main(["grpo", "--init", str(init_ckpt), "--out", str(tmp_path / "run"), "max_steps=2", *FAST]) == 0
    rows = read(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward", "accuracy", "response_length", "response_length_max", "truncated", "clip_frac", "kl",
                "entropy", "gen_s", "train_s", "tokens_per_s", "groups_dropped", "reward_repetition", "reward_tag_count"):
        assert key in rows[-1], key
    assert rows[-1]["response_length"] <= 12
    # rollouts match training: the engine's log-probs of the sampled tokens are the trainer's, in fp32 on CPU
    for row in rows:
        assert 0.0 <= row["logp_gap_mean"] <= row["logp_gap_max"] <= 1e-4, row
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
    samples = read(tmp_path / "run" / "samples.jsonl")
    assert samples and samples[0]["completion"].startswith("<think>\n")


def test_grpo_with_rollout_correction_logs_what_it_cut(tmp_path, init_ckpt):
    from r1lab.cli import main

    assert main(["grpo", "--init", str(init_ckpt), "--out", str(tmp_path / "run"), "max_steps=1", *FAST,
                 "grpo.rollout_correction=mis", "grpo.correction_level=token"]) == 0
    row = read(tmp_path / "run" / "metrics.jsonl")[-1]
    # r1lab's engine samples with the trainer's own fp32 weights: weights 1 to rounding, nothing cut
    assert row["correction_masked"] == 0.0 and row["correction_truncated"] == 0.0
    assert abs(row["correction_ratio"] - 1.0) < 1e-4 and "off_policy" not in row["health"]["signs"]


def test_grpo_with_staleness_1_trains_on_rollouts_sampled_one_update_earlier(tmp_path, init_ckpt):
    from r1lab.cli import main

    for name, staleness in (("sync", "0"), ("async", "1")):
        assert main(["grpo", "--init", str(init_ckpt), "--out", str(tmp_path / name), "max_steps=3", *FAST,
                     f"grpo.max_staleness={staleness}", "grpo.dynamic_sampling=false"]) == 0
    sync, lagged = read(tmp_path / "sync" / "metrics.jsonl"), read(tmp_path / "async" / "metrics.jsonl")
    assert [r["staleness"] for r in lagged] == [0, 1, 1] and all(r["sampler_wait_s"] >= 0 for r in lagged)
    assert "staleness" not in sync[0]
    # the first step is the same in both (both sample on the starting weights, with the same seeds)
    assert (sync[0]["reward"], sync[0]["loss"]) == (lagged[0]["reward"], lagged[0]["loss"])
    # later ones were sampled one update earlier: the sampler's log-probs differ from the trainer's by that update
    # (in the sync run only by float rounding)
    assert all(lag["logp_gap_mean"] > 100 * now["logp_gap_mean"] for lag, now in zip(lagged[1:], sync[1:]))


@pytest.mark.slow  # three GRPO runs in subprocesses
def test_grpo_with_staleness_1_resumes_exactly_after_sigkill(tmp_path, init_ckpt):
    # the rollouts sampled ahead are in the checkpoint: the resumed run trains on exactly what the other one did
    full, cut = run_killed_and_resumed(["grpo", "--init", str(init_ckpt), "max_steps=4", "save_every=2", *FAST,
                                        "grpo.max_staleness=1"], tmp_path)
    assert [r["step"] for r in cut] == [1, 2, 3, 4] and [r["staleness"] for r in cut] == [0, 1, 1, 1]
    for a, b in zip(full, cut):
        assert (a["loss"], a["reward"], a["response_length"]) == (b["loss"], b["reward"], b["response_length"])
    weights = [(tmp_path / run / "final" / "model.safetensors").read_bytes() for run in ("full", "cut")]
    assert weights[0] == weights[1]


def test_grpo_logs_accuracy_per_task_with_several_tasks(tmp_path, init_ckpt):
    from r1lab.cli import main

    assert main(["grpo", "--init", str(init_ckpt), "--out", str(tmp_path / "run"), "max_steps=1", *FAST,
                 "grpo.tasks=addition,countdown", "grpo.prompts_per_step=4", "grpo.dynamic_sampling=false"]) == 0
    row = read(tmp_path / "run" / "metrics.jsonl")[-1]
    samples = read(tmp_path / "run" / "samples.jsonl")
    seen = {name for name in ("addition", "countdown") if f"accuracy_{name}" in row}
    assert seen, row  # 4 prompts drawn from two tasks: at least one task is logged, each within [0, 1]
    assert all(0.0 <= row[f"accuracy_{name}"] <= 1.0 for name in seen)
    assert samples


def test_grpo_resumes_exactly_after_sigkill(tmp_path, init_ckpt):
    full, cut = run_killed_and_resumed(["grpo", "--init", str(init_ckpt), "max_steps=6", "save_every=2", *FAST], tmp_path)
    assert [r["step"] for r in cut] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(full, cut):
        assert (a["loss"], a["reward"], a["response_length"]) == (b["loss"], b["reward"], b["response_length"])


def test_grpo_raises_a_reward_it_is_given(tmp_path, init_ckpt, monkeypatch):
    """A toy verifiable reward (the share of '7' characters) must go up under GRPO."""
    from r1lab import rewards
    from r1lab.config import build
    from r1lab.train.grpo import GRPOConfig, PRESETS, grpo

    def sevens():
        def fn(completions, **_):
            out = []
            for c in completions:
                body = c[len("<think>\n"):]
                out.append(body.count("7") / max(1, len(body)))
            return out
        return fn

    monkeypatch.setitem(rewards.FACTORIES, "sevens", sevens)
    cfg = build(GRPOConfig, PRESETS, "cpu-tiny", ["max_steps=25", "lr=1e-2", "warmup_steps=1", "grpo.group_size=8",
                                                  "grpo.prompts_per_step=4", "grpo.max_new_tokens=8",
                                                  "grpo.rewards={sevens: 1.0}", "save_every=100"])
    grpo(cfg, tmp_path / "run", init=init_ckpt)
    rows = read(tmp_path / "run" / "metrics.jsonl")
    first = sum(r["reward"] for r in rows[:5]) / 5
    last = sum(r["reward"] for r in rows[-5:]) / 5
    print(f"share of '7': first 5 steps {first:.3f}, last 5 steps {last:.3f}")
    assert last > first + 0.2


def test_token_logp_reads_only_the_masked_positions(init_ckpt):
    """The head runs on the target positions only; there it must equal the full forward's log-probs."""
    import r1lab
    from r1lab.train.grpo_loss import token_logp

    model, _ = r1lab.load(init_ckpt)
    torch.manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (3, 9))
    mask = torch.zeros(3, 8)
    mask[0, 2:8] = 1
    mask[1, 4:6] = 1  # row 2: nothing (a masked-out truncated completion)
    logp, entropy = token_logp(model, ids, mask, temperature=0.7)
    full = torch.log_softmax(model(ids)[:, :-1] / 0.7, -1)
    want = full.gather(-1, ids[:, 1:, None]).squeeze(-1)
    m = mask.bool()
    torch.testing.assert_close(logp[m], want[m], atol=1e-5, rtol=1e-5)
    assert (logp[~m] == 0).all()
    ent = -(full.exp() * full).sum(-1)[m].mean()
    assert float(entropy) == pytest.approx(float(ent.detach()), abs=1e-5)
    logp.sum().backward()  # gradients flow to the model through the selected positions
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


def test_dynamic_sampling_draws_enough_prompts_at_the_seen_keep_rate(tokenizer):
    """One group in four is informative: after the first round (8 prompts, 2 kept) the second draws
    6 / (2/8) = 24 prompts and fills the batch, instead of four ever smaller rounds."""
    from types import SimpleNamespace

    from r1lab.rewards import Scores
    from r1lab.train.grpo import GRPOSection, PromptStream, collect

    G, groups = 2, iter(range(10_000))

    class Engine:  # every fourth group gets one right answer
        def generate(self, prompts, params, progress=False):
            outs = []
            for _ in range(len(prompts) // G):
                g = next(groups)
                outs += [SimpleNamespace(text="y" if g % 4 == 0 and j == 0 else "x", token_ids=[5], finish_reason="stop",
                                           logprobs=[-0.5])
                         for j in range(G)]
            return outs

    def scorer(texts, **_):
        right = [float("y" in t) for t in texts]
        return Scores(right, {"accuracy": right})

    cfg = GRPOSection(tasks="addition", group_size=G, prompts_per_step=8, max_sampling_rounds=4)
    prompts = PromptStream(cfg, seed=0)
    kept, stats = collect(Engine(), tokenizer, prompts, scorer, cfg, 8, seed=0, step=1)
    assert (stats.rounds, stats.groups_seen, stats.groups_dropped, prompts.position) == (2, 32, 24, 32)
    assert len(kept.rewards) == 8 * G and sorted(set(kept.rewards)) == [0.0, 1.0]


def test_grpo_step_is_one_callable_step(tmp_path, init_ckpt):
    """GRPOStep (what the loop and bench/grpo.py call) runs one step on its own: it samples whole groups,
    updates the weights, and reports the step's record."""
    import r1lab
    from r1lab.config import TrainConfig
    from r1lab.train.dist import Dist, RunState
    from r1lab.train.grpo import GRPOSection, GRPOStep, PromptStream
    from r1lab.train.loop import Trainer

    section = GRPOSection(tasks="addition", group_size=4, prompts_per_step=2, max_new_tokens=8, dynamic_sampling=False,
                          rewards={"repetition": 1.0})
    run = RunState(tmp_path, Dist(), TrainConfig(max_steps=2, lr=1e-2, warmup_steps=1, min_lr_ratio=1.0, seed=0))
    model, tokenizer = r1lab.load(init_ckpt)
    before = [p.detach().clone() for p in model.parameters()]
    prompts = PromptStream(section, seed=0)
    step = GRPOStep(Trainer.build(run, model, tokenizer), section, prompts)
    record = step(0)
    step.close()
    assert record["groups_kept"] == 2 and record["groups_seen"] == 2 and prompts.position == 2
    assert record["gen_tokens"] > 0 and record["lr"] == pytest.approx(1e-2) and "loss" in record
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert (tmp_path / "samples.jsonl").exists()  # step 1 writes a few samples
