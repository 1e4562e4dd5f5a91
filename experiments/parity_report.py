"""Print the largest logit differences between the Flax model and transformers / PEFT.

    python experiments/parity_report.py

The same checks as tests/test_model.py and tests/test_lora_pool.py, as figures: float32 logits
against transformers (Llama, Llama-3 rope scaling + tied embeddings, Mistral with a sliding
window, Qwen2 with q/k/v bias) on a right-padded batch; every adapter of a 5-adapter pool against
PeftModel; an exported merged adapter reloaded by PEFT; the answer-only loss.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hf_oracles import build_hf_model, build_peft_adapter, random_batch  # noqa: E402

from evojax_merge.lora import LoraAdapter, load_pool, save_peft_adapter  # noqa: E402
from evojax_merge.models import causal_lm_loss, load_config, load_model  # noqa: E402


def _peft_logits(base_dir, adapter_dir, ids, mask):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()


def main() -> None:
    root = Path(tempfile.mkdtemp())
    print("check                                   max |Δlogit| (valid positions)")
    for arch in ("llama", "llama3", "mistral", "qwen2"):
        hf = build_hf_model(arch, root / arch, seed=1)
        ids, mask = random_batch(hf.config.vocab_size, batch=3, length=11)
        with torch.no_grad():
            ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
        ours, _ = load_model(root / arch)(jnp.asarray(ids), jnp.asarray(mask))
        print(f"  base {arch:<33s} {np.abs(np.asarray(ours) - ref)[mask.astype(bool)].max():.2e}")
    base = build_hf_model("llama", root / "base", seed=0)
    dirs = [build_peft_adapter(base, root / f"adapter_{i}", seed=10 + i) for i in range(5)]
    cfg = load_config(root / "base")
    pool, model = load_pool(dirs, cfg), load_model(root / "base")
    ids, mask = random_batch(cfg.vocab_size, seed=7)
    valid = mask.astype(bool)
    for i, d in enumerate(dirs):
        ours, _ = model(jnp.asarray(ids), jnp.asarray(mask), lora=pool.stack.adapter(i))
        diff = np.abs(np.asarray(ours) - _peft_logits(root / "base", d, ids, mask))[valid].max()
        print(f"  adapter {i} vs PeftModel               {diff:.2e}")
    beta = jnp.asarray([0.7, -0.3, 0.5, 1.2, -0.9])
    merged = LoraAdapter(A={m: jnp.einsum("n,nrd->rd", beta, a) for m, a in pool.stack.A.items()},
                         B={m: jnp.einsum("n,nor->or", beta, b) for m, b in pool.stack.B.items()},
                         scale=pool.stack.scale[0])
    out = save_peft_adapter(merged, root / "merged", base_model_name_or_path=str(root / "base"))
    ours, _ = model(jnp.asarray(ids), jnp.asarray(mask), lora=merged)
    diff = np.abs(np.asarray(ours) - _peft_logits(root / "base", out, ids, mask))[valid].max()
    print(f"  merged export reloaded by PEFT          {diff:.2e}")
    labels = np.where(mask == 1, ids, -100)
    labels[:, :4] = -100
    with torch.no_grad():
        ref_loss = base(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                        labels=torch.from_numpy(labels)).loss.item()
    logits, _ = model(jnp.asarray(ids), jnp.asarray(mask))
    diff = abs(float(causal_lm_loss(logits, jnp.asarray(labels))) - ref_loss)
    print(f"  answer-only loss |Δ|                    {diff:.2e}")


if __name__ == "__main__":
    main()
