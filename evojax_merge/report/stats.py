"""Statistics over replicates for the report: mean ± std per method and paired gaps with 95% t-intervals.

**The replicate is (world, search seed).** The unit of replication is the *world*: a method's value on
world w is the mean over that world's search seeds, ``x_w = Σ_s x_ws / n_w``. With one world the unit is
the search seed. For the K unit values of one method (F1 x100):

    mean = Σ x_u / K,   std = sqrt(Σ (x_u - mean)² / (K - 1))   (sample std; undefined for K = 1)

**A gap** ``a - b`` is paired inside each replicate both ran, ``d_ws = a_ws - b_ws``, then taken per unit
(``d_w`` = the mean of ``d_ws`` over world w's common seeds; with one world ``d_s``), and over the K units:

    mean = Σ d_u / K,   sd = sqrt(Σ (d_u - mean)² / (K - 1)),   SE = sd / sqrt(K)
    K >= 2 worlds:             half = t_{0.975, K-1} · sd / sqrt(K)
    1 world, n >= 2 seeds:     half = sqrt((t_{0.975, n-1} · sd / sqrt(n))² + (1.96 · se_boot)²)
    1 replicate:               no interval (nothing is known of the search seeds' or worlds' spread)

and the 95% interval is ``mean ± half`` (``t`` from ``scipy.stats.t``). Each world draws its own test
records, so the spread over K >= 2 worlds already holds the test-set variance. Inside one world the test
set is fixed, so the t term covers the search seeds only and ``se_boot`` adds the test records: the SE
of the world's paired difference under the paired bootstrap over its test records (report/bootstrap.py;
the two sources are independent, so their variances add). Without predictions the t term stands alone.

A gap is **marked** when it has an interval, the interval excludes 0, and its spread is not zero
(``half > SE_ZERO``): a difference that is the same on every replicate and every resample is no evidence.

Pure functions, no I/O.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
from scipy import stats as sps

BEST_SINGLE = "best_single"
_PARAM = re.compile(r"@([A-Za-z]+)=([^@]+)")
LEVEL = 0.95
Z = 1.959963984540054  # the standard normal's 0.975 quantile (the bootstrap term's 1.96)
SE_ZERO = 1e-6  # F1 x 100: a spread below this is float rounding of a gap that does not vary

Replicate = tuple[int | None, int]  # (world seed, or None when the run did not record it; search seed)
BootFn = Callable[[str, str, Sequence[Replicate]], Mapping[int | None, object]]


def replicate(key: int | Replicate) -> Replicate:
    """A replicate key; a bare search seed (older callers, one world) is ``(None, seed)``."""
    return key if isinstance(key, tuple) else (None, int(key))


def rep_sort_key(rep: Replicate) -> tuple:
    world, seed = rep
    return (world is not None, world if world is not None else 0, seed)


@dataclasses.dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # NaN when n < 2
    n: int

    @property
    def se(self) -> float:
        return self.std / math.sqrt(self.n) if self.n >= 2 else math.nan


def t_quantile(k: int, level: float = LEVEL) -> float:
    """``t_{(1 + level) / 2, k - 1}``; NaN for k < 2."""
    return float(sps.t.ppf(0.5 + level / 2, k - 1)) if k >= 2 else math.nan


def t_half(sd: float, k: int, level: float = LEVEL) -> float:
    """The t-interval's half width ``t_{0.975, k-1} · sd / sqrt(k)``; NaN for k < 2."""
    return t_quantile(k, level) * sd / math.sqrt(k) if k >= 2 else math.nan


def combined_half(t_part: float, se_boot: float) -> float:
    """``sqrt(t_part² + (1.96 · se_boot)²)``: a t half width and a bootstrap SE of independent sources."""
    return math.sqrt(t_part ** 2 + (Z * se_boot) ** 2)


@dataclasses.dataclass(frozen=True)
class Gap:
    """``a - b`` paired inside each replicate, pooled over K units (worlds, or seeds of one world)."""

    a: str
    b: str
    mean: float
    sd: float  # SD of the per-unit differences; NaN when n < 2
    n: int  # units
    unit: str = "seed"  # "world" or "seed"
    half: float = math.nan  # the 95% interval's half width; NaN: no interval
    t_part: float = math.nan  # t_{0.975, n-1} · sd / sqrt(n)
    per_unit: dict = dataclasses.field(default_factory=dict)  # unit -> d_u
    boot: dict = dataclasses.field(default_factory=dict)  # world -> BootResult (report/bootstrap.py)
    replicates: tuple = ()  # the (world, seed) pairs both ran

    @property
    def se(self) -> float:
        return self.sd / math.sqrt(self.n) if self.n >= 2 else math.nan

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and math.isfinite(self.half)

    @property
    def lo(self) -> float:
        return self.mean - self.half if self.has_interval else math.nan

    @property
    def hi(self) -> float:
        return self.mean + self.half if self.has_interval else math.nan

    @property
    def varies(self) -> bool:
        """The interval has a spread: some replicate or test resample moves the gap."""
        return self.has_interval and self.half > SE_ZERO

    @property
    def marked(self) -> bool:
        """The 95% interval excludes 0, and the gap varies (a gap that is the same on every replicate and
        resample, spread 0 up to rounding, is no evidence of significance and is never marked)."""
        return self.varies and (self.lo > 0 or self.hi < 0)

    @property
    def boot_se(self) -> float:
        """The bootstrap SE inside the one world (used in ``half`` only when n counts seeds); NaN otherwise."""
        if self.unit != "seed" or len(self.boot) != 1:
            return math.nan
        return float(next(iter(self.boot.values())).se)


@dataclasses.dataclass(frozen=True)
class LabelStats:
    label: str
    f1: Summary
    precision: Summary
    recall: Summary
    per_replicate: dict[Replicate, float]  # (world, seed) -> F1 x100
    per_target: dict[str, Summary]
    vs_best_single: Gap | None
    per_unit: dict = dataclasses.field(default_factory=dict)  # world (or seed) -> F1 x100
    unit: str = "seed"

    @property
    def per_seed(self) -> dict[int, float]:
        """F1 by search seed, when there is one world (older callers); keyed by replicate otherwise."""
        worlds = {w for w, _ in self.per_replicate}
        if len(worlds) <= 1:
            return {s: v for (_, s), v in self.per_replicate.items()}
        return dict(self.per_replicate)


def summarize(values: Sequence[float]) -> Summary:
    """Mean and sample std (ddof 1) of ``values``; std is NaN for a single value."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        raise ValueError("summarize: no values")
    std = float(x.std(ddof=1)) if x.size >= 2 else math.nan
    return Summary(float(x.mean()), std, int(x.size))


def several_worlds(reps: Sequence[Replicate]) -> bool:
    return len({w for w, _ in reps}) > 1


def unit_values(values: Mapping[Replicate, float], by_world: bool) -> dict[Hashable, float]:
    """Per unit: a world's value is the mean over its seeds (``by_world``); else the replicates by seed."""
    reps = sorted(values, key=rep_sort_key)
    if not by_world:
        return {s: float(values[(w, s)]) for w, s in reps}
    out: dict[Hashable, list[float]] = {}
    for w, s in reps:
        out.setdefault(w, []).append(float(values[(w, s)]))
    return {w: float(np.mean(v)) for w, v in out.items()}


def paired_gap(a_label: str, a: Mapping, b_label: str, b: Mapping, boot: Mapping | None = None,
               by_world: bool | None = None) -> Gap | None:
    """``a - b`` over the replicates in both (see the module docstring); ``None`` when they share none.

    Keys are ``(world, seed)`` replicates (a bare int is a seed of one world). ``boot``: world -> a
    bootstrap result with ``se`` (report/bootstrap.py), used in the interval when there is one world.
    ``by_world``: pool by world; ``None`` decides from the replicates both ran.
    """
    a = {replicate(k): v for k, v in a.items()}
    b = {replicate(k): v for k, v in b.items()}
    reps = sorted(set(a) & set(b), key=rep_sort_key)
    if not reps:
        return None
    by_world = several_worlds(reps) if by_world is None else by_world
    d = unit_values({r: a[r] - b[r] for r in reps}, by_world)
    s = summarize(list(d.values()))
    boot = dict(boot or {})
    t_part = t_half(s.std, s.n)
    half = t_part
    if not by_world and s.n >= 2 and len(boot) == 1:
        half = combined_half(t_part, float(next(iter(boot.values())).se))
    return Gap(a_label, b_label, s.mean, s.std, s.n, "world" if by_world else "seed", half, t_part, d, boot,
               tuple(reps))


def world_differences(g: Gap) -> list[tuple[int | None, float, object]]:
    """``(world, d_w, bootstrap result or None)`` per world of a gap (one row when it pools seeds)."""
    if g.unit == "world":
        return [(w, d, g.boot.get(w)) for w, d in g.per_unit.items()]
    world = g.replicates[0][0] if g.replicates else None
    return [(world, g.mean, g.boot.get(world))]


def split_label(label: str) -> tuple[str, dict[str, str]]:
    """``"evo_merging[no_scale]@N=5@V=25"`` -> ``("evo_merging[no_scale]", {"N": "5", "V": "25"})``."""
    base = label.split("@", 1)[0]
    return base, dict(_PARAM.findall(label[len(base):]))


def suffix(label: str) -> str:
    """The ``@N=..@V=..`` part of a label: methods are compared within the same suffix."""
    return label[len(split_label(label)[0]):]


GapFn = Callable[[str, str], "Gap | None"]


def gap_function(stats: Mapping[str, LabelStats], boot: BootFn | None = None,
                 by_world: bool | None = None) -> GapFn:
    """``gap(a, b)``: the paired gap of two labels of ``stats``, with the test-set bootstrap when given."""
    if by_world is None:
        by_world = several_worlds([r for s in stats.values() for r in s.per_replicate])

    def gap(a: str, b: str) -> Gap | None:
        if a not in stats or b not in stats:
            return None
        common = sorted(set(stats[a].per_replicate) & set(stats[b].per_replicate), key=rep_sort_key)
        got = boot(a, b, common) if (boot is not None and common) else None
        return paired_gap(a, stats[a].per_replicate, b, stats[b].per_replicate, got, by_world)

    return gap


def label_stats(by_replicate: Mapping, boot: BootFn | None = None) -> dict[str, LabelStats]:
    """``{(world, seed): {label: {f1, precision, recall, per_task: {target: {f1}}}}}`` (fractions) -> x100.

    A bare int key is a search seed of one world. Each label is compared with ``best_single`` carrying the
    same ``@`` suffix, when there is one; ``boot`` adds the test-set bootstrap to those gaps.
    """
    by_rep = {replicate(k): v for k, v in by_replicate.items()}
    by_rep = dict(sorted(by_rep.items(), key=lambda kv: rep_sort_key(kv[0])))
    by_world = several_worlds(list(by_rep))
    labels = sorted({label for methods in by_rep.values() for label in methods})

    def values(label: str, key: str) -> dict[Replicate, float]:
        return {r: 100 * float(m[label][key]) for r, m in by_rep.items() if label in m}

    def summary(per_rep: Mapping[Replicate, float]) -> tuple[Summary, dict]:
        units = unit_values(per_rep, by_world)
        return summarize(list(units.values())), units

    out: dict[str, LabelStats] = {}
    for label in labels:
        f1 = values(label, "f1")
        targets: dict[str, dict[Replicate, float]] = {}
        for r, methods in by_rep.items():
            for target, cell in methods.get(label, {}).get("per_task", {}).items():
                targets.setdefault(target, {})[r] = 100 * float(cell["f1"])
        f1_summary, units = summary(f1)
        out[label] = LabelStats(label, f1_summary, summary(values(label, "precision"))[0],
                                summary(values(label, "recall"))[0], f1,
                                {t: summary(v)[0] for t, v in sorted(targets.items())}, None, units,
                                "world" if by_world else "seed")
    gap = gap_function(out, boot, by_world)
    for label, s in out.items():
        reference = BEST_SINGLE + suffix(label)
        if label != reference and reference in out:
            out[label] = dataclasses.replace(s, vs_best_single=gap(label, reference))
    return out


def top_two_gaps(stats: Mapping[str, LabelStats], gap: GapFn | None = None) -> dict[str, Gap]:
    """Per ``@`` suffix: the best method by mean F1 minus the second best, paired inside the replicates."""
    gap = gap or gap_function(stats)
    groups: dict[str, list[LabelStats]] = {}
    for s in stats.values():
        groups.setdefault(suffix(s.label), []).append(s)
    gaps = {}
    for key, members in sorted(groups.items()):
        if len(members) < 2:
            continue
        first, second = sorted(members, key=lambda s: (-s.f1.mean, s.label))[:2]
        g = gap(first.label, second.label)
        if g is not None:
            gaps[key] = g
    return gaps


def size_series(stats: Mapping[str, LabelStats], param: str) -> dict[str, list[tuple[float, Summary]]]:
    """Labels carrying ``@<param>=x`` as curves: ``{label without that param: [(x, F1 summary), ...]}``."""
    series: dict[str, list[tuple[float, Summary]]] = {}
    for s in stats.values():
        base, params = split_label(s.label)
        if param not in params:
            continue
        try:
            x = float(params[param])
        except ValueError:
            continue
        rest = "".join(f"@{k}={v}" for k, v in params.items() if k != param)
        series.setdefault(base + rest, []).append((x, s.f1))
    return {k: sorted(v, key=lambda p: p[0]) for k, v in sorted(series.items())}


COST_KEYS = ("val_ce", "wall_s", "forward_examples", "backward_examples")


def cost_stats(by_replicate: Mapping) -> dict[str, dict[str, Summary]]:
    """``{label: {key: Summary over units}}`` for the :data:`COST_KEYS` a label's cells carry.

    Each replicate's value is the mean over its targets (validation CE, search wall seconds, examples
    pushed through a forward or a backward pass), then per unit as for F1; labels without any are left out.
    """
    by_rep = {replicate(k): v for k, v in by_replicate.items()}
    by_world = several_worlds(list(by_rep))
    values: dict[str, dict[str, dict[Replicate, float]]] = {}
    for r, methods in by_rep.items():
        for label, res in methods.items():
            cells = list(res.get("per_task", {}).values())
            for key in COST_KEYS:
                got = [float(c[key]) for c in cells if isinstance(c.get(key), int | float)
                       and not isinstance(c.get(key), bool) and math.isfinite(c[key])]
                if got:
                    values.setdefault(label, {}).setdefault(key, {})[r] = float(np.mean(got))
    return {label: {k: summarize(list(unit_values(v, by_world).values())) for k, v in keys.items()}
            for label, keys in sorted(values.items())}
