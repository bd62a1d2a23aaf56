"""Speedrun recipes: a pipeline of stages as data, read from YAML (see recipes/cpu.yaml, the built-in one).

A recipe names its stages in order; each says what kind of training it is (pretrain | sft | grpo), which
preset of that command it starts from, which earlier stage's checkpoint it starts from, and `key=value`
overrides in the very names the stage's command takes (`train.lr=1e-4`, `grpo.max_sampling_rounds=2`).
Recipe-wide values (seed, tasks, knobs, ...) are set once at the top. `speedrun.py` runs a recipe.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, coerce, parse_overrides

KINDS = ("pretrain", "sft", "grpo", "onpolicy")
SFT_DATA = ("cold_start", "traces")
TRACE_KEYS = {"teacher": str, "problems": int, "k": int, "seed": int, "folder": str, "add_cold_start": bool}
# a stage's own evaluation (default: the recipe-wide values); curve: its kept checkpoints are evaluated too (a
# line of accuracy against FLOPs from the stage it starts from; keep them with train.keep_checkpoints=0)
EVAL_KEYS = {"tasks": str, "max_new_tokens": int, "curve": bool}


@dataclass
class StageSpec:
    name: str
    kind: str  # pretrain | sft | grpo
    preset: str  # the stage command's preset (model + train defaults), e.g. cpu-tiny
    start: str | None = None  # `from:` the earlier stage whose final checkpoint this one starts from
    set: list[str] = field(default_factory=list)  # key=value overrides, in the stage command's names
    data: str = ""  # sft: cold_start | traces
    traces: dict[str, Any] = field(default_factory=dict)  # data=traces: teacher, problems, k, seed, folder, add_cold_start
    teacher: str = ""  # onpolicy: the earlier stage whose final checkpoint scores the student's tokens
    budget: str = ""  # onpolicy: an earlier stage whose wall time is this one's time limit (grpo.time_limit_s)
    eval: dict[str, Any] = field(default_factory=dict)  # tasks, max_new_tokens: evaluate this stage so, not as the recipe


@dataclass
class Recipe:
    seed: int = 0
    tasks: str = "addition"  # comma-separated built-in tasks
    knobs: dict = field(default_factory=dict)  # difficulty per task, e.g. {addition: {digits: 4}}
    tokenizer: str = "cpu-tiny"  # train a tokenizer of this model preset's vocab size on the built-in tasks
    max_new_tokens: int = 128  # GRPO samples, teacher traces and evaluation
    clean_examples: int = 1000  # the cold-start set's size (clean reference traces, over the tasks)
    eval_problems: int = 100  # held-out problems per task
    eval_k: int = 4  # samples per problem for pass@1 and maj@k
    final: str = ""  # the stage copied to final/ (default: the last)
    defaults: dict[str, list[str]] = field(default_factory=dict)  # kind -> key=value overrides for all its stages
    stages: list[StageSpec] = field(default_factory=list)

    @property
    def task_list(self) -> list[str]:
        return [t.strip() for t in self.tasks.split(",") if t.strip()]

    def stage(self, name: str) -> StageSpec:
        for spec in self.stages:
            if spec.name == name:
                return spec
        raise ConfigError(f"the recipe has no stage {name!r}; stages: {', '.join(s.name for s in self.stages)}")


# the recipe-wide keys and their types (what `key=value` on the command line is read as)
SCALARS = {"seed": int, "tasks": str, "knobs": dict, "tokenizer": str, "max_new_tokens": int, "clean_examples": int,
           "eval_problems": int, "eval_k": int, "final": str}


def builtin_recipes() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("r1lab").joinpath("recipes").iterdir() if p.name.endswith(".yaml"))


def _read(source: str, seen: tuple[str, ...] = ()) -> tuple[dict, str]:
    """A recipe file's mapping with its `extends` chain merged in, and the name to cite in errors."""
    if source in builtin_recipes():
        text, where = resources.files("r1lab").joinpath("recipes", f"{source}.yaml").read_text(), f"recipe {source}"
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"recipe {source!r} is neither a file nor a built-in recipe ({', '.join(builtin_recipes())})")
        text, where = path.read_text(), str(path)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values")
    parent = data.pop("extends", None)
    if parent is None:
        return data, where
    if parent in seen:
        raise ConfigError(f"{where}: `extends` loops back to {parent!r}")
    base, _ = _read(str(parent), (*seen, source))
    extra_sets = data.pop("set", {}) or {}
    for kind, items in (data.pop("defaults", {}) or {}).items():
        base.setdefault("defaults", {}).setdefault(kind, [])
        base["defaults"][kind] = [*base["defaults"][kind], *items]
    base.update(data)
    for name, items in extra_sets.items():
        matches = [s for s in base.get("stages", []) if isinstance(s, dict) and s.get("name") == name]
        if not matches:
            raise ConfigError(f"{where}: `set` names a stage {name!r} that {parent} does not have")
        matches[0]["set"] = [*matches[0].get("set", []), *items]
    return base, where


def _stage(raw: Any, where: str, earlier: list[str]) -> StageSpec:
    if not isinstance(raw, dict) or "name" not in raw:
        raise ConfigError(f"{where}: every stage needs a `name` (got {raw!r})")
    name = raw["name"]
    known = {"name", "kind", "preset", "from", "set", "data", "traces", "teacher", "budget", "eval"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: stage {name}: unknown key(s) {', '.join(sorted(unknown))}; "
                          f"valid: {', '.join(sorted(known))}")
    spec = StageSpec(name=name, kind=raw.get("kind", ""), preset=raw.get("preset", ""), start=raw.get("from"),
                     set=[str(item) for item in raw.get("set") or []], data=raw.get("data") or "",
                     traces=dict(raw.get("traces") or {}), teacher=raw.get("teacher") or "",
                     budget=raw.get("budget") or "", eval=dict(raw.get("eval") or {}))
    for key, value in spec.eval.items():
        if key not in EVAL_KEYS:
            raise ConfigError(f"{where}: stage {name}: unknown eval key {key!r}; valid: {', '.join(EVAL_KEYS)}")
        spec.eval[key] = coerce(value, EVAL_KEYS[key], f"{where}: stage {name}: eval.{key}")
    if spec.kind not in KINDS:
        raise ConfigError(f"{where}: stage {name}: kind must be one of {', '.join(KINDS)}, got {spec.kind!r}")
    if not spec.preset:
        raise ConfigError(f"{where}: stage {name}: needs a `preset` (e.g. cpu-tiny)")
    if name in earlier:
        raise ConfigError(f"{where}: two stages are named {name!r}")
    if spec.start is not None and spec.start not in earlier:
        raise ConfigError(f"{where}: stage {name} starts from {spec.start!r}, which is not an earlier stage")
    if spec.kind == "onpolicy" and spec.teacher not in earlier:
        raise ConfigError(f"{where}: stage {name}: teacher must name an earlier stage, got {spec.teacher or None!r}")
    if spec.budget and spec.budget not in earlier:
        raise ConfigError(f"{where}: stage {name}: budget must name an earlier stage, got {spec.budget!r}")
    if spec.kind in ("sft", "grpo", "onpolicy") and spec.start is None:
        raise ConfigError(f"{where}: stage {name} ({spec.kind}) needs `from:` an earlier stage")
    if spec.kind == "sft" and spec.data not in SFT_DATA:
        raise ConfigError(f"{where}: stage {name}: data must be one of {', '.join(SFT_DATA)}, got {spec.data!r}")
    if spec.data == "traces" and spec.traces.get("teacher") not in earlier:
        raise ConfigError(f"{where}: stage {name}: traces.teacher must name an earlier stage, got {spec.traces.get('teacher')!r}")
    return spec


def load_recipe(source: str, overrides: list[str] | None = None) -> Recipe:
    """A recipe from a built-in name (`cpu`, `cpu-smoke`) or a YAML file, then `key=value` overrides:
    a recipe-wide key (`seed=1`), or STAGE.KEY=VALUE, added to that stage's `set` (`r1.train.lr=2e-4`,
    `r1-rs-sft.traces.k=8`)."""
    data, where = _read(source)
    unknown = set(data) - set(SCALARS) - {"defaults", "stages"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                          f"valid: {', '.join([*SCALARS, 'defaults', 'stages'])}")
    recipe = Recipe(**{k: coerce(v, SCALARS[k], f"{where}: {k}") for k, v in data.items() if k in SCALARS})
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - set(KINDS):
        raise ConfigError(f"{where}: defaults must map stage kinds ({', '.join(KINDS)}) to lists of key=value")
    recipe.defaults = {kind: [str(item) for item in items] for kind, items in defaults.items()}
    for raw in data.get("stages") or []:
        recipe.stages.append(_stage(raw, where, [s.name for s in recipe.stages]))
    if not recipe.stages:
        raise ConfigError(f"{where}: no stages")
    names = [s.name for s in recipe.stages]
    for key, value in parse_overrides(overrides or []):
        head, _, rest = key.partition(".")
        if head in names and rest:
            recipe.stage(head).set.append(f"{rest}={value}")
        elif key in SCALARS:
            setattr(recipe, key, coerce(value, SCALARS[key], key))
        else:
            raise ConfigError(f"unknown speedrun key {key!r}: use a recipe-wide key ({', '.join(SCALARS)}) "
                              f"or STAGE.KEY=VALUE with a stage of {', '.join(names)}")
    recipe.final = recipe.final or names[-1]
    recipe.stage(recipe.final)
    return recipe


def split_traces(spec: StageSpec, recipe: Recipe) -> tuple[list[str], dict[str, Any]]:
    """A stage's overrides (its kind's defaults, then its own `set`): (config key=value items, the traces
    spec with its `traces.KEY=VALUE` items applied)."""
    items, traces = [], dict(spec.traces)
    for item in [*recipe.defaults.get(spec.kind, []), *spec.set]:
        key, value = parse_overrides([item])[0]
        if key.startswith("eval."):
            continue  # the stage's evaluation: eval_settings
        if key.startswith("traces."):
            name = key[len("traces."):]
            if name not in TRACE_KEYS:
                raise ConfigError(f"stage {spec.name}: unknown traces key {name!r}; valid: {', '.join(TRACE_KEYS)}")
            traces[name] = coerce(value, TRACE_KEYS[name], key)
        else:
            items.append(item)
    return items, traces


def eval_settings(spec: StageSpec, recipe: Recipe) -> tuple[list[str], int, bool]:
    """(tasks, max_new_tokens, curve) a stage is evaluated on: the recipe's, unless its `eval` (or an
    `eval.KEY=VALUE` item of its `set`) says otherwise; `tasks: ""` (no tasks) leaves the stage unevaluated;
    curve: its kept checkpoints too."""
    settings = dict(spec.eval)
    for item in spec.set:
        key, value = parse_overrides([item])[0]
        if key.startswith("eval."):
            name = key[len("eval."):]
            if name not in EVAL_KEYS:
                raise ConfigError(f"stage {spec.name}: unknown eval key {name!r}; valid: {', '.join(EVAL_KEYS)}")
            settings[name] = coerce(value, EVAL_KEYS[name], key)
    names = [t.strip() for t in str(settings.get("tasks", recipe.tasks)).split(",") if t.strip()]
    return names, int(settings.get("max_new_tokens", recipe.max_new_tokens)), bool(settings.get("curve", False))
