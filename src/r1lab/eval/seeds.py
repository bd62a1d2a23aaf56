"""`r1lab findings`: the findings of finished runs side by side, one column per seed.

    r1lab findings runs/seeds/seed-0 runs/seeds/seed-1 runs/seeds/seed-2 --out runs/seeds/findings.md

Each run folder holds the summary.json that the speedrun's report wrote: its findings (verdict, figure with
its 95% interval) and its seed. The table has a row per finding (by its `key`, a name that stays the same
from run to run), a column per run, and a last column saying whether the finding held on every run.
`r1lab speedrun --seeds 0,1,2` runs the recipe once per seed and writes this table at the end.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .report import mark


def _seed_from_report(folder: Path) -> int | None:
    """The seed from report.md's recipe note (runs written before summary.json kept it)."""
    report = folder / "report.md"
    if not report.exists():
        return None
    for line in report.read_text().splitlines():
        if line.startswith("- recipe: "):
            try:
                return json.loads(line[len("- recipe: "):]).get("seed")
            except (json.JSONDecodeError, AttributeError):
                return None
    return None


def read_run(folder: str | Path) -> dict:
    """{"folder", "seed", "findings"} of a finished run; ValueError when it has no readable summary.json."""
    folder = Path(folder)
    path = folder / "summary.json"
    if not path.is_file():
        raise ValueError(f"{folder}: no summary.json (not a finished speedrun folder)")
    try:
        summary = json.loads(path.read_text())
        found = summary["findings"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a speedrun summary ({e})") from None
    seed = summary.get("seed")
    return {"folder": folder, "seed": _seed_from_report(folder) if seed is None else seed, "findings": found}


def _labels(runs: list[dict]) -> list[str]:
    seeds = [r["seed"] for r in runs]
    return [f"seed {r['seed']}" if r["seed"] is not None and seeds.count(r["seed"]) == 1
            else f"seed {r['seed']} ({r['folder']})" if r["seed"] is not None else str(r["folder"]) for r in runs]


def _cell(f: dict | None) -> str:
    if f is None:
        return "–"
    return f"{mark(f)} {f.get('figure') or ''}".strip().replace("|", "\\|")


def held(cells: list[dict | None], labels: list[str]) -> str:
    """The last column: ✅ held on every run, ❌ failed on some, ⚠️ not measured on some, ℹ️ an observation."""
    if any(f is not None and f.get("observation") for f in cells):
        return "ℹ️ observation"
    failed = sum(1 for f in cells if f is not None and f.get("passed") is False)
    passed = sum(1 for f in cells if f is not None and f.get("passed") is True)
    if failed:
        return f"❌ no: held on {passed} of {len(cells)}"
    missing = [label for f, label in zip(cells, labels) if f is None or f.get("passed") is None]
    if missing:
        return f"⚠️ not measured on {', '.join(missing)}"
    return f"✅ yes, {passed} of {len(cells)}"


def findings_table(runs: list[dict]) -> str:
    """Markdown: a row per finding, a column per run (✅/❌ + figure with its 95% interval), held on all?"""
    labels = _labels(runs)
    rows: dict[str, list[dict | None]] = {}
    claims: dict[str, str] = {}
    for i, run in enumerate(runs):
        for f in run["findings"]:
            key = f.get("key") or f["claim"]
            rows.setdefault(key, [None] * len(runs))[i] = f
            claims.setdefault(key, f["claim"])
    lines = ["# Findings across seeds", "",
             "| finding | " + " | ".join(labels) + " | held on all seeds? |",
             "|---|" + "---|" * len(runs) + "---|"]
    for key, cells in rows.items():
        lines.append(f"| {key.replace('|', chr(92) + '|')} | " + " | ".join(map(_cell, cells)) + f" | {held(cells, labels)} |")
    lines += ["", "Each cell: the run's verdict and its figure with the 95% interval over held-out problems "
              "(pts: percentage points of pass@1). A claim of a difference passes only when the difference's "
              "interval lies above 0 (intervals apart) and the gain reaches its threshold; two stages of one run are "
              "compared problem by problem on the same held-out problems. ℹ️ rows are observations, reported either "
              "way.", "", "Claims, as the "
              "first run that has them words them:", ""]
    lines += [f"- {key}: {claim}" for key, claim in claims.items() if claim != key]
    lines += ["", "Runs: " + "; ".join(f"{label}: {run['folder']}" for label, run in zip(labels, runs)), ""]
    return "\n".join(lines)


def write_findings(folders: list[str | Path], out: str | Path | None = None) -> str:
    """The table of the runs in `folders`, written to `out` when given; returns it."""
    table = findings_table([read_run(f) for f in folders])
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(table)
    return table


def add_findings_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished speedrun folders (each with its summary.json)")
    p.add_argument("--out", metavar="FILE", help="also write the markdown table to FILE")


def run_findings(args) -> int:
    sys.stdout.write(write_findings(args.runs, args.out))
    return 0
