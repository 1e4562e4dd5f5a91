"""Statistics over seeds for the report: mean ± std per method and paired gaps marked at two SE.

For the values ``x_1..x_n`` of one method over n seeds (F1 x100):

    mean = Σ x_s / n
    std  = sqrt(Σ (x_s - mean)² / (n - 1))          (sample std; undefined for n = 1)
    SE   = std / sqrt(n)

A gap between methods a and b is paired over the seeds both ran (same seed: same targets, pools and
validation subset), ``d_s = a_s - b_s``:

    gap = mean(d),  SE(gap) = std(d) / sqrt(n),  marked when n >= 2 and |gap| > 2 SE(gap)

Pure functions, no I/O.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

BEST_SINGLE = "best_single"
_PARAM = re.compile(r"@([A-Za-z]+)=([^@]+)")


@dataclasses.dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # NaN when n < 2
    n: int

    @property
    def se(self) -> float:
        return self.std / math.sqrt(self.n) if self.n >= 2 else math.nan


SE_ZERO = 1e-6  # F1 x 100: a standard error below this is float rounding of a gap that does not vary


@dataclasses.dataclass(frozen=True)
class Gap:
    """``a - b`` paired over their common seeds."""

    a: str
    b: str
    mean: float
    se: float  # NaN when n < 2
    n: int

    @property
    def marked(self) -> bool:
        """Beyond two SE, and the gap varies over the seeds: a difference that is the same on every seed
        (SE 0 up to rounding, rows the search seed does not move) is no evidence of significance, so it is never
        marked."""
        return self.n >= 2 and self.se > SE_ZERO and abs(self.mean) > 2 * self.se


@dataclasses.dataclass(frozen=True)
class LabelStats:
    label: str
    f1: Summary
    precision: Summary
    recall: Summary
    per_seed: dict[int, float]  # seed -> F1 x100
    per_target: dict[str, Summary]
    vs_best_single: Gap | None


def summarize(values: Sequence[float]) -> Summary:
    """Mean and sample std (ddof 1) of ``values``; std is NaN for a single value."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        raise ValueError("summarize: no values")
    std = float(x.std(ddof=1)) if x.size >= 2 else math.nan
    return Summary(float(x.mean()), std, int(x.size))


def paired_gap(a_label: str, a: Mapping[int, float], b_label: str, b: Mapping[int, float]) -> Gap | None:
    """``a - b`` over the seeds in both; ``None`` when they share no seed."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    s = summarize([a[k] - b[k] for k in seeds])
    return Gap(a_label, b_label, s.mean, s.se, s.n)


def split_label(label: str) -> tuple[str, dict[str, str]]:
    """``"evo_merging[no_scale]@N=5@V=25"`` -> ``("evo_merging[no_scale]", {"N": "5", "V": "25"})``."""
    base = label.split("@", 1)[0]
    return base, dict(_PARAM.findall(label[len(base):]))


def suffix(label: str) -> str:
    """The ``@N=..@V=..`` part of a label: methods are compared within the same suffix."""
    return label[len(split_label(label)[0]):]


def label_stats(by_seed: Mapping[int, Mapping[str, Mapping]]) -> dict[str, LabelStats]:
    """``{seed: {label: {f1, precision, recall, per_task: {target: {f1}}}}}`` (fractions) -> stats x100.

    Each label is compared with ``best_single`` carrying the same ``@`` suffix, when there is one.
    """
    labels = sorted({label for methods in by_seed.values() for label in methods})

    def per_seed(label: str, key: str) -> dict[int, float]:
        return {s: 100 * float(m[label][key]) for s, m in sorted(by_seed.items()) if label in m}

    out: dict[str, LabelStats] = {}
    for label in labels:
        f1 = per_seed(label, "f1")
        targets: dict[str, list[float]] = {}
        for methods in by_seed.values():
            for target, cell in methods.get(label, {}).get("per_task", {}).items():
                targets.setdefault(target, []).append(100 * float(cell["f1"]))
        reference = BEST_SINGLE + suffix(label)
        gap = None
        if label != reference and reference in labels:
            gap = paired_gap(label, f1, reference, per_seed(reference, "f1"))
        out[label] = LabelStats(label, summarize(list(f1.values())),
                                summarize(list(per_seed(label, "precision").values())),
                                summarize(list(per_seed(label, "recall").values())), f1,
                                {t: summarize(v) for t, v in sorted(targets.items())}, gap)
    return out


def top_two_gaps(stats: Mapping[str, LabelStats]) -> dict[str, Gap]:
    """Per ``@`` suffix: the best method by mean F1 minus the second best, paired over seeds."""
    groups: dict[str, list[LabelStats]] = {}
    for s in stats.values():
        groups.setdefault(suffix(s.label), []).append(s)
    gaps = {}
    for key, members in sorted(groups.items()):
        if len(members) < 2:
            continue
        first, second = sorted(members, key=lambda s: (-s.f1.mean, s.label))[:2]
        gap = paired_gap(first.label, first.per_seed, second.label, second.per_seed)
        if gap is not None:
            gaps[key] = gap
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


def cost_stats(by_seed: Mapping[int, Mapping[str, Mapping]]) -> dict[str, dict[str, Summary]]:
    """``{label: {key: Summary over seeds}}`` for the :data:`COST_KEYS` a label's cells carry.

    Each seed's value is the mean over its targets (validation CE, search wall seconds, examples
    pushed through a forward or a backward pass); labels without any of them are left out.
    """
    values: dict[str, dict[str, list[float]]] = {}
    for methods in by_seed.values():
        for label, res in methods.items():
            cells = list(res.get("per_task", {}).values())
            for key in COST_KEYS:
                got = [float(c[key]) for c in cells if isinstance(c.get(key), int | float)
                       and not isinstance(c.get(key), bool) and math.isfinite(c[key])]
                if got:
                    values.setdefault(label, {}).setdefault(key, []).append(float(np.mean(got)))
    return {label: {k: summarize(v) for k, v in keys.items()} for label, keys in sorted(values.items())}
