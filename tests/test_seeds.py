"""Findings with their intervals, and `r1lab findings` / `r1lab speedrun --seeds` laying runs out by seed."""
import json
from dataclasses import asdict

import pytest

from r1lab.cli import main
from r1lab.eval.report import Finding, Stage, findings
from r1lab.eval.seeds import findings_table, read_run
from r1lab.eval.stats import inside_noise

TASKS = ["addition", "countdown"]


def _e(pass1, half, n=200):
    return {"pass1": pass1, "pass1_ci": [pass1 - half, pass1 + half], "n": n, "k": 4}


def _run(base, zero, r1, distilled, rl):
    """Stages whose evals are (pass1, half-width) per task."""
    def stage(name, pairs):
        return Stage(name, name, 1.0, 1.0, evals={t: _e(*p) for t, p in zip(TASKS, pairs)})
    return {s.name: s for s in (stage("base", base), stage("r1-zero", zero), stage("r1", r1),
                                stage("student-distilled", distilled), stage("student-rl", rl))}


def test_difference_verdicts_need_intervals_apart():
    narrow = findings(_run(base=[(0.30, 0.05), (0.10, 0.05)], zero=[(0.50, 0.05), (0.12, 0.05)],
                           r1=[(0.95, 0.02), (0.91, 0.03)], distilled=[(0.60, 0.05)] * 2, rl=[(0.40, 0.05)] * 2),
                      TASKS, {"r1-zero": "base"}, "r1")
    gain, level, students = narrow[0], narrow[1], narrow[2]
    # +20 points, margin hypot(5, 5) = 7.07: [+12.9, +27.1]
    assert gain.passed is True and gain.figure == "+20.0 pts [+12.9, +27.1] r1-zero over base, addition"
    assert (gain.value, gain.low, gain.high) == pytest.approx((0.20, 0.20 - 0.0707107, 0.20 + 0.0707107))
    # a level: judged on the value, the worst task shown with its interval
    assert level.passed is True and level.figure == "91.0% [88.0, 94.0] countdown" and level.value == pytest.approx(0.91)
    # the mean over two tasks: half-width sqrt(2 * 0.05^2) / 2 = 3.54 each, difference margin 5.0
    assert students.passed is True and students.figure == "+20.0 pts [+15.0, +25.0]"

    wide = findings(_run(base=[(0.30, 0.15), (0.10, 0.05)], zero=[(0.50, 0.15), (0.12, 0.05)],
                         r1=[(0.95, 0.02), (0.89, 0.03)], distilled=[(0.45, 0.10)] * 2, rl=[(0.40, 0.10)] * 2),
                    TASKS, {"r1-zero": "base"}, "r1")
    gain, level, students = wide[0], wide[1], wide[2]
    # +20 points >= 15 but the margin hypot(15, 15) = 21.2 reaches below 0: not claimed
    assert gain.passed is False and gain.figure.startswith("+20.0 pts [-1.2, +41.2]") and "inside the noise" in gain.detail
    assert inside_noise(0.50, (0.35, 0.65), 0.30, (0.15, 0.45)) and gain.low <= 0  # the same rule as stats.inside_noise
    assert level.passed is False and "90% is inside the 95% interval" in level.detail
    assert students.passed is False and students.low < 0 < students.high and "inside the noise" in students.detail


def test_gain_verdict_prefers_a_gain_that_holds():
    """A larger gain inside the noise does not hide a smaller one that clears the bar with intervals apart."""
    found = findings(_run(base=[(0.10, 0.30), (0.10, 0.02)], zero=[(0.50, 0.30), (0.30, 0.02)],
                          r1=[(0.95, 0.02)] * 2, distilled=[(0.5, 0.05)] * 2, rl=[(0.4, 0.05)] * 2),
                     TASKS, {"r1-zero": "base"}, "r1")
    assert found[0].passed is True and found[0].figure.endswith("countdown") and found[0].figure.startswith("+20.0 pts")


def test_students_not_apart_is_no_win():
    from r1lab.eval.report import onpolicy_finding

    def student(name, pass1):
        return Stage(name, name, 1.0, 1.0, evals={t: _e(pass1, 0.05) for t in TASKS})

    close = {s.name: s for s in (student("student-onpolicy", 0.54), student("student-distilled", 0.50),
                                 student("student-rl", 0.1))}
    found = onpolicy_finding(close, TASKS)
    # +4 points, margin sqrt(2) * 3.54 = 5.0: the interval holds 0, so no student "wins"
    assert found.claim == "Students: student-onpolicy leads, intervals not apart from student-distilled"
    assert found.figure == "+4.0 pts [-1.0, +9.0] on-policy vs student-distilled" and found.low < 0


def test_report_line_shows_the_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from r1lab.eval.report import write_report

    report = write_report(tmp_path, [], [Finding("GRPO helps", True, "the detail", figure="+20.0 pts [+12.9, +27.1]")], TASKS,
                          seed=3)
    assert "- ✅ **GRPO helps** — **+20.0 pts [+12.9, +27.1]**. the detail" in report.read_text().splitlines()
    assert read_run(tmp_path)["seed"] == 3


def test_unmeasured_findings_have_no_figure():
    found = findings({}, TASKS, {"r1-zero": "base"}, "r1")
    assert [f.passed for f in found[:3]] == [None, None, None] and all(f.figure == "" for f in found[:3])


def _summary(folder, seed, items, keep_seed=True):
    folder.mkdir(parents=True)
    summary = {"findings": [asdict(f) for f in items], "table": [], "stages": [], "cost": {}}
    if keep_seed:
        summary["seed"] = seed
    else:  # a run from before summary.json kept its seed: report.md's recipe note has it
        (folder / "report.md").write_text(f"# run\n\n## Setup\n\n- recipe: {json.dumps({'seed': seed, 'tasks': 'x'})}\n")
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def _fake_runs(tmp_path):
    def gain(ok, value):
        return Finding("GRPO gains >= 15 points", ok, "detail", figure=f"{value:+.1f} pts [x, y]", key="GRPO gain")
    obs = Finding("Students: student-distilled wins", None, "d", observation=True, figure="-3.0 pts", key="students")
    return [_summary(tmp_path / "a", 0, [gain(True, 20), Finding("R1 >= 90%", True, "", figure="93.0% [90.1, 95.2]"), obs]),
            _summary(tmp_path / "b", 1, [gain(False, 9), Finding("R1 >= 90%", True, "", figure="95.0% [92.1, 97.2]"), obs],
                     keep_seed=False),
            _summary(tmp_path / "c", 2, [gain(True, 17), Finding("R1 >= 90%", None, "not measured"), obs])]


def test_findings_table_rows_columns_and_held(tmp_path):
    runs = [read_run(f) for f in _fake_runs(tmp_path)]
    assert [r["seed"] for r in runs] == [0, 1, 2]
    lines = findings_table(runs).splitlines()
    assert "| finding | seed 0 | seed 1 | seed 2 | held on all seeds? |" in lines
    assert "| GRPO gain | ✅ +20.0 pts [x, y] | ❌ +9.0 pts [x, y] | ✅ +17.0 pts [x, y] | ❌ no: held on 2 of 3 |" in lines
    assert ("| R1 >= 90% | ✅ 93.0% [90.1, 95.2] | ✅ 95.0% [92.1, 97.2] | ⚠️ not measured | ⚠️ not measured on seed 2 |"
            in lines)
    assert "| students | ℹ️ -3.0 pts | ℹ️ -3.0 pts | ℹ️ -3.0 pts | ℹ️ observation |" in lines
    assert "- GRPO gain: GRPO gains >= 15 points" in lines  # the key's full claim below the table
    # all held: yes; a finding missing from a run is a dash and not measured there
    only = findings_table([runs[0], runs[0] | {"seed": 5, "findings": runs[0]["findings"][:1]}]).splitlines()
    assert "| GRPO gain | ✅ +20.0 pts [x, y] | ✅ +20.0 pts [x, y] | ✅ yes, 2 of 2 |" in only
    assert "| R1 >= 90% | ✅ 93.0% [90.1, 95.2] | – | ⚠️ not measured on seed 5 |" in only


def test_findings_command_stdout_file_and_errors(tmp_path, capsys):
    folders = [str(f) for f in _fake_runs(tmp_path)]
    out = tmp_path / "deep" / "findings.md"
    assert main(["findings", *folders, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text() and printed.startswith("# Findings across seeds")
    assert main(["findings", folders[0], str(tmp_path / "nowhere")]) == 2
    assert "no summary.json" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "summary.json").write_text("{}")
    assert main(["findings", str(tmp_path / "bad")]) == 2
    assert "not a speedrun summary" in capsys.readouterr().err


def test_speedrun_seeds_runs_each_seed_then_writes_the_table(tmp_path, monkeypatch, capsys):
    from r1lab import speedrun

    ran = []

    def fake_run(self):  # the recipe's real stages are tested in test_speedrun.py; here only the fan-out
        ran.append((self.recipe.seed, self.out))
        seed = self.recipe.seed
        (self.out / "summary.json").write_text(json.dumps({"seed": seed, "findings": [asdict(
            Finding("GRPO gains", seed != 1, "", figure=f"+{10 + seed}.0 pts", key="gain"))]}))
        return self.out / "report.md"

    monkeypatch.setattr(speedrun.Speedrun, "run", fake_run)
    out = tmp_path / "seeds"
    assert main(["speedrun", "--preset", "cpu-smoke", "--seeds", "0,1,2", "--out", str(out), "eval_k=2"]) == 0
    assert ran == [(0, out / "seed-0"), (1, out / "seed-1"), (2, out / "seed-2")]
    table = (out / "findings.md").read_text()
    assert "| gain | ✅ +10.0 pts | ❌ +11.0 pts | ✅ +12.0 pts | ❌ no: held on 2 of 3 |" in table
    assert table in capsys.readouterr().out
    for bad in (["--seeds", "0,x"], ["--seeds", "1,1"], ["--seeds", "0,1", "seed=3"]):
        assert main(["speedrun", "--preset", "cpu-smoke", "--out", str(tmp_path / "no"), *bad]) == 2
    assert "--seeds" in capsys.readouterr().err and not (tmp_path / "no").exists() and len(ran) == 3


def test_help_names_the_seed_commands(capsys):
    with pytest.raises(SystemExit):
        main(["findings", "--help"])
    text = capsys.readouterr().out
    assert "RUN_DIR" in text and "--out FILE" in text and "r1lab findings runs/seeds/seed-0" in text
    with pytest.raises(SystemExit):
        main(["speedrun", "--help"])
    assert "--seeds 0,1,2" in capsys.readouterr().out
    assert main([]) == 2
    assert "findings" in capsys.readouterr().out
