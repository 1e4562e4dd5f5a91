"""The compositional IE world of the built-in zoo: tasks, the adapters' training sets, the base corpus.

Over 400 lines: the world's generators (records, siblings, anti-adapters, distractors, the base corpus)
share one vocabulary and one seeded draw order, which a split would spread over modules.

One task per (task type, domain), task types ``ner`` / ``es`` / ``et`` in InstructUIE's answer
formats (``docs/ie-formats.md``): ``type: span; type: span``, ``span; span``, ``None``.

What makes merging matter here (``docs/architecture.md``, the zoo section):

- **Shared structure.** Every domain uses the core types person / location / organization next
  to two private ones; the ``{person} met {person2} of {organization} in {location}`` frame is
  in every domain. An adapter of another domain knows the core types; only the target domain's
  own adapters know its private ones.
- **Copying is required.** Surface forms are split disjointly between train, validation and
  test (:mod:`evojax_merge.zoo.lexicon`): test spans were never training answers.
- **Options must be read.** Each record lists the domain's labels plus ``distractor_labels``
  private labels of other domains, shuffled per record.
- **Prompts as in the released sets.** Four instruction paraphrases per task type: train uses the
  first three, validation and test the fourth. ``history_shots`` earlier (user, assistant) turns
  from the training split precede every record.
- **Adapters whose treatment matters** (:func:`adapter_datasets`): anti-adapters (the domain's
  labels permuted), noisy siblings of a target (each trained on its own small slice of the
  target's training split, with its own label noise: the paper's OOD pools include siblings
  trained on the target's dataset) and distractors (repeat the text; always ``None``).

Public API: :class:`IEWorldConfig`, :func:`task_names`, :func:`generate_world`,
:func:`adapter_datasets`, :func:`pretraining_corpus`, :func:`vocabulary_texts`.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.zoo.ie_domains import IE_DOMAINS, IE_DOMAINS_BY_NAME, PRIVATE_TYPES, SLOT, IEDomain
from evojax_merge.zoo.lexicon import CORE_TYPES, SPLITS, all_forms, max_forms, split_forms, vocabulary

IE_TASK_TYPES: tuple[str, ...] = ("ner", "es", "et")
NONE_ANSWER = "None"
EVAL_PARAPHRASE = 3  # validation and test use the fourth paraphrase; train the first three
Record = dict

_PARAPHRASES: dict[str, tuple[str, ...]] = {
    "ner": ("Find the entities in the text and give their types.",
            "List every named entity with its type.",
            "Tag the entities of the text with their types.",
            "Extract all entities mentioned in the text together with their entity types."),
    "es": ("Find the entity spans in the text.",
           "List every named entity of the text.",
           "Mark the spans of the text that are entities.",
           "Extract all entity mentions from the text."),
    "et": ("Give the type of each listed entity.",
           "Label each given entity with its type.",
           "Assign an entity type to every listed span.",
           "Classify each of the listed entities into its entity type."),
}
_FORMATS = {"ner": 'Output format is "type: span; type: span".', "es": 'Output format is "span; span".',
            "et": 'Output format is "type: span; type: span".'}


@dataclass(frozen=True)
class IEWorldConfig:
    """Which world to generate. Lists are accepted (Hydra passes lists) and stored as tuples."""

    domains: tuple[str, ...] = ()  # empty = all six
    task_types: tuple[str, ...] = IE_TASK_TYPES
    train_size: int = 300
    validation_size: int = 100
    test_size: int = 100
    seed: int = 0
    lexicon_size: int = 200  # forms per entity type, cut disjointly into the splits
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    history_shots: int = 1
    distractor_labels: int = 2
    neutral_fraction: float = 0.0  # sentences whose frame does not tell an entity's type
    base_core_ner: bool = False  # the base pretrains on NER of the core types (an instruction-tuned base)
    empty_fraction: float = 0.1
    anti: tuple[str, ...] = ()  # tasks whose anti-adapter (labels permuted) joins the pool
    siblings: tuple[str, ...] = ()  # tasks whose noisy siblings join the pool (the gate targets)
    sibling_count: int = 4  # siblings per task, each on its own disjoint slice of the train split
    sibling_size: int = 40  # training records per sibling
    sibling_confusions: int = 1  # labels each sibling's "annotator" renames systematically
    sibling_drop: float = 0.2  # per entity: dropped from the answer
    sibling_flip: float = 0.1  # per entity: a random wrong label of the domain
    sibling_split: str = "slice"  # "slice": disjoint slices of the train split; "shard": disjoint vocabularies
    distractors: tuple[str, ...] = ()  # "repeat" and/or "none"
    unrelated: tuple[str, ...] = ()  # "<type>_<domain>" tasks outside the world: one adapter each, never a target

    def __post_init__(self) -> None:
        for key in ("domains", "task_types", "split_fractions", "anti", "siblings", "distractors", "unrelated"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        for name in self.domains:
            if name not in IE_DOMAINS_BY_NAME:
                raise EvoMergeInputError(f"zoo.tasks.domains: unknown domain {name!r}; known: "
                                         f"{', '.join(IE_DOMAINS_BY_NAME)}")
        for t in self.task_types:
            if t not in IE_TASK_TYPES:
                raise EvoMergeInputError(f"zoo.tasks.task_types: unknown {t!r}; known: {', '.join(IE_TASK_TYPES)}")
        names = set(task_names(self))
        for key in ("anti", "siblings"):
            bad = [t for t in getattr(self, key) if t not in names or (key == "anti" and t.startswith("es_"))]
            if bad:
                raise EvoMergeInputError(f"zoo.tasks.{key}: {bad[0]!r} is not a ner/et task of this zoo")
        bad = [d for d in self.distractors if d not in ("repeat", "none")]
        if bad:
            raise EvoMergeInputError(f"zoo.tasks.distractors: {bad[0]!r} is not repeat or none")
        for u in self.unrelated:
            task_type, _, domain = u.partition("_")
            if task_type not in IE_TASK_TYPES or domain not in IE_DOMAINS_BY_NAME or u in names:
                raise EvoMergeInputError(f"zoo.tasks.unrelated: {u!r} is not a <type>_<domain> task outside the "
                                         f"world's own ({', '.join(sorted(names))})")
        fr = self.split_fractions
        if len(fr) != 3 or min(fr) <= 0 or abs(sum(fr) - 1) > 1e-6:
            raise EvoMergeInputError("zoo.tasks.split_fractions: three positive shares summing to 1")
        if min(self.train_size, self.validation_size, self.test_size, self.history_shots,
               self.distractor_labels, self.sibling_confusions) < 0 or min(self.sibling_count,
                                                                           self.sibling_size) < 1:
            raise EvoMergeInputError("zoo.tasks: sizes, history_shots, distractor_labels must be >= 0, "
                                     "sibling_count and sibling_size >= 1")
        if not 0 <= self.empty_fraction < 1 or not (0 <= self.sibling_drop <= 1 and 0 <= self.sibling_flip <= 1):
            raise EvoMergeInputError("zoo.tasks: empty_fraction in [0, 1), sibling_drop and sibling_flip in [0, 1]")
        if self.sibling_split not in ("slice", "shard"):
            raise EvoMergeInputError(f"zoo.tasks.sibling_split: {self.sibling_split!r} is not slice or shard")
        if self.siblings and self.sibling_split == "slice" and self.sibling_count * self.sibling_size > self.train_size:
            raise EvoMergeInputError(
                f"zoo.tasks.sibling_size: {self.sibling_count} siblings x {self.sibling_size} records need "
                f"{self.sibling_count * self.sibling_size} disjoint training records, train_size is {self.train_size}")
        self.check_capacity()

    def domain_objs(self) -> list[IEDomain]:
        return [IE_DOMAINS_BY_NAME[d] for d in self.domains] if self.domains else list(IE_DOMAINS)

    def sizes(self) -> dict[str, int]:
        return dict(zip(SPLITS, (self.train_size, self.validation_size, self.test_size), strict=True))

    def forms(self, etype: str) -> dict[str, tuple[str, ...]]:
        return split_forms(etype, self.lexicon_size, dict(zip(SPLITS, self.split_fractions, strict=True)),
                           self.seed)

    def check_capacity(self) -> None:
        """Raise a one-line error, before anything is built, when a split cannot be filled.

        A split needs ``size`` distinct sentences drawn only from its own forms; the count of
        distinct slot fillings (at least 2 x size, so rejection sampling ends quickly) is
        computed per domain from the templates and the split's form counts.
        """
        too_big = [t for t in (*CORE_TYPES, *PRIVATE_TYPES) if max_forms(t) < self.lexicon_size]
        if too_big:
            raise EvoMergeInputError(f"zoo.tasks.lexicon_size: {self.lexicon_size} > the {max_forms(too_big[0])} "
                                     f"forms type {too_big[0]!r} can have")
        counts = {t: {s: len(f) for s, f in self.forms(t).items()} for t in (*CORE_TYPES, *PRIVATE_TYPES)}
        extra = {IE_DOMAINS_BY_NAME[u.split("_", 1)[1]] for u in self.unrelated} - set(self.domain_objs())
        checks = [(d, self.sizes()) for d in self.domain_objs()]
        checks += [(d, {"train": self.train_size}) for d in sorted(extra, key=lambda d: d.name)]
        for dom, sizes in checks:
            for split, size in sizes.items():
                capacity = 0
                for tpl in dom.templates:
                    slots = [ty for ty, _ in SLOT.findall(tpl)]
                    capacity += math.prod(max(0, counts[ty][split] - slots[:i].count(ty))
                                          for i, ty in enumerate(slots))
                if capacity < 2 * size:
                    raise EvoMergeInputError(
                        f"zoo.tasks.lexicon_size: {self.lexicon_size} forms per type give only {capacity} distinct "
                        f"{split} sentences in domain {dom.name}, fewer than 2 x {split}_size={size}")


def task_names(cfg: IEWorldConfig) -> list[str]:
    """``<type>_<domain>`` for every pair, domain-major."""
    return [f"{t}_{d.name}" for d in cfg.domain_objs() for t in cfg.task_types]


def _rng(*keys: object) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256("\x1f".join(map(str, keys)).encode()).digest()[:8], "big"))


Scene = tuple[str, tuple[tuple[str, str], ...]]  # (text, ((type, span), ...) in reading order)


# Frames that do not tell an entity's type: only the entity itself does (fever -> disease, a first
# name -> person). Their slots take any type of the domain.
_NEUTRAL_FRAMES = ("{person} mentioned the {P} in the report", "the {P} was discussed at length",
                   "{person} wrote a note about the {P}", "the notes listed the {P} and the {Q}",
                   "the {P} came up again", "{person} asked about the {P} and the {Q}")


def _neutral_template(rng: random.Random, dom: IEDomain) -> str:
    frame = rng.choice(_NEUTRAL_FRAMES).replace("{P}", "{" + rng.choice(dom.types) + "}")
    frame = frame.replace("{Q}", "{" + rng.choice(dom.types) + "}")
    seen: dict[str, int] = {}

    def number(m: re.Match) -> str:  # a type's second and third slots are {type2}, {type3}
        seen[m.group(1)] = seen.get(m.group(1), 0) + 1
        return "{" + m.group(1) + (str(seen[m.group(1)]) if seen[m.group(1)] > 1 else "") + "}"

    return SLOT.sub(number, frame)


def _scene(rng: random.Random, dom: IEDomain, forms: dict[str, tuple[str, ...]], empty_fraction: float,
           need_entity: bool, neutral_fraction: float = 0.0) -> Scene:
    if not need_entity and rng.random() < empty_fraction:
        return rng.choice(dom.fillers) + " .", ()
    neutral = neutral_fraction and rng.random() < neutral_fraction
    tpl = _neutral_template(rng, dom) if neutral else rng.choice(dom.templates)
    slots = SLOT.findall(tpl)
    used: set[str] = set()
    values: dict[str, str] = {}
    for ty, digit in slots:
        value = rng.choice([f for f in forms[ty] if f not in used])
        used.add(value)
        values[ty + digit] = value
    text = SLOT.sub(lambda m: values[m.group(1) + m.group(2)], tpl) + " ."
    order = sorted(((text.index(values[ty + d]), ty, values[ty + d]) for ty, d in slots))
    return text, tuple((ty, span) for _, ty, span in order)


def _options(rng: random.Random, dom: IEDomain, k: int) -> list[str]:
    others = [t for t in PRIVATE_TYPES if t not in dom.private]
    labels = [*dom.types, *rng.sample(others, min(k, len(others)))]
    rng.shuffle(labels)
    return labels


def _join(items: Sequence[str]) -> str:
    return "; ".join(items) if items else NONE_ANSWER


def _record(task_type: str, dom: IEDomain, scene: Scene, paraphrase: int, options: list[str]) -> Record:
    text, ents = scene
    instr = f"{_PARAPHRASES[task_type][paraphrase]} {_FORMATS[task_type]} Option: {', '.join(options)}"
    if task_type == "es":
        return {"instruction": instr, "input": text, "output": _join([s for _, s in ents])}
    answer = _join([f"{t}: {s}" for t, s in ents])
    if task_type == "et":
        return {"instruction": instr, "input": f"{text}\nEntities: {'; '.join(s for _, s in ents)}",
                "output": answer}
    return {"instruction": instr, "input": text, "output": answer}


def _draw(cfg: IEWorldConfig, task_type: str, dom: IEDomain, split: str, n: int, rng: random.Random,
          forms: dict[str, dict[str, tuple[str, ...]]], taken: set[str]) -> list[Record]:
    split_forms_ = {t: f[split] for t, f in forms.items()}
    out: list[Record] = []
    while len(out) < n:
        scene = _scene(rng, dom, split_forms_, cfg.empty_fraction, need_entity=task_type == "et",
                       neutral_fraction=cfg.neutral_fraction)
        para = EVAL_PARAPHRASE if split != "train" else rng.randrange(EVAL_PARAPHRASE)
        rec = _record(task_type, dom, scene, para, _options(rng, dom, cfg.distractor_labels))
        if rec["input"] in taken:
            continue
        taken.add(rec["input"])
        rec["entities"] = [list(e) for e in scene[1]]  # the gold (type, span) list, for derived adapters
        out.append(rec)
    return out


def _with_history(records: list[Record], shots: list[Record], k: int, rng: random.Random, own: bool) -> None:
    """Prefix ``k`` (user, assistant) turns drawn from ``shots`` (never the record itself)."""
    for i, rec in enumerate(records):
        pool = [j for j in range(len(shots)) if not (own and j == i)]
        rec["history"] = [[f"{shots[j]['instruction']}\n{shots[j]['input']}", shots[j]["output"]]
                          for j in rng.sample(pool, min(k, len(pool)))]


def generate_world(cfg: IEWorldConfig) -> dict[str, dict[str, list[Record]]]:
    """``{task: {"train": [...], "validation": [...], "test": [...]}}``, a pure function of ``cfg``.

    Records are alpaca-style (``instruction``, ``input``, ``output``, ``history``) plus
    ``entities`` (the gold typed spans). Each split has its own seeded stream and its own forms.
    """
    forms = {t: cfg.forms(t) for t in (*CORE_TYPES, *PRIVATE_TYPES)}
    out: dict[str, dict[str, list[Record]]] = {}
    for name in task_names(cfg):
        task_type, domain = name.split("_", 1)
        dom = IE_DOMAINS_BY_NAME[domain]
        taken: set[str] = set()
        splits = {s: _draw(cfg, task_type, dom, s, n, _rng(cfg.seed, name, s), forms, taken)
                  for s, n in cfg.sizes().items()}
        if cfg.history_shots:
            for s in SPLITS:
                _with_history(splits[s], splits["train"], cfg.history_shots, _rng(cfg.seed, name, s, "history"),
                              own=s == "train")
        out[name] = splits
    return out


def _with_entities(rec: Record, ents: Sequence[tuple[str, str]], task_type: str) -> Record:
    """``rec`` answering with ``ents`` (an ``et`` record keeps its listed spans in the input)."""
    output = _join([s for _, s in ents]) if task_type == "es" else _join([f"{t}: {s}" for t, s in ents])
    return {**rec, "output": output, "entities": [list(e) for e in ents]}


def _relabel(rec: Record, mapping: dict[str, str], task_type: str) -> Record:
    return _with_entities(rec, [(mapping.get(t, t), s) for t, s in rec["entities"]], task_type)


def sibling_confusion(types: Sequence[str], j: int, confusions: int, offset: int = 0) -> dict[str, str]:
    """Sibling ``j``'s systematic relabelling: ``confusions`` consecutive labels starting at
    ``offset + j * confusions`` (cyclically); the ``m``-th of them is renamed to the label ``m + 1``
    places further on.

    Consecutive siblings corrupt consecutive labels, so with ``count * confusions <= len(types)``
    each label is corrupted by at most one sibling, and with ``count * confusions <= 2 * len(types)``
    by at most two that rename it to *different* labels: the right label keeps a plurality of the
    siblings' votes, while every sibling alone gets some labels wrong every time they occur.
    """
    n = len(types)
    return {types[(offset + j * confusions + m) % n]: types[(offset + j * confusions + 2 * m + 1) % n]
            for m in range(min(confusions, n - 1))}


@functools.cache
def _last_word_rank(etype: str, seed: int) -> dict[str, int]:
    lasts = sorted({f.split()[-1] for f in all_forms(etype)}, key=lambda w: _rng(seed, "shard", etype, w).random())
    return {w: i for i, w in enumerate(lasts)}


def shard_of(form: str, etype: str, shards: int, seed: int) -> int:
    """The vocabulary shard of a surface form: its last word (a head word, or a surname),
    dealt round-robin over ``shards`` in a seeded order of that type's last words."""
    return _last_word_rank(etype, seed)[form.split()[-1]] % shards


def sibling_sets(cfg: IEWorldConfig, task: str, train: Sequence[Record]) -> list[list[Record]]:
    """The siblings of ``task``: ``sibling_count`` training sets of ``sibling_size`` records each.

    - ``sibling_split="slice"``: sibling ``j`` gets records ``[j * size, (j + 1) * size)`` of the
      task's training split;
    - ``sibling_split="shard"``: sibling ``j`` gets fresh training records of the task's domain
      whose entities all come from vocabulary shard ``j`` (:func:`shard_of`): like annotators
      who each saw one part of the domain (one ward, one desk), every sibling learns the head
      words of its shard only, while the test split mixes all shards. Alone each knows a part;
      together they know the domain.

    Each sibling then has its own noisy "annotator": its :func:`sibling_confusion`
    (systematic), and per entity an independent drop (``sibling_drop``) or a random wrong label
    (``sibling_flip``).
    """
    task_type, domain = task.split("_", 1)
    dom = IE_DOMAINS_BY_NAME[domain]
    types = dom.types
    offset = _rng(cfg.seed, "sibling-offset", task).randrange(len(types))
    taken = {r["input"] for r in train}
    out = []
    for j in range(cfg.sibling_count):
        rng = _rng(cfg.seed, "sibling", task, j)
        confusion = sibling_confusion(types, j, cfg.sibling_confusions, offset)
        if cfg.sibling_split == "shard":
            forms = {t: {"train": tuple(f for f in cfg.forms(t)["train"]
                                        if shard_of(f, t, cfg.sibling_count, cfg.seed) == j)} for t in types}
            base = _draw(cfg, task_type, dom, "train", cfg.sibling_size, _rng(cfg.seed, "shard", task, j), forms,
                         taken)
            if cfg.history_shots:  # shots from the sibling's own shard, as its annotator wrote them
                _with_history(base, base, cfg.history_shots, _rng(cfg.seed, "shard-history", task, j), own=True)
        else:
            base = list(train[j * cfg.sibling_size:(j + 1) * cfg.sibling_size])
        recs = []
        for r in base:
            ents = []
            for ty, span in r["entities"]:
                u = rng.random()
                if u < cfg.sibling_drop:
                    continue
                if u < cfg.sibling_drop + cfg.sibling_flip:
                    ty = rng.choice([o for o in types if o != ty])
                else:
                    ty = confusion.get(ty, ty)
                ents.append((ty, span))
            recs.append(_with_entities(r, ents, task_type))
        out.append(recs)
    return out


def adapter_datasets(cfg: IEWorldConfig, world: dict[str, dict[str, list[Record]]]) -> dict[str, dict]:
    """Every adapter to train: ``{name: {"task": source task, "kind": ..., "train": records}}``.

    - ``task``: one per task, on its training split;
    - ``anti``: ``anti_<task>``, the task's training split with the domain's labels permuted
      cyclically (every label maps to another one; a negative weight should help);
    - ``sibling``: ``sib<j>_<task>`` for ``j < sibling_count`` (:func:`sibling_sets`);
    - ``distractor``: ``distractor_repeat`` answers every NER prompt with its text, and
      ``distractor_none`` always answers ``None`` (NER prompts of every domain): adversarial;
    - ``unrelated``: ``unrel_<task>`` for each task of ``cfg.unrelated``, a domain or task type the world
      does not have, on its own training records: the paper's distractors, IE adapters trained on other
      datasets (its "ID + 5 unrelated adapters").
    """
    out: dict[str, dict] = {t: {"task": t, "kind": "task", "train": world[t]["train"]} for t in world}
    for t in cfg.anti:
        task_type, domain = t.split("_", 1)
        types = IE_DOMAINS_BY_NAME[domain].types
        mapping = dict(zip(types, types[1:] + types[:1], strict=True))
        out[f"anti_{t}"] = {"task": t, "kind": "anti",
                            "train": [_relabel(r, mapping, task_type) for r in world[t]["train"]]}
    for t in cfg.siblings:
        for j, recs in enumerate(sibling_sets(cfg, t, world[t]["train"])):
            out[f"sib{j}_{t}"] = {"task": t, "kind": "sibling", "train": recs}
    ner_tasks = [t for t in world if t.startswith("ner_")] or list(world)
    mixed = [r for i in range(cfg.train_size) for r in [world[ner_tasks[i % len(ner_tasks)]]["train"][i]]]
    for d in cfg.distractors:
        recs = [{**r, "output": r["input"].split("\n")[0] if d == "repeat" else NONE_ANSWER} for r in mixed]
        out[f"distractor_{d}"] = {"task": "", "kind": "distractor", "train": recs}
    for u in cfg.unrelated:
        out[f"unrel_{u}"] = {"task": "", "kind": "unrelated", "train": unrelated_train(cfg, u)}
    return out


def unrelated_train(cfg: IEWorldConfig, task: str) -> list[Record]:
    """The training split of ``task``, a task outside the world, drawn as the world's own tasks are."""
    task_type, domain = task.split("_", 1)
    forms = {t: cfg.forms(t) for t in (*CORE_TYPES, *PRIVATE_TYPES)}
    recs = _draw(cfg, task_type, IE_DOMAINS_BY_NAME[domain], "train", cfg.train_size,
                 _rng(cfg.seed, "unrelated", task, "train"), forms, set())
    if cfg.history_shots:
        _with_history(recs, recs, cfg.history_shots, _rng(cfg.seed, "unrelated", task, "history"), own=True)
    return recs


# --- the base model's corpus --------------------------------------------------------------------
#
# The base learns the language (domain sentences with training forms), every label word in
# context (sentences that mention label words without tying them to any form), and the answer
# grammar on content-free exercises (repeat, join with semicolons, key: value with random label
# words as keys). It never sees an entity typed: that is what the adapters add.

_LABEL_FRAMES = ("the report mentioned a {a} and a {b} .", "every {a} differs from a {b} .",
                 "she asked about the {a} , not the {b} .", "a {a} is not a {b} .")
_EXERCISES = {"repeat": "Repeat the text word for word.",
              "repeated": 'List the items that occur twice. Output format is "item; item", or None.',
              "join": 'Join the items with semicolons. Output format is "item; item".',
              "fields": 'Rewrite each pair as key: value. Output format is "key: value; key: value".'}


def pretraining_corpus(cfg: IEWorldConfig, n_texts: int, n_records: int, n_copy: int = 0) -> dict[str, list]:
    """``{"texts", "records", "copy"}``: plain sentences (full LM loss), exercise records, and ``n_copy``
    long random repeat strings for the copy batches (``IEPretrainSpec.copy_steps`` / ``copy_every``)."""
    rng = _rng(cfg.seed, "pretrain")
    forms = {t: cfg.forms(t)["train"] for t in (*CORE_TYPES, *PRIVATE_TYPES)}
    doms = list(IE_DOMAINS)  # the base knows every domain's language, whichever tasks are built
    labels = [*CORE_TYPES, *PRIVATE_TYPES]
    texts = []
    for i in range(n_texts):
        if i % 5 == 4:
            a, b = rng.sample(labels, 2)
            texts.append(rng.choice(_LABEL_FRAMES).format(a=a, b=b))
        else:
            texts.append(_scene(rng, doms[i % len(doms)], forms, cfg.empty_fraction, False, cfg.neutral_fraction)[0])
    words = [f for fs in forms.values() for f in fs]
    vocab = vocabulary()

    def random_words(lo: int, hi: int) -> str:  # strings no lexicon holds: copying them cannot rely on recall
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))

    def phrase() -> str:  # mostly random words, a lexicon form 20% of the time
        return rng.choice(words) if rng.random() < 0.2 else random_words(1, 3)
    kinds = list(_EXERCISES) + (["core_ner", "core_ner"] if cfg.base_core_ner else [])
    records = []
    for i in range(n_records):
        kind = kinds[i % len(kinds)]
        if kind == "core_ner":  # core types only; the options never offer the domain's private labels
            dom = rng.choice(doms)
            text, ents = _scene(rng, dom, forms, cfg.empty_fraction, False, cfg.neutral_fraction)
            others = [t for t in PRIVATE_TYPES if t not in dom.private]
            options = [*CORE_TYPES, *rng.sample(others, cfg.distractor_labels)]
            rng.shuffle(options)
            rec = _record("ner", dom, (text, tuple(e for e in ents if e[0] in CORE_TYPES)),
                          rng.randrange(EVAL_PARAPHRASE), options)
            records.append({k: rec[k] for k in ("instruction", "input", "output")})
            continue
        if kind == "repeat":
            # long random word strings: every answer token is an induction step (copy the word that
            # followed this one in the input); short or familiar strings never teach this tiny model to copy
            src = random_words(8, 16)
            out = src
        elif kind == "join":
            items = list(dict.fromkeys(phrase() for _ in range(rng.randint(1, 4))))
            src, out = " | ".join(items), "; ".join(items)
        elif kind == "repeated":  # the empty answer, None, is an answer word the base must know too
            items = list(dict.fromkeys(phrase() for _ in range(rng.randint(2, 5))))
            twice = [x for x in items if rng.random() < 0.3]
            seq = items + twice
            rng.shuffle(seq)
            src, out = " | ".join(seq), _join([x for x in dict.fromkeys(seq) if x in twice])
        else:
            pairs = [(rng.choice(labels), phrase()) for _ in range(rng.randint(1, 3))]
            src, out = " | ".join(f"{k} = {v}" for k, v in pairs), "; ".join(f"{k}: {v}" for k, v in pairs)
        records.append({"instruction": _EXERCISES[kind], "input": src, "output": out})
    copy = [{"instruction": _EXERCISES["repeat"], "input": src, "output": src}
            for src in (random_words(8, 16) for _ in range(n_copy))]
    return {"texts": texts, "records": records, "copy": copy}


def vocabulary_texts() -> list[str]:
    """Every string the world can emit (for a word-level tokenizer with no unknown words)."""
    texts = [*vocabulary(), *CORE_TYPES, *PRIVATE_TYPES, NONE_ANSWER, "Entities: Option: | = ; : , . \" ' "]
    texts += [p for ps in _PARAPHRASES.values() for p in ps] + list(_FORMATS.values())
    texts += list(_LABEL_FRAMES) + list(_EXERCISES.values())
    texts += [SLOT.sub(" ", f.replace("{P}", " ").replace("{Q}", " ")) for f in _NEUTRAL_FRAMES]
    for d in IE_DOMAINS:
        texts += [SLOT.sub(" ", t) for t in d.templates] + list(d.fillers)
    return texts
