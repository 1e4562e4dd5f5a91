"""The VLM world's two languages and its encodings (issue 25): text in A and B, image questions, ids.

- language A: the English words of :mod:`evojax_merge.zoo.vlm_world` (questions, answers, scene words);
- language B: language A under a fixed, seeded word-level cipher (every alphabetic word -> a made-up
  word ``CVCVx``, punctuation stays), the Sakana world's construction (:func:`vlm_cipher`);
- text (no image) is a scene *described in words* then a question about it and its answer:
  ``a red circle is at the top left . there are one objects . what colour is the circle ? red .``
  (the answer can be read off the text); B text is its cipher, code-switched word by word in a
  ``code_switch`` fraction of the sentences (a bilingual corpus, as in the Sakana world);
- an image question ``{"image", "prompt", "answer", "task"}`` is encoded as

      ids    = <s> <image>×N  prompt  answer </s>     (N = the VLM's image tokens, LLaVA's expansion)
      labels = the answer and </s> only

Pure numpy; every draw comes from ``numpy.random.default_rng`` streams of the world seed.
"""

from __future__ import annotations

import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.models.loss import IGNORE_INDEX, answer_targets
from evojax_merge.zoo.vlm_world import (
    COLOURS,
    NUMBER_WORDS,
    SHAPES,
    Scene,
    VlmWorldConfig,
    cell_names,
    draw_scene,
    questions,
    world_texts,
)

IMAGE_TOKEN = "<image>"


def a_vocabulary(grid: int = 2) -> list[str]:
    """Every alphabetic word language A uses (questions, answers and the scene descriptions)."""
    words = {w for t in world_texts(grid) for w in t.split() if w.isalpha()}
    words |= {"a", "at", "there", "are", "objects", *SHAPES, *COLOURS, *NUMBER_WORDS}
    return sorted(words)


def vlm_cipher(seed: int, grid: int = 2) -> dict[str, str]:
    """The fixed word-level cipher A -> B: each word of :func:`a_vocabulary` to a distinct ``CVCVx`` word."""
    words = a_vocabulary(grid)
    rng = np.random.default_rng((seed, 7))
    cons, vow = "bcdfgjklmnprstvz", "aeiou"
    out: dict[str, str] = {}
    taken = set(words)
    for w in words:
        while True:
            c = "".join(rng.choice(list(cons)) + rng.choice(list(vow)) for _ in range(2)) + "x"
            if c not in taken:
                break
        taken.add(c)
        out[w] = c
    return out


def encipher(text: str, table: dict[str, str]) -> str:
    """Word by word; a word outside the table (punctuation) stays."""
    return " ".join(table.get(w, w) for w in text.split())


def describe(scene: Scene, grid: int) -> str:
    """A scene in words: ``a {colour} {shape} is at the {cell} .`` per object, then the count."""
    names = cell_names(grid)
    parts = [f"a {o.colour} {o.shape} is at the {names[o.cell]} ." for o in scene]
    return " ".join([*parts, f"there are {NUMBER_WORDS[len(scene)]} objects ."])


def text_sentences(n: int, rng: np.random.Generator, cfg: VlmWorldConfig) -> list[str]:
    """``n`` language-A texts: a described scene, one question about it and its answer."""
    out = []
    for _ in range(n):
        scene = draw_scene(rng, cfg)
        qs = questions(scene, rng, cfg)
        q = qs[int(rng.integers(len(qs)))]
        out.append(f"{describe(scene, cfg.grid)} {q['prompt']} {q['answer']} .")
    return out


def mixed(text: str, table: dict[str, str], rng: np.random.Generator, code_switch: float) -> str:
    """A language-B text; with probability ``code_switch`` code-switched word by word (p = 1/2 per word)."""
    if rng.random() >= code_switch:
        return encipher(text, table)
    return " ".join(table.get(w, w) if rng.random() < 0.5 else w for w in text.split())


def in_language_b(records: list[dict], table: dict[str, str]) -> list[dict]:
    """The same image questions with prompt and answer in language B."""
    return [{**r, "prompt": encipher(r["prompt"], table), "answer": encipher(r["answer"], table)} for r in records]


def encode_vlm(records: list[dict], tokenizer, length: int, image_token_id: int, num_image_tokens: int
               ) -> dict[str, np.ndarray]:
    """``<s> <image>×N prompt answer </s>`` right-padded to ``length``, answer-only labels.

    Returns ``input_ids, attention_mask, labels [B, length]``, ``prompt_len [B]`` (tokens up to and
    including the prompt's last), ``image [B]`` (each record's image index) and
    ``answer_pos/answer_tgt/answer_mask [B, K]`` (:func:`evojax_merge.models.loss.answer_targets`).
    A record that does not fit is a one-line error naming ``length``.
    """
    pad, bos, eos = tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id
    prompts = tokenizer([r["prompt"] for r in records], add_special_tokens=False)["input_ids"]
    answers = tokenizer([r["answer"] for r in records], add_special_tokens=False)["input_ids"]
    ids = np.full((len(records), length), pad, np.int32)
    labels = np.full((len(records), length), IGNORE_INDEX, np.int32)
    plen = np.zeros(len(records), np.int32)
    head = [bos, *([image_token_id] * num_image_tokens)]
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        row = [*head, *p, *a, eos]
        if len(row) > length:
            raise EvoMergeInputError(f"world.build.model.max_len: record {i} needs {len(row)} tokens > {length}")
        ids[i, : len(row)] = row
        plen[i] = len(head) + len(p)
        labels[i, plen[i]: len(row)] = row[plen[i]:]
    mask = (ids != pad).astype(np.int32)
    image = np.asarray([int(r["image"]) for r in records], np.int32)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "prompt_len": plen, "image": image,
            **answer_targets(labels)}
