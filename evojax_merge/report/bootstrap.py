"""The paired bootstrap over test records inside one world: how much a gap moves with the test set.

Each test record ``i`` of task ``t`` carries its counts ``c_i = (tp_i, pred_i, gold_i)`` for each method
and search seed (report/records.py reads them from ``predictions/<task>/<method>.jsonl``). Micro F1 of a
multiset of records is

    F1 = 2 Σ tp / (Σ pred + Σ gold)     (= 2PR / (P + R); 0 when the denominator is 0)

and exact match is the case ``c_i = (correct_i, 1, 1)``. One resample ``b`` draws, per task in sorted
order, ``R_t`` record indices with replacement (``rng.integers(0, R_t, (B, R_t))`` from
``numpy.random.default_rng(seed)``), the **same indices for both methods and every seed of the world**,
and computes

    d*_b = 100 · mean_t [ mean_s F1(a_s, t, b) - mean_s F1(b_s, t, b) ]

(the per-task F1 averaged over tasks, as results.json's ``f1``; the mean over the world's seeds). The
bootstrap SE is the sample SD (ddof 1) of ``d*_1..d*_B``, and the 95% percentile interval is their 2.5th
and 97.5th percentiles (``numpy.percentile``, linear). Pure functions, no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

N_BOOT = 1000  # resamples; a knob of build_report and the CLI (--bootstrap)
BOOT_SEED = 0


@dataclasses.dataclass(frozen=True)
class BootResult:
    diff: float  # a - b on the test records themselves (x100)
    se: float  # SD of the resampled differences
    lo: float  # 2.5th percentile
    hi: float  # 97.5th percentile
    n_boot: int
    records: int  # test records, all tasks together


def micro_f1(sums: np.ndarray) -> np.ndarray:
    """``2 tp / (pred + gold)`` over the last axis ``(tp, pred, gold)``; 0 where the denominator is 0."""
    sums = np.asarray(sums, np.float64)
    den = sums[..., 1] + sums[..., 2]
    return np.divide(2 * sums[..., 0], den, out=np.zeros_like(den), where=den > 0)


def _as_seeds(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"counts must be [records, 3] or [seeds, records, 3], got shape {x.shape}")
    return x


def paired_bootstrap(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], n_boot: int = N_BOOT,
                     seed: int = BOOT_SEED, level: float = 0.95) -> BootResult:
    """The paired bootstrap of ``a - b`` (see the module docstring).

    ``a[task]``, ``b[task]``: per-record counts ``[records, 3]``, or ``[seeds, records, 3]`` for the
    search seeds of one world (the same records, in the same order, for both methods and every seed).
    """
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")
    if sorted(a) != sorted(b) or not a:
        raise ValueError(f"the two methods must have the same tasks: {sorted(a)} vs {sorted(b)}")
    rng = np.random.default_rng(seed)
    point, star, records = [], [], 0
    for task in sorted(a):
        xa, xb = _as_seeds(a[task]), _as_seeds(b[task])
        if xa.shape != xb.shape:
            raise ValueError(f"{task}: counts of shape {xa.shape} and {xb.shape} are not paired")
        r = xa.shape[1]
        if r == 0:
            raise ValueError(f"{task}: no test records")
        records += r
        idx = rng.integers(0, r, size=(n_boot, r))
        weights = np.bincount((idx + r * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * r)
        weights = weights.reshape(n_boot, r).astype(np.float64)  # how often each record is drawn
        point.append(micro_f1(xa.sum(1)).mean() - micro_f1(xb.sum(1)).mean())
        fa = micro_f1(np.einsum("br,srk->sbk", weights, xa)).mean(0)
        fb = micro_f1(np.einsum("br,srk->sbk", weights, xb)).mean(0)
        star.append(fa - fb)
    d = 100 * np.mean(star, axis=0)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(d, [tail, 100 - tail])
    return BootResult(float(100 * np.mean(point)), float(d.std(ddof=1)), float(lo), float(hi), n_boot, records)


Counts = Mapping[tuple, Mapping[str, Mapping[str, np.ndarray]]]  # (world, seed) -> label -> task -> [R, 3]


class WorldBootstrap:
    """``boot(a, b, replicates) -> {world: BootResult}`` over the counts of each world's replicates.

    A world is left out when a replicate of it has no counts for ``a`` or ``b``, or their tasks differ.
    Results are cached per (a, b, replicates of the world); every world uses the same ``seed``.
    """

    def __init__(self, counts: Counts, n_boot: int = N_BOOT, seed: int = BOOT_SEED):
        self.counts, self.n_boot, self.seed = counts, n_boot, seed
        self._cache: dict[tuple, BootResult | None] = {}

    def world(self, a: str, b: str, reps: Sequence[tuple]) -> BootResult | None:
        key = (a, b, tuple(reps))
        if key not in self._cache:
            self._cache[key] = self._compute(a, b, reps)
        return self._cache[key]

    def _compute(self, a: str, b: str, reps: Sequence[tuple]) -> BootResult | None:
        per = [self.counts.get(r, {}) for r in reps]
        if not per or any(a not in p or b not in p for p in per):
            return None
        tasks = sorted(per[0][a])
        if any(sorted(p[a]) != tasks or sorted(p[b]) != tasks for p in per):
            return None
        try:
            return paired_bootstrap({t: np.stack([p[a][t] for p in per]) for t in tasks},
                                    {t: np.stack([p[b][t] for p in per]) for t in tasks}, self.n_boot, self.seed)
        except ValueError:  # records that differ between seeds or methods: not paired, no bootstrap
            return None

    def __call__(self, a: str, b: str, reps: Sequence[tuple]) -> dict:
        worlds: dict = {}
        for r in reps:
            worlds.setdefault(r[0], []).append(r)
        out = {}
        for w, rs in worlds.items():
            got = self.world(a, b, rs)
            if got is not None:
                out[w] = got
        return out


BootFn = Callable[[str, str, Sequence[tuple]], dict]
