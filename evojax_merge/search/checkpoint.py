"""A stage runner that checkpoints the search with orbax and resumes it bit-identically.

Every ``interval`` generations (and at the end of every stage, and on preemption) it saves one orbax
step holding

- ``state``: the current stage's ``StageState`` leaves as host arrays (the evosax state, the PRNG key as
  its raw key data, the generation counter, the best so far and the history), plus the ``StageResult`` of
  every finished stage;
- ``meta`` (JSON): the stage index and spec of each stage, the leaf layout (path, dtype, shape, weak type,
  key implementation), a caller fingerprint and a SHA-256 of all arrays.

The step number is a global generation counter across stages, so the newest step is always the furthest
point of the search. A rerun in the same directory restores the newest step that reads back and checks
out (falling back, with a warning, past a partial or corrupt one), returns the finished stages' results
without recomputing them and continues the current stage from its saved state. Since every generation
is a deterministic function of that state, the rerun ends bit-identical to an uninterrupted run.

    runner = CheckpointRunner(run_dir / "checkpoints", interval=1, preemption=guard)
    with runner:
        result = evo_merging_search(evaluator, stack, cfg, seed, runner=runner)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.search.cmaes import StageResult, StageSpec, StageState, init_stage, run_stage
from evojax_merge.search.preemption import Preempted, any_process

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

GenerationHook = Callable[[StageSpec, StageState, int], None]


class CheckpointFallbackWarning(UserWarning):
    """The newest checkpoint could not be used; an older one was restored instead."""


# -- pure conversions: StageState <-> host arrays ------------------------------------------------------


def spec_fingerprint(spec: StageSpec) -> dict:
    """What must match for a saved stage to be resumed under ``spec`` (JSON-normalised)."""
    d = {"name": spec.name, "layout": spec.layout.to_dict(), "x0": [float(v) for v in spec.x0],
         "sigma0": float(spec.sigma0), "population_size": int(spec.population_size),
         "generations": int(spec.generations)}
    return json.loads(json.dumps(d))


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def state_to_host(state: StageState) -> tuple[dict[str, np.ndarray], list[dict]]:
    """``StageState`` -> (``{leaf_i: array}``, per-leaf layout). Typed PRNG keys become their key data."""
    arrays, layout = {}, []
    for i, (path, leaf) in enumerate(jax.tree_util.tree_leaves_with_path(state)):
        entry = {"path": jax.tree_util.keystr(path), "key_impl": None,
                 "weak": bool(getattr(leaf, "weak_type", False))}
        if _is_key(leaf):
            entry["key_impl"] = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        arr = np.asarray(leaf)
        entry.update(dtype=arr.dtype.name, shape=list(arr.shape))
        arrays[f"leaf_{i:03d}"] = arr
        layout.append(entry)
    return arrays, layout


def _weak(arr: np.ndarray) -> jax.Array:
    """A weakly typed copy of ``arr``: weak types change jit's cache key, so keep them as they were."""
    zero = jnp.asarray(0.0 if np.issubdtype(arr.dtype, np.floating) else 0)  # a Python scalar is weak
    if zero.dtype != arr.dtype:  # weak types only exist for the default dtypes; anything else is strong
        return jnp.asarray(arr)
    return jnp.broadcast_to(zero, arr.shape).at[...].set(arr)


def state_from_host(template: StageState, arrays: dict[str, np.ndarray], layout: list[dict]) -> StageState:
    """Inverse of :func:`state_to_host`, shaped by ``template`` (e.g. ``init_stage(spec, key)``)."""
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(template)
    if len(leaves_with_path) != len(layout):
        raise ValueError(f"checkpoint has {len(layout)} state leaves, the stage has {len(leaves_with_path)}")
    leaves = []
    for i, ((path, tmpl), entry) in enumerate(zip(leaves_with_path, layout, strict=True)):
        where = jax.tree_util.keystr(path)
        arr = np.asarray(arrays[f"leaf_{i:03d}"])
        if entry["path"] != where:
            raise ValueError(f"checkpoint leaf {i} is {entry['path']}, the stage expects {where}")
        if _is_key(tmpl):
            impl = jax.random.key_impl(tmpl)
            if entry["key_impl"] != str(impl):
                raise ValueError(f"{where}: key implementation {entry['key_impl']} != {impl}")
            expected = jax.random.key_data(tmpl)
        else:
            expected = tmpl
        if arr.shape != tuple(expected.shape) or arr.dtype != np.dtype(expected.dtype):
            raise ValueError(f"{where}: saved {arr.dtype}{list(arr.shape)}, "
                             f"the stage expects {np.dtype(expected.dtype)}{list(expected.shape)}")
        if _is_key(tmpl):
            leaf = jax.random.wrap_key_data(jnp.asarray(arr), impl=jax.random.key_impl(tmpl))
        else:
            leaf = _weak(arr) if entry["weak"] else jnp.asarray(arr)
        leaves.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def result_to_host(result: StageResult) -> dict[str, np.ndarray]:
    return {"best_genome": np.asarray(result.best_genome),
            "best_fitness": np.asarray(result.best_fitness, np.float32),  # it was a float32 before float()
            "history": np.asarray(result.history)}


def result_from_host(name: str, arrays: dict[str, np.ndarray]) -> StageResult:
    return StageResult(name=name, best_genome=np.asarray(arrays["best_genome"]),
                       best_fitness=float(np.asarray(arrays["best_fitness"])), history=np.asarray(arrays["history"]))


def tree_checksum(tree: dict) -> str:
    """SHA-256 over every array (path, dtype, shape, bytes): catches silently flipped bytes too."""
    h = hashlib.sha256()
    for path, leaf in sorted((jax.tree_util.keystr(p), np.asarray(v))
                             for p, v in jax.tree_util.tree_leaves_with_path(tree)):
        h.update(f"{path}|{leaf.dtype.name}|{leaf.shape}|".encode())
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()


# -- what a restore yields ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Restored:
    """The content of one checkpoint step."""

    step: int
    stage_index: int  # the stage in progress (== len(finished))
    stage_spec: dict  # its fingerprint
    state_arrays: dict[str, np.ndarray]
    state_layout: list[dict]
    finished: list[tuple[dict, StageResult]]  # (fingerprint, result) of every finished stage
    elapsed_s: float = 0.0  # seconds the search had run when this step was saved, over all earlier segments


class CheckpointRunner:
    """A ``StageRunner`` (``runner(spec, fitness_fn, key) -> StageResult``) that checkpoints and resumes.

    Args:
      directory: where the orbax steps go (created). One directory per search; one runner per search.
      interval: save every ``interval`` global generations; the last generation of each stage and a
        preempted generation are always saved.
      max_to_keep: how many steps to keep (older ones are deleted once a newer one is written).
      resume: restore from ``directory`` if it holds checkpoints. ``False`` with existing checkpoints is
        an error rather than a silent overwrite.
      fingerprint: any JSON-able description of the run (e.g. the resolved config minus run-local keys);
        resuming a checkpoint written under a different fingerprint is an error.
      preemption: a :class:`~evojax_merge.search.preemption.PreemptionGuard` (anything with ``requested``
        and ``signum``); when set after a generation, the runner saves and raises ``Preempted``.
      on_generation: ``hook(spec, state, step)`` after every generation (logging), before the save.
      progress: show a tqdm bar per stage.
      async_save: write in a background thread while the next generation runs.

    After construction, ``resumed_from`` is the restored step (``None`` for a fresh run),
    ``restored_results`` the finished stages' results and ``prior_elapsed_s`` the seconds the earlier
    segments of this search ran (0 for a fresh run). Every step saves ``elapsed_s`` = those seconds plus
    the seconds since this runner was created, so time adds up across preemptions.
    """

    def __init__(
        self,
        directory: str | Path,
        interval: int = 1,
        max_to_keep: int = 3,
        resume: bool = True,
        fingerprint: Any = None,
        preemption: Any = None,
        on_generation: GenerationHook | None = None,
        progress: bool = True,
        async_save: bool = True,
    ):
        if interval < 1:
            raise EvoMergeInputError(f"checkpoint interval must be >= 1, got {interval}")
        if max_to_keep < 2:
            # the fallback past a corrupt newest step needs an older one
            raise EvoMergeInputError(f"checkpoint max_to_keep must be >= 2, got {max_to_keep}")
        self.directory = Path(directory).absolute()
        self.interval = int(interval)
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.preemption = preemption
        self.on_generation = on_generation
        self.progress = progress
        self._t_start = time.perf_counter()
        options = ocp.CheckpointManagerOptions(
            create=True,
            cleanup_tmp_directories=True,  # leftovers of a save killed half-way
            enable_async_checkpointing=async_save,
            preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
        )
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        self._finished: list[tuple[dict, StageResult]] = []  # this process's view, saved with every step
        self._calls = 0
        self._last_saved: int | None = None
        self._restored: Restored | None = None
        steps = list(self._mngr.all_steps())
        if steps and not resume:
            self._mngr.close()
            raise EvoMergeInputError(f"{self.directory} already holds checkpoints (steps {steps}); "
                                     "resume or use a fresh directory")
        if steps:
            try:
                self._restored = self._restore_newest_valid()
            except BaseException:
                self._mngr.close()
                raise
            if self._restored is not None:
                self._last_saved = self._restored.step

    # -- restore ---------------------------------------------------------------------------------------
    def _read_step(self, step: int) -> Restored:
        out = self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                               meta=ocp.args.JsonRestore()))
        meta, tree = out.meta, out.state
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"checkpoint format version {meta.get('version')}, expected {FORMAT_VERSION}")
        if meta.get("step") != step:
            raise ValueError(f"step directory {step} holds step {meta.get('step')}")
        tree = jax.tree.map(np.asarray, tree)
        if tree_checksum(tree) != meta.get("checksum"):
            raise ValueError("array checksum mismatch")
        if meta.get("fingerprint") != self.fingerprint:
            # not corruption: a different run. Falling back would not help, so stop with a clear error.
            raise EvoMergeInputError(
                f"checkpoint {self.directory / str(step)} was written by a different run "
                f"(fingerprint {meta.get('fingerprint')!r}, this run {self.fingerprint!r}); "
                "use a fresh output directory or the original config")
        finished_arrays = tree.get("finished", {})
        finished = [(fp, result_from_host(fp["name"], finished_arrays[f"stage_{i}"]))
                    for i, fp in enumerate(meta["finished"])]
        return Restored(step=step, stage_index=int(meta["stage_index"]), stage_spec=meta["stage_spec"],
                        state_arrays=tree["current"], state_layout=meta["state_layout"], finished=finished,
                        elapsed_s=float(meta.get("elapsed_s", 0.0)))

    def _restore_newest_valid(self) -> Restored | None:
        steps = sorted(self._mngr.all_steps(), reverse=True)
        for i, step in enumerate(steps):
            try:
                restored = self._read_step(step)
            except EvoMergeInputError:
                raise
            except Exception as err:  # any failure to read back means "unusable"
                older = steps[i + 1] if i + 1 < len(steps) else None
                msg = (f"checkpoint {self.directory / str(step)} is unreadable or corrupt "
                       f"({type(err).__name__}: {str(err)[:300]}); "
                       + (f"falling back to step {older}" if older is not None else "starting from scratch"))
                warnings.warn(msg, CheckpointFallbackWarning, stacklevel=3)
                continue
            for newer in steps[:i]:  # the bad steps would collide with the steps this run writes next
                self._mngr.delete(newer)
            return restored
        for step in steps:
            self._mngr.delete(step)
        return None

    @property
    def resumed_from(self) -> int | None:
        """The step this run resumed from, or None for a fresh start."""
        return None if self._restored is None else self._restored.step

    @property
    def restored_results(self) -> list[StageResult]:
        return [] if self._restored is None else [r for _, r in self._restored.finished]

    @property
    def prior_elapsed_s(self) -> float:
        """Seconds the search ran before this process resumed it (summed over every earlier segment)."""
        return 0.0 if self._restored is None else self._restored.elapsed_s

    @property
    def elapsed_s(self) -> float:
        """Seconds of search so far: the earlier segments plus this one."""
        return self.prior_elapsed_s + time.perf_counter() - self._t_start

    @property
    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    # -- save ------------------------------------------------------------------------------------------
    def _save(self, step: int, spec: StageSpec, state: StageState) -> None:
        if step == self._last_saved:
            return
        arrays, layout = state_to_host(state)
        tree = {"current": arrays,
                "finished": {f"stage_{i}": result_to_host(r) for i, (_, r) in enumerate(self._finished)}}
        meta = {"version": FORMAT_VERSION, "step": step, "stage_index": len(self._finished),
                "stage_spec": spec_fingerprint(spec), "generation": int(state.generation),
                "state_layout": layout, "finished": [fp for fp, _ in self._finished],
                "fingerprint": self.fingerprint, "checksum": tree_checksum(tree), "elapsed_s": self.elapsed_s}
        self._mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                      meta=ocp.args.JsonSave(meta)))
        self._last_saved = step
        # the one line per save (orbax's own INFO lines are silenced by evojax_merge.logs)
        log.info("checkpoint: step %d of %s (%s generation %d, search %.1f s)", step, self.directory.name,
                 spec.name, int(state.generation), meta["elapsed_s"])

    def wait_until_finished(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        """Finish pending writes and release the manager (call at the end of the search)."""
        self._mngr.wait_until_finished()
        self._mngr.close()

    def __enter__(self) -> CheckpointRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the StageRunner -------------------------------------------------------------------------------
    def __call__(self, spec: StageSpec, fitness_fn: Callable, key: jax.Array) -> StageResult:
        index = self._calls
        self._calls += 1
        if index != len(self._finished):
            raise RuntimeError("CheckpointRunner: stages must run one after another; use one runner per search")
        fingerprint = spec_fingerprint(spec)
        restored = self._restored
        if restored is not None and index < len(restored.finished):  # finished before: no recompute
            saved_fp, result = restored.finished[index]
            _check_same_stage(saved_fp, fingerprint, index)
            self._finished.append((fingerprint, result))
            return result
        state = init_stage(spec, key)  # a template: a restored stage needs no x0 evaluation
        if restored is not None and index == restored.stage_index:  # in progress: continue from the save
            _check_same_stage(restored.stage_spec, fingerprint, index)
            state = state_from_host(state, restored.state_arrays, restored.state_layout)
            log.info("resuming stage %s at generation %d (step %d)", spec.name, int(state.generation), restored.step)
        else:
            state = init_stage(spec, key, fitness_fn)  # x0 is evaluated first and is the best to beat
        offset = sum(fp["generations"] for fp, _ in self._finished)  # global step = offset + generation

        def hook(spec: StageSpec, state: StageState) -> None:
            generation = int(state.generation)
            step = offset + generation
            if self.on_generation is not None:
                self.on_generation(spec, state, step)
            stop = self.preemption is not None and any_process(bool(self.preemption.requested))
            if stop or generation == spec.generations or step % self.interval == 0:
                self._save(step, spec, state)
            if stop:
                self._mngr.wait_until_finished()  # on disk before the process may exit
                raise Preempted(self.preemption.signum, step, str(self.directory))

        result = run_stage(spec, fitness_fn, state, on_generation=hook, progress=self.progress,
                           visit_every=lambda g: (offset + g) % self.interval == 0)
        self._mngr.wait_until_finished()  # a finished stage is on disk when the runner returns, close() or not
        self._finished.append((fingerprint, result))
        return result


def _check_same_stage(saved: dict, current: dict, index: int) -> None:
    if saved != current:
        raise EvoMergeInputError(f"checkpointed stage {index} was {saved}, this run's stage {index} is {current}; "
                                 "use a fresh output directory or the original config")
