"""CheckpointRunner.loop, the checkpointed loop of any iterative method, and the one-line error naming what
changed in the config since a checkpoint. In-process: a guard's ``request()`` stands in for the signal."""

from __future__ import annotations

import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.search.checkpoint import CheckpointRunner
from evojax_merge.search.checkpoint_state import describe_diff, fingerprint_diff
from evojax_merge.search.cmaes import StageSpec
from evojax_merge.search.genome import GenomeLayout
from evojax_merge.search.preemption import Preempted, PreemptionGuard

SPEC = StageSpec("s", GenomeLayout("alpha", 3, 0.0, 1.0), (1.0, 0.5, 0.25), 0.1, 4, 3)
STEPS = 6


def _fitness(population: np.ndarray, generation: int) -> np.ndarray:
    return ((population - 0.05 * generation) ** 2).sum(axis=1)


def _init() -> dict:
    """Every kind of leaf: a jax array, a typed PRNG key, a weakly typed scalar, a host (numpy) array."""
    return {"w": jnp.asarray([1.0, -2.0, 0.5], jnp.float32), "key": jax.random.key(1),
            "t": jnp.asarray(0.0), "loss": np.full(STEPS, np.nan, np.float32)}


def _step(state: dict, i: int) -> dict:
    key, sub = jax.random.split(state["key"])
    w = state["w"] - 0.3 * state["w"] + 0.01 * jax.random.normal(sub, (3,))
    loss = state["loss"].copy()
    loss[i] = float(jnp.sum(w**2))
    return {"w": w, "key": key, "t": state["t"] + 0.5, "loss": loss}


def _plain(state: dict, steps: int = STEPS) -> dict:
    for i in range(steps):
        state = _step(state, i)
    return state


def _same(a: dict, b: dict) -> bool:
    def raw(x):
        return np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)

    return all(raw(a[k]).tobytes() == raw(b[k]).tobytes() and a[k].dtype == b[k].dtype
               and type(a[k]) is type(b[k]) and getattr(a[k], "weak_type", None) == getattr(b[k], "weak_type", None)
               for k in a)


def _steps(path) -> list[int]:
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())


def test_stage_then_loop_stopped_and_resumed_is_bit_identical(tmp_path):
    """interval=2: a stage (3 generations: steps 1-3) and a loop (steps 4-9) in one runner; the guard stops
    the loop after its 2nd step (global 5, odd: saved because of the stop); a fresh runner finishes it."""
    reference = _plain(_init())
    guard = PreemptionGuard()  # not installed: request() stands in for the signal

    def stop_after_2(state, done):
        if done == 2:
            guard.request(signal.SIGUSR1)

    first = CheckpointRunner(tmp_path, interval=2, max_to_keep=10, preemption=guard, progress=False)
    with pytest.raises(Preempted) as stop, first:
        stage = first(SPEC, _fitness, jax.random.key(5))
        first.loop("toy", _init(), _step, STEPS, on_step=stop_after_2)
    assert stop.value.step == 5 and stop.value.signum == signal.SIGUSR1
    assert _steps(tmp_path) == [2, 3, 4, 5]

    taken = []
    with CheckpointRunner(tmp_path, interval=2, max_to_keep=10, progress=False) as second:
        assert second.resumed_from == 5 and [r.name for r in second.restored_results] == ["s"]
        again = second(SPEC, lambda p, g: pytest.fail("a finished stage is not run again"), jax.random.key(5))
        final = second.loop("toy", _init(), _step, STEPS, on_step=lambda s, done: taken.append(done))
    assert taken == [3, 4, 5, 6]  # the loop went on after its 2nd step
    assert _same(final, reference) and isinstance(final["loss"], np.ndarray)
    assert again.best_fitness == stage.best_fitness and np.array_equal(again.history, stage.history, equal_nan=True)
    assert _steps(tmp_path) == [2, 3, 4, 5, 6, 8, 9]

    with CheckpointRunner(tmp_path, interval=2, max_to_keep=10, progress=False) as third:  # all done before
        third(SPEC, _fitness, jax.random.key(5))
        done = third.loop("toy", _init(), lambda s, i: pytest.fail("a finished loop is not run again"), STEPS)
    assert _same(done, reference)


@pytest.mark.parametrize(("busy", "saved"), [(False, list(range(1, STEPS + 1))), (True, [STEPS])])
def test_when_idle_skips_an_intervals_save_while_the_last_is_written(tmp_path, monkeypatch, busy, saved):
    with CheckpointRunner(tmp_path, interval=1, max_to_keep=10, progress=False) as runner:
        monkeypatch.setattr(runner._mngr, "is_saving_in_progress", lambda: busy)  # the disk, kept busy or not
        final = runner.loop("toy", _init(), _step, STEPS, when_idle=True)
    assert _steps(tmp_path) == saved and _same(final, _plain(_init()))  # the last step is always saved


def test_another_loop_shape_is_a_one_line_error(tmp_path):
    with CheckpointRunner(tmp_path, progress=False, async_save=False) as runner:
        runner.loop("toy", _init(), _step, 2)
    wider = {**_init(), "w": jnp.zeros(4, jnp.float32)}
    with pytest.raises(EvoMergeInputError) as err, CheckpointRunner(tmp_path, progress=False) as runner:
        runner.loop("toy", wider, _step, 2)
    assert str(err.value) == (f"{tmp_path.parent.name}/{tmp_path.name}: loop 0 (toy) changed since the checkpoint: "
                              "layout[3].shape[0] 3 -> 4 (rerun with the original config, or in another run dir)")


def test_a_changed_config_names_the_keys_that_differ(tmp_path):
    saved = {"label": "t/evo", "seed": 0, "method": {"evo_merging": {"sigma0": 0.05, "x0": [1.0, 0.5]}},
             "world": {"path": "/data/" + "x" * 200}, "same": list(range(100))}
    with CheckpointRunner(tmp_path / "checkpoints" / "t_evo", fingerprint=saved, progress=False,
                          async_save=False) as runner:
        runner.loop("toy", _init(), _step, 1)
    changed = {**saved, "seed": 1, "method": {"evo_merging": {"sigma0": 0.1, "x0": [1.0, 0.25], "extra": True}},
               "world": {"path": "/other"}}
    with pytest.raises(EvoMergeInputError) as err:
        CheckpointRunner(tmp_path / "checkpoints" / "t_evo", fingerprint=changed)
    assert str(err.value) == (
        "checkpoints/t_evo: the config changed since the checkpoint: method.evo_merging.extra (unset) -> true, "
        "method.evo_merging.sigma0 0.05 -> 0.1, method.evo_merging.x0[1] 0.5 -> 0.25, seed 0 -> 1, "
        'world.path "/data/' + "x" * 30 + '... -> "/other" '
        "(a different run: rerun with the original config, or in another run dir)")


def test_describe_diff_caps_the_keys_and_keeps_one_line():
    saved = {f"k{i}": i for i in range(10)} | {"text": "a\nb", "lst": [1, 2]}
    current = {f"k{i}": -i for i in range(10)} | {"text": "a\nc", "lst": [1, 2, 3]}
    diffs = fingerprint_diff(saved, current)
    assert [p for p, _, _ in diffs][:3] == ["k1", "k2", "k3"] and len(diffs) == 11  # k0 is 0 == -0
    text = describe_diff(saved, current)
    assert "\n" not in text and text.endswith(", and 5 more")
    assert describe_diff({"lst": [1, 2]}, {"lst": [1, 2, 3]}) == "lst [1, 2] -> [1, 2, 3]"
    assert describe_diff({"a": 1}, {"a": 1}) == "(no difference in the values; their types differ)"
