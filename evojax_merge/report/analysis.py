"""From run records to everything the report states: stats per method, paired gaps with the test-set
bootstrap, the design in words (worlds × search seeds) and the gate over the worlds.

The gate is a property of one built world (``zoo.gate.passed`` in results.json): a world passes when
every run of it recorded ``passed``. When some world fails, the report gives its tables twice: over all
worlds, and over the worlds that passed (:func:`gated_runs`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from evojax_merge.report.bootstrap import BOOT_SEED, N_BOOT, WorldBootstrap
from evojax_merge.report.records import run_counts
from evojax_merge.report.runs import RunRecord, group_by_replicate, replicate_name
from evojax_merge.report.stats import (
    Gap,
    GapFn,
    LabelStats,
    Summary,
    cost_stats,
    gap_function,
    label_stats,
    top_two_gaps,
)


@dataclasses.dataclass(frozen=True)
class Analysis:
    stats: dict[str, LabelStats]
    gap: GapFn  # gap(a, b): paired, with the test-set bootstrap where the runs kept predictions
    top_two: dict[str, Gap]
    costs: dict[str, dict[str, Summary]]
    seeds: dict  # world -> its search seeds, in order
    gates: dict  # world -> passed, for the worlds that recorded a gate
    n_boot: int  # 0: no bootstrap
    boot_seed: int
    boot_notes: tuple[str, ...]  # runs or methods left out of the bootstrap, and why

    @property
    def worlds(self) -> list:
        return list(self.seeds)

    @property
    def unit(self) -> str:
        return "world" if len(self.seeds) > 1 else "seed"

    @property
    def units(self) -> int:
        return len(self.seeds) if len(self.seeds) > 1 else len(next(iter(self.seeds.values()), ()))

    @property
    def design(self) -> str:
        """``10 worlds × 1 search seed; gate passed on 7 of 10``."""
        k = len(self.seeds)
        counts = sorted({len(s) for s in self.seeds.values()})
        if len(counts) == 1:
            seeds = f"{counts[0]} search seed{'s' * (counts[0] != 1)}"
        else:
            seeds = f"{counts[0]}–{counts[-1]} search seeds ({sum(len(s) for s in self.seeds.values())} runs)"
        text = f"{k} world{'s' * (k != 1)} × {seeds}"
        if self.gates:
            text += f"; gate passed on {sum(self.gates.values())} of {len(self.gates)}"
            if len(self.gates) < k:
                text += f" (recorded on {len(self.gates)} of the {k} worlds)"
        return text

    @property
    def which(self) -> str:
        """``worlds 0, 1, 2; seeds 0`` (``seeds 0, 1, 2`` without worlds recorded)."""
        seeds = sorted({s for ss in self.seeds.values() for s in ss})
        text = f"seed{'s' * (len(seeds) != 1)} {', '.join(map(str, seeds))}"
        worlds = [w for w in self.seeds if w is not None]
        if worlds:
            text = f"world{'s' * (len(worlds) != 1)} {', '.join(map(str, worlds))}; {text}"
        return text

    @property
    def has_bootstrap(self) -> bool:
        return any(g.boot for s in self.stats.values() for g in [s.vs_best_single] if g is not None) or \
            any(g.boot for g in self.top_two.values())


def world_gates(runs: Sequence[RunRecord]) -> dict:
    """world -> passed (every run of the world that recorded a gate passed it), for worlds with a record."""
    gates: dict = {}
    for r in runs:
        if r.gate is not None:
            gates[r.world] = gates.get(r.world, True) and r.gate
    return gates


def gated_runs(runs: Sequence[RunRecord]) -> list[RunRecord] | None:
    """The runs on worlds that passed the gate, when some world failed it; ``None`` when none failed."""
    gates = world_gates(runs)
    if all(gates.values()):
        return None
    return [r for r in runs if gates.get(r.world, True)]


def load_counts(runs: Sequence[RunRecord]) -> tuple[dict, tuple[str, ...]]:
    """``({(world, seed): {label: {task: counts}}}, notes)`` from each run's predictions/."""
    counts, notes = {}, []
    for r in runs:
        got, why = run_counts(r.path, r.methods, f"{replicate_name(r.replicate)} (`{r.path.name}`)")
        counts[r.replicate] = got
        notes += why
    return counts, tuple(notes)


def analyse(runs: Sequence[RunRecord], n_boot: int = N_BOOT, boot_seed: int = BOOT_SEED,
            counts: Mapping | None = None, notes: Sequence[str] = ()) -> Analysis:
    """Stats, gaps and design of ``runs`` (one experiment). ``counts``: per-record counts already read
    (:func:`load_counts`), else read here; ``n_boot = 0`` skips the test-set bootstrap."""
    by_rep = group_by_replicate(list(runs))
    boot = None
    if n_boot:
        if counts is None:
            counts, notes = load_counts(runs)
        boot = WorldBootstrap(counts, n_boot, boot_seed)
    stats = label_stats(by_rep, boot)
    gap = gap_function(stats, boot)
    seeds: dict = {}
    for world, seed in by_rep:
        seeds.setdefault(world, []).append(seed)
    gates = {w: p for w, p in world_gates(runs).items() if w in seeds}
    return Analysis(stats, gap, top_two_gaps(stats, gap), cost_stats(by_rep), seeds, gates, n_boot, boot_seed,
                    tuple(notes))


def analyses(runs: Sequence[RunRecord], n_boot: int = N_BOOT, boot_seed: int = BOOT_SEED
             ) -> tuple[Analysis, Analysis | bool | None]:
    """The analysis of all runs, and of the runs on worlds that passed the gate when some failed
    (``False`` when none passed, ``None`` when none failed)."""
    counts, notes = load_counts(runs) if n_boot else ({}, ())
    analysis = analyse(runs, n_boot, boot_seed, counts, notes)
    kept = gated_runs(runs)
    if kept is None:
        return analysis, None
    return analysis, (analyse(kept, n_boot, boot_seed, counts, notes) if kept else False)
