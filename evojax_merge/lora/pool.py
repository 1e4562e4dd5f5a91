"""LoraPool: N PEFT adapters on one base, read from disk and stacked as JAX arrays.

Every adapter is validated against the base model before anything is stacked: its shapes fit the
base, all ranks are equal, all values are finite. An adapter lacking a module the pool has
contributes zeros there, with a warning that names it.
"""

from __future__ import annotations

import dataclasses
import glob as globlib
import logging
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.fileio import read_json
from evojax_merge.lora.adapter import PROJECTIONS, LoraStack, module_path

if TYPE_CHECKING:  # lora/ needs only the base's shapes; models/ imports lora's adapter types
    from evojax_merge.models.config import ModelConfig

log = logging.getLogger(__name__)

_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?:model\.)?layers\.(\d+)\.(self_attn|mlp)\.(\w+?)\.lora_([AB])(?:\.default)?\.weight$"
)
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclasses.dataclass(frozen=True)
class AdapterFile:
    """One PEFT adapter directory, read and checked on its own."""

    path: Path
    rank: int
    lora_alpha: float
    use_rslora: bool
    A: dict[str, np.ndarray]  # module path -> [r, d_in]
    B: dict[str, np.ndarray]  # module path -> [d_out, r]

    @property
    def scale(self) -> float:
        return self.lora_alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


def _read_adapter_config(path: Path) -> dict:
    cfg_file = path / ADAPTER_CONFIG
    cfg = read_json(cfg_file, missing=f"{path}: missing {ADAPTER_CONFIG}")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise EvoMergeInputError(f"{path}: peft_type {cfg.get('peft_type')!r} is not LORA")
    for key, what in (("use_dora", "DoRA"), ("rank_pattern", "rank_pattern"), ("alpha_pattern", "alpha_pattern")):
        if cfg.get(key):
            raise EvoMergeInputError(f"{path}: {what} adapters are not supported")
    if "r" not in cfg or "lora_alpha" not in cfg:
        raise EvoMergeInputError(f"{cfg_file}: needs 'r' and 'lora_alpha'")
    return cfg


def read_adapter(path: str | Path, base: ModelConfig) -> AdapterFile:
    """Read one PEFT adapter directory and check it against the base model's shapes."""
    path = Path(path)
    if not path.is_dir():
        raise EvoMergeInputError(f"{path}: adapter directory does not exist")
    cfg = _read_adapter_config(path)
    weights_file = path / ADAPTER_WEIGHTS
    if not weights_file.is_file():
        raise EvoMergeInputError(f"{path}: missing {ADAPTER_WEIGHTS}")
    rank = int(cfg["r"])
    shapes = base.module_shapes()
    A: dict[str, np.ndarray] = {}
    B: dict[str, np.ndarray] = {}
    try:
        with safe_open(str(weights_file), framework="numpy") as fh:
            keys = list(fh.keys())
            for key in keys:
                m = _KEY.match(key)
                if m is None:
                    raise EvoMergeInputError(
                        f"{path}: unsupported tensor {key!r} (only LoRA A/B of q,k,v,o,gate,up,down)"
                    )
                layer, _, proj, which = int(m[1]), m[2], m[3], m[4]
                if proj not in PROJECTIONS or layer >= base.num_hidden_layers:
                    raise EvoMergeInputError(f"{path}: tensor {key!r} names no module of the base model")
                t = np.asarray(fh.get_tensor(key), dtype=np.float32)
                d_out, d_in = shapes[proj]
                want = (rank, d_in) if which == "A" else (d_out, rank)
                if t.shape != want:
                    if t.shape[0 if which == "A" else 1] != rank:
                        raise EvoMergeInputError(
                            f"{path}: rank mismatch in {key!r}: shape {t.shape}, adapter_config says r={rank}"
                        )
                    raise EvoMergeInputError(
                        f"{path}: {key!r} has shape {t.shape}, the base model's {proj} needs {want}"
                    )
                if not np.isfinite(t).all():
                    raise EvoMergeInputError(f"{path}: non-finite values (NaN/inf) in {key!r}")
                (A if which == "A" else B)[module_path(layer, proj)] = t
    except (SafetensorError, OSError, ValueError) as e:
        if isinstance(e, EvoMergeInputError):
            raise
        raise EvoMergeInputError(f"{weights_file}: unreadable safetensors ({e})") from None
    if set(A) != set(B):
        odd = sorted(set(A) ^ set(B))[0]
        raise EvoMergeInputError(f"{path}: module {odd} has only one of lora_A / lora_B")
    if not A:
        raise EvoMergeInputError(f"{path}: {ADAPTER_WEIGHTS} holds no LoRA tensors")
    return AdapterFile(path, rank, float(cfg["lora_alpha"]), bool(cfg.get("use_rslora", False)), A, B)


def resolve_adapter_dirs(spec: str | Path | Iterable[str | Path]) -> list[Path]:
    """Adapter directories from a list of paths or a glob pattern, in sorted order for globs."""
    if isinstance(spec, (str, Path)):
        pattern = str(spec)
        if any(ch in pattern for ch in "*?["):
            found = sorted(Path(p) for p in globlib.glob(pattern) if Path(p).is_dir())
            if not found:
                raise EvoMergeInputError(f"{pattern}: the glob matches no adapter directory")
            return found
        return [Path(pattern)]
    return [Path(p) for p in spec]


@dataclasses.dataclass(frozen=True)
class LoraPool:
    """N adapters on one base: names, the stacked arrays and the rank they share."""

    names: tuple[str, ...]
    paths: tuple[Path, ...]
    stack: LoraStack
    rank: int
    lora_alpha: tuple[float, ...]
    use_rslora: bool

    @property
    def num_adapters(self) -> int:
        return len(self.names)

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(self.stack.A)

    def subset(self, indices: Sequence[int]) -> LoraPool:
        """The pool restricted to ``indices`` (e.g. OOD: everything but the target's adapter)."""
        idx = list(indices)
        return LoraPool(
            names=tuple(self.names[i] for i in idx),
            paths=tuple(self.paths[i] for i in idx),
            stack=self.stack.take(idx),
            rank=self.rank,
            lora_alpha=tuple(self.lora_alpha[i] for i in idx),
            use_rslora=self.use_rslora,
        )

    def without(self, name: str) -> LoraPool:
        """The pool minus the adapter called ``name``."""
        if name not in self.names:
            raise EvoMergeInputError(f"pool has no adapter named {name!r}")
        return self.subset([i for i, n in enumerate(self.names) if n != name])


def stack_adapters(adapters: Sequence[AdapterFile], base: ModelConfig) -> LoraStack:
    """Stack adapters module by module; an adapter missing a module contributes zeros there."""
    modules = sorted({m for a in adapters for m in a.A}, key=_module_order)
    A, B = {}, {}
    for m in modules:
        proj = m.rsplit(".", 1)[1]
        d_out, d_in = base.module_shapes()[proj]
        r = adapters[0].rank
        a_list, b_list = [], []
        for ad in adapters:
            if m not in ad.A:
                log.warning("adapter %s has no %s: it contributes zero there", ad.path, m)
            a_list.append(ad.A.get(m, np.zeros((r, d_in), np.float32)))
            b_list.append(ad.B.get(m, np.zeros((d_out, r), np.float32)))
        A[m] = jnp.asarray(np.stack(a_list))
        B[m] = jnp.asarray(np.stack(b_list))
    scale = jnp.asarray([ad.scale for ad in adapters], jnp.float32)
    return LoraStack(A=A, B=B, scale=scale)


def _module_order(m: str) -> tuple[int, int]:
    _, layer, _, proj = m.split(".")
    return int(layer), PROJECTIONS.index(proj)


def load_pool(spec: str | Path | Iterable[str | Path], base: ModelConfig) -> LoraPool:
    """Read, validate and stack PEFT adapter directories (a list of paths or a glob)."""
    dirs = resolve_adapter_dirs(spec)
    if not dirs:
        raise EvoMergeInputError("adapter pool is empty")
    adapters = [read_adapter(d, base) for d in dirs]
    ref = adapters[0]
    for ad in adapters[1:]:
        if ad.rank != ref.rank:
            raise EvoMergeInputError(f"{ad.path}: rank mismatch: r={ad.rank}, but {ref.path} has r={ref.rank}")
        if ad.use_rslora != ref.use_rslora:
            raise EvoMergeInputError(f"{ad.path}: use_rslora={ad.use_rslora} differs from {ref.path}")
    names = [d.name for d in dirs]
    if len(set(names)) != len(names):
        names = [str(d) for d in dirs]  # fall back to full paths when basenames collide
    return LoraPool(
        names=tuple(names),
        paths=tuple(dirs),
        stack=stack_adapters(adapters, base),
        rank=ref.rank,
        lora_alpha=tuple(ad.lora_alpha for ad in adapters),
        use_rslora=ref.use_rslora,
    )
