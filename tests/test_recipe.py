"""Speedrun recipes: the built-in ones load and give each stage the config the speedrun has always used;
overrides reach one stage or the whole recipe; mistakes name the file and the key."""
import pytest

from r1lab.config import ConfigError
from r1lab.recipe import builtin_recipes, eval_settings, load_recipe
from r1lab.speedrun import Speedrun


def configs(recipe, tmp_path):
    runner = Speedrun(recipe, tmp_path)
    return {spec.name: runner.stage_config(spec) for spec in recipe.stages}


def test_builtin_recipes_ship_with_the_package():
    assert {"cpu", "cpu-smoke", "aha", "aha-smoke"} <= set(builtin_recipes())


def test_cpu_recipe_stages(tmp_path):
    recipe = load_recipe("cpu")
    assert [s.name for s in recipe.stages] == ["base", "r1-zero", "r1-cold-start", "r1-grpo1", "r1-rs-sft", "r1",
                                               "student-base", "student-rl", "student-sft", "student-distilled",
                                               "student-onpolicy", "student-grpo"]
    assert recipe.clean_examples == 500
    assert recipe.final == "r1" and recipe.stage("r1").start == "r1-rs-sft"
    cfg = configs(recipe, tmp_path)
    base, _ = cfg["base"]
    assert (base.train.max_steps, base.train.optimizer, base.data.noise, base.data.tasks) == (600, "muon", 0.3,
                                                                                             "addition,countdown")
    r1, _ = cfg["r1"]
    assert (r1.train.lr, r1.grpo.group_size, r1.grpo.max_sampling_rounds, r1.grpo.task_weights) == (1e-4, 8, 2, "1.0,2.0")
    assert r1.grpo.knobs == {"addition": {"digits": 4}, "countdown": {"numbers": 2}} and r1.grpo.max_new_tokens == 128
    rs, traces = cfg["r1-rs-sft"]
    assert (rs.train.warmup_steps, rs.train.lr) == (16, 3e-4)
    assert traces == {"teacher": "r1-grpo1", "problems": 200, "k": 4, "seed": 1, "folder": "rejection", "add_cold_start": True}
    assert cfg["student-rl"][0].grpo.max_sampling_rounds == 4  # the GRPO default
    cold, _ = cfg["r1-cold-start"]
    assert (cold.train.max_steps, cold.train.lr) == (60, 1e-3) and recipe.stage("r1-cold-start").data == "cold_start"
    # the three continuations of one partly SFT'd student, each evaluated along the way (its checkpoints kept)
    for name in ("student-distilled", "student-onpolicy", "student-grpo"):
        assert recipe.stage(name).start == "student-sft" and cfg[name][0].train.keep_checkpoints == 0
        assert eval_settings(recipe.stage(name), recipe)[2] is True
    assert eval_settings(recipe.stage("student-sft"), recipe)[2] is False
    assert cfg["student-sft"][1] == cfg["student-distilled"][1]  # the same verified traces of R1
    onpolicy = recipe.stage("student-onpolicy")
    # a fixed step count, no wall-time budget: the stage does the same steps on any machine at any load
    assert (onpolicy.kind, onpolicy.start, onpolicy.teacher, onpolicy.budget) == ("onpolicy", "student-sft", "r1", "")
    opd, _ = cfg["student-onpolicy"]
    assert (opd.train.max_steps, opd.train.lr, opd.grpo.time_limit_s) == (60, 1e-4, 0.0)
    assert (opd.grpo.tasks, opd.grpo.max_new_tokens, opd.grpo.loss, opd.grpo.group_size) == ("addition,countdown", 128,
                                                                                           "dapo", 4)


@pytest.mark.parametrize("extra, message", [
    ({"teacher": "nobody"}, "teacher must name an earlier stage"),
    ({"teacher": "base", "budget": "later"}, "budget must name an earlier stage"),
])
def test_onpolicy_stage_needs_an_earlier_teacher_and_budget(tmp_path, extra, message):
    stage = "\n".join(f"    {k}: {v}" for k, v in extra.items())
    path = tmp_path / "r.yaml"
    path.write_text("stages:\n  - name: base\n    kind: pretrain\n    preset: cpu-tiny\n"
                    f"  - name: s\n    kind: onpolicy\n    preset: cpu-micro\n    from: base\n{stage}\n")
    with pytest.raises(ConfigError, match=message):
        load_recipe(str(path))


def test_smoke_recipe_extends_cpu(tmp_path):
    recipe = load_recipe("cpu-smoke")
    cfg = configs(recipe, tmp_path)
    assert cfg["base"][0].train.max_steps == 30 and cfg["r1"][0].train.lr == 1e-4  # shortened; lr from cpu
    assert cfg["r1"][0].grpo.group_size == 4 and cfg["r1"][0].grpo.max_new_tokens == 48
    assert cfg["student-distilled"][1]["problems"] == 8


def test_overrides_reach_the_recipe_or_one_stage(tmp_path):
    recipe = load_recipe("cpu", ["seed=3", "r1-zero.train.max_steps=60", "r1.grpo.max_sampling_rounds=4",
                                 "r1-rs-sft.traces.k=8"])
    cfg = configs(recipe, tmp_path)
    assert all(c.train.seed == 3 for c, _ in cfg.values())
    assert cfg["r1-zero"][0].train.max_steps == 60 and cfg["r1-grpo1"][0].train.max_steps == 25
    assert cfg["r1"][0].grpo.max_sampling_rounds == 4 and cfg["r1-rs-sft"][1]["k"] == 8


def test_recipe_mistakes_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown speedrun key 'r1_zero_steps'"):
        load_recipe("cpu", ["r1_zero_steps=60"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: addition\nstages:\n  - {name: a, kind: grpo, preset: cpu-tiny, from: nowhere}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: stage a starts from 'nowhere'"):
        load_recipe(str(bad))
    bad.write_text("taks: addition\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key\(s\) taks"):
        load_recipe(str(bad))
    bad.write_text("stages:\n  - {name: a, kind: pretrain, preset: cpu-tiny, set: [train.lr=fast]}\n")
    with pytest.raises(ConfigError, match="stage a: train.lr: cannot read 'fast'"):
        configs(load_recipe(str(bad)), tmp_path)
    with pytest.raises(ConfigError, match="neither a file nor a built-in recipe"):
        load_recipe(str(tmp_path / "missing.yaml"))


def test_a_recipe_of_your_own_extends_a_file(tmp_path):
    (tmp_path / "mine.yaml").write_text("extends: cpu\nseed: 7\nset:\n  r1: [train.max_steps=80]\n")
    recipe = load_recipe(str(tmp_path / "mine.yaml"))
    assert recipe.seed == 7 and configs(recipe, tmp_path)["r1"][0].train.max_steps == 80


@pytest.mark.slow
def test_speedrun_runs_a_recipe_file(tmp_path):
    """`r1lab speedrun --recipe FILE`: a three-stage pipeline of a tiny model, evaluated and reported."""
    import json

    from r1lab.cli import main

    tiny = ("[model.hidden_size=32, model.intermediate_size=64, model.moe_intermediate_size=16, model.num_hidden_layers=2, "
            "model.num_attention_heads=2, model.kv_lora_rank=16, model.qk_nope_head_dim=8, model.qk_rope_head_dim=8, "
            "model.v_head_dim=8, model.n_routed_experts=4, train.max_steps=3, train.seq_len=64, train.batch_size=4]")
    (tmp_path / "tiny.yaml").write_text(f"""
tasks: addition
clean_examples: 8
max_new_tokens: 16
eval_problems: 2
eval_k: 1
stages:
  - {{name: base, kind: pretrain, preset: cpu-tiny, set: {tiny}}}
  - {{name: tuned, kind: sft, preset: cpu-tiny, from: base, data: cold_start, set: [train.max_steps=2, train.batch_size=4]}}
  - {{name: rl, kind: grpo, preset: cpu-tiny, from: tuned, set: [train.max_steps=1, grpo.group_size=2, grpo.prompts_per_step=2]}}
""")
    out = tmp_path / "run"
    assert main(["speedrun", "--recipe", str(tmp_path / "tiny.yaml"), "--out", str(out), "seed=2"]) == 0
    evals = json.loads((out / "eval.json").read_text())
    assert set(evals) == {"base", "tuned", "rl"} and evals["rl"]["addition"]["n"] == 2
    assert (out / "final" / "model.safetensors").read_bytes() == (out / "rl" / "final" / "model.safetensors").read_bytes()
    assert "max_steps: 2" in (out / "tuned" / "config.yaml").read_text() and "seed: 2" in (out / "rl" / "config.yaml").read_text()
    assert (out / "report.md").read_text().startswith("# r1lab speedrun")


def test_aha_recipe_stages(tmp_path):
    """The aha stages continue the base on addition alone, whose first pass states the answer without the
    working (checks in all, then a tenth of the traces; the control none), keep the recipe's addition knobs,
    and are evaluated on addition with room for a check (the skill stages not at all); the other stages keep
    the recipe's settings."""

    recipe = load_recipe("aha")
    assert [s.name for s in recipe.stages] == ["base", "aha-skill", "aha-base", "aha-zero", "aha-control-skill",
                                               "aha-control-base", "aha-control"]
    assert recipe.final == "aha-zero" and load_recipe("cpu").stage("base") == recipe.stage("base")
    cfg = configs(recipe, tmp_path)
    names = ("aha-skill", "aha-base", "aha-control-skill", "aha-control-base")
    assert [cfg[n][0].data.check for n in names] == [1.0, 0.1, 0.0, 0.0]
    assert [cfg[n][0].data.check_miss for n in names] == [0.5, 0.5, 0.0, 0.0]  # half the wrong first answers missed
    assert cfg["aha-skill"][0].train.max_steps == cfg["aha-control-skill"][0].train.max_steps == 300
    assert all((cfg[n][0].data.tasks, cfg[n][0].data.noise, cfg[n][0].data.quick, cfg[n][0].data.knobs) ==
               ("addition", 0.3, True, {"addition": {"digits": 4}}) for n in names)
    assert [recipe.stage(n).start for n in (*names, "aha-zero", "aha-control")] == [
        "base", "aha-skill", "base", "aha-control-skill", "aha-base", "aha-control-base"]
    assert eval_settings(recipe.stage("aha-skill"), recipe) == ([], 128, False)  # not evaluated
    for name in ("aha-zero", "aha-control"):
        zero = cfg[name][0]
        assert (zero.grpo.tasks, zero.grpo.knobs, zero.grpo.max_new_tokens, zero.grpo.loss) == (
            "addition", {"addition": {"digits": 4}}, 256, "dapo")
        assert eval_settings(recipe.stage(name), recipe) == (["addition"], 256, False)
    assert eval_settings(recipe.stage("base"), recipe) == (["addition", "countdown"], 128, False)
    assert cfg["base"][0].data.check == 0.0
    smoke = load_recipe("aha-smoke", ["aha-zero.eval.tasks=addition,countdown"])
    assert eval_settings(smoke.stage("aha-zero"), smoke) == (["addition", "countdown"], 48, False)
    with pytest.raises(ConfigError, match="unknown eval key 'k'"):
        eval_settings(load_recipe("aha", ["aha-zero.eval.k=2"]).stage("aha-zero"), recipe)
