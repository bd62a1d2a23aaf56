import pytest

from r1lab.commands import InitConfig
from r1lab.config import ConfigError, TrainConfig, build, model_presets


def test_presets_and_overrides():
    cfg = build(InitConfig, model_presets(), "cpu-tiny", ["hidden_size=96", "model.num_hidden_layers=2", "seed=3"])
    assert (cfg.model.hidden_size, cfg.model.num_hidden_layers, cfg.seed) == (96, 2, 3)
    assert cfg.model.vocab_size == 512


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="unknown config key 'hiden_size'.*model.hidden_size"):
        build(InitConfig, model_presets(), "cpu-tiny", ["hiden_size=96"])


def test_bad_values_and_presets():
    with pytest.raises(ConfigError, match="hidden_size"):
        build(InitConfig, model_presets(), None, ["hidden_size=abc"])
    with pytest.raises(ConfigError, match="valid presets: cpu-tiny"):
        build(InitConfig, model_presets(), "cpu-huge", [])
    with pytest.raises(ConfigError, match="attention must be"):
        build(InitConfig, model_presets(), None, ["attention=gqa"])


def test_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hidden_size: 48\n  mlp: dense\n"
                    "  rope_scaling: {type: yarn, factor: 2.0, original_max_position_embeddings: 64}\nseed: 7\n")
    cfg = build(InitConfig, model_presets(), str(path), ["seed=8"])
    assert (cfg.model.hidden_size, cfg.model.mlp, cfg.seed) == (48, "dense", 8)
    assert cfg.model.rope_scaling["factor"] == 2.0


def test_gpu_small_is_a_100_to_300m_moe():
    import torch

    from r1lab.model import Transformer, preset

    with torch.device("meta"):
        counts = Transformer(preset("gpu-small")).param_count()
        tiny = Transformer(preset("cpu-tiny")).param_count()
    assert 100e6 <= counts["total"] <= 300e6 and counts["activated"] < counts["total"]
    assert 1e6 <= tiny["total"] <= 3e6


def test_train_config_types():
    cfg = build(TrainConfig, None, None, ["lr=1e-3", "compile=true", "max_steps=5"])
    assert cfg.lr == 1e-3 and cfg.compile is True and cfg.max_steps == 5
