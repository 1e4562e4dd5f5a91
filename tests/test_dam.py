"""DAM: the merge against dense numpy, the objective by hand, training, NaN handling, export fidelity."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_oracles import build_hf_model, random_batch

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.export.dam_io import (
    load_coefficients,
    load_full_sources,
    save_coefficients,
    save_merged_adapter,
    save_merged_model,
)
from evojax_merge.lora import load_pool
from evojax_merge.lora.adapter import LoraStack
from evojax_merge.merge.dam import (
    DamParts,
    cosine_similarity_term,
    dam_merge,
    dam_merge_lora,
    init_coefficients,
    init_lora_coefficients,
    stack_sources,
)
from evojax_merge.models import load_config, load_model
from evojax_merge.search.dam import DamConfig, DamNonFiniteError, LoraDamModel, kl_to_teacher, train_dam


def _stacked(rng, n=3):
    return {
        "model.layers.0.self_attn.q_proj.weight": rng.normal(size=(n, 5, 4)).astype(np.float32),
        "model.layers.0.self_attn.q_proj.bias": rng.normal(size=(n, 5)).astype(np.float32),
        "model.embed_tokens.weight": rng.normal(size=(n, 7, 4)).astype(np.float32),
        "model.layers.0.input_layernorm.weight": rng.normal(size=(n, 4)).astype(np.float32),
        "lm_head.weight": rng.normal(size=(n, 7, 4)).astype(np.float32),
    }


@pytest.mark.parametrize("parts", [DamParts(), DamParts(embeddings=True, norms=True)])
def test_full_merge_matches_dense_numpy(parts):
    rng = np.random.default_rng(0)
    stacked = _stacked(rng)
    coeffs = {k: rng.normal(size=c.shape).astype(np.float32) for k, c in init_coefficients(stacked, parts).items()}
    expect_keys = {"model.layers.0.self_attn.q_proj.weight", "lm_head.weight"}
    if parts.embeddings:
        expect_keys.add("model.embed_tokens.weight")
    if parts.norms:
        expect_keys.add("model.layers.0.input_layernorm.weight")
    assert set(coeffs) == expect_keys
    merged = dam_merge({k: jnp.asarray(v) for k, v in stacked.items()}, {k: jnp.asarray(v) for k, v in coeffs.items()})
    for k, w in stacked.items():
        if k in coeffs:
            if w.ndim == 3:
                ref = sum(w[i] @ np.diag(coeffs[k][i]) for i in range(3))
            else:
                ref = sum(w[i] * coeffs[k][i] for i in range(3))
        else:  # no coefficient: the source mean (soup)
            ref = w.mean(0)
        np.testing.assert_allclose(np.asarray(merged[k]), ref, rtol=1e-5, atol=1e-5)


def test_init_is_the_uniform_soup():
    rng = np.random.default_rng(1)
    stacked = {k: jnp.asarray(v) for k, v in _stacked(rng).items()}
    merged = dam_merge(stacked, init_coefficients(stacked, DamParts(True, True)))
    for k, w in stacked.items():
        np.testing.assert_allclose(np.asarray(merged[k]), np.asarray(w).mean(0), rtol=1e-5, atol=1e-6)


def test_lora_merge_matches_dense_numpy():
    rng = np.random.default_rng(2)
    n, r, d_in, d_out = 3, 2, 6, 5
    A = {"layers.0.mlp.up_proj": rng.normal(size=(n, r, d_in)).astype(np.float32)}
    B = {"layers.0.mlp.up_proj": rng.normal(size=(n, d_out, r)).astype(np.float32)}
    scale = np.asarray([2.0, 0.5, 1.5], np.float32)
    stack = LoraStack(A={k: jnp.asarray(v) for k, v in A.items()}, B={k: jnp.asarray(v) for k, v in B.items()},
                      scale=jnp.asarray(scale))
    c = rng.normal(size=(n, d_in)).astype(np.float32)
    adapter = dam_merge_lora(stack, {"layers.0.mlp.up_proj": jnp.asarray(c)})
    m = "layers.0.mlp.up_proj"
    assert adapter.A[m].shape == (n * r, d_in) and adapter.B[m].shape == (d_out, n * r)
    ours = float(adapter.scale) * np.asarray(adapter.B[m]) @ np.asarray(adapter.A[m])
    ref = sum(scale[i] * B[m][i] @ (A[m][i] @ np.diag(c[i])) for i in range(n))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    init = dam_merge_lora(stack, init_lora_coefficients(stack))
    soup = sum(scale[i] * B[m][i] @ A[m][i] for i in range(n)) / n
    np.testing.assert_allclose(np.asarray(init.B[m]) @ np.asarray(init.A[m]), soup, rtol=1e-5, atol=1e-5)


def test_cosine_term_by_hand():
    coeffs = {"a": jnp.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),  # pairs: 0, 1/√2, 1/√2
              "b": jnp.asarray([[2.0, 2.0], [1.0, 1.0]])}  # one pair: 1
    assert float(cosine_similarity_term(coeffs)) == pytest.approx(1.0 + math.sqrt(2) / 3, rel=1e-6)


def test_kl_by_hand():
    # one token, two classes: teacher logits (0, 0) -> p = (1/2, 1/2); student logits (2·ln 3, 0) at T=2
    # -> q = (3/4, 1/4); KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3); times T² = 4
    teacher = jnp.zeros((1, 1, 2))
    student = jnp.asarray([[[2 * math.log(3.0), 0.0]]])
    mask = jnp.ones((1, 1), bool)
    assert float(kl_to_teacher(student, teacher, mask, 2.0)) == pytest.approx(4 * 0.5 * math.log(4 / 3), rel=1e-5)
    assert float(kl_to_teacher(teacher, teacher, mask, 2.0)) == pytest.approx(0.0, abs=1e-7)
    # masked tokens count for nothing; top-k renormalises over the stored ids only
    two = jnp.concatenate([student, jnp.asarray([[[50.0, -50.0]]])], axis=1)
    assert float(kl_to_teacher(two, jnp.zeros((1, 2, 2)), jnp.asarray([[True, False]]), 2.0)) == pytest.approx(
        4 * 0.5 * math.log(4 / 3), rel=1e-5)
    wide = jnp.asarray([[[2 * math.log(3.0), 9.0, 0.0]]])
    got = kl_to_teacher(wide, jnp.zeros((1, 1, 2)), mask, 2.0, teacher_ids=jnp.asarray([[[0, 2]]]))
    assert float(got) == pytest.approx(4 * 0.5 * math.log(4 / 3), rel=1e-5)


def _examples(vocab, rows, length, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(rows, length)).astype(np.int32)
    labels = np.full_like(ids, -100)
    labels[:, length // 2:] = ids[:, length // 2:]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels}


@pytest.fixture(scope="module")
def lora_dam(llama_with_pool):
    base_dir, adapter_dirs, _ = llama_with_pool
    cfg = load_config(base_dir)
    pool = load_pool(adapter_dirs[:3], cfg)
    return base_dir, pool, LoraDamModel(load_model(base_dir), pool.stack, pool.names), cfg


@pytest.mark.slow
def test_lora_training_lowers_the_loss_and_counts(lora_dam):
    _, pool, model, cfg = lora_dam
    data = [_examples(cfg.vocab_size, 12, 10, seed=i) for i in range(3)]
    res = train_dam(model, DamConfig(lr=3e-2, batch_size=2, epochs=2), data)
    assert res.steps == 2 * 6 and len(res.history) == 12
    assert res.forward_examples == 3 * 12 + 12 * 3 * 2 and res.backward_examples == 12 * 3 * 2
    first = res.history[0]
    # at init every source's coefficients are equal: cos = 1 per module, summed over modules
    assert first["cos"] == pytest.approx(len(pool.stack.A), rel=1e-4)
    assert all(np.isfinite(c).all() for c in res.coefficients.values())
    moved = max(np.abs(c - 1 / 3).max() for c in res.coefficients.values())
    assert moved > 1e-3
    # full batches (every step sees the same examples): the KL goes down, with full or top-k logits
    for top_k in (None, 8):
        res_k = train_dam(model, DamConfig(lr=3e-2, batch_size=12, epochs=3, top_k=top_k), data)
        kl = [h["kl"] for h in res_k.history]
        assert res_k.steps == 3 and kl[0] > 0 and kl[2] < kl[1] < kl[0]


def test_ce_objective_uses_target_data(lora_dam):
    _, _, model, cfg = lora_dam
    target = _examples(cfg.vocab_size, 8, 10, seed=9)
    res = train_dam(model, DamConfig(objective="ce", lr=3e-2, batch_size=2, lambda_cos=0.0), target_data=target)
    assert res.steps == 4 and res.history[-1]["ce"] < res.history[0]["ce"]
    with pytest.raises(EvoMergeInputError, match="ce objective needs the target's validation data"):
        train_dam(model, DamConfig(objective="ce"))


@pytest.mark.slow
def test_non_finite_coefficients_stop_with_the_step_and_key(lora_dam, tmp_path):
    _, _, model, cfg = lora_dam
    data = [_examples(cfg.vocab_size, 8, 10, seed=i) for i in range(3)]
    with pytest.raises(DamNonFiniteError) as err:
        train_dam(model, DamConfig(lr=1e30, batch_size=2), data)
    e = err.value
    msg = str(e)
    assert "\n" not in msg and "non-finite coefficients in 'layers." in msg and f"at step {e.step + 1}" in msg
    assert e.step >= 1 and len(e.history) == e.step
    assert all(np.isfinite(c).all() for c in e.coefficients.values())
    # the kept coefficients round-trip; a NaN file is refused naming the key
    path = save_coefficients(e.coefficients, tmp_path / "c.safetensors")
    assert set(load_coefficients(path)) == set(e.coefficients)
    bad = dict(e.coefficients)
    key = next(iter(bad))
    bad[key] = np.full_like(bad[key], np.nan)
    save_coefficients(bad, tmp_path / "bad.safetensors")
    with pytest.raises(EvoMergeInputError, match=f"non-finite coefficients in '{key}'"):
        load_coefficients(tmp_path / "bad.safetensors")


def test_bad_input_names_the_source(lora_dam):
    _, _, model, cfg = lora_dam
    good = _examples(cfg.vocab_size, 4, 10, seed=0)
    with pytest.raises(EvoMergeInputError, match="source 'adapter_1' has no data for its KL term"):
        train_dam(model, DamConfig(), [good, None, good])
    empty = {k: v[:0] for k, v in good.items()}
    with pytest.raises(EvoMergeInputError, match="source 'adapter_2' has no data"):
        train_dam(model, DamConfig(), [good, good, empty])
    no_answer = dict(good, labels=np.full_like(good["labels"], -100))
    with pytest.raises(EvoMergeInputError, match="source 'adapter_0' has no answer tokens"):
        train_dam(model, DamConfig(), [no_answer, good, good])
    with pytest.raises(EvoMergeInputError, match="3 sources but data for 2"):
        train_dam(model, DamConfig(), [good, good])
    nan_init = {k: v.at[0, 0].set(jnp.nan) for k, v in model.init().items()}
    with pytest.raises(EvoMergeInputError, match=r"non-finite initial coefficient in '.*' \(adapter_0\)"):
        train_dam(model, DamConfig(), [good] * 3, init=nan_init)
    with pytest.raises(EvoMergeInputError, match="dam.objective"):
        train_dam(model, DamConfig(objective="mse"), [good] * 3)
    a = {"w.weight": np.zeros((2, 3)), "b.weight": np.zeros((2, 2))}
    with pytest.raises(EvoMergeInputError, match=r"source 'two' has 'w.weight' of shape \(2, 4\)"):
        stack_sources([a, {**a, "w.weight": np.zeros((2, 4))}], ["one", "two"])
    with pytest.raises(EvoMergeInputError, match="source 'two' differs from 'one' in tensor 'b.weight'"):
        stack_sources([a, {"w.weight": np.zeros((2, 3))}], ["one", "two"])


@pytest.mark.slow
def test_lora_export_matches_peft(lora_dam, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir, pool, model, cfg = lora_dam
    rng = np.random.default_rng(3)
    coeffs = {k: np.asarray(v) + rng.normal(0, 0.2, v.shape).astype(np.float32) for k, v in model.init().items()}
    out = save_merged_adapter(model, coeffs, tmp_path / "dam_adapter")
    ids, mask = random_batch(cfg.vocab_size, seed=5)
    merged = model.merged_adapter({k: jnp.asarray(v) for k, v in coeffs.items()})
    ours = np.asarray(load_model(base_dir)(jnp.asarray(ids), jnp.asarray(mask), lora=merged)[0])
    hf = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    peft_model = PeftModel.from_pretrained(hf, out).eval()
    with torch.no_grad():
        ref = peft_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    valid = mask.astype(bool)
    assert np.abs(ours - ref)[valid].max() <= 1e-4
    plain = np.asarray(load_model(base_dir)(jnp.asarray(ids), jnp.asarray(mask))[0])
    assert np.abs(ours - plain)[valid].max() > 1e-3  # the merged adapter is really there


@pytest.mark.slow
def test_full_models_train_and_export_to_hf(tmp_path):
    from transformers import AutoModelForCausalLM

    dirs = []
    base = build_hf_model("llama", tmp_path / "src_0", seed=0)
    dirs.append(tmp_path / "src_0")
    for i in (1, 2):  # "fine-tunes": the base plus a small random update
        torch.manual_seed(100 + i)
        with torch.no_grad():
            for p in base.parameters():
                p.add_(0.02 * torch.randn_like(p))
        base.save_pretrained(tmp_path / f"src_{i}")
        dirs.append(tmp_path / f"src_{i}")
    model = load_full_sources(dirs, DamParts(embeddings=True, norms=True))
    cfg = model.config
    data = [_examples(cfg.vocab_size, 6, 10, seed=i) for i in range(3)]
    res = train_dam(model, DamConfig(lr=1e-2, batch_size=6, epochs=3, positions="all", embeddings=True,
                                          norms=True), data)
    kl = [h["kl"] for h in res.history]
    assert res.steps == 3 and kl[0] > 0 and kl[2] < kl[1] < kl[0]
    assert "model.embed_tokens.weight" in res.coefficients and "model.norm.weight" in res.coefficients
    out = save_merged_model(model, res.coefficients, tmp_path / "merged")
    ids, mask = random_batch(cfg.vocab_size, seed=4)
    merged = model.model_for(model.merged_weights({k: jnp.asarray(v) for k, v in res.coefficients.items()}))
    ours = np.asarray(merged(jnp.asarray(ids), jnp.asarray(mask))[0])
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    valid = mask.astype(bool)
    assert np.abs(ours - ref)[valid].max() <= 1e-4
    reloaded = np.asarray(load_model(out)(jnp.asarray(ids), jnp.asarray(mask))[0])
    assert np.abs(ours - reloaded)[valid].max() <= 1e-5
    # a source of another shape is refused, naming it
    build_hf_model("llama", tmp_path / "odd", seed=1, intermediate_size=96)
    with pytest.raises(EvoMergeInputError, match="source 'odd' has 'model.layers.0.mlp.down_proj.weight'"):
        load_full_sources([dirs[0], tmp_path / "odd"])
