"""The VLM merge world (issue 25, evojax_merge/zoo/vlm_build.py): determinism, a gate that reads no test
split, merges of the language model that keep the vision tower and projector bit-identical, and one-line
errors. A tiny realization (a few training steps) is built once per module."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.methods.base import MergeTask
from evojax_merge.methods.vlm import VlmGrid, VlmPS, VlmSource
from evojax_merge.models.llava import split_vlm_params, vlm_logits_of, vlm_params, with_language_model
from evojax_merge.world.specs import OpenContext
from evojax_merge.world.vlm import VlmBackend, VlmWorldSpec
from evojax_merge.zoo.vlm_build import (
    TARGET,
    VlmBuildConfig,
    VlmMergeWorld,
    VlmModelSpec,
    build_vlm_merge_world,
    world_data,
)
from evojax_merge.zoo.vlm_gate import compute_gate
from evojax_merge.zoo.vlm_world import pixel_values

TINY = VlmBuildConfig(model=VlmModelSpec(hidden_size=32, num_hidden_layers=2, intermediate_size=64, vision_layers=1),
                      n_train=24, n_validation=12, n_test=12, corpus_size=48, batch_size=8,
                      pretrain_steps=3, lang_steps=3, vision_steps=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> VlmMergeWorld:
    return build_vlm_merge_world(TINY, tmp_path_factory.mktemp("vlm_cache"))


def test_world_data_is_deterministic_and_no_source_sees_a_b_image_question():
    a, b = world_data(TINY), world_data(TINY)
    assert a["tasks"] == b["tasks"] and a["corpus_a"] == b["corpus_a"] and a["corpus_b"] == b["corpus_b"]
    assert all(np.array_equal(a["scenes"].images[s], b["scenes"].images[s]) for s in a["scenes"].images)
    other = world_data(dataclasses.replace(TINY, seed=1))
    assert other["tasks"] != a["tasks"] and TINY.digest() != dataclasses.replace(TINY, seed=1).digest()
    target = a["tasks"][TARGET]
    assert target["train"] == [] and len(target["validation"]) > 0 and len(target["test"]) > 0
    b_words = set(a["cipher"].values())
    for split in ("validation", "test"):  # asked and answered in B only: every word is a B word or punctuation
        for r in target[split]:
            assert all(w in b_words or not w.isalpha() for w in f"{r['prompt']} {r['answer']}".split())
    # sources' training data: A image questions (no B word) and text without images (no image token)
    assert not any(w in b_words for r in a["tasks"]["vqa_a"]["train"] for w in r["prompt"].split())
    assert not any("<image>" in t for t in a["corpus_a"] + a["corpus_b"])


def test_gate_reads_validation_only(world, tmp_path):
    gate = world.manifest["gate"]
    assert gate["split"] == "validation" and set(gate["em"]) == {"vlm_a", "lang_b", "ta_0.5", "ta_0.75", "ta_1.0",
                                                                 "ta_1.25"}
    n = len(world.records(TARGET)["validation"])
    assert gate["examples"] == {"pick": (n + 1) // 2, "report": n // 2}
    # the same world with its test split destroyed (other answers, black images) gates the same
    copy = tmp_path / "copy"
    shutil.copytree(world.root, copy)
    data = json.loads((copy / "data.json").read_text())
    data["tasks"][TARGET]["test"] = [{**r, "answer": "wrong"} for r in data["tasks"][TARGET]["test"]][:1]
    (copy / "data.json").write_text(json.dumps(data))
    with np.load(copy / "images.npz") as z:
        images = {k: z[k] for k in z.files}
    images["test"] = np.zeros_like(images["test"])
    np.savez_compressed(copy / "images.npz", **images)
    assert compute_gate(VlmMergeWorld(copy, world.manifest)) == gate


def test_merges_keep_vision_and_projector_and_match_the_whole_vlm(world):
    backend = VlmBackend(world)
    cell = backend.sources_cell()
    task = MergeTask(TARGET, backend.names, lambda p: None, sources=cell, seed=0, progress=False)
    a_params = vlm_params(world.llava)
    ref = split_vlm_params(a_params)
    enc = cell.val_data
    px = jnp.asarray(pixel_values(world.images("validation"))[enc["image"]])
    for method in (VlmSource("lang_b"), VlmGrid(kind="ties", lambdas=(1.0,), densities=(0.5,)),
                   VlmPS(population_size=4, generations=1, population_chunk=None)):
        out = method.run(task)
        whole = with_language_model(a_params, out.model.params)
        parts = split_vlm_params(whole)
        for got, want in ((parts.vision, ref.vision), (parts.projector, ref.projector)):
            assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)
        # the spliced language model (precomputed image rows) is the whole VLM on the images
        at = jnp.asarray(cell.batch["answer_pos"])
        full = vlm_logits_of(world.llava_config, whole, jnp.asarray(enc["input_ids"]), px,
                             jnp.asarray(enc["attention_mask"]), at)
        fast = out.model.logits(jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]), at)
        np.testing.assert_allclose(np.asarray(fast), np.asarray(full), atol=1e-5)
        assert out.val_ce is not None and np.isfinite(out.val_ce)
    ps = VlmPS(population_size=4, generations=1, population_chunk=None).run(task)
    g = world.llava_config.text.num_hidden_layers + 2
    assert np.asarray(ps.details["density"]).shape == (g, 2) and ps.details["sources"] == ["vlm_a", "lang_b"]


def test_one_line_errors_and_the_failed_gate(world):
    with pytest.raises(EvoMergeInputError, match=r"^world.build.bogus: unknown key"):
        VlmWorldSpec(build={"bogus": 1})
    with pytest.raises(EvoMergeInputError, match=r"^world.build.model.width: unknown key"):
        VlmWorldSpec(build={"model": {"width": 3}})
    with pytest.raises(EvoMergeInputError, match="world.val_examples"):
        VlmWorldSpec(val_examples=1)
    with pytest.raises(EvoMergeInputError, match="VLM merge needs a VLM world"):
        VlmSource("vlm_a").run(MergeTask(TARGET, [], lambda p: None))
    spec = VlmWorldSpec(build=TINY)
    ctx = OpenContext(cache_dir=str(world.root.parent), progress=False)
    assert not world.manifest["gate"]["passed"]  # three training steps: nothing to merge
    with pytest.raises(EvoMergeInputError, match=r"failed its pilot gate .*world.allow_failed_gate=true") as err:
        spec.open(ctx)
    assert "\n" not in str(err.value)
    backend = VlmWorldSpec(build=TINY, allow_failed_gate=True).open(ctx)
    assert backend.default_targets == (TARGET,) and backend.names == ["vlm_a", "lang_b"]


def test_code_modules_are_the_builds_imports():
    from test_world_digest import _closure  # the closure check of the other worlds (tests/test_world_digest.py)

    from evojax_merge.zoo import vlm_build

    assert sorted(vlm_build.CODE_MODULES) == sorted(_closure(vlm_build.__name__))
