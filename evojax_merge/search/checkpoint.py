"""A stage runner that checkpoints the search with orbax and resumes it bit-identically.

Over 400 lines: one runner class (restore with fallback, stages, loops, saves); what a checkpoint holds, as
pure functions, is ``checkpoint_state.py``.

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

Any other iterative method checkpoints the same way through :meth:`CheckpointRunner.loop`: a loop of
``num_steps`` deterministic steps over a pytree of arrays of fixed shapes (its state), saved every
``interval`` steps, resumed from the newest save, stopped (saved, then :class:`Preempted`) when the
guard is set. A runner can hold several stages and loops, one after another:

    def step(state, i):                     # the i-th step (0-based): a pure function of (state, i)
        return {"w": state["w"] - 0.1 * grad(state["w"], batches[i]), "loss": ...}

    final = runner.loop("sgd", {"w": w0, "loss": np.zeros(n, np.float32)}, step, n)

Saves are logged at DEBUG (the console shows the progress bars); a resume, a stop and the end of each
stage or loop are one INFO line each.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.search.checkpoint_state import (
    describe_diff,
    loop_fingerprint,
    result_from_host,
    result_to_host,
    spec_fingerprint,
    stage_length,
    state_from_host,
    state_to_host,
    tree_checksum,
    tree_layout,
)
from evojax_merge.search.cmaes import StageResult, StageSpec, StageState, init_stage, run_stage
from evojax_merge.search.preemption import Preempted, any_process

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

GenerationHook = Callable[[StageSpec, StageState, int], None]
State = TypeVar("State")



class CheckpointFallbackWarning(UserWarning):
    """The newest checkpoint could not be used; an older one was restored instead."""


@dataclasses.dataclass(frozen=True)
class Restored:
    """The content of one checkpoint step."""

    step: int
    stage_index: int  # the stage or loop in progress (== len(finished))
    stage_spec: dict  # its fingerprint
    state_arrays: dict[str, np.ndarray]
    state_layout: list[dict]
    finished: list[tuple[dict, dict[str, np.ndarray]]]  # (fingerprint, host arrays) of every finished stage/loop
    elapsed_s: float = 0.0  # seconds the search had run when this step was saved, over all earlier segments
    generation: int = 0  # generations (steps) of the one in progress done at this save


class CheckpointRunner:
    """A ``StageRunner`` (``runner(spec, fitness_fn, key) -> StageResult``) that checkpoints and resumes,
    and the checkpointed loop of any iterative method (:meth:`loop`).

    Args:
      directory: where the orbax steps go (created). One directory per search; one runner per search.
      interval: save every ``interval`` global generations (loop steps); the last generation of each
        stage or loop and a preempted one are always saved.
      max_to_keep: how many steps to keep (older ones are deleted once a newer one is written).
      resume: restore from ``directory`` if it holds checkpoints. ``False`` with existing checkpoints is
        an error rather than a silent overwrite.
      fingerprint: any JSON-able description of the run (e.g. the resolved config minus run-local keys);
        resuming a checkpoint written under a different fingerprint is an error naming the keys that differ.
      preemption: a :class:`~evojax_merge.search.preemption.PreemptionGuard` (anything with ``requested``
        and ``signum``); when set after a generation or loop step, the runner saves and raises ``Preempted``.
      on_generation: ``hook(spec, state, step)`` after every generation (logging), before the save.
      progress: a progress bar per stage and loop (:func:`evojax_merge.logs.progress_bar`: tqdm on a
        terminal, one log line per stage or loop otherwise).
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
        # this process's view of the finished stages and loops, (fingerprint, host arrays), saved with every step
        self._finished: list[tuple[dict, dict[str, np.ndarray]]] = []
        self._calls = 0
        self._last_saved: int | None = None
        self._saved_elapsed_s = 0.0
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

    @property
    def name(self) -> str:
        """``checkpoints/<label>``: how messages name this search's checkpoints."""
        return f"{self.directory.parent.name}/{self.directory.name}"

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
                f"{self.name}: the config changed since the checkpoint: "
                f"{describe_diff(meta.get('fingerprint'), self.fingerprint)} "
                "(a different run: rerun with the original config, or in another run dir)")
        finished_arrays = tree.get("finished", {})
        finished = [(fp, dict(finished_arrays[f"stage_{i}"])) for i, fp in enumerate(meta["finished"])]
        return Restored(step=step, stage_index=int(meta["stage_index"]), stage_spec=meta["stage_spec"],
                        state_arrays=tree["current"], state_layout=meta["state_layout"], finished=finished,
                        elapsed_s=float(meta.get("elapsed_s", 0.0)), generation=int(meta.get("generation", 0)))

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
        """The results of the CMA-ES stages that had finished before the restored step."""
        if self._restored is None:
            return []
        return [result_from_host(fp["name"], a) for fp, a in self._restored.finished if fp.get("kind") != "loop"]

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
    def _write(self, step: int, fingerprint: dict, generation: int, arrays: dict[str, np.ndarray],
               layout: list[dict]) -> None:
        """Save the one in progress (``fingerprint``, ``generation`` done, its host ``arrays``) and the finished."""
        if step == self._last_saved:
            return
        tree = {"current": arrays, "finished": {f"stage_{i}": a for i, (_, a) in enumerate(self._finished)}}
        meta = {"version": FORMAT_VERSION, "step": step, "stage_index": len(self._finished),
                "stage_spec": fingerprint, "generation": int(generation),
                "state_layout": layout, "finished": [fp for fp, _ in self._finished],
                "fingerprint": self.fingerprint, "checksum": tree_checksum(tree), "elapsed_s": self.elapsed_s}
        self._mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                      meta=ocp.args.JsonSave(meta)))
        self._last_saved, self._saved_elapsed_s = step, meta["elapsed_s"]
        # DEBUG: a line per save would cut through the progress bars (orbax's own lines: evojax_merge.logs)
        log.debug("checkpoint: step %d of %s (%s %d, search %.1f s)", step, self.name, fingerprint["name"],
                  int(generation), meta["elapsed_s"])

    def _save(self, step: int, spec: StageSpec, state: StageState) -> None:
        arrays, layout = state_to_host(state)
        self._write(step, spec_fingerprint(spec), int(state.generation), arrays, layout)

    def _stop_requested(self) -> bool:
        return self.preemption is not None and any_process(bool(self.preemption.requested))

    def _preempt(self, step: int) -> Preempted:
        self._mngr.wait_until_finished()  # on disk before the process may exit
        # the search seconds saved with the step: where the resumed run's clock starts
        log.info("%s: stopped; saved step %d (search %.1f s)", self.name, step, self._saved_elapsed_s)
        return Preempted(self.preemption.signum, step, str(self.directory))

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

    def _next(self) -> int:
        index = self._calls
        self._calls += 1
        if index != len(self._finished):
            raise RuntimeError("CheckpointRunner: stages and loops must run one after another; "
                               "use one runner per search")
        return index

    def _check_same(self, saved: dict, current: dict, index: int) -> None:
        if saved != current:
            raise EvoMergeInputError(
                f"{self.name}: {current.get('kind', 'stage')} {index} ({current.get('name')}) changed since the "
                f"checkpoint: "
                f"{describe_diff(saved, current)} (rerun with the original config, or in another run dir)")

    # -- the StageRunner -------------------------------------------------------------------------------
    def __call__(self, spec: StageSpec, fitness_fn: Callable, key: jax.Array) -> StageResult:
        index = self._next()
        fingerprint = spec_fingerprint(spec)
        restored = self._restored
        if restored is not None and index < len(restored.finished):  # finished before: no recompute
            saved_fp, arrays = restored.finished[index]
            self._check_same(saved_fp, fingerprint, index)
            self._finished.append((fingerprint, arrays))
            return result_from_host(spec.name, arrays)
        state = init_stage(spec, key)  # a template: a restored stage needs no x0 evaluation
        if restored is not None and index == restored.stage_index:  # in progress: continue from the save
            self._check_same(restored.stage_spec, fingerprint, index)
            state = state_from_host(state, restored.state_arrays, restored.state_layout)
            log.info("%s: resuming stage %s at generation %d (step %d)", self.name, spec.name,
                     int(state.generation), restored.step)
        else:
            state = init_stage(spec, key, fitness_fn)  # x0 is evaluated first and is the best to beat
        offset = sum(stage_length(fp) for fp, _ in self._finished)  # global step = offset + generation

        def hook(spec: StageSpec, state: StageState) -> None:
            generation = int(state.generation)
            step = offset + generation
            if self.on_generation is not None:
                self.on_generation(spec, state, step)
            stop = self._stop_requested()
            if stop or generation == spec.generations or step % self.interval == 0:
                self._save(step, spec, state)
            if stop:
                raise self._preempt(step)

        result = run_stage(spec, fitness_fn, state, on_generation=hook, progress=self.progress,
                           visit_every=lambda g: (offset + g) % self.interval == 0)
        self._mngr.wait_until_finished()  # a finished stage is on disk when the runner returns, close() or not
        self._finished.append((fingerprint, result_to_host(result)))
        log.info("%s: stage %s done (checkpoint step %d, search %.1f s)", self.name, spec.name,
                 offset + spec.generations, self.elapsed_s)
        return result

    # -- any iterative method --------------------------------------------------------------------------
    def loop(
        self,
        name: str,
        init_state: State,
        step_fn: Callable[[State, int], State],
        num_steps: int,
        on_step: Callable[[State, int], None] | None = None,
        when_idle: bool = False,
    ) -> State:
        """Run ``state = step_fn(state, i)`` for ``i = 0 .. num_steps - 1``, checkpointed; return the final state.

        ``init_state``: a pytree of arrays (jax or numpy; PRNG keys too) whose structure, shapes and
        dtypes every step keeps; numpy leaves stay numpy across a restore. ``step_fn`` must be a
        deterministic function of ``(state, i)`` (derive batches and keys from ``i``), so that a rerun
        that restores the state saved after step ``k`` continues bit-identically.

        After every step: ``on_step(state, done)`` (logging, ``done`` = steps taken, 1-based), then a save
        when ``done`` is the last step, the guard asks to stop, or the global step is a multiple of the
        runner's ``interval``. With ``when_idle`` (for steps cheaper than a save) an interval's save is
        skipped while the previous one is still being written, so the loop never waits for the disk
        (single-process runs only: the hosts of a multi-host job must agree on every save). A stop
        saves, waits for the save to be on disk and raises ``Preempted``.
        A rerun in the same directory returns a loop that had finished without running a step.
        """
        index = self._next()
        layout = tree_layout(init_state)
        fingerprint = loop_fingerprint(name, num_steps, layout)
        restored = self._restored
        if restored is not None and index < len(restored.finished):  # finished before: no recompute
            saved_fp, arrays = restored.finished[index]
            self._check_same(saved_fp, fingerprint, index)
            self._finished.append((fingerprint, arrays))
            log.info("%s: %s had finished (%d steps), restored", self.name, name, num_steps)
            return state_from_host(init_state, arrays, layout)
        state, done = init_state, 0
        if restored is not None and index == restored.stage_index:  # in progress: continue from the save
            self._check_same(restored.stage_spec, fingerprint, index)
            state = state_from_host(init_state, restored.state_arrays, restored.state_layout)
            done = restored.generation
            log.info("%s: resuming %s at step %d of %d (checkpoint step %d)", self.name, name, done, num_steps,
                     restored.step)
        offset = sum(stage_length(fp) for fp, _ in self._finished)  # global step = offset + done
        arrays = None
        bar = None
        if self.progress:
            from evojax_merge.logs import progress_bar

            bar = progress_bar(num_steps, name, initial=done)
        idle_only = when_idle and jax.process_count() == 1
        try:
            while done < num_steps:
                state = step_fn(state, done)
                done += 1
                if bar is not None:
                    bar.update(1)
                if on_step is not None:
                    on_step(state, done)
                step = offset + done
                stop = self._stop_requested()
                due = step % self.interval == 0 and not (idle_only and self._mngr.is_saving_in_progress())
                if stop or done == num_steps or due:
                    arrays, _ = state_to_host(state)
                    self._write(step, fingerprint, done, arrays, layout)
                if stop:
                    raise self._preempt(step)
        finally:
            if bar is not None:
                bar.close()
        self._mngr.wait_until_finished()  # a finished loop is on disk when the runner returns
        self._finished.append((fingerprint, arrays if arrays is not None else state_to_host(state)[0]))
        log.info("%s: %s done (%d steps, checkpoint step %d, search %.1f s)", self.name, name, num_steps,
                 offset + num_steps, self.elapsed_s)
        return state
