"""Benchmark: Sakana's PS population on the VLM world scored in one jitted call vs a per-candidate loop.

    python -m evojax_merge.bench --vlm [--population 16] [--repeats 3] [--examples 64]

Random weights of the VLM world's default shape (a LLaVA with a 4-layer, hidden-64 Llama; 16 image tokens
of a 16 x 16 image) and ``--examples`` validation rows of 40 tokens whose image rows the kept vision tower
and projector computed (:class:`~evojax_merge.methods.vlm.VlmPSFitness`, what ``method=vlm_ps`` runs).
"loop" is the same jitted fitness called once per candidate (compiled once, as mergekit-evolve scores one
candidate at a time); "one call" is the population fitness the CMA-ES stage runs with the method's default
``population_chunk`` (auto: one candidate at a time inside the call on a CPU); "vmap" is the whole
population in one vmap. Best of ``--repeats`` after a warm-up, all in one run; prints the seconds and the
ratios loop / one call and loop / vmap.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evojax_merge.merge.sakana_ps import PSLayout, task_vectors_of
from evojax_merge.methods.vlm import VlmPSFitness
from evojax_merge.models.llava import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    image_rows,
    split_vlm_params,
    vlm_params,
)
from evojax_merge.models.loss import answer_targets
from evojax_merge.models.sources import SourceStack
from evojax_merge.models.vision import VisionConfig
from evojax_merge.perf import best_time
from evojax_merge.search.fitness import resolve_population_chunk
from evojax_merge.search.sakana import PSConfig
from evojax_merge.zoo.vlm_build import VlmModelSpec

G0 = jnp.int32(0)


def config(vocab: int = 160) -> LlavaConfig:
    """The VLM world's default shape (:class:`~evojax_merge.zoo.vlm_build.VlmModelSpec`)."""
    from evojax_merge.models.config import ModelConfig

    m = VlmModelSpec()
    text = ModelConfig(vocab_size=vocab, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
                       num_hidden_layers=m.num_hidden_layers, num_attention_heads=m.num_attention_heads,
                       num_key_value_heads=m.num_key_value_heads, head_dim=m.hidden_size // m.num_attention_heads)
    vision = VisionConfig(hidden_size=m.vision_hidden_size, intermediate_size=m.vision_intermediate_size,
                          num_hidden_layers=m.vision_layers, num_attention_heads=m.vision_heads,
                          patch_size=m.patch_size)
    return LlavaConfig(vision=vision, text=text, image_token_id=vocab - 1)


def _inputs(cfg: LlavaConfig, model, examples: int, length: int = 40) -> tuple[dict, jax.Array, jax.Array]:
    rng = np.random.default_rng(0)
    n = cfg.num_image_tokens
    ids = rng.integers(4, cfg.text.vocab_size - 1, (examples, length)).astype(np.int32)
    ids[:, 1: 1 + n] = cfg.image_token_id
    labels = np.full_like(ids, -100)
    labels[:, length - 3: length - 1] = ids[:, length - 3: length - 1]
    images = rng.standard_normal((examples, 3, cfg.vision.image_size, cfg.vision.image_size)).astype(np.float32)
    feats = np.asarray(jax.jit(lambda m, x: m.image_features(x))(model, jnp.asarray(images)))
    rows, is_image = image_rows(feats, ids, np.arange(examples), cfg.image_token_id)
    batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.ones_like(jnp.asarray(ids)),
             **{k: jnp.asarray(v) for k, v in answer_targets(labels).items()}}
    return batch, jnp.asarray(rows), jnp.asarray(is_image)


def bench(population: int = 16, repeats: int = 3, examples: int = 64) -> dict:
    cfg = config()
    models = [LlavaForConditionalGeneration(cfg, rngs=nnx.Rngs(s)) for s in (0, 1, 2)]
    langs = [split_vlm_params(vlm_params(m)).language for m in models]
    base, stack = langs[0], SourceStack(cfg.text, ("vlm_a", "lang_b"), {k: jnp.stack([langs[1][k], langs[2][k]])
                                                                        for k in langs[0]})
    batch, rows, is_image = _inputs(cfg, models[1], examples)
    layout = PSLayout(2, cfg.text.num_hidden_layers)
    chunk = resolve_population_chunk(PSConfig().population_chunk)
    fit = VlmPSFitness(layout, cfg.text, chunk)
    args = {"base": base, "tv": task_vectors_of(stack, base), "key": jax.random.key_data(jax.random.key(0)),
            "batch": batch, "rows": rows, "is_image": is_image}
    pop = jnp.asarray(np.random.default_rng(1).uniform(0.1, 1.0, (population, layout.length)), jnp.float32)
    batched, vmapped = jax.jit(fit), jax.jit(dataclasses.replace(fit, chunk=None))

    def one_call():
        return batched(args, pop, G0)

    def one_vmap():
        return vmapped(args, pop, G0)

    def loop():
        return [batched(args, pop[i:i + 1], G0) for i in range(population)]

    t_call, t_vmap, t_loop = (best_time(f, repeats).wall_s for f in (one_call, one_vmap, loop))
    check = np.asarray(one_call())
    single = np.concatenate([np.asarray(x) for x in loop()])
    return {"population": population, "examples": examples, "device": str(jax.devices()[0]),
            "population_chunk": chunk, "batched_s": t_call, "vmapped_s": t_vmap, "loop_s": t_loop,
            "ratio_loop_over_batched": t_loop / t_call, "ratio_loop_over_vmapped": t_loop / t_vmap,
            "max_abs_diff": float(np.abs(check - single).max())}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--examples", type=int, default=64)
    a = p.parse_args(argv)
    r = bench(a.population, a.repeats, a.examples)
    print(f"device {r['device']}")
    print(f"vlm ps: population {r['population']} x {r['examples']} examples (chunk: {r['population_chunk'] or 'all'}): "
          f"one call {r['batched_s']:.3f}s, whole-population vmap {r['vmapped_s']:.3f}s, loop {r['loop_s']:.3f}s; "
          f"loop / one call {r['ratio_loop_over_batched']:.2f}x, loop / vmap {r['ratio_loop_over_vmapped']:.2f}x "
          f"(max |diff| {r['max_abs_diff']:.2e})")
    print(json.dumps(r))
    return r


if __name__ == "__main__":
    main()
