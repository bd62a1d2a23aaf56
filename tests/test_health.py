"""The GRPO health monitor: each sign on synthetic metrics, then each pathology made to happen on purpose in
real GRPO runs of a tiny model (rewards that pay for a loop, for brevity, for length, or nothing at all)."""
import json

import pytest

from conftest import small_policy_checkpoint
from r1lab.train import health


def healthy(step: int, **over) -> dict:
    record = {"step": step, "truncated": 0.05, "reward_format": 0.5, "accuracy": 0.3 + 0.02 * step,
              "response_length": 100.0 + step, "entropy": 1.5, "kl": 0.01}
    record.update(over)
    return record


def run_signs(records: list[dict], repetition_share: float = 0.0, zero_signal: float = 0.0) -> dict:
    return health.signs(records, repetition_share, zero_signal)


def test_a_healthy_run_raises_no_sign():
    history = [healthy(step) for step in range(1, 31)]
    for end in range(1, 31):
        assert run_signs(history[:end], 0.05, 0.3) == {}, end


@pytest.mark.parametrize("name, make", [
    ("truncation", lambda s: healthy(s, truncated=0.6 if s == 20 else 0.05)),
    ("format_without_accuracy", lambda s: healthy(s, reward_format=min(1.0, 0.05 * s), accuracy=0.3)),
    ("length_blowup", lambda s: healthy(s, response_length=100.0 * (1 + (s - 5) * 0.2 if s > 5 else 1))),
    ("length_collapse", lambda s: healthy(s, response_length=100.0 * (0.9 ** s))),
    ("entropy_collapse", lambda s: healthy(s, entropy=1.5 * 0.85 ** s)),
    ("kl_spike", lambda s: healthy(s, kl=0.5 if s == 20 else 0.01)),
    ("off_policy", lambda s: healthy(s, correction_masked=0.3 if s == 20 else 0.01, correction_truncated=0.0)),
])
def test_each_sign_on_synthetic_metrics(name, make):
    history = [make(step) for step in range(1, 21)]
    assert name in run_signs(history), run_signs(history)
    assert set(run_signs(history)) == {name}


def test_sample_level_signs():
    loop = [5, 6, 7, 8] * 10
    assert health.repetition(loop) > 0.8 and health.repetition(list(range(40))) == 0.0 and health.repetition([1, 1]) == 0.0
    assert health.looping_share([0.9, 0.1, 0.6, 0.0]) == 0.5
    assert health.zero_signal_share([1, 1, 0, 1, 0, 0, 1, 0], 2) == 0.5
    assert set(run_signs([healthy(1)], repetition_share=0.5, zero_signal=0.95)) == {"repetition", "zero_signal"}


def test_stop_on_names_are_checked():
    assert health.check_stop_on("") == [] and health.check_stop_on("any") == list(health.SIGNS)
    with pytest.raises(ValueError, match="unknown sign 'loops'.*truncation"):
        health.check_stop_on("truncation,loops")
    from r1lab.config import ConfigError, build
    from r1lab.train.grpo import GRPOConfig, PRESETS

    with pytest.raises((ValueError, ConfigError), match="stop_on"):
        build(GRPOConfig, PRESETS, "cpu-tiny", ["grpo.stop_on=nonsense"])


# ---------------------------------------------------------------- pathologies on purpose, in real runs

@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory, tokenizer):
    return small_policy_checkpoint(tokenizer, tmp_path_factory.mktemp("health") / "init")


def _train(monkeypatch, init, out, reward, *overrides) -> list[dict]:
    """GRPO with `reward` (fn(text) -> float) standing in as the format reward; its metrics rows."""
    from r1lab import rewards
    from r1lab.config import build
    from r1lab.train.grpo import GRPOConfig, PRESETS, grpo

    def factory():
        return lambda completions, **_: [float(reward(c[len("<think>\n"):])) for c in completions]

    monkeypatch.setitem(rewards.FACTORIES, "format", factory)
    cfg = build(GRPOConfig, PRESETS, "cpu-tiny", ["warmup_steps=1", "grpo.group_size=8",
                                                  "grpo.prompts_per_step=4", "grpo.max_new_tokens=16",
                                                  "grpo.rewards={format: 1.0}", "save_every=100", *overrides])
    grpo(cfg, out, init=init)
    return [json.loads(line) for line in open(out / "metrics.jsonl")]


def flagged(rows: list[dict]) -> set[str]:
    return {name for r in rows for name in r["health"]["signs"]}


def test_pathologies_on_purpose_are_flagged(tmp_path, init_ckpt, monkeypatch, capsys):
    # a "format" reward that pays for one repeated character: it rises while accuracy stays at 0; the
    # completions loop, the entropy collapses, and the policy runs away from its reference (beta > 0)
    loop = _train(monkeypatch, init_ckpt, tmp_path / "loop", lambda text: text.count("7") / max(1, len(text)),
                  "grpo.beta=0.05", "lr=5e-2", "max_steps=16")
    assert {"format_without_accuracy", "repetition", "entropy_collapse", "kl_spike"} <= flagged(loop), \
        [r["health"] for r in loop]
    assert all("reward" in r and "health" in r for r in loop)
    # a reward for brevity: the random model's completions (all cut at max_new_tokens) collapse to a few tokens
    short = _train(monkeypatch, init_ckpt, tmp_path / "short", lambda text: -len(text), "lr=5e-2", "max_steps=10")
    assert "truncation" in flagged(short[:1]) and "length_collapse" in flagged(short)
    # then a reward for length, from the short model: lengths blow up and are cut at max_new_tokens again
    long = _train(monkeypatch, tmp_path / "short" / "final", tmp_path / "long", lambda text: len(text), "lr=1e-2",
                  "max_steps=14")
    assert {"length_blowup", "truncation"} <= flagged(long)
    # a reward that pays everything the same: no group carries a signal; grpo.stop_on stops the run at once
    capsys.readouterr()
    flat = _train(monkeypatch, init_ckpt, tmp_path / "flat", lambda text: 1.0, "grpo.stop_on=zero_signal",
                  "grpo.dynamic_sampling=false", "max_steps=5")
    assert len(flat) == 1 and flat[0]["health"]["zero_signal"] == 1.0 and "zero_signal" in flagged(flat)
    assert "stopping at step 1: zero_signal" in capsys.readouterr().err
    assert (tmp_path / "flat" / "final" / "model.safetensors").exists()
