"""The pilot gate selects on validation records only: it never reads the test split (issue 23).

A random tiny Llama over the IE world's tokenizer and a random pool: the gate's figures are junk, but
every record it reads is accounted for, and reading a test split fails the test.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from evojax_merge.lora.adapter import LoraStack, module_path
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.zoo.gate import gate_halves, run_gate
from evojax_merge.zoo.ie_build import base_model_config, load_zoo_config, world_tokenizer
from evojax_merge.zoo.ie_world import adapter_datasets, generate_world


class SplitsWithoutTest(dict):
    """A task's splits; touching ``test`` in any way is a failure."""

    def __getitem__(self, key):
        assert key != "test", "the gate read the test split"
        return super().__getitem__(key)

    def get(self, key, default=None):
        assert key != "test", "the gate read the test split"
        return super().get(key, default)

    def items(self):
        raise AssertionError("the gate iterated over every split")

    values = items


def _random_pool(names: list[str], cfg, rank: int = 2) -> LoraStack:
    rng = np.random.default_rng(0)
    A, B = {}, {}
    for layer in range(cfg.num_hidden_layers):
        for proj, (d_out, d_in) in cfg.module_shapes().items():
            A[module_path(layer, proj)] = 0.1 * rng.standard_normal((len(names), rank, d_in)).astype(np.float32)
            B[module_path(layer, proj)] = 0.1 * rng.standard_normal((len(names), d_out, rank)).astype(np.float32)
    return LoraStack(A=A, B=B, scale=np.full((len(names),), 2.0, np.float32))


def test_gate_halves_split_validation_by_position():
    recs = [{"i": i} for i in range(9)]
    pick, report = gate_halves(recs, 7)
    assert [r["i"] for r in pick] == [0, 2, 4, 6] and [r["i"] for r in report] == [1, 3, 5]


def test_the_gate_never_reads_the_test_split():
    zoo = load_zoo_config("conf/zoo/ie_tiny.yaml")
    records = generate_world(zoo.tasks)
    adapters = {n: {"task": a["task"], "kind": a["kind"]} for n, a in adapter_datasets(zoo.tasks, records).items()}
    names = list(adapters)
    tokenizer = world_tokenizer()
    cfg = base_model_config(zoo.model, tokenizer)
    model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
    guarded = {t: SplitsWithoutTest(splits) for t, splits in records.items()}
    gate = run_gate(model, tokenizer, _random_pool(names, cfg), names, adapters, guarded, ["ner_medicine"],
                    examples=4, max_len=zoo.model.max_len, max_new_tokens=4)
    cell = gate["targets"]["ner_medicine"]
    assert gate["split"] == "validation" and cell["records"] == {"pick": 2, "report": 2}
    assert cell["best_single"] != "ner_medicine" and set(cell["single_f1"]) == set(cell["single_pick_f1"])
    assert cell["passed"] is False or cell["gap"] >= 0.10
