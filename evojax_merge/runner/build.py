"""From the composed Hydra config to the engine's parts, with ``hydra.utils.instantiate``.

``world``, ``setting`` and every ``method.<label>`` carry a ``_target_``; the ``experiment`` block is
checked against :class:`~evojax_merge.runner.engine.ExperimentSpec`. Every failure is one line naming
the key, raised before anything is built.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.runner.engine import ExperimentSpec


def config_dir() -> str:
    """The Hydra config tree: inside the package when installed from a wheel, else the repo's conf/."""
    from pathlib import Path

    here = Path(__file__).resolve().parents[1]
    packaged = here / "conf"
    return str(packaged if packaged.is_dir() else here.parent / "conf")


_UNEXPECTED = re.compile(r"unexpected keyword argument '([^']+)'")
_WRAPPED = re.compile(r"""^\w+\((["'])(.*)\1\)$""")  # ModuleNotFoundError("No module named 'x'")


def _keyed(key: str, error: Exception) -> str:
    """``key: error``, unless the error already names a key under ``key`` (``world.build.x: ...``)."""
    text = str(error)
    return text if text.startswith((f"{key}.", f"{key}:")) else f"{key}: {text}"


def _container(node, key: str):
    try:
        return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    except Exception as e:  # an interpolation to a missing key, e.g. budget.* or a ??? value
        raise EvoMergeInputError(f"{key}: {str(e).splitlines()[0]}") from None


def instantiate_node(node, key: str, expected: type | None = None):
    """``hydra.utils.instantiate`` of ``node`` (a dict with ``_target_``), lists passed as tuples; an
    unknown key, a target that does not import or a bad value is one line naming ``key``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    config = _container(node, key)
    if not isinstance(config, Mapping) or "_target_" not in config:
        raise EvoMergeInputError(f"{key}: no _target_ (each {key.split('.')[0]} config names its class)")
    tuples = {k: tuple(v) for k, v in config.items() if isinstance(v, list)}
    try:
        obj = instantiate(config, _convert_="all", **tuples)
    except EvoMergeInputError as e:
        raise EvoMergeInputError(_keyed(key, e)) from None
    except InstantiationException as e:
        cause = e.__cause__ or e
        if isinstance(cause, EvoMergeInputError):
            raise EvoMergeInputError(_keyed(key, cause)) from None
        text = str(cause)
        if isinstance(cause, ImportError):  # Hydra's "Error loading 'x':" then the import's own error
            lines = [line for line in text.splitlines() if line.strip()]
            reason = lines[1] if len(lines) > 1 and lines[0].startswith("Error loading") else lines[0]
            reason = _WRAPPED.sub(r"\2", reason)
            raise EvoMergeInputError(f"{key}._target_: {config['_target_']} does not import ({reason})") from None
        bad = _UNEXPECTED.search(text)
        if bad:
            raise EvoMergeInputError(f"{key}.{bad.group(1)}: unknown key for {config['_target_']}") from None
        raise EvoMergeInputError(f"{key}._target_: {config['_target_']}: {text.splitlines()[0]}") from None
    if expected is not None and not isinstance(obj, expected):
        raise EvoMergeInputError(f"{key}._target_: {config['_target_']} is not a {expected.__name__}")
    return obj


def build_methods(cfg: DictConfig) -> dict:
    """``{label: MergeMethod}`` in config order; an empty selection is an error."""
    from evojax_merge.methods.base import MergeMethod

    methods = cfg.get("method")
    if not methods:
        raise EvoMergeInputError("method: no method selected (e.g. method=all or method=evo_merging)")
    return {str(label): instantiate_node(methods[label], f"method.{label}", MergeMethod) for label in methods}


def build_world(cfg: DictConfig):
    from evojax_merge.world.specs import WorldSpec

    return instantiate_node(cfg.world, "world", WorldSpec)


def build_setting(cfg: DictConfig):
    from evojax_merge.setting.cells import Setting

    return instantiate_node(cfg.setting, "setting", Setting)


def experiment_spec(cfg: DictConfig) -> ExperimentSpec:
    e = _container(cfg.experiment, "experiment")
    known = {f.name for f in dataclasses.fields(ExperimentSpec)}
    unknown = [k for k in e if k not in known]
    if unknown:
        raise EvoMergeInputError(f"experiment.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    e = {k: tuple(v) if isinstance(v, list) else v for k, v in e.items()}
    return ExperimentSpec(**e)


def validation_config(cfg: DictConfig):
    from evojax_merge.search.fitness import ValidationConfig

    v = _container(cfg.data.validation, "data.validation")
    try:
        val = ValidationConfig(**v)
    except TypeError as e:
        raise EvoMergeInputError(f"data.validation: {e}") from None
    if val.batch_size < 1 or val.num_batches < 1:
        raise EvoMergeInputError("data.validation.batch_size and num_batches must be >= 1")
    return val


def prompt_settings(cfg: DictConfig):
    from evojax_merge.data.prompt import PromptSettings

    return PromptSettings(cfg.data.prompt, bool(cfg.data.loss_on_history), int(cfg.data.max_len_cap))
