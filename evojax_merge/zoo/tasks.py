"""Deterministic generator of the built-in mini-IE zoo: one task per (task type, domain).

A *scene* is a short sentence (one or two clauses, each <= ~12 words) with all of its
annotations: typed entity spans, relation triples and events. Every task type reads its
``(input, output)`` off the same kind of scene, so NER of the movie domain and NER of the law
domain are one skill with two lexicons, and RE/EP/EPR of a domain share its relation knowledge.
Answers only copy words from the input or from the option list of the instruction.

Output formats (``none`` when there is nothing to report):

====  ============================================  ===========================================
type  answer                                        example
====  ============================================  ===========================================
ner   ``type: span; type: span``                    ``director: anna smith; film: red horizon``
es    ``span; span``                                ``anna smith; red horizon``
et    ``type: span; ...`` for the listed spans      ``director: anna smith; film: red horizon``
re    ``(head, relation, tail); ...``               ``(anna smith, director of, red horizon)``
ep    ``(head, tail); ...``                         ``(anna smith, red horizon)``
epr   ``relation`` for the given (head, tail)       ``director of``
ee    ``type: trigger, role: span, ...; ...``       ``award: won, winner: ben garcia, work: neon river``
====  ============================================  ===========================================

Public API: :class:`ZooConfig`, :func:`task_names`, :func:`parse_task_name`,
:func:`generate_task`, :func:`generate_zoo`, :func:`instruction`, :func:`pretraining_corpus`,
:func:`vocabulary_texts`.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.zoo.domains import DOMAINS, DOMAINS_BY_NAME, SLOT_RE, Domain, get_domain

TASK_TYPES: tuple[str, ...] = ("ner", "es", "et", "re", "ep", "epr", "ee")
SPLITS: tuple[str, ...] = ("train", "validation", "test")
DEFAULT_SIZES: tuple[int, int, int] = (300, 100, 100)
NONE_ANSWER = "none"
MAX_WORDS = 24  # sentence length cap: short inputs keep a tiny model's prompts under 128 tokens

Record = dict[str, str]

# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooConfig:
    """Which slice of the zoo to build.

    ``domains`` (names, empty = all in the canonical order) is cut to its first ``num_domains``
    when that is set. Lists are accepted (Hydra passes lists) and stored as tuples.
    """

    domains: tuple[str, ...] = ()
    num_domains: int | None = None
    task_types: tuple[str, ...] = TASK_TYPES
    train_size: int = 300
    validation_size: int = 100
    test_size: int = 100
    seed: int = 0
    max_clauses: int = 2  # 1 gives the short single-clause sentences of the smoke zoo

    def __post_init__(self) -> None:
        object.__setattr__(self, "domains", tuple(self.domains))
        object.__setattr__(self, "task_types", tuple(t.lower() for t in self.task_types))
        for name in self.domains:
            if name not in DOMAINS_BY_NAME:
                raise EvoMergeInputError(
                    f"zoo config: unknown domain {name!r}; known: {', '.join(DOMAINS_BY_NAME)}"
                )
        for t in self.task_types:
            if t not in TASK_TYPES:
                raise EvoMergeInputError(
                    f"zoo config: unknown task type {t!r}; known: {', '.join(TASK_TYPES)}"
                )
        if self.num_domains is not None and self.num_domains < 1:
            raise EvoMergeInputError(f"zoo config: num_domains must be >= 1, got {self.num_domains}")
        if min(self.train_size, self.validation_size, self.test_size) < 0:
            raise EvoMergeInputError("zoo config: split sizes must be >= 0")
        if self.max_clauses < 1:
            raise EvoMergeInputError(f"zoo config: max_clauses must be >= 1, got {self.max_clauses}")

    @classmethod
    def smoke(cls, **overrides: object) -> ZooConfig:
        """A miniature: 3 domains x 3 task types, one short clause per sentence, small splits."""
        base: dict[str, object] = dict(
            domains=("movie", "restaurant", "vehicle"),
            task_types=("ner", "re", "ee"),
            train_size=64,
            validation_size=32,
            test_size=32,
            max_clauses=1,
        )
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]

    def domain_names(self) -> tuple[str, ...]:
        """The selected domain names, in order."""
        names = self.domains or tuple(d.name for d in DOMAINS)
        return names[: self.num_domains] if self.num_domains is not None else names

    @property
    def sizes(self) -> tuple[int, int, int]:
        """``(train, validation, test)`` sizes."""
        return (self.train_size, self.validation_size, self.test_size)


def task_names(cfg: ZooConfig | None = None) -> list[str]:
    """``"<type>_<domain>"`` for every selected pair, domain-major (``ner_movie, es_movie, ...``)."""
    cfg = cfg or ZooConfig()
    return [f"{t}_{d}" for d in cfg.domain_names() for t in cfg.task_types]


def parse_task_name(name: str) -> tuple[str, str]:
    """``"re_real_estate"`` -> ``("re", "real_estate")``; unknown parts raise one-line errors."""
    task_type, _, domain = name.partition("_")
    if task_type not in TASK_TYPES or domain not in DOMAINS_BY_NAME:
        raise EvoMergeInputError(
            f"unknown zoo task {name!r}: expected <type>_<domain> with type in "
            f"{', '.join(TASK_TYPES)} and a known domain"
        )
    return task_type, domain


# --- seeded randomness --------------------------------------------------------------------------


def _rng(*keys: object) -> random.Random:
    """A generator seeded from the keys by SHA-256 (stable across runs, unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(map(str, keys)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


# --- scenes -------------------------------------------------------------------------------------

Entity = tuple[str, str]  # (type, span)
Triple = tuple[str, str, str]  # (head, relation, tail)
Event = tuple[str, str, tuple[tuple[str, str], ...]]  # (type, trigger, ((role, span), ...))


@dataclass(frozen=True)
class Scene:
    """One sentence and everything in it, each list in reading order."""

    text: str
    entities: tuple[Entity, ...]
    relations: tuple[Triple, ...]
    events: tuple[Event, ...]


# Clause-kind mixture per task type: enough positives for each type, a few "none" answers.
_KIND_WEIGHTS: dict[str, dict[str, float]] = {
    "ner": {"mention": 0.35, "relation": 0.3, "event": 0.25, "empty": 0.1},
    "es": {"mention": 0.35, "relation": 0.3, "event": 0.25, "empty": 0.1},
    "et": {"mention": 0.35, "relation": 0.3, "event": 0.25, "empty": 0.1},
    "re": {"relation": 0.7, "mention": 0.15, "event": 0.05, "empty": 0.1},
    "ep": {"relation": 0.7, "mention": 0.15, "event": 0.05, "empty": 0.1},
    "epr": {"relation": 0.75, "mention": 0.15, "event": 0.05, "empty": 0.05},
    "ee": {"event": 0.7, "mention": 0.15, "relation": 0.05, "empty": 0.1},
    "text": {"mention": 0.3, "relation": 0.3, "event": 0.3, "empty": 0.1},
}
_JOINERS = (", and ", ", while ")


def _pick(rng: random.Random, domain: Domain, etype: str, used: set[str]) -> str:
    forms = [f for f in domain.lexicon[etype] if f not in used]
    form = rng.choice(forms)
    used.add(form)
    return form


def _clause(
    rng: random.Random, domain: Domain, kind: str, used: set[str]
) -> tuple[str, list[Entity], list[Triple], list[Event]]:
    """One clause of ``kind`` with its annotations (entities in reading order)."""
    if kind == "empty":
        return rng.choice(domain.fillers), [], [], []
    values: dict[str, str] = {}
    entities: list[Entity] = []
    if kind == "mention":
        tpl = rng.choice(domain.mentions)
        for etype, digits in SLOT_RE.findall(tpl):
            values[etype + digits] = _pick(rng, domain, etype, used)
            entities.append((etype, values[etype + digits]))
        return _render(tpl, values), entities, [], []
    if kind == "relation":
        rel = rng.choice(domain.relations)
        tpl = rng.choice(rel.templates)
        values = {"h": _pick(rng, domain, rel.head, used), "t": _pick(rng, domain, rel.tail, used)}
        kinds = {"h": rel.head, "t": rel.tail}
        entities = [(kinds[s], values[s]) for s, _ in SLOT_RE.findall(tpl)]
        return _render(tpl, values), entities, [(values["h"], rel.name, values["t"])], []
    ev = rng.choice(domain.events)
    tpl = rng.choice(ev.templates)
    triggers = [t for t in ev.triggers if t not in used] or list(ev.triggers)
    values = {"trigger": rng.choice(triggers)}
    used.add(values["trigger"])
    args: list[tuple[str, str]] = []
    for role, _ in SLOT_RE.findall(tpl):
        if role == "trigger":
            continue
        values[role] = _pick(rng, domain, ev.role_type(role), used)
        entities.append((ev.role_type(role), values[role]))
        args.append((role, values[role]))
    return _render(tpl, values), entities, [], [(ev.name, values["trigger"], tuple(args))]


def _render(tpl: str, values: Mapping[str, str]) -> str:
    return SLOT_RE.sub(lambda m: values[m.group(1) + m.group(2)], tpl)


def _occurrences(phrase: str, text: str) -> int:
    return len(re.findall(rf"(?<!\w){re.escape(phrase)}(?!\w)", text))


def _scene(rng: random.Random, domain: Domain, weights: Mapping[str, float], max_clauses: int) -> Scene:
    """Sample a scene; resample until every span and trigger occurs exactly once."""
    kinds, probs = list(weights), list(weights.values())
    while True:
        n = 1 if max_clauses == 1 or rng.random() < 0.6 else rng.randint(2, max_clauses)
        used: set[str] = set()
        texts: list[str] = []
        ents: list[Entity] = []
        rels: list[Triple] = []
        evs: list[Event] = []
        for kind in rng.choices(kinds, probs, k=n):
            text, e, r, v = _clause(rng, domain, kind, used)
            texts.append(text)
            ents += e
            rels += r
            evs += v
        body = texts[0]
        for text in texts[1:]:
            body += rng.choice(_JOINERS) + text
        body = re.sub(r"\ba (?=[aeiou])", "an ", body) + "."  # grammar: "an electric motor"
        phrases = [s for _, s in ents] + [trig for _, trig, _ in evs]
        if len(body.split()) <= MAX_WORDS and all(_occurrences(p, body) == 1 for p in phrases):
            return Scene(body, tuple(ents), tuple(rels), tuple(evs))


# --- task instances -----------------------------------------------------------------------------

_INSTRUCTIONS: dict[str, str] = {
    "ner": "Find every entity in the text and give its type. Options: {options}. "
    "Answer as type: span; type: span, or none.",
    "es": "Find every entity span in the text. Options: {options}. Answer as span; span, or none.",
    "et": "Give the type of each listed entity. Options: {options}. "
    "Answer as type: span; type: span.",
    "re": "Find every relation triple in the text. Options: {options}. "
    "Answer as (head, relation, tail); (head, relation, tail), or none.",
    "ep": "Find every pair of entities in the text that stand in a relation. Options: {options}. "
    "Answer as (head, tail); (head, tail), or none.",
    "epr": "Give the relation from the head entity to the tail entity. Options: {options}. "
    "Answer with one relation, or none.",
    "ee": "Find every event in the text with its trigger and arguments. Options: {options}. "
    "Answer as type: trigger, role: span; ..., or none.",
}


def options(task_type: str, domain: Domain) -> str:
    """The option list of ``task_type`` in ``domain`` (types, relations, or events with roles)."""
    if task_type in ("ner", "es", "et"):
        return ", ".join(domain.entity_types)
    if task_type in ("re", "ep", "epr"):
        return ", ".join(r.name for r in domain.relations)
    return "; ".join(f"{e.name} ({', '.join(r for r, _ in e.roles)})" for e in domain.events)


def instruction(task_type: str, domain: Domain | str) -> str:
    """The fixed instruction of a task: identical per task type up to the option list."""
    dom = get_domain(domain) if isinstance(domain, str) else domain
    return _INSTRUCTIONS[task_type].format(options=options(task_type, dom))


def _join(items: Sequence[str]) -> str:
    return "; ".join(items) if items else NONE_ANSWER


def format_entities(entities: Sequence[Entity]) -> str:
    """``type: span; type: span`` or ``none``."""
    return _join([f"{t}: {s}" for t, s in entities])


def format_triples(triples: Sequence[Triple]) -> str:
    """``(head, relation, tail); ...`` or ``none``."""
    return _join([f"({h}, {r}, {t})" for h, r, t in triples])


def format_events(events: Sequence[Event]) -> str:
    """``type: trigger, role: span, ...; ...`` or ``none``."""
    return _join(
        [", ".join([f"{ty}: {trig}"] + [f"{r}: {s}" for r, s in args]) for ty, trig, args in events]
    )


def _instance(task_type: str, scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    """``(input, output)`` of ``task_type`` on ``scene``; None when the scene cannot serve it."""
    if task_type == "ner":
        return scene.text, format_entities(scene.entities)
    if task_type == "es":
        return scene.text, _join([s for _, s in scene.entities])
    if task_type == "et":
        if not scene.entities:
            return None
        spans = "; ".join(s for _, s in scene.entities)
        return f"{scene.text}\nEntities: {spans}", format_entities(scene.entities)
    if task_type == "re":
        return scene.text, format_triples(scene.relations)
    if task_type == "ep":
        return scene.text, _join([f"({h}, {t})" for h, _, t in scene.relations])
    if task_type == "epr":
        if not scene.relations:
            return None
        related = {(h, t) for h, _, t in scene.relations} | {(t, h) for h, _, t in scene.relations}
        spans = [s for _, s in scene.entities]
        negatives = [(a, b) for a in spans for b in spans if a != b and (a, b) not in related]
        if negatives and rng.random() < 0.2:  # ~20% unrelated pairs teach "none"
            (head, tail), answer = rng.choice(negatives), NONE_ANSWER
        else:
            head, answer, tail = rng.choice(scene.relations)
        return f"{scene.text}\nHead: {head}\nTail: {tail}", answer
    if task_type == "ee":
        return scene.text, format_events(scene.events)
    raise EvoMergeInputError(f"unknown zoo task type {task_type!r}")


def _split_records(
    task_type: str, domain: Domain, rng: random.Random, size: int, taken: set[str], max_clauses: int
) -> list[Record]:
    """``size`` records whose inputs are new to ``taken`` (which is updated)."""
    instr = instruction(task_type, domain)
    out: list[Record] = []
    budget = 200 * size + 1000
    while len(out) < size:
        budget -= 1
        if budget < 0:
            raise RuntimeError(f"zoo: could not draw {size} distinct {task_type}_{domain.name} records")
        pair = _instance(task_type, _scene(rng, domain, _KIND_WEIGHTS[task_type], max_clauses), rng)
        if pair is None or pair[0] in taken:
            continue
        taken.add(pair[0])
        out.append({"instruction": instr, "input": pair[0], "output": pair[1]})
    return out


def _sizes(sizes: Sequence[int] | Mapping[str, int]) -> dict[str, int]:
    if isinstance(sizes, Mapping):
        return {s: int(sizes.get(s, 0)) for s in SPLITS}
    if len(sizes) != 3:
        raise EvoMergeInputError(f"sizes must be (train, validation, test), got {tuple(sizes)}")
    return dict(zip(SPLITS, map(int, sizes), strict=True))


def generate_task(
    task_name: str,
    seed: int = 0,
    sizes: Sequence[int] | Mapping[str, int] = DEFAULT_SIZES,
    max_clauses: int = 2,
) -> dict[str, list[Record]]:
    """Train/validation/test records of one zoo task, a pure function of its arguments.

    Each split has its own seeded stream, drawn test first, then validation, then train, and no
    input repeats across splits: the held-out sets do not change when ``train`` grows.
    """
    task_type, domain_name = parse_task_name(task_name)
    domain = get_domain(domain_name)
    n = _sizes(sizes)
    taken: set[str] = set()
    out: dict[str, list[Record]] = {}
    for split in ("test", "validation", "train"):
        rng = _rng(seed, task_name, split, max_clauses)
        out[split] = _split_records(task_type, domain, rng, n[split], taken, max_clauses)
    return {s: out[s] for s in SPLITS}


def generate_zoo(cfg: ZooConfig | None = None) -> dict[str, dict[str, list[Record]]]:
    """Every task of ``cfg``: ``{task_name: {"train": [...], "validation": [...], "test": [...]}}``."""
    cfg = cfg or ZooConfig()
    return {
        name: generate_task(name, cfg.seed, cfg.sizes, cfg.max_clauses) for name in task_names(cfg)
    }


# --- the base model's pre-training mixture ------------------------------------------------------
#
# The base must learn the domains' language and the prompt/answer grammar, but NOT the IE skills:
# otherwise the bare base would already solve the held-out targets. So the mixture is (a) plain
# domain sentences and (b) "format" tasks that use the same prompt template and the same answer
# grammar (``a: b; c: d``, ``(x, y, z); ...``, ``k: v, k: v``, ``none``) on content-free
# operations over lexicon words: no entity typing, relation or event semantics, no option lists.

_KEYS = ("name", "item", "label", "tag", "code", "note", "word", "entry", "slot", "field")
_FORMAT_INSTRUCTIONS: dict[str, str] = {
    "repeat": "Repeat the text word for word.",
    "first_last": "Give the first and the last word of the text. Answer as first: word; last: word.",
    "join": "Join the items with semicolons. Answer as item; item.",
    "pairs": "Group the items into pairs in order. Answer as (item, item); (item, item).",
    "triples": "Group the items into groups of three in order. "
    "Answer as (item, item, item); (item, item, item).",
    "fields": "Rewrite each pair as key: value. Answer as key: value; key: value.",
    "record": "Rewrite the record with commas. Answer as key: value, key: value.",
    "repeated": "List the items that occur twice. Answer as item; item, or none.",
}


def _lexicon_items(rng: random.Random, domains: Sequence[Domain], k: int) -> list[str]:
    """``k`` distinct forms from random domains and types: content without type semantics."""
    items: list[str] = []
    while len(items) < k:
        dom = rng.choice(domains)
        form = rng.choice(dom.lexicon[rng.choice(dom.entity_types)])
        if form not in items:
            items.append(form)
    return items


def _format_record(rng: random.Random, domains: Sequence[Domain], kind: str) -> Record:
    instr = _FORMAT_INSTRUCTIONS[kind]
    if kind in ("repeat", "first_last"):
        text = _scene(rng, rng.choice(domains), _KIND_WEIGHTS["text"], 2).text
        words = re.findall(r"\w+", text)
        out = text if kind == "repeat" else f"first: {words[0]}; last: {words[-1]}"
        return {"instruction": instr, "input": text, "output": out}
    if kind in ("join", "pairs", "triples"):
        group = {"join": 1, "pairs": 2, "triples": 3}[kind]
        items = _lexicon_items(rng, domains, group * rng.randint(1, 3) + (group == 1))
        if group == 1:
            out = "; ".join(items)
        else:
            chunks = [items[i : i + group] for i in range(0, len(items), group)]
            out = "; ".join("(" + ", ".join(c) + ")" for c in chunks)
        return {"instruction": instr, "input": " | ".join(items), "output": out}
    if kind in ("fields", "record"):
        n = rng.randint(1, 3) + (kind == "record")
        keys = rng.sample(_KEYS, n)
        vals = _lexicon_items(rng, domains, n)
        src = " | ".join(f"{k} = {v}" for k, v in zip(keys, vals, strict=True))
        sep = "; " if kind == "fields" else ", "
        out = sep.join(f"{k}: {v}" for k, v in zip(keys, vals, strict=True))
        return {"instruction": instr, "input": src, "output": out}
    items = _lexicon_items(rng, domains, rng.randint(2, 5))
    twice = [x for x in items if rng.random() < 0.3]
    seq = items + twice
    rng.shuffle(seq)
    # answer in order of first occurrence, so the grammar is deterministic
    out = "; ".join(x for x in dict.fromkeys(seq) if x in twice) or NONE_ANSWER
    return {"instruction": instr, "input": " | ".join(seq), "output": out}


def pretraining_corpus(
    cfg: ZooConfig | None = None, n_texts: int = 20000, n_records: int = 10000, seed: int | None = None
) -> dict[str, list]:
    """The base model's mixture: ``{"texts": [sentence, ...], "records": [format record, ...]}``.

    ``texts`` are plain domain sentences (train them with a full LM loss); ``records`` are
    alpaca records of the format tasks (render with :mod:`evojax_merge.data.prompt`); about one
    in ten carries a one-turn ``history`` so the multi-turn template is seen too. Domains are
    used round-robin, so every domain of ``cfg`` gets the same share.
    """
    cfg = cfg or ZooConfig()
    seed = cfg.seed if seed is None else seed
    domains = [get_domain(d) for d in cfg.domain_names()]
    rng = _rng(seed, "pretrain", cfg.max_clauses)
    texts = [
        _scene(rng, domains[i % len(domains)], _KIND_WEIGHTS["text"], cfg.max_clauses).text
        for i in range(n_texts)
    ]
    kinds = list(_FORMAT_INSTRUCTIONS)
    records: list[Record] = []
    for i in range(n_records):
        rec = _format_record(rng, domains, kinds[i % len(kinds)])
        if rng.random() < 0.1:
            prev = _format_record(rng, domains, rng.choice(kinds))
            rec["history"] = [[f"{prev['instruction']}\n{prev['input']}", prev["output"]]]  # type: ignore[assignment]
        records.append(rec)
    return {"texts": texts, "records": records}


def vocabulary_texts(cfg: ZooConfig | None = None) -> list[str]:
    """Every string the zoo of ``cfg`` can emit: instructions, lexicon, templates, formats.

    A word-level tokenizer built from these never meets an unknown word on zoo data.
    """
    cfg = cfg or ZooConfig()
    texts: list[str] = list(_FORMAT_INSTRUCTIONS.values()) + [
        " ".join(_KEYS), "first last none | = ( ) , ; : . Entities: Head: Tail:", ", ".join(_JOINERS),
        "an",
    ]
    for name in cfg.domain_names():
        dom = get_domain(name)
        texts += [instruction(t, dom) for t in TASK_TYPES]
        for forms in dom.lexicon.values():
            texts += forms
        texts += [SLOT_RE.sub(" ", t) for t in dom.mentions] + list(dom.fillers)
        for rel in dom.relations:
            texts += [rel.name] + [SLOT_RE.sub(" ", t) for t in rel.templates]
        for ev in dom.events:
            texts += [ev.name, *ev.triggers, *(r for r, _ in ev.roles)]
            texts += [SLOT_RE.sub(" ", t) for t in ev.templates]
    return texts
