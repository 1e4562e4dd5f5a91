"""LoraPool: N PEFT adapters on one base, read from disk and stacked as JAX arrays.

Every adapter is validated against the base model before anything is stacked: its shapes fit the
base, all ranks are equal, the dtypes do not mix float16 with bfloat16. The tensors are then read
lazily, one module at a time across all adapters, straight into the pool's target dtype (bf16 by
default on accelerators, float32 on a CPU) and put on the device: the host holds one module's
stack at a time, the device one copy of the pool. Non-finite values are an error naming the file
and tensor. An adapter lacking a module the pool has contributes zeros there, with a warning.
"""

from __future__ import annotations

import dataclasses
import glob as globlib
import logging
import math
import re
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import jax
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


_ST_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
POOL_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class AdapterHeader:
    """One PEFT adapter directory, checked from its headers alone (no tensor data read)."""

    path: Path
    rank: int
    lora_alpha: float
    use_rslora: bool
    keys: dict[str, tuple[str, str]]  # module path -> (lora_A key, lora_B key)
    dtype: str  # the floating dtype of its tensors

    @property
    def scale(self) -> float:
        return self.lora_alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    @property
    def weights_file(self) -> Path:
        return self.path / ADAPTER_WEIGHTS


def scan_adapter(path: str | Path, base: ModelConfig) -> AdapterHeader:
    """Check one PEFT adapter directory against the base model from the safetensors headers."""
    path = Path(path)
    if not path.is_dir():
        raise EvoMergeInputError(f"{path}: adapter directory does not exist")
    cfg = _read_adapter_config(path)
    weights_file = path / ADAPTER_WEIGHTS
    if not weights_file.is_file():
        raise EvoMergeInputError(f"{path}: missing {ADAPTER_WEIGHTS}")
    rank = int(cfg["r"])
    shapes = base.module_shapes()
    found: dict[str, dict[str, str]] = {}
    dtypes: dict[str, str] = {}
    try:
        with safe_open(str(weights_file), framework="numpy") as fh:
            for key in fh.keys():
                m = _KEY.match(key)
                if m is None:
                    raise EvoMergeInputError(
                        f"{path}: unsupported tensor {key!r} (only LoRA A/B of q,k,v,o,gate,up,down)"
                    )
                layer, _, proj, which = int(m[1]), m[2], m[3], m[4]
                if proj not in PROJECTIONS or layer >= base.num_hidden_layers:
                    raise EvoMergeInputError(f"{path}: tensor {key!r} names no module of the base model")
                info = fh.get_slice(key)
                shape, st_dtype = tuple(info.get_shape()), info.get_dtype()
                if st_dtype not in _ST_DTYPES:
                    raise EvoMergeInputError(f"{path}: tensor {key!r} has dtype {st_dtype}, expected a float")
                dtypes[key] = _ST_DTYPES[st_dtype]
                d_out, d_in = shapes[proj]
                want = (rank, d_in) if which == "A" else (d_out, rank)
                if shape != want:
                    if len(shape) != 2 or shape[0 if which == "A" else 1] != rank:
                        raise EvoMergeInputError(
                            f"{path}: rank mismatch in {key!r}: shape {shape}, adapter_config says r={rank}"
                        )
                    raise EvoMergeInputError(f"{path}: {key!r} has shape {shape}, the base model's {proj} needs {want}")
                found.setdefault(module_path(layer, proj), {})[which] = key
    except (SafetensorError, OSError, ValueError) as e:
        if isinstance(e, EvoMergeInputError):
            raise
        raise EvoMergeInputError(f"{weights_file}: unreadable safetensors ({e})") from None
    odd = sorted(m for m, ab in found.items() if len(ab) != 2)
    if odd:
        raise EvoMergeInputError(f"{path}: module {odd[0]} has only one of lora_A / lora_B")
    if not found:
        raise EvoMergeInputError(f"{path}: {ADAPTER_WEIGHTS} holds no LoRA tensors")
    half = sorted({d for d in dtypes.values() if d in ("float16", "bfloat16")})
    if len(half) > 1:
        raise EvoMergeInputError(f"{path}: mixes float16 and bfloat16 tensors")
    dtype = half[0] if half else max(dtypes.values(), key=lambda d: np.dtype(d).itemsize)
    keys = {m: (ab["A"], ab["B"]) for m, ab in found.items()}
    return AdapterHeader(path, rank, float(cfg["lora_alpha"]), bool(cfg.get("use_rslora", False)), keys, dtype)


def _read_tensor(fh, header: AdapterHeader, key: str) -> np.ndarray:
    t = fh.get_tensor(key)
    if not np.isfinite(t.astype(np.float32)).all():
        raise EvoMergeInputError(f"{header.path}: non-finite values (NaN/inf) in {key!r}")
    return t


def read_adapter(path: str | Path, base: ModelConfig) -> AdapterFile:
    """Read one PEFT adapter directory (float32 arrays) and check it against the base model."""
    header = scan_adapter(path, base)
    A: dict[str, np.ndarray] = {}
    B: dict[str, np.ndarray] = {}
    with safe_open(str(header.weights_file), framework="numpy") as fh:
        for m, (ka, kb) in header.keys.items():
            A[m] = _read_tensor(fh, header, ka).astype(np.float32)
            B[m] = _read_tensor(fh, header, kb).astype(np.float32)
    return AdapterFile(header.path, header.rank, header.lora_alpha, header.use_rslora, A, B)


def default_pool_dtype() -> str:
    """bfloat16 on accelerators, float32 on a CPU."""
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def check_pool_dtypes(headers: Sequence[AdapterHeader]) -> None:
    """A pool may not mix float16 and bfloat16 adapters: the error names the adapter that breaks it."""
    first_half = next((h for h in headers if h.dtype in ("float16", "bfloat16")), None)
    for h in headers:
        if first_half is not None and h.dtype in ("float16", "bfloat16") and h.dtype != first_half.dtype:
            raise EvoMergeInputError(f"{h.path}: dtype {h.dtype} mixes with {first_half.dtype} of "
                                     f"{first_half.path}: convert the pool to one half-precision dtype")


def stack_lazily(headers: Sequence[AdapterHeader], base: ModelConfig, dtype: str) -> LoraStack:
    """Stack the adapters module by module, reading each tensor straight into ``dtype``.

    For each module: ``out[i] = adapter_i's tensor`` (zeros when it lacks the module) in a host
    buffer of the target dtype, then one transfer to the device. Host peak: one module's stack.
    """
    if dtype not in POOL_DTYPES:
        raise EvoMergeInputError(f"pool dtype {dtype!r}, expected one of {', '.join(POOL_DTYPES)}")
    target = jnp.dtype(dtype)
    modules = sorted({m for h in headers for m in h.keys}, key=_module_order)
    r, n = headers[0].rank, len(headers)
    for h in headers:
        for m in modules:
            if m not in h.keys:
                log.warning("adapter %s has no %s: it contributes zero there", h.path, m)
    A, B = {}, {}
    with ExitStack() as files:
        handles = [files.enter_context(safe_open(str(h.weights_file), framework="numpy")) for h in headers]
        for m in modules:
            d_out, d_in = base.module_shapes()[m.rsplit(".", 1)[1]]
            buf_a, buf_b = np.zeros((n, r, d_in), target), np.zeros((n, d_out, r), target)
            for i, (h, fh) in enumerate(zip(headers, handles, strict=True)):
                if m in h.keys:
                    buf_a[i] = _read_tensor(fh, h, h.keys[m][0])
                    buf_b[i] = _read_tensor(fh, h, h.keys[m][1])
            for buf, which in ((buf_a, 0), (buf_b, 1)):
                bad = np.flatnonzero(~np.isfinite(buf.reshape(n, -1).astype(np.float32)).all(axis=1))
                if bad.size:
                    h = headers[int(bad[0])]
                    raise EvoMergeInputError(f"{h.path}: {h.keys[m][which]!r} overflows {dtype}")
            A[m], B[m] = jax.device_put(buf_a), jax.device_put(buf_b)
    scale = jnp.asarray([h.scale for h in headers], jnp.float32)
    return LoraStack(A=A, B=B, scale=scale)


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


def _module_order(m: str) -> tuple[int, int]:
    _, layer, _, proj = m.split(".")
    return int(layer), PROJECTIONS.index(proj)


def load_pool(spec: str | Path | Iterable[str | Path], base: ModelConfig, dtype: str | None = None) -> LoraPool:
    """Validate PEFT adapter directories (a list of paths or a glob) and stack them lazily.

    ``dtype``: the pool's dtype on the device (``float32``, ``bfloat16``, ``float16``); None picks
    ``default_pool_dtype()``. A pool mixing float16 and bfloat16 adapters is an error.
    """
    dirs = resolve_adapter_dirs(spec)
    if not dirs:
        raise EvoMergeInputError("adapter pool is empty")
    headers = [scan_adapter(d, base) for d in dirs]
    ref = headers[0]
    for ad in headers[1:]:
        if ad.rank != ref.rank:
            raise EvoMergeInputError(f"{ad.path}: rank mismatch: r={ad.rank}, but {ref.path} has r={ref.rank}")
        if ad.use_rslora != ref.use_rslora:
            raise EvoMergeInputError(f"{ad.path}: use_rslora={ad.use_rslora} differs from {ref.path}")
    check_pool_dtypes(headers)
    names = [d.name for d in dirs]
    if len(set(names)) != len(names):
        names = [str(d) for d in dirs]  # fall back to full paths when basenames collide
    return LoraPool(
        names=tuple(names),
        paths=tuple(dirs),
        stack=stack_lazily(headers, base, dtype or default_pool_dtype()),
        rank=ref.rank,
        lora_alpha=tuple(ad.lora_alpha for ad in headers),
        use_rslora=ref.use_rslora,
    )
