"""What the paper predicts if Evo-Merging works, checked on one experiment's replicates (issue 11, "Honesty").

Each claim is one or more inequalities on paired gaps (report/stats.py: paired inside each (world,
seed), pooled per world, a 95% interval), within one ``@`` suffix group:

1. ``evo_merging - best_single >= 10``;
2. ``evo_merging > lorahub > max(task_arithmetic, ties)``: ``evo - lorahub > 0`` and ``lorahub - b > 0``
   for each of TA and TIES that ran;
3. among the ablations (``method=ablation``'s labels), ``evo_no_scale`` is the worst:
   ``evo_no_scale - evo_no_denoise < 0`` and ``evo_no_scale - evo_no_sign_flip < 0``.

One inequality ``gap R c`` (R one of ``>=, >, <=, <``) is **held** when its whole 95% interval
``[lo, hi]`` satisfies it, **not held** when no point of the interval does, else **undetermined**; it is
undetermined too when the gap has no interval (one replicate) or no spread (``half <= SE_ZERO``: a gap the
same on every replicate and resample says nothing of another world or test set). A claim is held when
all its inequalities are, not held when any is not, else undetermined.

Across two experiments, :func:`check_distractor_cost` tests the fourth on the id and distractors
tables: the change ``distractors - id`` per method, paired inside the replicates both ran (no test-set
bootstrap across tables), is ``>= -3`` for Evo-Merging and ``<= -10`` for both task arithmetic and
TIES. Pure functions, no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from evojax_merge.report.stats import BEST_SINGLE, Gap, GapFn, LabelStats, gap_function, paired_gap, suffix

EVO, LORAHUB = "evo_merging", "lorahub"
BASELINES = ("task_arithmetic", "ties")
ABLATIONS = ("evo_no_scale", "evo_no_denoise", "evo_no_sign_flip")  # conf/method/<label>.yaml
EVO_MIN_GAIN = 10.0  # F1 x100
EVO_MAX_COST, BASELINE_MIN_COST = 3.0, 10.0  # F1 x100
EPS = 1e-9  # F1 x100 is computed from fractions: 100 * 0.4 - 100 * 0.31 is 8.999999999999996
HELD, NOT_HELD, UNDETERMINED = "held", "not held", "undetermined"


@dataclasses.dataclass(frozen=True)
class Part:
    """One inequality ``gap <relation> threshold`` of a claim."""

    gap: Gap | None
    relation: str  # ">=", ">", "<=", "<"
    threshold: float

    @property
    def verdict(self) -> str:
        return part_verdict(self.gap, self.relation, self.threshold)


@dataclasses.dataclass(frozen=True)
class Prediction:
    claim: str
    verdict: str  # HELD, NOT_HELD or UNDETERMINED
    evidence: str
    parts: tuple[Part, ...] = ()
    key: str = ""  # a short name for the claim's figure

    @property
    def held(self) -> bool:
        return self.verdict == HELD


def part_verdict(gap: Gap | None, relation: str, threshold: float) -> str:
    """Held when all of ``[lo, hi]`` satisfies ``gap <relation> threshold``, not held when none of it
    does, else (or without an interval with a spread) undetermined."""
    if gap is None or not gap.varies:
        return UNDETERMINED
    lo, hi, t = gap.lo, gap.hi, threshold
    held, not_held = {">=": (lo >= t - EPS, hi < t - EPS), ">": (lo > t + EPS, hi <= t + EPS),
                      "<=": (hi <= t + EPS, lo > t + EPS), "<": (hi < t - EPS, lo >= t - EPS)}[relation]
    return HELD if held else NOT_HELD if not_held else UNDETERMINED


def combine(verdicts: Sequence[str]) -> str:
    """All held: held; any not held: not held; else undetermined."""
    if any(v == NOT_HELD for v in verdicts):
        return NOT_HELD
    return HELD if verdicts and all(v == HELD for v in verdicts) else UNDETERMINED


def interval_text(g: Gap) -> str:
    """``+1.23 [-0.40, +2.86]``: the pooled mean difference and its 95% interval (``+1.23`` without one)."""
    if not g.has_interval:
        return f"{g.mean:+.2f}"
    return f"{g.mean:+.2f} [{g.lo:+.2f}, {g.hi:+.2f}]"


def _units(g: Gap) -> str:
    return f"{g.n} {g.unit}{'s' * (g.n != 1)}"


def part_text(p: Part) -> str:
    if p.gap is None:
        return "no common replicate"
    g = p.gap
    why = "" if g.varies else (": no interval" if not g.has_interval else ": no spread")
    return (f"`{g.a}` − `{g.b}` = {interval_text(g)} over {_units(g)}{why}, predicted {p.relation} "
            f"{p.threshold:g}: {p.verdict}")


def _prediction(claim: str, parts: Sequence[Part], key: str) -> Prediction:
    return Prediction(claim, combine([p.verdict for p in parts]), "; ".join(part_text(p) for p in parts),
                      tuple(parts), key)


def check_predictions(stats: Mapping[str, LabelStats], gap: GapFn | None = None) -> list[Prediction]:
    """The predictions whose methods this experiment ran; one set per ``@`` suffix. ``gap(a, b)``: the
    paired gap (with the test-set bootstrap, from the report); default: from ``stats`` alone."""
    gap = gap or gap_function(stats)
    out = []
    for key in sorted({suffix(label) for label in stats}):
        where = f" ({key})" if key else ""
        evo, hub, best = (name + key for name in (EVO, LORAHUB, BEST_SINGLE))
        if evo in stats and best in stats:
            out.append(_prediction(f"Evo-Merging at least 10 F1 above the best single adapter{where}",
                                   [Part(gap(evo, best), ">=", EVO_MIN_GAIN)], f"evo_vs_best_single{key}"))
        baselines = [b + key for b in BASELINES if b + key in stats]
        if evo in stats and hub in stats and baselines:
            parts = [Part(gap(evo, hub), ">", 0.0), *[Part(gap(hub, b), ">", 0.0) for b in baselines]]
            out.append(_prediction(f"Evo-Merging > LoraHub > TA/TIES{where}", parts, f"ranking{key}"))
        variants = [v + key for v in ABLATIONS]
        if all(v in stats for v in variants):
            no_scale, *others = variants
            out.append(_prediction(f"w/o scaling is the worst of w/o scaling, w/o denoising, w/o sign flip{where}",
                                   [Part(gap(no_scale, o), "<", 0.0) for o in others], f"ablation{key}"))
    return out


def check_distractor_cost(id_stats: Mapping[str, LabelStats], distractor_stats: Mapping[str, LabelStats]
                          ) -> list[Prediction]:
    """Distractors cost Evo-Merging at most 3 F1 while TA and TIES each lose 10 or more: the change
    ``distractors - id`` per method, paired inside the replicates both tables ran. Empty unless all three
    ran in both."""
    names = (EVO, *BASELINES)
    if any(n not in id_stats or n not in distractor_stats for n in names):
        return []
    change = {n: paired_gap(f"{n} (distractors)", distractor_stats[n].per_replicate, f"{n} (id)",
                            id_stats[n].per_replicate) for n in names}
    if any(g is None for g in change.values()):
        return []
    parts = [Part(change[EVO], ">=", -EVO_MAX_COST), *[Part(change[b], "<=", -BASELINE_MIN_COST) for b in BASELINES]]
    means = "; ".join(f"`{n}` {id_stats[n].f1.mean:.2f} -> {distractor_stats[n].f1.mean:.2f}" for n in names)
    pred = _prediction("Distractors cost Evo-Merging at most 3 F1, while TA and TIES drop 10 or more", parts,
                       "distractor_cost")
    return [dataclasses.replace(pred, evidence=f"{means}; {pred.evidence}")]
