"""What the paper predicts if Evo-Merging works, checked on one experiment's seeds (issue 11, "Honesty").

Each prediction is tested on the mean test F1 over seeds (x100), within one ``@`` suffix group:

1. ``evo_merging - best_single >= 10`` (the paired mean gap);
2. ``evo_merging > lorahub > max(task_arithmetic, ties)`` (means);
3. among the ablations, ``evo_merging[no_scale]`` below both ``[no_denoise]`` and ``[no_sign_flip]``.

The cross-experiment prediction (distractors cost Evo <= 3 F1 while TA and TIES lose >= 10) needs the
id and distractors reports side by side and is not checked here. Pure functions, no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from evojax_merge.report.stats import BEST_SINGLE, LabelStats, suffix

EVO, LORAHUB = "evo_merging", "lorahub"
BASELINES = ("task_arithmetic", "ties")
ABLATIONS = ("no_scale", "no_denoise", "no_sign_flip")
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
        variants = [stats.get(f"{EVO}[{v}]{key}") for v in ABLATIONS]
        if all(v is not None for v in variants):
            no_scale, *others = variants
            held = all(no_scale.f1.mean < o.f1.mean for o in others)
            out.append(Prediction(f"w/o scaling is the worst of w/o scaling, w/o denoising, w/o sign flip{where}",
                                  held, ", ".join(_f(s) for s in variants)))
    return out
