"""Split the Evo-Merging authors' IE sets into fixed-seed train / validation / test files.

    python experiments/real/prepare.py DATA_DIR OUT [--train 200 --validation 50 --test 50 --seed 0]
        [--history keep|drop] [--only conll04,mit-movie] [--max-tokens 384 --model smollm2]

``DATA_DIR`` is laid out like the authors' ``BMM_code/data/Userdata/datasets/`` (their file names, ``.json``
or ``.json.gz``; ``../shared/data/bmm-ie`` on this project's machines). Per set, one permutation of its
records by ``default_rng([seed, crc32(name)])``: the first ``test`` records are the test split, the next
``validation`` the validation split, the next ``train`` (at most) the train split. Writes

    OUT/train/<name>.json                  one file per set (the pool trainer's --data: one adapter each)
    OUT/<name>/{validation,test}.json      the engine's world.tasks.<name>.{validation,test}
    OUT/splits.json                        sizes, seed, source files and their SHA-256

``--history drop`` removes the few-shot history of every record (zero-shot prompts; the CPU budget).
``--max-tokens N`` (with ``--model``, whose tokenizer counts) leaves out, before the split, the records whose
LLaMA-Factory row (prompt, after the history policy, plus answer) is longer than N tokens; how many per set is
in ``splits.json`` (``left_out``). A
missing data directory or set is one line naming it (``EvoMergeInputError``). Idempotent: the same inputs
write the same bytes, and an existing ``splits.json`` from other inputs is an error, not overwritten.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zlib
from pathlib import Path

import numpy as np

# short name -> (the authors' file stem, IE type, paper role)
SETS: dict[str, tuple[str, str, str]] = {
    "mit-restaurant": ("mit-restaurant-sampled300", "ner", "ood"),
    "findvehicle": ("FindVehicle_sample300", "ner", "ood"),
    "nyt": ("New-York-Times-RE_sample_30000_sample300", "re", "ood"),
    "conll04": ("conll04_sample300", "re", "ood"),
    "mit-movie": ("mit-movie_sample300", "ner", "ood"),
    "fabner": ("FabNER_sample300", "ner", "ood"),
    "casie": ("CASIE_sample300", "ee", "pool"),
    "scierc": ("SciERC_sample300", "re", "pool"),
    "wikineural": ("WikiNeural_sample300", "ner", "pool"),
}
OOD_TARGETS = tuple(n for n, (_, _, role) in SETS.items() if role == "ood")


def _error(msg: str):
    from evojax_merge.errors import EvoMergeInputError

    return EvoMergeInputError(msg)


def find_set(data_dir: Path, stem: str) -> Path:
    """The set's file in ``data_dir`` (``.json.gz`` or ``.json``)."""
    for suffix in (".json.gz", ".json"):
        if (data_dir / f"{stem}{suffix}").is_file():
            return data_dir / f"{stem}{suffix}"
    raise _error(f"data_dir: {data_dir}: no {stem}.json or {stem}.json.gz (the authors' "
                 "BMM_code/data/Userdata/datasets/ layout)")


def split_set(records: list[dict], name: str, seed: int, sizes: tuple[int, int, int]) -> dict[str, list[dict]]:
    """``{"train", "validation", "test"}`` of one set: test first, then validation, then train (at most)."""
    n_train, n_val, n_test = sizes
    if len(records) < n_val + n_test + 1:
        raise _error(f"{name}: {len(records)} records, fewer than validation {n_val} + test {n_test} + 1")
    order = np.random.default_rng([seed, zlib.crc32(name.encode())]).permutation(len(records)).tolist()
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:n_test + n_val + n_train]
    return {"train": [records[i] for i in train], "validation": [records[i] for i in val],
            "test": [records[i] for i in test]}


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, ensure_ascii=False, indent=1)
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def row_lengths(records: list[dict], tokenizer) -> list[int]:
    """Each record's training row in tokens (LLaMA-Factory prompt and answer, every turn it carries)."""
    from evojax_merge.data.batching import encode_records

    enc = encode_records(records, tokenizer, None, style="llamafactory", cap=1 << 20)
    return [int(x) for x in enc.arrays["attention_mask"].sum(1)]


def prepare(data_dir: Path, out: Path, sizes: tuple[int, int, int] = (200, 50, 50), seed: int = 0,
            history: str = "drop", only: tuple[str, ...] = (), max_tokens: int | None = None,
            tokenizer=None) -> dict:
    """Write the splits of every set (or ``only`` these) under ``out``; returns ``splits.json``'s content."""
    from evojax_merge.data.records import load_records

    if max_tokens is not None and tokenizer is None:
        raise _error("--max-tokens: needs --model (its tokenizer counts the tokens)")

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise _error(f"data_dir: {data_dir} is not a directory (the authors' IE sets; see experiments/real/README.md)")
    if history not in ("keep", "drop"):
        raise _error(f"--history: {history!r} is not keep or drop")
    names = list(only) or list(SETS)
    unknown = [n for n in names if n not in SETS]
    if unknown:
        raise _error(f"--only: unknown set {unknown[0]!r} (known: {', '.join(SETS)})")
    meta = {"seed": seed, "sizes": dict(zip(("train", "validation", "test"), sizes, strict=True)),
            "history": history, "max_tokens": max_tokens, "sets": {}}
    for name in names:
        stem, task_type, role = SETS[name]
        path = find_set(data_dir, stem)
        records = load_records(path)
        if history == "drop":
            records = [{**r, "history": []} for r in records]
        total = len(records)
        if max_tokens is not None:
            records = [r for r, n in zip(records, row_lengths(records, tokenizer), strict=True) if n <= max_tokens]
        parts = split_set(records, name, seed, sizes)
        _dump(out / "train" / f"{name}.json", parts["train"])
        for split in ("validation", "test"):
            _dump(out / name / f"{split}.json", parts[split])
        meta["sets"][name] = {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                              "type": task_type, "role": role, "records": total, "left_out": total - len(records),
                              **{k: len(v) for k, v in parts.items()}}
    old = out / "splits.json"
    if old.is_file() and json.loads(old.read_text()) != meta:
        raise _error(f"{old}: written from other inputs (seed, sizes, history or files); use another directory")
    _dump(old, meta)
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--validation", type=int, default=50)
    ap.add_argument("--test", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--history", default="drop")
    ap.add_argument("--only", default="", help="comma-separated set names (default: all nine)")
    ap.add_argument("--max-tokens", type=int, default=None, help="leave out records whose row is longer")
    ap.add_argument("--model", default=None, help="whose tokenizer counts (smollm2, a .gguf, an HF directory)")
    args = ap.parse_args(argv)
    from evojax_merge.errors import EvoMergeInputError

    try:
        tok = None
        if args.model is not None:
            from evojax_merge.pool.__main__ import load_base

            tok = load_base(args.model)[1]
        meta = prepare(args.data_dir, args.out, (args.train, args.validation, args.test), args.seed, args.history,
                       tuple(s for s in args.only.split(",") if s), args.max_tokens, tok)
    except EvoMergeInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({n: {k: s[k] for k in ("train", "validation", "test")} for n, s in meta["sets"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
