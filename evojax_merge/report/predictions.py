"""What the paper predicts if Evo-Merging works, checked on one experiment's seeds (issue 11, "Honesty").

Each prediction is tested on the mean test F1 over seeds (x100), within one ``@`` suffix group:

1. ``evo_merging - best_single >= 10`` (the paired mean gap);
2. ``evo_merging > lorahub > max(task_arithmetic, ties)`` (means);
3. among the ablations (``method=ablation``'s labels), ``evo_no_scale`` below both ``evo_no_denoise`` and
   ``evo_no_sign_flip``.

Across two experiments, :func:`check_distractor_cost` tests the fourth on the id and distractors
tables: the change ``distractors - id``, paired over the seeds both ran, is ``>= -3`` for Evo-Merging
and ``<= -10`` for both task arithmetic and TIES. Pure functions, no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from evojax_merge.report.stats import BEST_SINGLE, LabelStats, paired_gap, suffix

EVO, LORAHUB = "evo_merging", "lorahub"
BASELINES = ("task_arithmetic", "ties")
ABLATIONS = ("evo_no_scale", "evo_no_denoise", "evo_no_sign_flip")  # conf/method/<label>.yaml
EVO_MAX_COST, BASELINE_MIN_COST = 3.0, 10.0  # F1 x100
EPS = 1e-9  # F1 x100 is computed from fractions: 100 * 0.4 - 100 * 0.31 is 8.999999999999996


@dataclasses.dataclass(frozen=True)
class Prediction:
    claim: str
    held: bool
    evidence: str


def _f(s: LabelStats) -> str:
    return f"`{s.label}` {s.f1.mean:.2f}"


def check_predictions(stats: Mapping[str, LabelStats]) -> list[Prediction]:
    """The predictions whose methods this experiment ran; one set per ``@`` suffix."""
    out = []
    for key in sorted({suffix(label) for label in stats}):
        where = f" ({key})" if key else ""
        evo, hub, best = (stats.get(name + key) for name in (EVO, LORAHUB, BEST_SINGLE))
        if evo is not None and best is not None and evo.vs_best_single is not None:
            g = evo.vs_best_single
            seeds = ", ".join(map(str, sorted(set(evo.per_seed) & set(best.per_seed))))
            beyond = "beyond" if g.marked else "within"
            evidence = f"gap {g.mean:+.2f} ± {g.se:.2f} SE ({beyond} 2 SE), seeds {seeds}"
            out.append(Prediction(f"Evo-Merging at least 10 F1 above the best single adapter{where}",
                                  g.mean >= 10 - EPS, evidence))
        baselines = [stats[b + key] for b in BASELINES if b + key in stats]
        if evo is not None and hub is not None and baselines:
            held = evo.f1.mean > hub.f1.mean > max(b.f1.mean for b in baselines)
            out.append(Prediction(f"Evo-Merging > LoraHub > TA/TIES{where}", held,
                                  ", ".join(_f(s) for s in (evo, hub, *baselines))))
        variants = [stats.get(v + key) for v in ABLATIONS]
        if all(v is not None for v in variants):
            no_scale, *others = variants
            held = all(no_scale.f1.mean < o.f1.mean for o in others)
            out.append(Prediction(f"w/o scaling is the worst of w/o scaling, w/o denoising, w/o sign flip{where}",
                                  held, ", ".join(_f(s) for s in variants)))
    return out


def check_distractor_cost(id_stats: Mapping[str, LabelStats], distractor_stats: Mapping[str, LabelStats]
                          ) -> list[Prediction]:
    """Distractors cost Evo-Merging at most 3 F1 while TA and TIES each lose 10 or more: the change
    ``distractors - id`` per method, paired over the seeds both tables ran. Empty unless all three ran in both."""
    names = (EVO, *BASELINES)
    if any(n not in id_stats or n not in distractor_stats for n in names):
        return []
    change = {n: paired_gap(n, distractor_stats[n].per_seed, n, id_stats[n].per_seed) for n in names}
    if any(g is None for g in change.values()):
        return []
    held = change[EVO].mean >= -EVO_MAX_COST - EPS and all(change[b].mean <= -BASELINE_MIN_COST + EPS
                                                               for b in BASELINES)
    seeds = ", ".join(map(str, sorted(set(id_stats[EVO].per_seed) & set(distractor_stats[EVO].per_seed))))
    evidence = "; ".join(f"`{n}` {id_stats[n].f1.mean:.2f} -> {distractor_stats[n].f1.mean:.2f} "
                         f"(change {g.mean:+.2f} ± {g.se:.2f} SE)" for n, g in change.items())
    return [Prediction("Distractors cost Evo-Merging at most 3 F1, while TA and TIES drop 10 or more", held,
                       f"{evidence}; seeds {seeds}")]
