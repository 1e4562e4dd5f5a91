"""The synthetic vision world: deterministic from its seed, disjoint splits, answers that the pixels bear out."""

from __future__ import annotations

import dataclasses
import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.models.config import ModelConfig
from evojax_merge.models.llava import LlavaConfig, LlavaForConditionalGeneration
from evojax_merge.models.vision import VisionConfig
from evojax_merge.zoo.tokenizer import UNK, build_tokenizer
from evojax_merge.zoo.vlm_world import (
    BACKGROUND,
    COLOURS,
    SHAPES,
    SPLITS,
    TASKS,
    VlmWorldConfig,
    build_vlm_world,
    cell_names,
    pixel_values,
    shape_mask,
    world_texts,
)

CFG = VlmWorldConfig(seed=3, n_train=48, n_validation=16, n_test=24)


@pytest.fixture(scope="module")
def world():
    return build_vlm_world(CFG)


def test_same_seed_same_world_other_seed_other_world(world):
    again = build_vlm_world(CFG)
    other = build_vlm_world(dataclasses.replace(CFG, seed=4))
    for split in SPLITS:
        np.testing.assert_array_equal(world.images[split], again.images[split])
        assert world.scenes[split] == again.scenes[split]
    assert world.records == again.records
    assert not np.array_equal(world.images["train"], other.images["train"])
    assert world.records != other.records


def test_shapes_and_splits(world):
    for split, n in zip(SPLITS, (CFG.n_train, CFG.n_validation, CFG.n_test), strict=True):
        assert world.images[split].shape == (n, 16, 16, 3) and world.images[split].dtype == np.uint8
        assert len(set(world.scenes[split])) == n
    train, val, test = (set(world.scenes[s]) for s in SPLITS)
    assert not (train & test) and not (train & val) and not (val & test)
    for task in TASKS:
        assert world.records[task]["train"], task  # every task has training questions
    # the count and existence answers are not constant (a world a model cannot solve without the image)
    assert {r["answer"] for r in world.records["count"]["train"]} == {"one", "two"}
    answers = [r["answer"] for r in world.records["exists"]["train"]]
    assert 0.25 < answers.count("yes") / len(answers) < 0.75


def _colour_of(pixel: np.ndarray) -> str:
    names = list(COLOURS)
    dist = [np.abs(pixel.astype(int) - np.asarray(COLOURS[n])).sum() for n in names]
    return names[int(np.argmin(dist))]


def _object_pixels(image: np.ndarray) -> np.ndarray:
    """Pixels far brighter than the noisy background: the objects."""
    return image.astype(int).max(axis=-1) > BACKGROUND + 60


def test_answers_agree_with_the_pixels(world):
    names, cell = cell_names(CFG.grid), CFG.image_size // CFG.grid
    for split in SPLITS:
        for i, (image, scene) in enumerate(zip(world.images[split], world.scenes[split], strict=True)):
            on = _object_pixels(image)
            occupied = set()
            for k in range(CFG.grid**2):
                r, c = divmod(k, CFG.grid)
                block = on[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell]
                if block.any():
                    occupied.add(k)
                    pixels = image[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell][block]
                    colours = {_colour_of(p) for p in pixels}
                    (obj,) = [o for o in scene if o.cell == k]
                    assert colours == {obj.colour}
            assert occupied == {o.cell for o in scene}
            for task in TASKS:
                for rec in (r for r in world.records[task][split] if r["image"] == i):
                    if task == "count":
                        assert rec["answer"] == ["zero", "one", "two"][len(occupied)]
                    if task == "where":
                        colour, shape = rec["prompt"].split()[3:5]
                        (obj,) = [o for o in scene if (o.colour, o.shape) == (colour, shape)]
                        assert rec["answer"] == names[obj.cell]
                    if task == "colour":
                        shape = rec["prompt"].split()[4]
                        assert rec["answer"] == next(o.colour for o in scene if o.shape == shape)
                    if task == "exists":
                        colour, shape = rec["prompt"].split()[3:5]
                        present = any((o.colour, o.shape) == (colour, shape) for o in scene)
                        assert rec["answer"] == ("yes" if present else "no")


def test_shapes_are_distinguishable():
    for size in range(5, 9):
        masks = {s: shape_mask(s, size) for s in SHAPES}
        for a, b in itertools.combinations(SHAPES, 2):
            assert (masks[a] != masks[b]).sum() >= 4, (size, a, b)


def test_every_word_is_in_the_vocabulary(world):
    tok = build_tokenizer(world_texts())
    unk = tok.convert_tokens_to_ids(UNK)
    for task in TASKS:
        for rec in world.records[task]["train"] + world.records[task]["test"]:
            ids = tok(rec["prompt"] + " " + rec["answer"], add_special_tokens=False)["input_ids"]
            assert unk not in ids, rec


def test_pixels_feed_the_vlm(world):
    px = pixel_values(world.images["test"][:4])
    assert px.shape == (4, 3, 16, 16) and px.dtype == np.float32
    assert abs(float(px.mean())) < 3.0
    red = np.zeros((1, 16, 16, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_allclose(pixel_values(red)[0, :, 0, 0], [(1 - 0.48145466) / 0.26862954,
                                                               -0.4578275 / 0.26130258, -0.40821073 / 0.27577711],
                               rtol=1e-6)
    cfg = LlavaConfig(vision=VisionConfig(), text=ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                              num_hidden_layers=1, num_attention_heads=4,
                                                              num_key_value_heads=2, head_dim=8), image_token_id=63)
    vlm = LlavaForConditionalGeneration(cfg, nnx.Rngs(0))
    feats = vlm.image_features(jnp.asarray(px))
    assert feats.shape == (4, 16, 32) and bool(jnp.isfinite(feats).all())


def test_bad_world_config_is_one_line_error():
    for bad, needle in [(dict(n_train=2000), "distinct scenes"), (dict(grid=5), "grid 5"),
                        (dict(min_size=12), "min_size"), (dict(max_objects=9), "max_objects")]:
        with pytest.raises(EvoMergeInputError, match=needle) as e:
            build_vlm_world(dataclasses.replace(CFG, **bad))
        assert "\n" not in str(e.value)
