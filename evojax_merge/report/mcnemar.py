"""The exact McNemar test between two rows scored on the same test records (pure: no I/O).

Two methods answer the same n records; each record is right or wrong for each. Only the discordant
records carry information about which method is better:

    b = #{records method 1 got right and method 2 got wrong}
    c = #{records method 1 got wrong and method 2 got right}

Under the null hypothesis (the two methods are equally accurate on this distribution) each discordant
record is a fair coin, b ~ Binomial(b + c, 1/2). The exact test's two-sided p-value is
``scipy.stats.binomtest(b, b + c, 0.5).pvalue`` (with p = 1/2 the distribution is symmetric, so it is
twice the smaller tail, capped at 1); with no discordant record there is no evidence either way: p = 1.

Worked by hand: b = 0, c = 6 gives 2 · (1/2)^6 = 0.03125; b = 1, c = 6 gives 2 · (1 + 7) / 2^7 = 0.125;
b = c gives 1.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from scipy.stats import binomtest


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts ``b`` and ``c`` (1.0 when b + c = 0)."""
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    return float(min(1.0, binomtest(b, b + c, 0.5, alternative="two-sided").pvalue))


def discordant(first: Sequence[bool], second: Sequence[bool]) -> tuple[int, int]:
    """``(b, c)``: records only ``first`` got right, records only ``second`` got right (same records, same order)."""
    if len(first) != len(second):
        raise ValueError(f"rows of different length: {len(first)} and {len(second)} records")
    b = sum(1 for x, y in zip(first, second, strict=True) if x and not y)
    c = sum(1 for x, y in zip(first, second, strict=True) if y and not x)
    return b, c


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (same order as given; each capped at 1)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


def pairwise(correct: Mapping[str, Sequence[bool]]) -> list[dict]:
    """Every pair of rows (in the mapping's order): accuracies, ``b``, ``c`` and the exact p-value.

    ``correct[row][i]``: whether ``row`` answered test record ``i`` right. Every row must cover the same
    records in the same order.
    """
    out = []
    for (m1, r1), (m2, r2) in itertools.combinations(correct.items(), 2):
        b, c = discordant(r1, r2)
        n = len(r1)
        out.append({"a": m1, "b_method": m2, "n": n, "acc_a": sum(map(bool, r1)) / n if n else 0.0,
                    "acc_b": sum(map(bool, r2)) / n if n else 0.0, "b": b, "c": c, "p": mcnemar_exact(b, c)})
    return out
