"""PEFT loads every trained adapter of the real experiment, and gives this project's logits.

    python experiments/real/peft_check.py WORK OUT [--rows 2]

For each ``WORK/adapters/<set>``: ``PeftModel.from_pretrained`` on transformers' own load of the SmolLM2 GGUF
(float32), the first ``--rows`` validation rows of that set in the LLaMA-Factory prompt style, and the max
|logit difference| against this project's model with the same adapter (every real token). Writes
``OUT/peft_check.md`` and ``OUT/peft_check.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np


def check(work: Path, rows: int = 2) -> dict[str, dict]:
    import jax.numpy as jnp
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from evojax_merge.data.batching import encode_records
    from evojax_merge.data.records import load_records
    from evojax_merge.lora.pool import load_pool
    from evojax_merge.models.gguf import load_gguf, smollm2_gguf_path

    model, tok = load_gguf(None)
    path = smollm2_gguf_path()
    # transformers dequantizes the GGUF once; each adapter wraps its own copy (PEFT injects layers in place)
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, torch_dtype=torch.float32)
    out = {}
    for adapter in sorted(p.parent for p in (work / "adapters").glob("*/adapter_model.safetensors")):
        name = adapter.name
        recs = load_records(work / "data" / name / "validation.json")[:rows]
        enc = encode_records(recs, tok, None, style="llamafactory").arrays
        ids, mask = np.asarray(enc["input_ids"]), np.asarray(enc["attention_mask"])
        peft = PeftModel.from_pretrained(copy.deepcopy(hf), str(adapter)).eval()
        with torch.no_grad():
            ref = peft(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()).logits
        pool = load_pool([adapter], model.config)
        ours, _ = model(jnp.asarray(ids), jnp.asarray(mask), lora=pool.stack.adapter(0))
        valid = mask.astype(bool)
        diff = float(np.abs(np.asarray(ours) - ref.numpy())[valid].max())
        out[name] = {"rows": int(ids.shape[0]), "tokens": int(valid.sum()), "max_abs_logit_diff": diff,
                     "peft_modules": len(peft.peft_config["default"].target_modules)}
        print(f"{name}: PEFT loaded it; max |Δlogit| {diff:.2e} over {int(valid.sum())} tokens", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--rows", type=int, default=2)
    args = ap.parse_args(argv)
    res = check(args.work, args.rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peft_check.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = ["# PEFT loads every trained adapter", "",
             f"`python experiments/real/peft_check.py WORK OUT --rows {args.rows}`: `PeftModel.from_pretrained` on "
             "transformers' float32 load of the SmolLM2 GGUF, the first validation rows of each set (LLaMA-Factory "
             "prompts), against this project's model with the same adapter.", "",
             "| adapter | rows | tokens | target modules | max abs logit difference |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {r['rows']} | {r['tokens']} | {r['peft_modules']} | {r['max_abs_logit_diff']:.2e} |"
              for n, r in res.items()]
    (args.out / "peft_check.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
