"""Does the base SmolLM2 score above zero on the held-out task? Chat-template prompt vs the plain one.

    python experiments/real_model/base_check.py DATA_DIR [--task NER_mixed --n 24 --json out.json]

The chat-template prompt is rendered here (issue 10 item 2's shape: each ``history`` pair a user
and an assistant turn, instruction plus input the last user turn, ``add_generation_prompt=True``)
so the check does not depend on which prompt code the branch carries; the plain prompt is the
project's ``evojax_merge.data.prompt``. Greedy answers are scored with the NER tuple metric.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from evojax_merge.data.records import load_records
from evojax_merge.eval.evaluate import generate_for_population
from evojax_merge.eval.generate import greedy_generate
from evojax_merge.eval.metrics import ie_scores
from evojax_merge.models.gguf import load_gguf


def chat_messages(record: dict) -> list[dict]:
    msgs = []
    for user, assistant in record.get("history") or []:
        msgs += [{"role": "user", "content": user.strip()}, {"role": "assistant", "content": assistant.strip()}]
    last = record["instruction"].strip()
    if record.get("input"):
        last += "\n" + record["input"].strip()
    return [*msgs, {"role": "user", "content": last}]


def chat_generate(model, tok, records: list[dict], max_new_tokens: int) -> list[str]:
    rows = [tok.apply_chat_template(chat_messages(r), tokenize=True, add_generation_prompt=True) for r in records]
    rows = [list(r["input_ids"]) if isinstance(r, dict) or hasattr(r, "keys") else list(r) for r in rows]
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), tok.pad_token_id, np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    lengths = jnp.asarray([len(r) for r in rows], jnp.int32)
    eos = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else tok.eos_token_id
    out = np.asarray(greedy_generate(model, jnp.asarray(ids), lengths, max_new_tokens, eos, tok.pad_token_id))
    texts = []
    for row in out:
        row = row.tolist()
        texts.append(tok.decode(row[: row.index(eos)] if eos in row else row, skip_special_tokens=True).strip())
    return texts


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--task", default="NER_mixed")
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    model, tok = load_gguf(None)
    records = load_records(args.data_dir / args.task / "test.jsonl")[: args.n]
    golds = [r["output"] for r in records]
    chat = chat_generate(model, tok, records, args.max_new_tokens)
    plain = generate_for_population(model, tok, None, records, 192, args.max_new_tokens)[0]
    out = {"task": args.task, "n": len(records),
           "chat_template": ie_scores(chat, golds, "ner"), "plain": ie_scores(plain, golds, "ner"),
           "examples": [{"gold": g.strip(), "chat": c, "plain": p}
                        for g, c, p in list(zip(golds, chat, plain, strict=True))[:4]]}
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
