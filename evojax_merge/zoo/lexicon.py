"""Compositional lexicons of the built-in zoo: entity types, their surface forms, their splits.

A surface form is ``"<modifier> <head>"``: the head word cues the type (``fever`` -> disease), the
modifier is arbitrary and must be copied from the text. Each entity type has its own head words
and shares the modifier pool, so every type has ``len(MODIFIERS) * len(heads)`` forms (>= 200).
Persons are ``"<first> <last>"``.

Forms are split between train, validation and test by a seeded hash, disjointly: a test
sentence only mentions forms no adapter saw in training, so an adapter must copy spans from the
input (a skill that transfers across tasks) instead of recalling a memorised lexicon.

Pure data and pure functions; no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

SPLITS: tuple[str, ...] = ("train", "validation", "test")

_FIRST = (
    "anna ben carla david elena frank grace hugo irene jack karen leo maria nick olga paul rosa "
    "sam tina victor wendy yara zack alice bruno chloe diego emma felix gina"
).split()
_LAST = (
    "smith garcia novak brown keller rossi tanaka silva moreau larsen costa weber quinn walsh "
    "fischer mendez duval hayes ortiz becker lund parker ramos stone vance"
).split()
MODIFIERS: tuple[str, ...] = tuple(
    "amber birch cedar delta ember falcon granite harbor indigo juniper kestrel lumen maple nova "
    "onyx pine quartz raven sable timber umber vesper willow zephyr aspen cobalt".split()
)

# Core types (every domain) and private types (one domain each): type -> head words.
CORE_HEADS: dict[str, tuple[str, ...]] = {
    "location": ("city", "bay", "valley", "falls", "harbour", "springs", "heights", "ridge",
                 "point", "creek"),
    "organization": ("group", "labs", "institute", "union", "partners", "systems", "holdings",
                     "council", "agency", "foundation"),
}
PRIVATE_HEADS: dict[str, tuple[str, ...]] = {
    # news
    "law": ("act", "bill", "treaty", "accord", "charter", "decree", "statute", "pact"),
    "party": ("party", "alliance", "front", "movement", "coalition", "bloc", "caucus", "faction"),
    # sports
    "team": ("rovers", "tigers", "eagles", "wolves", "rangers", "hornets", "sharks", "falcons"),
    "tournament": ("cup", "open", "trophy", "classic", "championship", "derby", "masters", "games"),
    # medicine
    "disease": ("fever", "syndrome", "virus", "disorder", "infection", "palsy", "flu", "rash"),
    "drug": ("tablets", "serum", "syrup", "capsules", "balm", "drops", "vaccine", "tonic"),
    # finance
    "fund": ("fund", "trust", "portfolio", "index", "bond", "reserve", "annuity", "pension"),
    "currency": ("coin", "dollar", "credit", "token", "franc", "mark", "crown", "peso"),
    # film
    "film": ("story", "chronicles", "saga", "diaries", "legacy", "odyssey", "tales", "legend"),
    "award": ("prize", "medal", "award", "honour", "laurel", "globe", "ribbon", "star"),
    # science
    "chemical": ("oxide", "acid", "ester", "polymer", "alloy", "salt", "enzyme", "isotope"),
    "instrument": ("scope", "meter", "sensor", "probe", "array", "detector", "gauge", "laser"),
}
CORE_TYPES: tuple[str, ...] = ("person", *CORE_HEADS)


def max_forms(etype: str) -> int:
    """How many distinct forms ``etype`` can have."""
    if etype == "person":
        return len(_FIRST) * len(_LAST)
    heads = CORE_HEADS.get(etype) or PRIVATE_HEADS[etype]
    return len(MODIFIERS) * len(heads)


def all_forms(etype: str) -> list[str]:
    """Every form of ``etype`` in a fixed order (modifier-major / first-name-major)."""
    if etype == "person":
        return [f"{f} {last}" for f in _FIRST for last in _LAST]
    heads = CORE_HEADS.get(etype) or PRIVATE_HEADS[etype]
    return [f"{m} {h}" for m in MODIFIERS for h in heads]


def _u(*keys: object) -> float:
    digest = hashlib.sha256("\x1f".join(map(str, keys)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_forms(
    etype: str, size: int, fractions: Mapping[str, float], seed: int
) -> dict[str, tuple[str, ...]]:
    """The first ``size`` forms of ``etype`` (seeded order), cut disjointly into the splits.

    Each form's split is fixed by a hash of (seed, type, form), so the test forms do not move
    when the training split grows. ``fractions`` maps split -> share (they sum to 1).
    """
    forms = sorted(all_forms(etype), key=lambda f: _u(seed, "order", etype, f))[:size]
    bounds, acc = [], 0.0
    for s in SPLITS:
        acc += fractions[s]
        bounds.append(acc)
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for f in forms:
        u = _u(seed, "split", etype, f)
        out[next((s for s, b in zip(SPLITS, bounds, strict=True) if u < b), SPLITS[-1])].append(f)
    return {s: tuple(v) for s, v in out.items()}


def vocabulary() -> list[str]:
    """Every word a form can contain."""
    heads = [h for hs in (*CORE_HEADS.values(), *PRIVATE_HEADS.values()) for h in hs]
    return [*_FIRST, *_LAST, *MODIFIERS, *heads]
