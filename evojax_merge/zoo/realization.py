"""What a built world is: the checksum of its weights, what its cache key can promise, the shipped realizations.

A world built from a seed is trained by XLA, and XLA emits other floating-point code on another CPU
(vector width, fused multiply-adds, reduction order): the same recipe and code build other weights,
and after thousands of training steps another world (issue 23: one digest, three gates on one
machine under three ``--xla_cpu_max_isa`` settings). So:

- a **cache key** hashes the recipe, the code and :func:`platform_fingerprint` (the jax/jaxlib
  versions, the device, the CPU's model and vector ISA, ``XLA_FLAGS``): a cache shared by several
  machines (an NFS home on a cluster) never hands one machine's realization to another as if it were
  its own;
- every **manifest** records :func:`weights_checksum` of what was written, and a cached world whose
  files no longer match it is refused;
- the **canonical realizations** ship with the package (``zoo/canonical/<kind>-<name>/``, a few MB):
  a world whose recipe equals a shipped one's is loaded from the package, on every machine the same
  bits, instead of being built (``world.canonical=false`` builds it). The README's main job runs on
  one of them, so its table is the same everywhere up to the search's own floating point.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from evojax_merge.errors import EvoMergeInputError

CANONICAL_ROOT = Path(__file__).resolve().with_name("canonical")
WEIGHT_FILES = "*.safetensors"
_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_fp16",
              "avx_vnni", "amx_tile", "amx_bf16", "asimd", "sve", "sve2")


def weights_checksum(root: str | Path) -> str:
    """SHA-256 over every ``*.safetensors`` under ``root``: its path relative to ``root``, then its bytes."""
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(root.rglob(WEIGHT_FILES)):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def _cpu() -> dict:
    """The CPU's model name and the vector-ISA flags XLA may use (``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return {"model": platform.processor() or platform.machine(), "isa": []}
    fields = dict(line.split(":", 1) for line in text.splitlines()[:40] if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    model = fields.get("model name") or fields.get("CPU part", "")
    return {"model": model, "isa": [f for f in _ISA_FLAGS if f in flags]}


@lru_cache(maxsize=1)
def _devices() -> str:
    import jax

    return ",".join(sorted({d.device_kind for d in jax.devices()}))


def platform_fingerprint() -> dict:
    """What besides the recipe and the code decides a build's bits; part of every built world's cache key."""
    import jax
    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "devices": _devices(), "cpu": _cpu(),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def config_blob(config: dict) -> str:
    """A recipe (``dataclasses.asdict`` of a build config) as canonical JSON: tuples and lists alike."""
    return json.dumps(config, sort_keys=True, default=list)


def verify_weights(root: Path, manifest: dict) -> None:
    """A one-line error naming the manifest when ``root``'s weights are not the ones it recorded."""
    want = manifest.get("weights_sha256")
    if want is None:
        return  # built before checksums were recorded
    got = weights_checksum(root)
    if got != want:
        raise EvoMergeInputError(f"{root / 'manifest.json'}: the weights' SHA-256 is {got[:12]}, the manifest "
                                 f"records {want[:12]} (a changed or partial copy; delete the directory to rebuild)")


def canonical_dir(kind: str, config: dict, root: Path = CANONICAL_ROOT) -> Path | None:
    """The shipped realization of ``kind`` whose recipe equals ``config`` (checksum verified), else None."""
    if not root.is_dir():
        return None
    want = config_blob(config)
    for d in sorted(root.glob(f"{kind}-*")):
        manifest_path = d / "manifest.json"
        if not manifest_path.is_file():
            continue
        manifest = json.loads(manifest_path.read_text())
        if config_blob(manifest["config"]) == want:
            if "weights_sha256" not in manifest:
                raise EvoMergeInputError(f"{manifest_path}: a shipped world without weights_sha256")
            verify_weights(d, manifest)
            return d
    return None


def ship(zoo_dir: str | Path, name: str, root: Path = CANONICAL_ROOT) -> Path:
    """Copy the built world ``zoo_dir`` into the package as ``root/<kind>-<name>`` (its manifest's weights
    checksum verified first and again after the copy). Returns the shipped directory."""
    import shutil

    src = Path(zoo_dir)
    manifest = json.loads((src / "manifest.json").read_text())
    if "weights_sha256" not in manifest:
        raise EvoMergeInputError(f"{src / 'manifest.json'}: no weights_sha256 (built before checksums were recorded)")
    verify_weights(src, manifest)
    kind = "ie" if src.name.startswith("iezoo-") else src.name.split("-", 1)[0]
    dest = root / f"{kind}-{name}"
    if dest.exists():
        raise EvoMergeInputError(f"{dest}: already shipped (remove it first)")
    tmp = root / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    verify_weights(tmp, manifest)
    tmp.rename(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    """``python -m evojax_merge.zoo.realization ship ZOO_DIR NAME`` | ``checksum DIR`` | ``platform``."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["ship"] and len(args) == 3:
        print(ship(args[1], args[2]))
    elif args[:1] == ["checksum"] and len(args) == 2:
        print(weights_checksum(args[1]))
    elif args == ["platform"]:
        print(json.dumps(platform_fingerprint(), indent=2))
    else:
        print("usage: python -m evojax_merge.zoo.realization ship ZOO_DIR NAME | checksum DIR | platform",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
