"""Reading run directories for the report: ``results.json`` files, Hydra multirun sweeps, provenance.

A run directory holds the ``results.json`` written by ``python -m evojax_merge.train``. A Hydra
multirun directory (or any folder above run directories) is searched for the job directories in it; a
run of several replicates (its results.json lists ``replicates``) stands for its replicate directories
(``worlds/world_<w>/seeds/seed_<s>/`` or ``seeds/seed_<s>/``). A run is one replicate ``(world, seed)``:
the world seed is results.json's ``world.seed`` (``None`` when it is not recorded), the search seed
``config.seed``.
Every problem is a one-line :class:`EvoMergeInputError` naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.fileio import read_json

RESULTS = "results.json"
_SKIP_DIRS = {"checkpoints", "merged_adapters", "wandb", "figures", ".submitit"}
# config keys that may differ between runs of one experiment: the seed, the method set of a sweep,
# and settings that do not change the numbers (logging, checkpoints, caches, how the forward is chunked)
PER_RUN_KEYS = {"seed", "method", "resume", "progress", "logger", "checkpoint", "cache_dir", "service",
                "population_chunk", "distributed", "provenance", "world_realization"}

REPLICATE_LISTS = {"seeds", "world_seeds"}  # experiment.<key>: which replicates one job ran


@dataclasses.dataclass(frozen=True)
class RunRecord:
    path: Path  # the run directory
    experiment: str
    setting: str
    seed: int
    methods: dict[str, dict]  # label -> {precision, recall, f1, per_task: {target: cell}}
    config: dict
    command: str | None
    command_source: str  # where the command came from
    commit: str | None
    dirty: bool | None
    metric: str = "F1"  # what ``f1`` holds: F1, or exact-match accuracy for the Sakana world
    timings: dict = dataclasses.field(default_factory=dict)  # results.json's ``timings`` (seconds)
    world: int | None = None  # results.json's ``world.seed``: the world realization
    gate: bool | None = None  # results.json's ``zoo.gate.passed`` (the IE worlds' gate), None when absent

    @property
    def replicate(self) -> tuple[int | None, int]:
        """``(world, seed)``: the unit the report pairs methods inside."""
        return (self.world, self.seed)

    @property
    def run_seconds(self) -> float:
        """The run's own wall time: building or loading the world, plus the experiment."""
        return float(self.timings.get("world_s", 0.0)) + float(self.timings.get("experiment_s", 0.0))

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Each path is a run directory, or a folder (a Hydra multirun sweep) whose job directories are.

    Runs keep the order of ``paths``: the first run is the reference the others must match.

    A job directory (it has ``.hydra/``) without ``results.json`` is an error: a failed or unfinished run.
    """
    found: list[Path] = []
    for given in paths:
        root = Path(given)
        if root.is_file() and root.name == RESULTS:  # a results.json itself: its run directory
            root = root.parent
        if not root.is_dir():
            raise EvoMergeInputError(f"{root}: not a directory")
        runs = []
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            if RESULTS in filenames or (here / ".hydra").is_dir():
                if RESULTS not in filenames:
                    raise EvoMergeInputError(f"{here / RESULTS}: not found (a failed or unfinished run?)")
                replicates = _replicates(here)
                if replicates is not None:  # the mean over replicates: read the replicates themselves
                    runs.extend(replicates)
                    dirnames.clear()
                    continue
                runs.append(here)
                dirnames.clear()  # nothing to find inside a run
                continue
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS)
        if not runs:
            raise EvoMergeInputError(f"{root / RESULTS}: not found, and no run directory below {root}")
        found.extend(runs)
    return list(dict.fromkeys(p.resolve() for p in found))  # the order given; sorted within a folder


def _replicates(run_dir: Path) -> list[Path] | None:
    """The replicate directories a run of several replicates lists in its results.json, else ``None``."""
    try:
        data = json.loads((run_dir / RESULTS).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None  # load_run names the problem
    listed = data.get("replicates") if isinstance(data, dict) else None
    if not isinstance(listed, list) or not listed or not all(isinstance(p, str) for p in listed):
        return None
    dirs = [run_dir / p for p in listed]
    for d in dirs:
        if not (d / RESULTS).is_file():
            raise EvoMergeInputError(f"{d / RESULTS}: not found (listed as a replicate in {run_dir / RESULTS})")
    return dirs


def _world_seed(data: dict) -> int | None:
    world = data.get("world")
    if isinstance(world, dict) and "seed" not in world and isinstance(world.get("catalog"), dict):
        world = world["catalog"]  # a remote world: the catalog world it serves
    seed = world.get("seed") if isinstance(world, dict) else None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def _gate(data: dict) -> bool | None:
    zoo = data.get("zoo")
    gate = zoo.get("gate") if isinstance(zoo, dict) else None
    passed = gate.get("passed") if isinstance(gate, dict) else None
    return passed if isinstance(passed, bool) else None


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise EvoMergeInputError(f"{where} is missing or not a finite number (got {value!r})")
    return float(value)


def _check_methods(data: Any, file: Path) -> dict[str, dict]:
    if not isinstance(data, dict) or not isinstance(data.get("methods"), dict) or not data["methods"]:
        raise EvoMergeInputError(f"{file}: no 'methods' table (not a results.json of evojax_merge.train?)")
    for label, res in data["methods"].items():
        if not isinstance(res, dict) or not isinstance(res.get("per_task"), dict):
            raise EvoMergeInputError(f"{file}: methods.{label}.per_task is missing")
        for key in ("precision", "recall", "f1"):
            _number(res.get(key), f"{file}: methods.{label}.{key}")
        for target, cell in res["per_task"].items():
            if not isinstance(cell, dict):
                raise EvoMergeInputError(f"{file}: methods.{label}.per_task.{target} is not a table")
            _number(cell.get("f1"), f"{file}: methods.{label}.per_task.{target}.f1")
    return data["methods"]


def _yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise EvoMergeInputError(f"{path}: unreadable YAML ({type(e).__name__})") from None


_LOCAL_OVERRIDES = ("hydra.run.dir=", "hydra.sweep.dir=")  # where a run was written changes none of its numbers


def portable_command(command: str) -> str:
    """The command without its run-directory overrides (paths of one machine), so anyone can rerun it."""
    import shlex

    try:
        words = shlex.split(command)
    except ValueError:
        return command
    return shlex.join([w for w in words if not w.startswith(_LOCAL_OVERRIDES)])


def _command(run_dir: Path, data: dict, config: dict) -> tuple[str | None, str]:
    command, source = _recorded_command(run_dir, data, config)
    return (None if command is None else portable_command(command)), source


def _recorded_command(run_dir: Path, data: dict, config: dict) -> tuple[str | None, str]:
    for source, prov in (("results.json", data.get("provenance")), ("results.json config", config.get("provenance"))):
        if isinstance(prov, dict) and prov.get("command"):
            return str(prov["command"]), source
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():  # Hydra keeps the overrides, not the argv: rebuild the command from them
        overrides = (_yaml(hydra_yaml) or {}).get("hydra", {}).get("overrides", {})
        args = [o for o in overrides.get("hydra", []) if not str(o).startswith("hydra.mode=")]
        args += list(overrides.get("task", []))
        import shlex

        return shlex.join(["python", "-m", "evojax_merge.train", *map(str, args)]), ".hydra/hydra.yaml"
    return None, "unknown"


def _commit(data: dict, config: dict) -> tuple[str | None, bool | None]:
    for prov in (data.get("provenance"), config.get("provenance")):
        if isinstance(prov, dict) and prov.get("git_commit"):
            return str(prov["git_commit"]), prov.get("git_dirty")
    for holder in (data, config):
        for key in ("git_commit", "commit"):
            if isinstance(holder.get(key), str) and holder[key]:
                return holder[key], None
    return None, None


def load_run(run_dir: str | Path) -> RunRecord:
    """One run directory's ``results.json``, checked; the config from it or from ``.hydra/config.yaml``."""
    run_dir = Path(run_dir)
    file = run_dir / RESULTS
    data = read_json(file, missing=f"{file}: not found")
    methods = _check_methods(data, file)
    config = data.get("config")
    if not isinstance(config, dict):
        hydra_cfg = run_dir / ".hydra" / "config.yaml"
        config = _yaml(hydra_cfg) if hydra_cfg.is_file() else None
    if not isinstance(config, dict):
        raise EvoMergeInputError(f"{file}: no 'config' (needed for the experiment name and the seed)")
    experiment = config.get("experiment")
    if not isinstance(experiment, dict) or not isinstance(experiment.get("name"), str):
        raise EvoMergeInputError(f"{file}: config.experiment.name is missing")
    seed = config.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise EvoMergeInputError(f"{file}: config.seed is missing or not an integer (got {seed!r})")
    command, source = _command(run_dir, data, config)
    commit, dirty = _commit(data, config)
    metric = data.get("metric", "F1")
    if not isinstance(metric, str) or not metric:
        raise EvoMergeInputError(f"{file}: 'metric' must be a name such as 'F1' (got {metric!r})")
    timings = data.get("timings")
    setting = config.get("setting")  # the engine's setting group (its name), or an older run's experiment.setting
    setting = setting.get("name") if isinstance(setting, dict) else setting
    return RunRecord(run_dir, experiment["name"], str(setting or experiment.get("setting", "?")), seed, methods, config,
                     command, source, commit, dirty, metric, timings if isinstance(timings, dict) else {},
                     _world_seed(data), _gate(data))


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """The first dotted key where two configs differ, or ``None``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                return f"{prefix}{key}"
            diff = _first_difference(a[key], b[key], f"{prefix}{key}.")
            if diff is not None:
                return diff
        return None
    return None if a == b else prefix.rstrip(".")


def _without_seeds(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _without_seeds(v) for k, v in tree.items() if k != "seed"}
    return tree


def _shared_config(config: dict) -> dict:
    """The config without the keys that may differ between replicates of one experiment: the replicate lists
    ``experiment.seeds`` and ``experiment.world_seeds`` (more worlds may be run later and reported together),
    and every ``seed`` inside ``world`` (a realization set by ``world.build.seed=w world.build.tasks.seed=w``, as
    the paper run does; results.json's ``world.seed`` tells the replicates apart)."""
    out = {k: v for k, v in config.items() if k not in PER_RUN_KEYS}
    if isinstance(out.get("experiment"), dict):
        out["experiment"] = {k: v for k, v in out["experiment"].items() if k not in REPLICATE_LISTS}
    if "world" in out:
        out["world"] = _without_seeds(out["world"])
    return out


def check_same_experiment(runs: list[RunRecord]) -> None:
    """Runs of different experiments, or of one experiment with different settings, are not mixed."""
    first = runs[0]
    for run in runs[1:]:
        if run.metric != first.metric:
            raise EvoMergeInputError(f"{run.results_path}: metric {run.metric!r} mixed with {first.metric!r} "
                                     f"({first.results_path})")
        if run.experiment != first.experiment:
            raise EvoMergeInputError(f"{run.results_path}: experiment {run.experiment!r} mixed with "
                                     f"{first.experiment!r} ({first.results_path}); report one experiment at a time")
        a, b = _shared_config(first.config), _shared_config(run.config)
        key = _first_difference(a, b)
        if key is not None:
            raise EvoMergeInputError(f"{run.results_path}: config.{key} differs from {first.results_path}; "
                                     "runs of different experiment settings cannot be mixed")


def replicate_name(rep: tuple[int | None, int]) -> str:
    """``world 2, seed 0``; ``seed 0`` when the world is not recorded."""
    world, seed = rep
    return f"seed {seed}" if world is None else f"world {world}, seed {seed}"


def group_by_replicate(runs: list[RunRecord]) -> dict[tuple[int | None, int], dict[str, dict]]:
    """``{(world, seed): {label: method result}}``, sorted; a method found twice for one replicate is an error."""
    by_rep: dict[tuple[int | None, int], dict[str, dict]] = {}
    origin: dict[tuple, Path] = {}
    for run in runs:
        for label, res in run.methods.items():
            if (run.replicate, label) in origin:
                raise EvoMergeInputError(f"{run.results_path}: method {label!r} for {replicate_name(run.replicate)} "
                                         f"is also in {origin[run.replicate, label] / RESULTS}")
            origin[run.replicate, label] = run.path
            by_rep.setdefault(run.replicate, {})[label] = res
    key = {rep: (rep[0] is not None, rep[0] or 0, rep[1]) for rep in by_rep}
    return dict(sorted(by_rep.items(), key=lambda kv: key[kv[0]]))


def adapter_names(run: RunRecord, label: str, target: str, cell: Mapping) -> list[str] | None:
    """The adapters behind a searched cell's alpha/beta: from the cell, else the saved merged adapter."""
    size = len(cell.get("alpha") or [])
    names = cell.get("adapters")
    if not names:
        meta = run.path / "merged_adapters" / f"{target}__{label}" / "evojax_merge.json"
        try:
            names = json.loads(meta.read_text()).get("pool") if meta.is_file() else None
        except (OSError, json.JSONDecodeError, AttributeError):
            names = None
    if isinstance(names, list) and len(names) == size:
        return [str(n) for n in names]
    return None
