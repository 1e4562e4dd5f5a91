"""A compile-time plan: memory, FLOPs and projected time of the population call at any scale.

    python -m evojax_merge.bench --plan llama-3.1-8b          # named shapes
    python -m evojax_merge.bench --plan /models/llama/config.json
    python -m evojax_merge.bench --plan bench-tiny --check-host   # the plan against a measured run here

The real population-evaluation function (``search.fitness.population_ce``: merge the whole
population, forward on every validation batch, answer-only CE) is lowered and compiled for
abstract inputs (``jax.ShapeDtypeStruct``; nothing is allocated) on this machine's backend:

    memory      = XLA's buffer assignment: arguments, outputs, temporaries (aliases counted once)
    FLOPs / gen = cost_analysis(one batch, whole population) · num_batches
    bytes / gen = cost_analysis bytes accessed (one batch) · num_batches
    time  / gen = FLOPs / (MFU · peak)                  projected on an H100 (989 TFLOP/s bf16)

XLA's cost analysis counts a loop body once, whatever its trip count, so FLOPs and bytes come
from a loop-free compile of one validation batch (no ``lax.scan``: one batch; no ``lax.map``:
the whole population vmapped), scaled by the number of batches; the memory figures come from
the real compile (all batches, the chunked population).

On a CPU the buffer assignment is the CPU compiler's: its fusion differs from a GPU's, so the
temporaries are an estimate (bf16 dots may also be widened to f32 there, which overestimates).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.adapter import LoraStack, module_path
from evojax_merge.models.config import ModelConfig, config_from_hf_dict

H100_PEAK_BF16 = 989.4e12  # dense bf16 FLOP/s, H100 SXM
H100_HBM_BYTES_PER_S = 3.35e12
DEVICE_BYTES = 80e9  # an 80 GB device

_LLAMA3_ROPE = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

NAMED_SHAPES: dict[str, dict] = {
    "llama-3.1-8b": {
        "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "rope_scaling": {**_LLAMA3_ROPE, "factor": 8.0},
        "max_position_embeddings": 131072, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    },
    "llama-3.2-1b": {
        "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
        "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "rope_scaling": {**_LLAMA3_ROPE, "factor": 32.0},
        "max_position_embeddings": 131072, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    },
    # python -m evojax_merge.bench's default model (the zoo's tiny Llama at hidden 256)
    "bench-tiny": {
        "model_type": "llama", "vocab_size": 2048, "hidden_size": 256, "intermediate_size": 688,
        "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 32,
        "torch_dtype": "float32",
    },
}


@dataclasses.dataclass(frozen=True)
class Workload:
    """The population call's shapes (defaults: the paper's OOD workload)."""

    adapters: int = 100
    rank: int = 8
    population: int = 20
    examples: int = 300
    seq: int = 512
    batch: int = 15
    answer_tokens: int = 64  # K: positions where logits and the loss are taken, per example
    dtype: str = "bfloat16"  # base weights and activations
    pool_dtype: str = "bfloat16"  # adapters (and their sorted magnitudes)

    @property
    def num_batches(self) -> int:
        return max(1, self.examples // self.batch)


def resolve_model(spec: str, dtype: str | None = None) -> ModelConfig:
    """A named shape (``NAMED_SHAPES``) or a ``config.json`` path (or its directory)."""
    if spec.lower() in NAMED_SHAPES:
        return config_from_hf_dict(NAMED_SHAPES[spec.lower()], where=spec, dtype=dtype)
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if path.suffix != ".json" and not path.exists():
        raise EvoMergeInputError(
            f"--plan: unknown model {spec!r}; known: {', '.join(NAMED_SHAPES)}, or a config.json path")
    if not path.is_file():
        raise EvoMergeInputError(f"--plan: {path}: no such config.json")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EvoMergeInputError(f"{path}: unreadable config.json ({e})") from None
    if not isinstance(raw, dict):
        raise EvoMergeInputError(f"{path}: config.json is not a JSON object")
    return config_from_hf_dict(raw, where=str(path), dtype=dtype)


# --------------------------------------------------------------------------- abstract inputs


def _sds(shape, dtype) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(int(s) for s in shape), jnp.dtype(dtype))


def abstract_model(cfg: ModelConfig):
    """``(graphdef, params)`` of the model with ``ShapeDtypeStruct`` leaves: nothing allocated."""
    from flax import nnx

    from evojax_merge.models.llama import LlamaForCausalLM

    model = nnx.eval_shape(lambda: LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)))
    return nnx.split(model)


def abstract_stack(cfg: ModelConfig, n: int, rank: int, dtype: str) -> LoraStack:
    """N rank-r adapters on all 7 projections of every layer, as shapes."""
    A, B = {}, {}
    for layer in range(cfg.num_hidden_layers):
        for proj, (d_out, d_in) in cfg.module_shapes().items():
            A[module_path(layer, proj)] = _sds((n, rank, d_in), dtype)
            B[module_path(layer, proj)] = _sds((n, d_out, rank), dtype)
    return LoraStack(A=A, B=B, scale=_sds((n,), jnp.float32))


def abstract_call(cfg: ModelConfig, w: Workload, num_batches: int):
    """The arguments of ``population_ce`` after its static ones, as shapes."""
    graphdef, params = abstract_model(cfg)
    stack = abstract_stack(cfg, w.adapters, w.rank, w.pool_dtype)
    # the sorted |A| only (prune="A"), in the pool's dtype: [N, r·d_in] per module
    mags = {"A": {m: _sds((a.shape[0], a.shape[1] * a.shape[2]), a.dtype) for m, a in stack.A.items()}}
    e, t, k = w.examples, w.seq, w.answer_tokens
    data = {"input_ids": _sds((e, t), jnp.int32), "attention_mask": _sds((e, t), jnp.int32),
            "answer_pos": _sds((e, k), jnp.int32), "answer_tgt": _sds((e, k), jnp.int32),
            "answer_mask": _sds((e, k), jnp.bool_)}
    index = _sds((num_batches, w.batch), jnp.int32)
    genome = _sds((w.population, w.adapters), jnp.float32)
    return graphdef, (params, stack, mags, data, index, genome, genome)


def lower_population(cfg: ModelConfig, w: Workload, chunk: int | None, num_batches: int):
    """``population_ce`` lowered for the workload's shapes (``jax.stages.Lowered``)."""
    from evojax_merge.search.fitness import PopulationCE, population_ce

    graphdef, (params, stack, mags, data, index, alpha, beta) = abstract_call(cfg, w, num_batches)
    args = {"params": params, "stack": stack, "magnitudes": mags, "data": data}
    return population_ce.lower(PopulationCE(graphdef, "A", chunk, None), args, alpha, beta, index)


# --------------------------------------------------------------------------- analysis


@dataclasses.dataclass
class CompiledFigures:
    chunk: int
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    compile_s: float

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

    def fits(self, device_bytes: float = DEVICE_BYTES) -> bool:
        return self.total_bytes <= device_bytes


def compile_memory(cfg: ModelConfig, w: Workload, chunk: int) -> CompiledFigures:
    """XLA's memory analysis of the real call: all batches, ``chunk`` candidates at a time."""
    t = time.perf_counter()
    compiled = lower_population(cfg, w, None if chunk >= w.population else chunk, w.num_batches).compile()
    mem = compiled.memory_analysis()
    return CompiledFigures(chunk, int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes),
                           int(mem.temp_size_in_bytes), int(mem.alias_size_in_bytes), time.perf_counter() - t)


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    return cost[0] if isinstance(cost, list) else cost


def compile_cost(cfg: ModelConfig, w: Workload) -> dict[str, float]:
    """FLOPs and bytes accessed of one generation: a loop-free one-batch compile, times the batches."""
    compiled = lower_population(cfg, w, None, 1).compile()
    cost = _cost(compiled)
    nb = w.num_batches
    return {"flops": float(cost.get("flops", 0.0)) * nb, "bytes": float(cost.get("bytes accessed", 0.0)) * nb}


def analytic_flops(cfg: ModelConfig, w: Workload) -> float:
    """Matmul FLOPs of one generation by hand (a cross-check of XLA's count).

    Per candidate and token: ``2 · (Σ_m d_out·d_in + r·(d_in + d_out))`` over the 7 projections
    of every layer, plus attention ``4 · T · n_heads · head_dim`` per layer (scores and values,
    the full T×T square as computed); the vocabulary projection ``2 · hidden · vocab`` only at
    the K answer positions. The merge (``O(N·P·pool)``) is negligible and not counted.
    """
    shapes = cfg.module_shapes().values()
    per_token = sum(2 * (o * i + w.rank * (o + i)) for o, i in shapes) * cfg.num_hidden_layers
    per_token += 4 * w.seq * cfg.num_attention_heads * cfg.head_dim * cfg.num_hidden_layers
    tokens = w.num_batches * w.batch * w.seq
    head = 2 * cfg.hidden_size * cfg.vocab_size * w.num_batches * w.batch * w.answer_tokens
    return float(w.population * (per_token * tokens + head))


def gib(x: float) -> str:
    return f"{x / 2**30:8.2f} GiB"


def make_plan(cfg: ModelConfig, w: Workload, chunks: tuple[int, ...] = (1, 4, 20), mfu: float = 0.4,
              device_bytes: float = DEVICE_BYTES, log=print) -> dict:
    """Compile the workload for each population chunk; print and return the figures."""
    params_bytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize
                       for x in jax.tree.leaves(abstract_model(cfg)[1]))
    stack = abstract_stack(cfg, w.adapters, w.rank, w.pool_dtype)
    pool_bytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(stack))
    mag_bytes = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in stack.A.values())
    log(f"plan on {jax.default_backend()} (abstract inputs, nothing allocated)")
    log(f"model: {cfg.model_type}, hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
        f"{cfg.num_attention_heads}/{cfg.num_key_value_heads} heads, intermediate {cfg.intermediate_size}, "
        f"vocab {cfg.vocab_size}, {w.dtype}: {params_bytes / 1e9:.2f} GB of weights")
    log(f"pool: N={w.adapters}, r={w.rank}, 7 projections, {w.pool_dtype}: {pool_bytes / 1e9:.2f} GB; "
        f"sorted |A|: {mag_bytes / 1e9:.2f} GB")
    log(f"workload: P={w.population}, {w.num_batches} batches x {w.batch} examples x {w.seq} tokens "
        f"({w.answer_tokens} answer positions each)")
    t = time.perf_counter()
    cost = compile_cost(cfg, w)
    cost_s = time.perf_counter() - t
    by_hand = analytic_flops(cfg, w)
    peak = mfu * H100_PEAK_BF16
    out: dict = {"model": dataclasses.asdict(cfg), "workload": dataclasses.asdict(w), "mfu": mfu,
                 "weights_bytes": params_bytes, "pool_bytes": pool_bytes, "magnitudes_bytes": mag_bytes,
                 "flops_per_generation": cost["flops"], "analytic_flops_per_generation": by_hand,
                 "bytes_per_generation": cost["bytes"],
                 "h100_seconds_per_generation": cost["flops"] / peak,
                 "h100_bandwidth_floor_seconds": cost["bytes"] / H100_HBM_BYTES_PER_S, "chunks": {}}
    log(f"FLOPs / generation: {cost['flops']:.4g} (XLA cost analysis; by hand {by_hand:.4g}, "
        f"ratio {cost['flops'] / by_hand:.3f}); compiled in {cost_s:.1f} s")
    log(f"bytes accessed / generation: {cost['bytes'] / 1e12:.3f} TB "
        f"(H100 HBM floor {out['h100_bandwidth_floor_seconds']:.3g} s)")
    log(f"projected on an H100 at {100 * mfu:.0f}% MFU: {out['h100_seconds_per_generation']:.4g} s / generation "
        f"({out['h100_seconds_per_generation'] / w.population:.3g} s / candidate)")
    log(f"memory per population chunk (XLA buffer assignment; fits = total <= {device_bytes / 1e9:.0f} GB):")
    log(f"  {'chunk':>5} {'arguments':>12} {'outputs':>12} {'temporaries':>12} {'total':>12}  fits  compile")
    for c in chunks:
        fig = compile_memory(cfg, w, c)
        out["chunks"][c] = dataclasses.asdict(fig) | {"total_bytes": fig.total_bytes,
                                                      "fits": fig.fits(device_bytes)}
        log(f"  {c:>5} {gib(fig.argument_bytes)} {gib(fig.output_bytes)} {gib(fig.temp_bytes)} "
            f"{gib(fig.total_bytes)}  {'yes' if fig.fits(device_bytes) else 'NO ':>4}  {fig.compile_s:.1f} s")
    if jax.default_backend() == "cpu" and w.dtype == "bfloat16":
        widened = 2 * params_bytes
        out["cpu_f32_weight_copy_bytes"] = widened
        log(f"note: this CPU has no bf16 GEMM, so its compiler keeps an f32 copy of the bf16 weights "
            f"(~{widened / 2**30:.1f} GiB of the temporaries above); a GPU computes in bf16 and needs none of it")
    fitting = [c for c in chunks if out["chunks"][c]["fits"]]
    out["largest_fitting_chunk"] = max(fitting) if fitting else None
    if fitting:
        log(f"verdict: fits one {device_bytes / 1e9:.0f} GB device with population_chunk={max(fitting)}; "
            f"projected {out['h100_seconds_per_generation']:.4g} s / generation at {100 * mfu:.0f}% MFU")
    else:
        log(f"verdict: does not fit one {device_bytes / 1e9:.0f} GB device at any chunk: shard the base over a "
            "'model' mesh axis (evojax_merge.sharding) or lower the batch size")
    return out


# --------------------------------------------------------------------------- checked on this host


def check_on_host(cfg: ModelConfig, w: Workload, chunk: int | None = 1, repeats: int = 3, log=print) -> dict:
    """The plan's predicted seconds per generation on this host against a measured run.

    The host's rate is calibrated on the smallest instance of the same call (one candidate, one
    batch: ``rate = FLOPs(P=1, 1 batch) / its time``); the plan's FLOPs for the whole generation
    at that rate are the prediction, ``predicted = FLOPs(P, all batches) / rate``, checked against
    the best of ``repeats`` real batched calls on random weights (``bench.population.build``). It tests the
    plan's scaling over candidates, batches and chunking: what it extrapolates to 8B.
    """
    from evojax_merge.bench.population import build, random_genomes, time_batched

    if w.dtype != cfg.dtype:
        cfg = dataclasses.replace(cfg, dtype=w.dtype)
    one = dataclasses.replace(w, population=1, examples=w.batch)

    def timed(work: Workload) -> float:
        _, _, evaluator = build(cfg, work.adapters, work.rank, work.batch, work.seq, chunk, examples=work.examples,
                                answer_tokens=work.answer_tokens, num_batches=work.num_batches,
                                pool_dtype=work.pool_dtype)
        alpha, beta = random_genomes(work.adapters, work.population)
        return time_batched(evaluator, alpha, beta, repeats) * work.population

    flops_one, flops = compile_cost(cfg, one)["flops"], compile_cost(cfg, w)["flops"]
    rate = flops_one / timed(one)
    predicted = flops / rate
    measured = timed(w)
    ratio = measured / predicted
    log(f"host check ({jax.default_backend()}, population_chunk={chunk}): rate {rate / 1e9:.1f} GFLOP/s "
        f"(one candidate, one batch); P={w.population} x {w.num_batches} batches: {flops:.4g} FLOPs, "
        f"predicted {predicted:.3f} s / generation, measured {measured:.3f} s; measured / predicted = {ratio:.2f}")
    return {"flops": flops, "host_flop_rate": rate, "predicted_s": predicted, "measured_s": measured,
            "ratio": ratio, "chunk": chunk}


# --------------------------------------------------------------------------- the command line


def run_plan(args: argparse.Namespace) -> dict:
    """``--plan``: the plan for a named model or a config.json, from the parsed flags of
    ``python -m evojax_merge.bench`` (:func:`evojax_merge.bench.cli.parser`): the paper's workload, or
    the population benchmark's shapes for ``bench-tiny``, unless the shape flags say otherwise."""
    tiny = args.plan.lower() == "bench-tiny"
    paper = Workload()
    bench_shapes = {"examples": 16, "batch": 16, "seq": 128, "answer_tokens": 64, "dtype": "float32"}
    defaults = dataclasses.asdict(paper) | (bench_shapes if tiny else {})
    given = {"adapters": args.adapters, "rank": args.rank, "population": args.population, "batch": args.batch,
             "seq": args.seq, "examples": args.examples, "answer_tokens": args.answer_tokens, "dtype": args.dtype}
    fields = defaults | {k: v for k, v in given.items() if v is not None}
    fields["pool_dtype"] = args.pool_dtype or fields["dtype"]
    workload = Workload(**fields)
    cfg = resolve_model(args.plan, dtype=workload.dtype)
    out = make_plan(cfg, workload, chunks=tuple(args.plan_chunks), mfu=args.mfu)
    if args.check_host:
        out["host_check"] = check_on_host(cfg, workload, chunk=args.population_chunk or 1)
    return out
