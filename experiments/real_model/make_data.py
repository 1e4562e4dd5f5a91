"""Write the real-model example's IE data: InstructUIE-style records (docs/ie-formats.md), one folder per task.

    python experiments/real_model/make_data.py OUT_DIR [--train 96 --validation 24 --test 24 --seed 0]

Each task gets ``train.jsonl``, ``validation.jsonl`` and ``test.jsonl``. A record's
``instruction`` holds the options, the text and the closing cue ``Answer:``; ``input`` is empty
(the text is in the instruction); ``output`` starts with a space (as in the released sets);
``history`` is one earlier (user, assistant) shot of the same task. Four NER-style tasks train
the adapters; ``NER_mixed`` (person, organization and location in one sentence) is held out: no
adapter is trained on it.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

PEOPLE = ["Lena Park", "Igor Khmelnov", "Maria Lopez", "Tom Baker", "Aiko Tanaka", "Omar Haddad", "Sara Novak",
          "Peter Olsen", "Grace Kim", "Luis Ortega", "Nina Petrova", "David Cohen", "Emma Stone", "Raj Patel"]
ORGS = ["Orbit Labs", "Pacific Fleet", "Nordic Bank", "Blue River Studios", "Acme Motors", "Helix Pharma",
        "Sunrise Foods", "Vertex Systems", "Harbor Press", "Green Leaf Energy", "Atlas Airlines", "Kestrel Group"]
PLACES = ["Oslo", "Paris", "Tokyo", "Cairo", "Lima", "Toronto", "Nairobi", "Berlin", "Madrid", "Seoul", "Denver",
          "Dublin", "Mumbai", "Perth"]
PRODUCTS = ["Falcon X2", "Nova Phone", "Quartz Watch", "Echo Speaker", "Titan Drill", "Aurora Lamp", "Pixel Pad"]

INSTRUCTION = 'Find entities as "type: word; type: word". \nOption: {options} \nText: {text} \nAnswer:'

# task -> (options, [(sentence template, [(type, slot)...])])
TASKS: dict[str, tuple[str, list[tuple[str, list[tuple[str, str]]]]]] = {
    "NER_people_places": ("person, location", [
        ("{P} moved to {L} last year .", [("person", "P"), ("location", "L")]),
        ("{P} was born in {L} .", [("person", "P"), ("location", "L")]),
        ("In {L} , {P} gave a speech .", [("location", "L"), ("person", "P")]),
    ]),
    "NER_company_sites": ("organization, location", [
        ("{O} opened an office in {L} .", [("organization", "O"), ("location", "L")]),
        ("{O} is based in {L} .", [("organization", "O"), ("location", "L")]),
        ("A new factory of {O} was built near {L} .", [("organization", "O"), ("location", "L")]),
    ]),
    "NER_staff": ("person, organization", [
        ("{P} works for {O} .", [("person", "P"), ("organization", "O")]),
        ("{O} hired {P} as its new director .", [("organization", "O"), ("person", "P")]),
        ("{P} left {O} in March .", [("person", "P"), ("organization", "O")]),
    ]),
    "NER_products": ("product, organization", [
        ("{O} released the {R} .", [("organization", "O"), ("product", "R")]),
        ("The {R} is made by {O} .", [("product", "R"), ("organization", "O")]),
    ]),
    "NER_mixed": ("person, organization, location", [
        ("{P} joined {O} in {L} .", [("person", "P"), ("organization", "O"), ("location", "L")]),
        ("{O} sent {P} to {L} .", [("organization", "O"), ("person", "P"), ("location", "L")]),
    ]),
}
HELD_OUT = "NER_mixed"
POOLS = {"P": PEOPLE, "O": ORGS, "L": PLACES, "R": PRODUCTS}


def _example(task: str, rng: random.Random) -> tuple[str, str, str]:
    """(instruction, text, answer) of one random sentence of ``task``."""
    options, templates = TASKS[task]
    template, slots = rng.choice(templates)
    fill = {k: rng.choice(v) for k, v in POOLS.items()}
    text = template.format(**fill)
    answer = "; ".join(f"{typ}: {fill[slot]}" for typ, slot in slots)
    return INSTRUCTION.format(options=options, text=text), text, answer


def make_records(task: str, n: int, rng: random.Random) -> list[dict]:
    out = []
    for _ in range(n):
        shot_instruction, _, shot_answer = _example(task, rng)
        instruction, text, answer = _example(task, rng)
        out.append({"instruction": instruction, "input": "", "output": " " + answer,
                    "history": [[shot_instruction, " " + shot_answer]]})
    return out


def write_all(out_dir: Path, train: int, validation: int, test: int, seed: int) -> dict[str, dict[str, str]]:
    """Write every task's splits; returns task -> split -> path."""
    from evojax_merge.data.records import save_records

    paths: dict[str, dict[str, str]] = {}
    for i, task in enumerate(TASKS):
        rng = random.Random(seed * 1000 + i)
        paths[task] = {}
        for split, n in (("train", train), ("validation", validation), ("test", test)):
            p = save_records(out_dir / task / f"{split}.jsonl", make_records(task, n, rng))
            paths[task][split] = str(p)
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--train", type=int, default=96)
    ap.add_argument("--validation", type=int, default=24)
    ap.add_argument("--test", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    paths = write_all(args.out_dir, args.train, args.validation, args.test, args.seed)
    print(json.dumps({"held_out": HELD_OUT, "tasks": paths}, indent=1))


if __name__ == "__main__":
    main()
