"""The whole recipe, shortened (every stage, a few steps each): it must leave a report card, its data and a
servable final checkpoint. Slow: about 1 minute on 2 quiet cores (9 on a heavily loaded machine)."""
import json

import pytest


@pytest.mark.slow
def test_shortened_speedrun_end_to_end(tmp_path):
    import r1lab
    from r1lab.cli import main

    out = tmp_path / "run"
    assert main(["speedrun", "--preset", "cpu-smoke", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert report.startswith("# r1lab speedrun") and "## Cost" in report
    summary = json.loads((out / "summary.json").read_text())
    stages = {row["stage"] for row in summary["table"]}
    assert {"base", "r1-zero", "r1", "student-sft", "student-distilled", "student-rl", "student-onpolicy",
            "student-grpo"} <= stages
    assert "## Students" in report and "| student-onpolicy |" in report
    # the continuations of student-sft at equal compute: their checkpoints evaluated, a figure, a verdict
    evals = json.loads((out / "eval.json").read_text())
    assert {"student-distilled@2", "student-onpolicy@1", "student-grpo@1"} <= set(evals)
    assert "## The students at equal compute" in report and (out / "students_by_flops.png").stat().st_size > 1000
    keys = [f["key"] for f in summary["findings"]]
    assert "on-policy vs continued SFT at equal FLOPs" in keys and "R1 over its cold start >= 10 pts" in keys
    assert len(summary["findings"]) >= 3 and summary["cost"]["total_flops"] > 0 and summary["seed"] == 0
    assert all(f["figure"] for f in summary["findings"] if f["passed"] is not None)  # each verdict with its figure
    assert not any(s.startswith("aha-") for s in stages) and "## Aha moment" not in report
    for png in ("grpo_curves.png", "accuracy_by_stage.png"):
        assert (out / png).stat().st_size > 1000
    model, tok = r1lab.load(out / "final")
    assert tok.decode(tok.encode("What is 1 + 2?")) == "What is 1 + 2?"
    # a second run skips every finished stage
    assert main(["speedrun", "--preset", "cpu-smoke", "--out", str(out)]) == 0


@pytest.mark.slow
def test_shortened_aha_recipe_end_to_end(tmp_path):
    """The aha experiment's recipe (issue 19), shortened: the pair beside the base, evaluated on addition alone
    with check rates, the report's aha section, its curves and finding."""
    from r1lab.cli import main

    out = tmp_path / "aha"
    assert main(["speedrun", "--preset", "aha-smoke", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    stages = {row["stage"] for row in summary["table"]}
    assert {"aha-base", "aha-zero", "aha-control-base", "aha-control"} <= stages and "aha-skill" not in stages
    aha = [row for row in summary["table"] if row["stage"].startswith("aha-")]
    assert {row["task"] for row in aha} == {"addition"} and all(row["check_rate"] is not None for row in aha)
    assert any(f["claim"].startswith("Aha moment") for f in summary["findings"]) and "## Aha moment" in report
    assert (out / "aha_curves.png").stat().st_size > 1000
