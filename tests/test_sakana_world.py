"""The Sakana world (zoo/sakana_world.py): data, encoding, the accuracy metric, and the gate.

The gate builds the default world once per cache (~3 min on 2 cores; then reused from
$EVOJAX_MERGE_CACHE or ~/.cache/evojax_merge) and checks that it is a world where the merge
matters: the best source on the target is far below its own task, and the grid TA merge beats it.
"""

import numpy as np
import pytest

from evojax_merge.methods.base import MergeTask
from evojax_merge.methods.sakana_grid import SakanaGrid
from evojax_merge.world.backends import SourcesBackend, generate_answers
from evojax_merge.zoo.sakana_world import (
    SakanaWorldConfig,
    accuracy,
    build_sakana_world,
    cipher,
    encipher,
    generate_world_data,
)


def test_accuracy_by_hand():
    recs = [{"answer": "5"}, {"answer": "0"}, {"answer": "7"}, {"answer": "3"}]
    assert accuracy(["5", "0", "1", ""], recs) == 0.5  # a wrong digit and an empty answer miss
    assert accuracy([" 5 ", "x", "7 .", "3"], recs) == 0.5  # stripped; "7 ." and "x" miss
    assert accuracy([], []) == 0.0


def test_cipher_is_a_fixed_word_bijection_and_keeps_digits():
    table = cipher(0)
    assert len(set(table.values())) == len(table) and not set(table.values()) & set(table)
    assert cipher(0) == table
    assert encipher("three is 3 .", table) == f"{table['three']} {table['is']} 3 ."


def test_world_data_is_seeded_and_the_target_is_the_ciphered_skill():
    cfg = SakanaWorldConfig(corpus_size=20, problems=10, validation=4, test=4)
    a, b = generate_world_data(cfg), generate_world_data(cfg)
    assert a == b
    table = a["cipher"]
    for r in a["tasks"]["skill_b"]["test"]:
        words = r["prompt"].split()
        assert not set(words) & set(table)  # no language-A word is left
        assert r["answer"].isdigit()
    assert len(a["tasks"]["skill_a"]["train"]) == 10 and len(a["tasks"]["skill_b"]["validation"]) == 4


@pytest.fixture(scope="module")
def world():
    return build_sakana_world()


@pytest.mark.slow  # builds the Sakana world (~3 min on 2 cores)
def test_gate_the_merge_matters(world):
    cell = SourcesBackend(world, ("lang", "skill")).sources_cell()
    tok, target = world.tokenizer, world.target
    recs = world.records(target)["test"]
    from evojax_merge.models.functional import ParamsModel

    own, on_target = {}, {}
    for i, name in enumerate(cell.labels):
        model = ParamsModel(cell.stack.config, cell.stack.source_params(i))
        own_recs = world.records(world.own_task[name])["test"]
        own[name] = accuracy(generate_answers(model, own_recs, tok, world.max_len), own_recs)
        on_target[name] = accuracy(generate_answers(model, recs, tok, world.max_len), recs)
    best = max(on_target, key=on_target.get)
    assert own["skill"] > 0.9  # the skill model does its own task
    assert on_target[best] < 0.15 and on_target[best] < 0.5 * own[best]
    out = SakanaGrid("task_arithmetic").run(MergeTask(target, list(cell.stack.names), None, sources=cell))
    merged = accuracy(generate_answers(out.model, recs, tok, world.max_len), recs)
    assert merged > on_target[best] + 0.1, (merged, on_target)
    assert np.isfinite(out.val_ce)
