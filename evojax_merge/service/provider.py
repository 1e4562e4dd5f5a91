"""The provider's side: the base model, the pools, the tokenizer, and the work done for sessions.

One model sits on one device, so all device work (building an evaluator, evaluating, generating)
runs under ``ProviderState.compute_lock``: concurrent requests queue there instead of interleaving
their compiles and transfers. Tokenizing runs under its own lock (a fast tokenizer's settings are
shared mutable state).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evojax_merge.data.batching import encode_examples, encode_prompts, special_ids, stop_id
from evojax_merge.data.records import load_records
from evojax_merge.errors import EvoMergeInputError
from evojax_merge.eval.evaluate import decode_answers
from evojax_merge.eval.generate import greedy_generate
from evojax_merge.lora import LoraPool, load_pool
from evojax_merge.merge import evo_merge
from evojax_merge.models import LlamaForCausalLM, load_model
from evojax_merge.search.fitness import MergeEvaluator, ValidationConfig
from evojax_merge.service.settings import ServiceSettings
from evojax_merge.service.validation import FieldError

_greedy = nnx.jit(greedy_generate, static_argnames=("max_new_tokens", "eos_id", "pad_id"))
_merge = jax.jit(evo_merge, static_argnames=("prune",))


@dataclasses.dataclass
class ProviderState:
    """What the provider holds and never sends: the model, the pools, its own datasets."""

    model: LlamaForCausalLM
    tokenizer: Any  # transformers PreTrainedTokenizerFast
    pools: dict[str, LoraPool]
    datasets: dict[str, list[dict]] = dataclasses.field(default_factory=dict)
    compute_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    tokenizer_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


def parse_named(specs: Sequence[str], default_name: str = "default") -> dict[str, str]:
    """``["ID=VALUE", "VALUE"]`` -> ``{ID: VALUE, default_name: VALUE}``; ids are unique."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name.replace("-", "_").replace(".", "_").isidentifier():
            name, value = default_name, spec
        if name in out:
            raise EvoMergeInputError(f"{spec}: the id {name!r} is given twice")
        out[name] = value
    return out


def load_provider(model_dir: str | Path, pools: Mapping[str, str], tokenizer_dir: str | Path | None = None,
                  datasets: Mapping[str, str] | None = None, dtype: str | None = None) -> ProviderState:
    """Load the base model, every pool (glob or directory list) and the named validation sets."""
    from transformers import AutoTokenizer  # heavy import, only where a server starts

    if not pools:
        raise EvoMergeInputError("no adapter pool: pass --pool GLOB (or ID=GLOB)")
    model = load_model(model_dir, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir or model_dir))
    return ProviderState(
        model=model,
        tokenizer=tokenizer,
        pools={pid: load_pool(spec, model.config) for pid, spec in pools.items()},
        datasets={name: load_records(path) for name, path in (datasets or {}).items()},
    )


def layouts(num_adapters: int, settings: ServiceSettings) -> list[dict]:
    """The two searchable vectors of a pool of ``num_adapters`` (``GenomeLayout`` fields)."""
    return [
        {"searched": "alpha", "length": num_adapters, "lower": settings.alpha_bounds[0],
         "upper": settings.alpha_bounds[1]},
        {"searched": "beta", "length": num_adapters, "lower": settings.beta_bounds[0],
         "upper": settings.beta_bounds[1]},
    ]


def tokenize_validation(state: ProviderState, records: Sequence[Mapping], max_len: int,
                        buckets: Sequence[int]) -> dict[str, np.ndarray]:
    """``data.batching.encode_examples``: answer-only labels at a bucketed length."""
    try:
        with state.tokenizer_lock:
            return encode_examples(records, state.tokenizer, max_len=max_len, buckets=buckets)
    except EvoMergeInputError as e:
        raise FieldError("records", str(e)) from None


def build_evaluator(state: ProviderState, pool: LoraPool, examples: Mapping[str, np.ndarray],
                    validation: ValidationConfig, prune: str) -> MergeEvaluator:
    """The same evaluator an in-process search builds, so remote and local losses agree exactly."""
    with state.compute_lock:
        # the population function is jitted at module level, so sessions of equal shapes share a compile
        return MergeEvaluator(state.model, pool.stack, examples, validation, prune=prune)


def evaluate(state: ProviderState, evaluator: MergeEvaluator, alpha: np.ndarray, beta: np.ndarray,
             generation: int) -> np.ndarray:
    """One batched call for the whole population; ``[P]`` validation CE."""
    with state.compute_lock:
        return np.asarray(evaluator.evaluate(alpha, beta, generation))


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def generate_texts(state: ProviderState, session, alpha: np.ndarray, beta: np.ndarray,
                   prompts: Sequence[Mapping], max_new_tokens: int, max_prompt_tokens: int,
                   buckets: Sequence[int]) -> list[str]:
    """Greedy continuations of ``prompts`` under the merged adapter of ``(alpha, beta)``."""
    with state.tokenizer_lock:  # a prompt over the limit, even without few-shot turns, is an error
        for i, prompt in enumerate(prompts):
            try:
                encode_prompts([prompt], state.tokenizer, max_len=max_prompt_tokens, buckets=buckets)
            except EvoMergeInputError:
                raise FieldError(f"prompts[{i}]", f"over the limit of {max_prompt_tokens} tokens") from None
        enc = encode_prompts(prompts, state.tokenizer, max_len=max_prompt_tokens, buckets=buckets)
        pad, _, _ = special_ids(state.tokenizer)
        eos = stop_id(state.tokenizer)
    ids, lengths = enc["input_ids"], enc["lengths"]
    b = len(lengths)
    rows = _pow2(b)  # batch and step counts are rounded up to powers of two: few compiles
    if rows > b:
        ids = np.concatenate([ids, np.repeat(ids[:1], rows - b, axis=0)])
        lengths = np.concatenate([lengths, np.repeat(lengths[:1], rows - b)])
    with state.compute_lock:
        adapter = _merge(session.stack, session.evaluator.magnitudes, jnp.asarray(alpha), jnp.asarray(beta),
                         prune=session.prune)
        tokens = _greedy(state.model, jnp.asarray(ids), jnp.asarray(lengths), max_new_tokens=_pow2(max_new_tokens),
                         eos_id=-1 if eos is None else int(eos), pad_id=pad, lora=adapter)
        tokens = np.asarray(tokens)[:b, :max_new_tokens]
    return decode_answers(state.tokenizer, tokens, eos)
