"""Generation prompts that lose few-shot turns to fit max_len are counted and logged, never silent."""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from prompt_fixtures import chat_tokenizer, ie_record

from evojax_merge.data.batching import encode_generation
from evojax_merge.eval.evaluate import fit_prompts, generate_for_population
from evojax_merge.lora import LoraStack, module_path
from evojax_merge.models import LlamaForCausalLM, ModelConfig

LOGGER = "evojax_merge.eval.evaluate"


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer()


@pytest.fixture(scope="module")
def setup(tok):
    """A 0-shot record and a 3-shot one; ``limit`` fits the 3-shot prompt only without its 2 oldest turns."""
    short, long = ie_record(0, shots=0), ie_record(2, shots=3)
    lengths = [int(encode_generation([{**long, "history": long["history"][d:]}], tok).arrays["lengths"][0])
               for d in range(4)]
    assert lengths[0] > lengths[1] > lengths[2] > lengths[3]
    return [short, long], lengths[2]


def _model(tok, context: int = 2048) -> LlamaForCausalLM:
    cfg = ModelConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=context)
    return LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))


def _stack(cfg: ModelConfig, n: int) -> LoraStack:
    rng = np.random.default_rng(0)
    A, B = {}, {}
    for proj, (d_out, d_in) in cfg.module_shapes().items():
        A[module_path(0, proj)] = jnp.asarray(0.1 * rng.standard_normal((n, 2, d_in)), jnp.float32)
        B[module_path(0, proj)] = jnp.asarray(0.1 * rng.standard_normal((n, d_out, 2)), jnp.float32)
    return LoraStack(A=A, B=B, scale=jnp.full((n,), 2.0, jnp.float32))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def test_fit_prompts_counts_a_trimmed_prompt(tok, setup):
    records, limit = setup
    fit = fit_prompts(records, tok, max_len=limit, source="d/test.json")
    assert fit["records"] == 2 and fit["records_with_dropped_turns"] == 1
    assert fit["dropped_turns"] == 2 and fit["most_dropped"] == 2 and fit["history_turns"] == 3
    assert fit["max_len"] == limit and fit["style"] == "chat" and fit["longest_prompt"] <= limit
    roomy = fit_prompts(records, tok, max_len=None)
    assert roomy["records_with_dropped_turns"] == 0 and roomy["dropped_turns"] == 0


def test_generation_reports_and_logs_trimmed_prompts_once(tok, setup, caplog):
    records, limit = setup
    model = _model(tok)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    fit: dict = {"stale": 1}
    out = generate_for_population(model, tok, None, records, limit, 2, source="fit-test-plain.json", fit=fit)
    assert len(out) == 1 and len(out[0]) == 2
    assert "stale" not in fit
    assert (fit["records"], fit["records_with_dropped_turns"], fit["dropped_turns"]) == (2, 1, 2)
    assert fit["max_new_tokens"] == 2
    lines = _warnings(caplog)
    assert lines == [f"fit-test-plain.json: 1 of 2 prompts lost 2 of their 3 few-shot turns (up to 2 in one) to "
                     f"fit max_len {limit}"]
    # the same prompts again (the next method's answers): counted again, logged no more
    again: dict = {}
    generate_for_population(model, tok, None, records, limit, 2, source="fit-test-plain.json", fit=again)
    assert again == fit and len(_warnings(caplog)) == 1
    # room for every turn: counted as none, nothing logged
    caplog.clear()
    roomy: dict = {}
    generate_for_population(model, tok, None, records, None, 2, source="fit-test-roomy.json", fit=roomy)
    assert roomy["dropped_turns"] == 0 and roomy["records"] == 2 and _warnings(caplog) == []


def test_population_counts_a_shared_record_list_once(tok, setup, caplog):
    records, limit = setup
    model = _model(tok)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    fit: dict = {}
    out = generate_for_population(model, tok, _stack(model.config, 3), records, limit, 2,
                                  source="fit-test-pop.json", fit=fit)
    assert len(out) == 3 and all(len(o) == 2 for o in out)
    assert (fit["records"], fit["records_with_dropped_turns"], fit["dropped_turns"]) == (2, 1, 2)
    # one list per candidate: every list counts
    per: dict = {}
    generate_for_population(model, tok, _stack(model.config, 2), [records, records[1:]], limit, 2,
                            source="fit-test-per.json", fit=per)
    assert (per["records"], per["records_with_dropped_turns"], per["dropped_turns"]) == (3, 2, 4)
    assert len(_warnings(caplog)) == 2


def test_prompt_plus_answer_past_the_context_is_logged(tok, setup, caplog):
    records, _ = setup
    short = records[:1]
    n = fit_prompts(short, tok, max_len=None)["longest_prompt"]
    caplog.set_level(logging.WARNING, logger=LOGGER)
    fit: dict = {}
    generate_for_population(_model(tok, context=n + 1), tok, None, short, None, 2, source="fit-test-ctx.json",
                            fit=fit)
    assert fit["dropped_turns"] == 0 and fit["longest_prompt"] == n
    assert _warnings(caplog) == [f"fit-test-ctx.json: the longest prompt ({n} tokens) plus max_new_tokens 2 passes "
                                 f"the model's max_position_embeddings {n + 1}"]
