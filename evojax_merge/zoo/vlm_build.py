"""The VLM merge world (issue 25, ``world=vlm``): Sakana's EvoVLM-JP at toy scale, built and cached.

The analogue of "LLaVA (English) + a Japanese LLM -> a Japanese VLM":

- ``base``: a tiny Llama pretrained from scratch on language-A text (:mod:`evojax_merge.zoo.vlm_lang`:
  a scene in words, a question, its answer);
- source ``vlm_a``: a LLaVA VLM (:mod:`evojax_merge.models.llava`) whose language model is ``base``;
  the vision tower (from scratch), the projector and the language model's blocks and final norm are
  trained on image questions in language A (the embeddings and head frozen, as the Sakana world's skill);
- source ``lang_b``: ``base`` adapted to language B (a word cipher of A) on B text only, no images, as a
  vocabulary extension: the embedding and head rows of the B words train, nothing else (the Sakana
  world's ``lang``);
- target ``vqa_b``: image questions (colour, shape, where) asked and answered in language B; validation
  and test only. No model ever saw an image question in language B.

Tasks (``world.records(task)`` -> ``{"train", "validation", "test"}`` of ``{"image", "prompt", "answer",
"task"}``, ``image`` an index into ``world.images(split)``): ``vqa_b`` (the target) and ``vqa_a`` (every
task of the scenes in language A: ``vlm_a``'s own). The pilot gate (:mod:`evojax_merge.zoo.vlm_gate`) is
computed at build time on validation records only and kept in the manifest.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from evojax_merge.fileio import cached_build
from evojax_merge.models.config import ModelConfig
from evojax_merge.models.io import _read_safetensors, load_model, save_model
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.models.llava import LlavaConfig, LlavaForConditionalGeneration, split_vlm_params, vlm_params
from evojax_merge.models.llava_io import load_llava, save_llava
from evojax_merge.models.loss import answer_loss
from evojax_merge.models.vision import VisionConfig
from evojax_merge.zoo.common import default_cache_dir, source_digest
from evojax_merge.zoo.realization import platform_fingerprint, verify_weights, weights_checksum
from evojax_merge.zoo.sakana_world import _batches, _lm_rows, finetune
from evojax_merge.zoo.tokenizer import build_tokenizer, load_tokenizer, save_tokenizer
from evojax_merge.zoo.trainer import _schedule, pretrain
from evojax_merge.zoo.vlm_lang import (
    IMAGE_TOKEN,
    encode_vlm,
    in_language_b,
    mixed,
    text_sentences,
    vlm_cipher,
)
from evojax_merge.zoo.vlm_world import SPLITS, VlmWorldConfig, build_vlm_world, pixel_values

TARGET = "vqa_b"
TARGET_TASKS = ("colour", "shape", "where")  # image-reading questions: a blind model is at chance (1/4)
SOURCES = ("vlm_a", "lang_b")
# every module this build imports (its import closure): their code changes what it writes (the cache key)
CODE_MODULES = (
    "evojax_merge.zoo.vlm_build", "evojax_merge.zoo.vlm_lang", "evojax_merge.zoo.vlm_world",
    "evojax_merge.zoo.vlm_gate", "evojax_merge.zoo.sakana_world", "evojax_merge.zoo.tokenizer",
    "evojax_merge.zoo.trainer", "evojax_merge.models.llava", "evojax_merge.models.llava_io",
    "evojax_merge.models.vision", "evojax_merge.models.llama", "evojax_merge.models.io", "evojax_merge.models.loss",
    "evojax_merge.models.config", "evojax_merge.models.functional", "evojax_merge.eval.metrics", "evojax_merge.logs",
    "evojax_merge.lora.adapter", "evojax_merge.pool.step",
)


@dataclasses.dataclass(frozen=True)
class VlmModelSpec:
    hidden_size: int = 64
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 160
    max_len: int = 40
    vision_hidden_size: int = 32
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate_size: int = 64
    patch_size: int = 4


@dataclasses.dataclass(frozen=True)
class VlmBuildConfig:
    model: VlmModelSpec = VlmModelSpec()
    n_train: int = 480  # scenes per split (disjoint abstract scenes; at most 800 together on the 2x2 grid)
    n_validation: int = 64
    n_test: int = 192
    corpus_size: int = 4000  # texts in A (pretraining) and in B (lang_b)
    code_switch: float = 0.7
    batch_size: int = 32
    pretrain_steps: int = 500
    pretrain_lr: float = 3e-3
    lang_steps: int = 400
    lang_lr: float = 1e-2
    vision_steps: int = 800
    vision_lr: float = 2e-3
    seed: int = 0

    def scenes(self) -> VlmWorldConfig:
        return VlmWorldConfig(seed=self.seed, n_train=self.n_train, n_validation=self.n_validation,
                              n_test=self.n_test)

    def digest(self) -> str:
        """Hash of the build's code, this config and the platform: the cache key."""
        blob = json.dumps({"code": source_digest(CODE_MODULES), "platform": platform_fingerprint(),
                           **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclasses.dataclass(eq=False)
class VlmMergeWorld:
    """A built world: ``root/{base,lang_b,vlm_a}`` (HF directories), ``data.json``, ``images.npz``."""

    root: Path
    manifest: dict

    @property
    def base_dir(self) -> Path:
        return self.root / "base"

    @property
    def source_dirs(self) -> dict[str, Path]:
        return {s: self.root / s for s in SOURCES}

    @property
    def target(self) -> str:
        return TARGET

    @property
    def own_task(self) -> dict[str, str]:
        return {"vlm_a": "vqa_a"}

    @property
    def max_len(self) -> int:
        return int(self.manifest["config"]["model"]["max_len"])

    @functools.cached_property
    def tokenizer(self):
        return load_tokenizer(self.base_dir)

    @functools.cached_property
    def llava(self) -> LlavaForConditionalGeneration:
        return load_llava(self.root / "vlm_a")

    @property
    def llava_config(self) -> LlavaConfig:
        return self.llava.config

    @functools.cached_property
    def _data(self) -> dict:
        return json.loads((self.root / "data.json").read_text())

    def records(self, task: str) -> dict[str, list[dict]]:
        return self._data["tasks"][task]

    def images(self, split: str) -> np.ndarray:
        with np.load(self.root / "images.npz") as z:
            return z[split]

    def lm_params(self, name: str) -> dict[str, jax.Array]:
        """The language model of ``base``, ``lang_b`` or ``vlm_a`` (Llama HF names)."""
        if name == "vlm_a":
            return dict(split_vlm_params(vlm_params(self.llava)).language)
        return {k: jnp.asarray(v) for k, v in _read_safetensors(self.root / name).items()}

    def features(self, split: str) -> np.ndarray:
        """``[n_images, N, H]``: the kept vision tower and projector (``vlm_a``'s) on the split's images."""
        cache = self.__dict__.setdefault("_features", {})
        if split not in cache:
            cache[split] = np.asarray(_features(self.llava, jnp.asarray(pixel_values(self.images(split)))))
        return cache[split]

    def encode(self, records: list[dict]) -> dict[str, np.ndarray]:
        cfg = self.llava_config
        return encode_vlm(records, self.tokenizer, self.max_len, cfg.image_token_id, cfg.num_image_tokens)


@jax.jit
def _features(model: LlavaForConditionalGeneration, px: jax.Array) -> jax.Array:
    return model.image_features(px)


def build_vlm_merge_world(cfg: VlmBuildConfig = VlmBuildConfig(), cache_dir: str | Path | None = None,
                          progress: bool = False) -> VlmMergeWorld:
    """Return the cached world for ``cfg``, building it first (a few minutes on 2 cores) if needed."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache / f"vlm-{cfg.digest()}"
    manifest = cached_build(root, lambda tmp: _build_into(tmp, cfg, progress))
    verify_weights(root, manifest)
    return VlmMergeWorld(root, manifest)


def world_data(cfg: VlmBuildConfig) -> dict:
    """Scenes, images, corpora and task splits, all from ``cfg.seed`` (numpy only, no training)."""
    scenes = build_vlm_world(cfg.scenes())
    table = vlm_cipher(cfg.seed)
    rng = np.random.default_rng((cfg.seed, 11))
    corpus_a = text_sentences(cfg.corpus_size, rng, scenes.config)
    corpus_b = [mixed(t, table, rng, cfg.code_switch) for t in text_sentences(cfg.corpus_size, rng, scenes.config)]
    vqa_a = {s: [r for t in scenes.records for r in scenes.records[t][s]] for s in SPLITS}
    target = {s: in_language_b([r for t in TARGET_TASKS for r in scenes.records[t][s]], table) if s != "train" else []
              for s in SPLITS}
    return {"scenes": scenes, "cipher": table, "corpus_a": corpus_a, "corpus_b": corpus_b,
            "tasks": {"vqa_a": vqa_a, TARGET: target}}


def _model_configs(cfg: VlmBuildConfig, tokenizer) -> tuple[ModelConfig, LlavaConfig]:
    m = cfg.model
    text = ModelConfig(
        vocab_size=len(tokenizer), hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_hidden_layers, num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_key_value_heads, head_dim=m.hidden_size // m.num_attention_heads,
        max_position_embeddings=m.max_len * 2, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = VisionConfig(hidden_size=m.vision_hidden_size, intermediate_size=m.vision_intermediate_size,
                          num_hidden_layers=m.vision_layers, num_attention_heads=m.vision_heads,
                          image_size=cfg.scenes().image_size, patch_size=m.patch_size)
    return text, LlavaConfig(vision=vision, text=text, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))


def train_vlm(model: LlavaForConditionalGeneration, data: dict[str, np.ndarray], pixels: np.ndarray, steps: int,
              lr: float, batch_size: int, seed: int) -> tuple[LlavaForConditionalGeneration, list[float]]:
    """Adam (clipped at global norm 1) on the answer-only CE of image questions; the language model's
    embeddings and head stay bit-identical (their gradients and updates are zeroed)."""
    graphdef, params = nnx.split(model)

    def keep(path, g):
        frozen = any(getattr(k, "key", k) in ("embed_tokens", "lm_head") for k in path)
        return jnp.zeros_like(g) if frozen else g

    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(_schedule(lr, steps)))
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        def loss_fn(p):
            logits = nnx.merge(graphdef, p)(batch["input_ids"], batch["pixel_values"], batch["attention_mask"],
                                            logits_at=batch["answer_pos"])
            return answer_loss(logits, batch["answer_tgt"], batch["answer_mask"])

        loss, grads = jax.value_and_grad(loss_fn)(params)
        grads = jax.tree_util.tree_map_with_path(keep, grads)
        updates, opt_state = opt.update(grads, opt_state, params)
        updates = jax.tree_util.tree_map_with_path(keep, updates)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    keys = ("input_ids", "attention_mask", "answer_pos", "answer_tgt", "answer_mask")
    losses = []
    for _ in range(steps):
        idx = rng.integers(0, data["input_ids"].shape[0], batch_size)
        batch = {k: jnp.asarray(data[k][idx]) for k in keys}
        batch["pixel_values"] = jnp.asarray(pixels[data["image"][idx]])
        params, opt_state, loss = step(params, opt_state, batch)
        losses.append(float(loss))
    return nnx.merge(graphdef, params), losses


def _build_into(out: Path, cfg: VlmBuildConfig, progress: bool) -> dict:
    from evojax_merge.zoo.vlm_gate import compute_gate

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = world_data(cfg)
    tasks = data["tasks"]
    texts = [*data["corpus_a"], *data["corpus_b"],
             *(r["prompt"] + " " + r["answer"] for t in tasks.values() for s in t.values() for r in s)]
    tokenizer = build_tokenizer(texts)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    (out / "data.json").write_text(json.dumps({"tasks": tasks, "cipher": data["cipher"]}))
    np.savez_compressed(out / "images.npz", **data["scenes"].images)
    text_cfg, llava_cfg = _model_configs(cfg, tokenizer)
    timings["data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    length = cfg.model.max_len
    base, base_loss = pretrain(LlamaForCausalLM(text_cfg, rngs=nnx.Rngs(cfg.seed)),
                               _batches(_lm_rows(data["corpus_a"], tokenizer, length), cfg.batch_size, cfg.seed),
                               cfg.pretrain_steps, cfg.pretrain_lr, progress=progress)
    save_model(base, out / "base")
    save_tokenizer(tokenizer, out / "base")
    timings["pretrain_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    new_rows = np.zeros(len(tokenizer), np.float32)
    new_rows[tokenizer.convert_tokens_to_ids(sorted(data["cipher"].values()))] = 1.0
    lang, lang_loss = finetune(load_model(out / "base"),
                               _batches(_lm_rows(data["corpus_b"], tokenizer, length), cfg.batch_size, cfg.seed + 10),
                               cfg.lang_steps, cfg.lang_lr, train_blocks=False, row_mask=new_rows)
    save_model(lang, out / "lang_b")
    save_tokenizer(tokenizer, out / "lang_b")
    timings["lang_b_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    vlm = LlavaForConditionalGeneration(llava_cfg, rngs=nnx.Rngs(cfg.seed + 20))
    vlm.language_model = load_model(out / "base")  # the shared base, not a fresh init
    enc = encode_vlm(tasks["vqa_a"]["train"], tokenizer, length, llava_cfg.image_token_id, llava_cfg.num_image_tokens)
    vlm, vision_loss = train_vlm(vlm, enc, pixel_values(data["scenes"].images["train"]), cfg.vision_steps,
                                 cfg.vision_lr, cfg.batch_size, cfg.seed + 30)
    save_llava(vlm, out / "vlm_a")
    save_tokenizer(tokenizer, out / "vlm_a")
    timings["vlm_a_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    world = VlmMergeWorld(out, {"config": dataclasses.asdict(cfg)})
    gate = compute_gate(world)
    timings["gate_s"] = time.perf_counter() - t0
    finals = {"base": float(np.mean(base_loss[-20:])), "lang_b": float(np.mean(lang_loss[-20:])),
              "vlm_a": float(np.mean(vision_loss[-20:]))}
    return {"code_digest": source_digest(CODE_MODULES), "platform": platform_fingerprint(),
            "weights_sha256": weights_checksum(out), "config": dataclasses.asdict(cfg), "target": TARGET,
            "sources": list(SOURCES), "timings": timings, "final_loss": finals, "gate": gate}

