"""The report card: verdicts first, the results table, plots that exist, cost that adds up, summary.json."""
import json

import pytest

from r1lab.eval.report import Finding, Stage, cost, write_report

pytest.importorskip("matplotlib")


def _grpo_metrics(path, steps, per_task):
    with open(path, "w") as f:
        for step in range(1, steps + 1):
            row = {"step": step, "reward": 0.5 + step / 100, "accuracy": 0.4 + step / 100, "response_length": 80 - step}
            if per_task:
                row.update(accuracy_addition=0.6 + step / 100, accuracy_countdown=0.2 + step / 100)
            f.write(json.dumps(row) + "\n")
    return str(path)


def _stages(tmp_path, per_task=True):
    evals = {"addition": {"pass1": 0.5, "greedy": 0.9, "maj": 0.7, "mean_length": 96.0, "truncated": 0.0, "k": 4},
             "countdown": {"pass1": 0.3, "greedy": 0.5, "maj": 0.4, "mean_length": 60.0, "truncated": 0.01, "k": 4}}
    return [Stage("base", "b", 100.0, 1e12, 0.0, {"total": 1_550_000, "activated": 890_000}, None, evals),
            Stage("r1-zero", "z", 50.0, 2e12, 5e11, {"total": 1_550_000, "activated": 890_000},
                  _grpo_metrics(tmp_path / "m.jsonl", 12, per_task),
                  {t: {**e, "pass1": e["pass1"] + 0.2} for t, e in evals.items()})]


@pytest.mark.parametrize("per_task", [True, False])
def test_report_card(tmp_path, per_task):
    stages = _stages(tmp_path, per_task)
    findings = [Finding("GRPO helps", True, "+20.0 points"), Finding("R1 >= 90%", False, "addition: 70.0%"),
                Finding("never measured", None, "not measured"), Finding("length", None, "80 -> 68", observation=True)]
    report = write_report(tmp_path / "run", stages, findings, ["addition", "countdown"], title="test run",
                          notes=["a note"], extra_plots=[("Students", stages[:1])])
    text = report.read_text()
    lines = text.splitlines()
    assert lines[0] == "# test run"
    # the verdicts open the report, one line each, in order
    assert [line[:4] for line in lines[2:6]] == ["- ✅ ", "- ❌ ", "- ⚠️", "- ℹ️"]
    assert "| r1-zero | countdown |  | 50.0% | – | 50.0% | 40.0% | 60.0 | 1.0% |" in lines  # evals without intervals
    for png in ("grpo_curves.png", "accuracy_by_stage.png", "students.png"):
        data = (tmp_path / "run" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, png
        assert f"]({png})" in text
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert len(summary["table"]) == 4 and summary["findings"][1]["passed"] is False
    assert summary["cost"]["total_flops"] == pytest.approx(1e12 + 2e12 + 5e11)
    assert summary["cost"] == cost(stages)
    assert "- a note" in lines


def test_three_students_table(tmp_path):
    def student(name, pass1, flops, wall):
        evals = {t: {"pass1": pass1, "greedy": pass1, "maj": pass1, "mean_length": 50.0, "truncated": 0.0, "k": 4, "n": 100}
                 for t in ("addition", "countdown")}
        return Stage(name, name, wall, flops, 0.0, {}, None, evals)

    stages = [student("student-distilled", 0.5, 2e12, 36.0), student("student-rl", 0.1, 4e12, 50.0),
              student("student-onpolicy", 0.7, 1e12, 36.0)]
    report = write_report(tmp_path / "run", stages, [], ["addition", "countdown"], students=stages)
    lines = report.read_text().splitlines()
    # evals without intervals: Wilson over each task's 100 problems at 70%, [60.4, 78.1], half-width 8.84;
    # the mean of two tasks: sqrt(2 * 8.84^2) / 2 = 6.3 points
    assert "| student-onpolicy | 70.0% ± 6.3 | 1e+12 | 36 s |" in lines
    assert "| student-rl | 10.0% ± 4.2 | 4e+12 | 50 s |" in lines


def test_health_section_shows_what_the_rollout_correction_cut(tmp_path):
    from r1lab.eval.report import health_lines

    path = tmp_path / "m.jsonl"
    rows = [{"step": s, "correction_masked": m, "correction_truncated": 0.0, "correction_ratio": r,
             "health": {"signs": {"off_policy": "the rollout correction masked 25% of trained tokens"} if m >= 0.1 else {}}}
            for s, m, r in ((1, 0.0, 1.0), (2, 0.25, 1.5), (3, 0.05, 1.1))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = "\n".join(health_lines([Stage("r1", "c", 1.0, 1.0, metrics=str(path))]))
    assert "| r1 | off_policy | 1 of 3 | 2 |" in text
    assert "- r1: the rollout correction masked 10.00% of trained tokens per step (at most 25.00%, step 2); " \
           "mean weight 1.2000 over 3 steps" in text
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"step": 1, "health": {"signs": {}}}) + "\n")
    assert "rollout correction" not in "\n".join(health_lines([Stage("r1", "c", 1.0, 1.0, metrics=str(plain))]))
