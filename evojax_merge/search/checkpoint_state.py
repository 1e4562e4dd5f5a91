"""What a checkpoint holds, as pure functions: fingerprints of stages and loops, a state pytree as host
arrays and back (PRNG keys as their raw data, weak types kept), a checksum over the arrays, and the keys in
which two run fingerprints differ (the one-line error of a changed config). No I/O: ``checkpoint.py``
writes and reads them with orbax."""

from __future__ import annotations

import hashlib
import json
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.search.cmaes import StageResult, StageSpec
from evojax_merge.search.strategy import StrategySpec

State = TypeVar("State")

# the fingerprint diff of an error message: at most this many keys, each value cut to this many characters
MAX_DIFFS = 6
MAX_VALUE_CHARS = 40


# -- pure conversions: StageState <-> host arrays ------------------------------------------------------


def spec_fingerprint(spec: StageSpec) -> dict:
    """What must match for a saved stage to be resumed under ``spec`` (JSON-normalised).

    The strategy is named only when it is not the default CMA-ES, so checkpoints written before stages
    had a strategy still resume.
    """
    d = {"name": spec.name, "layout": spec.layout.to_dict(), "x0": [float(v) for v in spec.x0],
         "sigma0": float(spec.sigma0), "population_size": int(spec.population_size),
         "generations": int(spec.generations)}
    if spec.strategy != StrategySpec():
        d["strategy"] = spec.strategy.to_dict()
    return json.loads(json.dumps(d))


def loop_fingerprint(name: str, num_steps: int, layout: list[dict]) -> dict:
    """What must match for a saved :meth:`CheckpointRunner.loop` to be resumed: its name, length and state layout."""
    return json.loads(json.dumps({"kind": "loop", "name": name, "steps": int(num_steps), "layout": layout}))


def stage_length(fingerprint: dict) -> int:
    """Global steps a finished stage or loop took."""
    return int(fingerprint["steps"] if fingerprint.get("kind") == "loop" else fingerprint["generations"])


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def tree_layout(state: Any) -> list[dict]:
    """Per leaf of ``state``: path, dtype, shape, weak type and key implementation (nothing is copied)."""
    layout = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        entry = {"path": jax.tree_util.keystr(path), "key_impl": None,
                 "weak": bool(getattr(leaf, "weak_type", False))}
        if _is_key(leaf):
            entry["key_impl"] = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        entry.update(dtype=np.dtype(leaf.dtype).name if hasattr(leaf, "dtype") else np.asarray(leaf).dtype.name,
                     shape=list(np.shape(leaf)))
        layout.append(entry)
    return layout


def state_to_host(state: Any) -> tuple[dict[str, np.ndarray], list[dict]]:
    """A state pytree (a ``StageState``, a loop's state) -> (``{leaf_i: array}``, per-leaf layout).
    Typed PRNG keys become their key data."""
    arrays = {}
    for i, leaf in enumerate(jax.tree_util.tree_leaves(state)):
        arrays[f"leaf_{i:03d}"] = np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
    return arrays, tree_layout(state)


def _weak(arr: np.ndarray) -> jax.Array:
    """A weakly typed copy of ``arr``: weak types change jit's cache key, so keep them as they were."""
    zero = jnp.asarray(0.0 if np.issubdtype(arr.dtype, np.floating) else 0)  # a Python scalar is weak
    if zero.dtype != arr.dtype:  # weak types only exist for the default dtypes; anything else is strong
        return jnp.asarray(arr)
    return jnp.broadcast_to(zero, arr.shape).at[...].set(arr)


def state_from_host(template: State, arrays: dict[str, np.ndarray], layout: list[dict]) -> State:
    """Inverse of :func:`state_to_host`, shaped by ``template`` (e.g. ``init_stage(spec, key)``).

    A leaf comes back as the kind of array the template has there: numpy stays numpy (host), the rest
    become jax arrays with the template's key implementation and the saved weak type."""
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
        exp_dtype = np.dtype(expected.dtype) if hasattr(expected, "dtype") else np.asarray(expected).dtype
        if arr.shape != tuple(np.shape(expected)) or arr.dtype != exp_dtype:
            raise ValueError(f"{where}: saved {arr.dtype}{list(arr.shape)}, "
                             f"the stage expects {exp_dtype}{list(np.shape(expected))}")
        if _is_key(tmpl):
            leaf = jax.random.wrap_key_data(jnp.asarray(arr), impl=jax.random.key_impl(tmpl))
        elif isinstance(tmpl, np.ndarray | np.generic):
            leaf = np.array(arr, copy=True)
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


# -- what changed between two fingerprints -------------------------------------------------------------

_ABSENT = object()


def fingerprint_diff(saved: Any, current: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted path, saved value, current value)`` of every leaf that differs, in sorted key order.

    Dicts are walked key by key, lists of equal length item by item (``x0[2]``); a key on one side only
    has the sentinel ``_ABSENT`` on the other."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for k in sorted(set(saved) | set(current), key=str):
            path = f"{prefix}.{k}" if prefix else str(k)
            out += fingerprint_diff(saved.get(k, _ABSENT), current.get(k, _ABSENT), path)
        return out
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        out = []
        for i, (a, b) in enumerate(zip(saved, current, strict=True)):
            out += fingerprint_diff(a, b, f"{prefix}[{i}]")
        return out
    return [] if saved == current else [(prefix or "(root)", saved, current)]


def _short(value: Any) -> str:
    if value is _ABSENT:
        return "(unset)"
    text = json.dumps(value, default=str)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def describe_diff(saved: Any, current: Any) -> str:
    """``a.b 0.05 -> 0.1, seed 0 -> 1`` (at most :data:`MAX_DIFFS` keys, values cut short): one line."""
    diffs = fingerprint_diff(saved, current)
    shown = [f"{path} {_short(a)} -> {_short(b)}" for path, a, b in diffs[:MAX_DIFFS]]
    if len(diffs) > MAX_DIFFS:
        shown.append(f"and {len(diffs) - MAX_DIFFS} more")
    return ", ".join(shown) or "(no difference in the values; their types differ)"


# -- what a restore yields ---------------------------------------------------------------------------------
