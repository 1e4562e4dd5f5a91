"""Build the configured methods: ``cfg.method`` maps a label (a row of the results table) to a
config with a ``_target_`` class and that class's constructor arguments.

    method:
      evo_merging: {_target_: evojax_merge.methods.evo_merging.EvoMerging, population_size: 20, ...}
      ties:        {_target_: evojax_merge.methods.task_vectors.Ties, lambdas: [...], ...}

Every failure is a one-line error naming the method and the key, raised before anything is built.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.methods.base import MergeMethod


def _import_target(label: str, target: object) -> type:
    if not isinstance(target, str) or "." not in target:
        raise EvoMergeInputError(f"method.{label}._target_: {target!r} is not a dotted class path")
    module_name, _, attr = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise EvoMergeInputError(f"method.{label}._target_: {target} does not import ({e})") from None
    if not (inspect.isclass(cls) and issubclass(cls, MergeMethod)):
        raise EvoMergeInputError(f"method.{label}._target_: {target} is not a MergeMethod class")
    return cls


def build_method(label: str, config: Mapping) -> MergeMethod:
    """One method from its config; unknown keys are refused by name."""
    if not isinstance(config, Mapping) or "_target_" not in config:
        raise EvoMergeInputError(f"method.{label}: no _target_ (each method config names its class)")
    cls = _import_target(label, config["_target_"])
    kwargs = {k: v for k, v in config.items() if k != "_target_"}
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        known = [name for name in params if name != "self"]
        for key in kwargs:
            if key not in known:
                raise EvoMergeInputError(f"method.{label}.{key}: unknown key for {cls.__name__} "
                                         f"(known: {', '.join(known) or 'none'})")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    try:
        return cls(**kwargs)
    except EvoMergeInputError as e:
        raise EvoMergeInputError(f"method.{label}: {e}") from None
    except (TypeError, ValueError) as e:
        raise EvoMergeInputError(f"method.{label}: {e}") from None


def build_methods(method_cfg: Mapping) -> dict[str, MergeMethod]:
    """``{label: method}`` in config order; an empty selection is an error."""
    if not method_cfg:
        raise EvoMergeInputError("method: no method selected (e.g. method=all or method=evo_merging)")
    return {str(label): build_method(str(label), config) for label, config in method_cfg.items()}
