"""A synthetic vision world for the LLaVA merge (issue 25): small RGB scenes and questions about them.

A scene is 1 .. ``max_objects`` objects, each a (shape, colour, cell) with its cell one of a
``grid × grid`` layout of the image (2 × 2: ``top left`` .. ``bottom right``), no two objects in
one cell. Rendering is numpy only: a dark background with Gaussian pixel noise, every object a
filled mask (square, circle, triangle, cross) of a random size and offset inside its cell, in its
palette colour plus a per-object colour jitter. Everything is drawn from ``numpy.random.default_rng``
streams spawned from one seed, so a world is the same on every machine.

Tasks (one question per task and scene where the task applies; the answer is one or two words):

    colour  what colour is the {shape} ?          -> red | green | blue | yellow   (shape unique in the scene)
    shape   what shape is at the {cell} ?          -> square | circle | triangle | cross   (an occupied cell)
    count   how many objects are there ?           -> one | two | ...
    exists  is there a {colour} {shape} ?          -> yes | no   (half the questions each, by a coin)
    where   where is the {colour} {shape} ?        -> top left | ...

Splits ``train``, ``validation`` and ``test`` have disjoint abstract scenes (the same objects in the
same cells never occur in two splits), so a test question is always about a scene nobody trained on.

:func:`build_vlm_world` -> :class:`VlmWorld` with ``images[split]`` (uint8 ``[N, H, W, 3]``) and
``records[task][split]`` (``{"image", "prompt", "answer", "task"}``, ``image`` an index into the
split's images); :func:`pixel_values` turns images into the CLIP-normalised ``[N, 3, H, W]`` float32
the VLM (:mod:`evojax_merge.models.llava`) takes; :func:`world_texts` lists every word a prompt or
answer can use (for :func:`evojax_merge.zoo.tokenizer.build_tokenizer`). Not yet a Hydra world.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from evojax_merge.errors import EvoMergeInputError

SHAPES = ("square", "circle", "triangle", "cross")
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (240, 220, 40)}
TASKS = ("colour", "shape", "count", "exists", "where")
SPLITS = ("train", "validation", "test")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
IMAGE_PLACEHOLDER = "<image>"
BACKGROUND = 20  # grey level of the background before noise
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class VlmWorldConfig:
    seed: int = 0
    image_size: int = 16
    grid: int = 2
    max_objects: int = 2
    min_size: int = 5  # object box side in pixels, at most the cell side
    noise: float = 6.0  # background pixel noise std (grey levels)
    colour_jitter: int = 20  # per-object uniform jitter of each channel (grey levels)
    n_train: int = 256
    n_validation: int = 64
    n_test: int = 128


@dataclasses.dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    cell: int


Scene = tuple[SceneObject, ...]  # sorted by cell: the abstract scene, also the split-disjointness key


@dataclasses.dataclass
class VlmWorld:
    config: VlmWorldConfig
    images: dict[str, np.ndarray]
    scenes: dict[str, list[Scene]]
    records: dict[str, dict[str, list[dict]]]


def cell_names(grid: int) -> tuple[str, ...]:
    """``top left``, ``top right``, ``bottom left``, ``bottom right`` for 2; ``top``/``middle``/... rows for 3."""
    rows = {2: ("top", "bottom"), 3: ("top", "middle", "bottom")}
    cols = {2: ("left", "right"), 3: ("left", "centre", "right")}
    if grid not in rows:
        raise EvoMergeInputError(f"vlm world: grid {grid} (2 or 3)")
    return tuple(f"{r} {c}" for r in rows[grid] for c in cols[grid])


def _check(cfg: VlmWorldConfig) -> None:
    cell = cfg.image_size // cfg.grid
    cell_names(cfg.grid)
    if not 3 <= cfg.min_size <= cell:
        raise EvoMergeInputError(f"vlm world: min_size {cfg.min_size} must be in 3 .. {cell} (the cell side)")
    if not 1 <= cfg.max_objects <= min(cfg.grid**2, len(NUMBER_WORDS) - 1):
        raise EvoMergeInputError(f"vlm world: max_objects {cfg.max_objects} must be in 1 .. {cfg.grid**2}")
    space = scene_space(cfg)
    total = cfg.n_train + cfg.n_validation + cfg.n_test
    if total > space // 2:
        raise EvoMergeInputError(f"vlm world: {total} scenes asked for, at most {space // 2} "
                                 f"(half of the {space} distinct scenes) so the splits stay disjoint")


def scene_space(cfg: VlmWorldConfig) -> int:
    """The number of distinct abstract scenes: ``Σ_k C(cells, k) · (shapes · colours)^k``."""
    kinds = len(SHAPES) * len(COLOURS)
    return sum(math.comb(cfg.grid**2, k) * kinds**k for k in range(1, cfg.max_objects + 1))


def draw_scene(rng: np.random.Generator, cfg: VlmWorldConfig) -> Scene:
    n = int(rng.integers(1, cfg.max_objects + 1))
    cells = sorted(rng.choice(cfg.grid**2, size=n, replace=False).tolist())
    colours = list(COLOURS)
    return tuple(SceneObject(SHAPES[rng.integers(len(SHAPES))], colours[rng.integers(len(colours))], c)
                 for c in cells)


def shape_mask(shape: str, size: int) -> np.ndarray:
    """A boolean ``[size, size]`` mask of ``shape``."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    c = (size - 1) / 2
    if shape == "square":
        return np.ones((size, size), bool)
    if shape == "circle":
        return (y - c) ** 2 + (x - c) ** 2 <= (size / 2) ** 2
    if shape == "triangle":  # apex at the top row, base the bottom row: |x - c| <= (y + 1) / 2
        return np.abs(x - c) <= (y + 1) / 2
    if shape == "cross":
        t = max(1, size // 5) / 2
        return (np.abs(x - c) <= t) | (np.abs(y - c) <= t)
    raise EvoMergeInputError(f"vlm world: unknown shape {shape!r}")


def render(scene: Scene, rng: np.random.Generator, cfg: VlmWorldConfig) -> np.ndarray:
    """The scene as uint8 ``[H, W, 3]``; the object boxes, sizes and colour jitters come from ``rng``."""
    s, cell = cfg.image_size, cfg.image_size // cfg.grid
    img = BACKGROUND + cfg.noise * rng.standard_normal((s, s, 3))
    for obj in scene:
        size = int(rng.integers(cfg.min_size, cell + 1))
        top = (obj.cell // cfg.grid) * cell + int(rng.integers(0, cell - size + 1))
        left = (obj.cell % cfg.grid) * cell + int(rng.integers(0, cell - size + 1))
        colour = np.asarray(COLOURS[obj.colour], float) + rng.integers(-cfg.colour_jitter, cfg.colour_jitter + 1, 3)
        box = img[top : top + size, left : left + size]
        box[shape_mask(obj.shape, size)] = colour
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def questions(scene: Scene, rng: np.random.Generator, cfg: VlmWorldConfig) -> list[dict]:
    """One ``{"task", "prompt", "answer"}`` per task that applies to ``scene``."""
    names = cell_names(cfg.grid)
    out = []
    shapes = [o.shape for o in scene]
    unique = [o for o in scene if shapes.count(o.shape) == 1]
    if unique:
        o = unique[rng.integers(len(unique))]
        out.append(("colour", f"what colour is the {o.shape} ?", o.colour))
    o = scene[rng.integers(len(scene))]
    out.append(("shape", f"what shape is at the {names[o.cell]} ?", o.shape))
    if cfg.max_objects > 1:
        out.append(("count", "how many objects are there ?", NUMBER_WORDS[len(scene)]))
    present = {(o.colour, o.shape) for o in scene}
    if rng.random() < 0.5:
        colour, shape = sorted(present)[rng.integers(len(present))]
    else:
        absent = [k for k in itertools.product(COLOURS, SHAPES) if k not in present]
        colour, shape = absent[rng.integers(len(absent))]
    out.append(("exists", f"is there a {colour} {shape} ?", "yes" if (colour, shape) in present else "no"))
    kinds = [(o.colour, o.shape) for o in scene]
    single = [o for o in scene if kinds.count((o.colour, o.shape)) == 1]
    if single:
        o = single[rng.integers(len(single))]
        out.append(("where", f"where is the {o.colour} {o.shape} ?", names[o.cell]))
    return [{"task": t, "prompt": p, "answer": a} for t, p, a in out]


def build_vlm_world(cfg: VlmWorldConfig = VlmWorldConfig()) -> VlmWorld:
    """Draw the three splits (disjoint abstract scenes), render them and ask every task about each scene."""
    _check(cfg)
    scene_rng, render_rng, question_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(3))
    seen: set[Scene] = set()
    images: dict[str, np.ndarray] = {}
    scenes: dict[str, list[Scene]] = {}
    records: dict[str, dict[str, list[dict]]] = {t: {s: [] for s in SPLITS} for t in TASKS}
    for split, n in zip(SPLITS, (cfg.n_train, cfg.n_validation, cfg.n_test), strict=True):
        drawn: list[Scene] = []
        while len(drawn) < n:
            scene = draw_scene(scene_rng, cfg)
            if scene not in seen:
                seen.add(scene)
                drawn.append(scene)
        scenes[split] = drawn
        images[split] = np.stack([render(sc, render_rng, cfg) for sc in drawn]) if drawn else \
            np.zeros((0, cfg.image_size, cfg.image_size, 3), np.uint8)
        for i, scene in enumerate(drawn):
            for q in questions(scene, question_rng, cfg):
                records[q["task"]][split].append({"image": i, **q})
    return VlmWorld(cfg, images, scenes, records)


def pixel_values(images: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` -> float32 ``[N, 3, H, W]``: ``(x / 255 - mean) / std`` per channel (CLIP's)."""
    x = images.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def with_image_placeholder(prompt: str) -> str:
    """LLaVA's prompt form: the image placeholder, then the question (the placeholder expands to N tokens)."""
    return f"{IMAGE_PLACEHOLDER} {prompt}"


def world_texts(grid: int = 2) -> list[str]:
    """Every word a prompt or answer of this world can use (the vocabulary of a word-level tokenizer)."""
    words = ["what colour is the", "what shape is at the", "how many objects are there", "is there a",
             "where is the", "yes no ?", *SHAPES, *COLOURS, *NUMBER_WORDS, *cell_names(grid)]
    return words
