"""Findings with their intervals, and `r1lab findings` / `r1lab speedrun --seeds` laying runs out by seed."""
import json
from dataclasses import asdict

import pytest

from r1lab.cli import main
from r1lab.eval.findings import findings
from r1lab.eval.report import Finding, Stage
from r1lab.eval.seeds import findings_table, read_run
from r1lab.eval.stats import inside_noise

TASKS = ["addition", "countdown"]


def _e(pass1, half, n=200):
    return {"pass1": pass1, "pass1_ci": [pass1 - half, pass1 + half], "n": n, "k": 4}


CHAIN = ["r1-cold-start", "r1-grpo1", "r1"]


def _run(base, zero, cold, grpo1, r1, distilled, rl):
    """Stages whose evals are (pass1, half-width) per task."""
    def stage(name, pairs):
        return Stage(name, name, 1.0, 1.0, evals={t: _e(*p) for t, p in zip(TASKS, pairs)})
    return {s.name: s for s in (stage("base", base), stage("r1-zero", zero), stage("r1-cold-start", cold),
                                stage("r1-grpo1", grpo1), stage("r1", r1), stage("student-distilled", distilled),
                                stage("student-rl", rl))}


def _by_key(found):
    return {f.key: f for f in found}


def test_difference_verdicts_need_intervals_apart():
    narrow = _by_key(findings(_run(base=[(0.30, 0.05), (0.10, 0.05)], zero=[(0.50, 0.05), (0.12, 0.05)],
                                   cold=[(0.60, 0.05), (0.50, 0.05)], grpo1=[(0.70, 0.04), (0.60, 0.05)],
                                   r1=[(0.95, 0.02), (0.91, 0.03)], distilled=[(0.60, 0.05)] * 2, rl=[(0.40, 0.05)] * 2),
                              TASKS, CHAIN, "r1"))
    gain = narrow["R1-Zero over base >= 15 pts"]
    # +20 points, margin hypot(5, 5) = 7.07: [+12.9, +27.1]
    assert gain.passed is True and gain.figure == "+20.0 pts [+12.9, +27.1] r1-zero over base, addition"
    assert (gain.value, gain.low, gain.high) == pytest.approx((0.20, 0.20 - 0.0707107, 0.20 + 0.0707107))
    cold = narrow["R1 over its cold start >= 10 pts"]  # +41 on countdown, margin hypot(3, 5) = 5.8
    assert cold.passed is True and cold.figure == "+41.0 pts [+35.2, +46.8] r1 over r1-cold-start, countdown"
    assert narrow["no R1 stage loses"].passed is True and narrow["R1 best on every task"].passed is True
    students = narrow["distilled student - RL-only student"]
    # the mean over two tasks: half-width sqrt(2 * 0.05^2) / 2 = 3.54 each, difference margin 5.0
    assert students.passed is True and students.figure == "+20.0 pts [+15.0, +25.0]"

    wide = _by_key(findings(_run(base=[(0.30, 0.15), (0.10, 0.05)], zero=[(0.50, 0.15), (0.12, 0.05)],
                                 cold=[(0.90, 0.05), (0.85, 0.05)], grpo1=[(0.70, 0.05), (0.80, 0.05)],
                                 r1=[(0.95, 0.02), (0.89, 0.03)], distilled=[(0.45, 0.10)] * 2, rl=[(0.40, 0.10)] * 2),
                            TASKS, CHAIN, "r1"))
    gain = wide["R1-Zero over base >= 15 pts"]
    # +20 points >= 15 but the margin hypot(15, 15) = 21.2 reaches below 0: not claimed
    assert gain.passed is False and gain.figure.startswith("+20.0 pts [-1.2, +41.2]") and "inside the noise" in gain.detail
    assert inside_noise(0.50, (0.35, 0.65), 0.30, (0.15, 0.45)) and gain.low <= 0  # the same rule as stats.inside_noise
    assert wide["R1 over its cold start >= 10 pts"].passed is False  # +5 and +4: under the bar
    lost = wide["no R1 stage loses"]  # r1-grpo1 lost 20 points on addition, margin 7.1: beyond the noise
    assert lost.passed is False and "r1-grpo1 after r1-cold-start on addition" in lost.detail
    assert lost.figure.startswith("-20.0 pts [-27.1, -12.9]")
    assert wide["R1 best on every task"].passed is True  # countdown: 89 vs 85, inside the noise, still no rival above
    students = wide["distilled student - RL-only student"]
    assert students.passed is False and students.low < 0 < students.high and "inside the noise" in students.detail


def test_a_rival_above_the_final_model_beyond_the_noise_fails_best():
    found = _by_key(findings(_run(base=[(0.3, 0.05)] * 2, zero=[(0.99, 0.01), (0.5, 0.05)], cold=[(0.6, 0.05)] * 2,
                                  grpo1=[(0.7, 0.05)] * 2, r1=[(0.80, 0.03), (0.9, 0.03)], distilled=[(0.5, 0.05)] * 2,
                                  rl=[(0.4, 0.05)] * 2), TASKS, CHAIN, "r1"))
    best = found["R1 best on every task"]
    assert best.passed is False and "r1-zero on addition" in best.detail and best.figure.startswith("-19.0 pts")


def test_paired_difference_when_both_carry_per_problem_shares():
    """Judged on the same problems, a difference is measured problem by problem: a model right on 10 more of
    100 problems, and equal on the rest, is apart from the other although their intervals overlap."""
    from r1lab.eval.report import compare
    from r1lab.eval.stats import paired_difference
    a = [1.0] * 60 + [0.0] * 40
    b = [1.0] * 50 + [0.0] * 50
    ea = {"pass1": 0.6, "pass1_ci": [0.50, 0.70], "n": 100, "pass1_each": a}
    eb = {"pass1": 0.5, "pass1_ci": [0.40, 0.60], "n": 100, "pass1_each": b}
    gap, low, high = compare(ea, eb)
    assert gap == pytest.approx(0.10) and low > 0  # the 10 problems differ, 90 agree: sd 0.30, half 5.9 points
    assert (gap, low, high) == pytest.approx(paired_difference(a, b))
    assert compare({k: v for k, v in ea.items() if k != "pass1_each"}, eb)[1] < 0  # unpaired: inside the noise
    assert paired_difference([None, 1.0], [0.0, 1.0]) == (0.0, 0.0, 0.0)  # a problem one skipped is left out


def test_report_line_shows_the_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from r1lab.eval.report import write_report

    report = write_report(tmp_path, [], [Finding("GRPO helps", True, "the detail", figure="+20.0 pts [+12.9, +27.1]")], TASKS,
                          seed=3)
    assert "- ✅ **GRPO helps** — **+20.0 pts [+12.9, +27.1]**. the detail" in report.read_text().splitlines()
    assert read_run(tmp_path)["seed"] == 3


def test_unmeasured_findings_have_no_figure():
    found = findings({}, TASKS, CHAIN, "r1")
    assert [f.passed for f in found[:5]] == [None] * 5 and all(f.figure == "" for f in found[:5])


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
