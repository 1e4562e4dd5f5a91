"""Build (or reuse) the built-in zoo: task data, a tiny pretrained base LM, one LoRA per task.

The zoo is a cache directory keyed by a hash of its config
(``<cache_dir>/zoo-<hash>/``). It is built in a temporary directory and renamed into place, so
an interrupted build leaves nothing half-written; a second run with the same config reuses it.

    zoo-<hash>/
      manifest.json         config, task names, build timings and adapter F1 (written last)
      base/                 config.json, model.safetensors, tokenizer.json (HF directory)
      adapters/<task>/      adapter_config.json, adapter_model.safetensors (PEFT)
      data/<task>.json      {"train": [...], "validation": [...], "test": [...]} (alpaca records)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from evojax_merge.data.batching import IGNORE_INDEX, encode_examples, special_ids
from evojax_merge.eval.metrics import ie_scores
from evojax_merge.fileio import cached_build
from evojax_merge.lora.export import save_peft_adapter
from evojax_merge.models.config import ModelConfig
from evojax_merge.models.io import save_model
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.models.loss import answer_targets
from evojax_merge.zoo.tasks import ZooConfig, generate_zoo, parse_task_name, pretraining_corpus
from evojax_merge.zoo.tokenizer import build_zoo_tokenizer, save_tokenizer
from evojax_merge.zoo.trainer import init_lora_stack, pretrain, train_adapters

log = logging.getLogger(__name__)
ZOO_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class BaseModelSpec:
    hidden_size: int = 96
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 264
    max_len: int = 128  # tokens per training row (prompt + answer)


@dataclasses.dataclass(frozen=True)
class PretrainSpec:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    num_texts: int = 20000
    num_records: int = 10000


@dataclasses.dataclass(frozen=True)
class AdapterSpec:
    rank: int = 8
    lora_alpha: float = 16.0
    steps: int = 250
    batch_size: int = 8
    lr: float = 1e-2
    eval_examples: int = 50  # test examples per task for the adapter F1 check


def config_sections(z: dict, parts: dict[str, type]) -> dict:
    """``{section: parts[section](**z[section])}`` for a zoo config group ``z`` (lists become tuples).

    An unknown key, in a section or beside ``seed`` at the top, is a one-line error naming it.
    """
    from evojax_merge.errors import EvoMergeInputError

    out = {}
    for key, kind in parts.items():
        sub = {k: tuple(v) if isinstance(v, list) else v for k, v in (z.get(key) or {}).items()}
        unknown = sorted(set(sub) - {f.name for f in dataclasses.fields(kind)})
        if unknown:
            raise EvoMergeInputError(f"zoo.{key}.{unknown[0]}: unknown key")
        out[key] = kind(**sub)
    unknown = sorted(set(z) - set(parts) - {"seed"})
    if unknown:
        raise EvoMergeInputError(f"zoo.{unknown[0]}: unknown key")
    return out


@dataclasses.dataclass(frozen=True)
class ZooBuildConfig:
    tasks: ZooConfig = ZooConfig()
    model: BaseModelSpec = BaseModelSpec()
    pretrain: PretrainSpec = PretrainSpec()
    adapters: AdapterSpec = AdapterSpec()
    seed: int = 0

    @classmethod
    def from_dict(cls, z: dict) -> ZooBuildConfig:
        """From the ``zoo`` config group (``kind: classic`` or none); a bad key is a one-line error."""
        z = {k: v for k, v in z.items() if k != "kind"}
        parts = {"tasks": ZooConfig, "model": BaseModelSpec, "pretrain": PretrainSpec, "adapters": AdapterSpec}
        return cls(**config_sections(z, parts), seed=int(z.get("seed", 0)))

    def digest(self) -> str:
        blob = json.dumps({"v": ZOO_FORMAT_VERSION, **dataclasses.asdict(self)}, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class Zoo:
    """Paths of a built zoo, and its manifest."""

    root: Path
    manifest: dict

    @property
    def base_dir(self) -> Path:
        return self.root / "base"

    @property
    def task_names(self) -> list[str]:
        return list(self.manifest["tasks"])

    def adapter_dir(self, task: str) -> Path:
        return self.root / "adapters" / task

    def records(self, task: str) -> dict[str, list[dict]]:
        return json.loads((self.root / "data" / f"{task}.json").read_text())


def default_cache_dir() -> Path:
    return Path(os.environ.get("EVOJAX_MERGE_CACHE", Path.home() / ".cache" / "evojax_merge"))


def _encode_texts(texts: list[str], tokenizer, length: int) -> dict[str, np.ndarray]:
    """Plain sentences with a full LM loss: ``<s> text </s>``, right-padded to ``length``."""
    pad, bos, eos = special_ids(tokenizer)
    rows = [[bos, *ids[: length - 2], eos] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    ids = np.full((len(rows), length), pad, np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    mask = (np.arange(length)[None] < np.array([len(r) for r in rows])[:, None]).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask, "labels": np.where(mask == 1, ids, IGNORE_INDEX)}


TRAIN_BUCKETS = (32, 48, 64, 80, 96, 112, 128, 160, 192, 256)


SEQUENCE_KEYS = ("input_ids", "attention_mask", "labels")


def _trim_to_bucket(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cut right padding down to the smallest bucket that holds the batch's longest row.

    Rows are padded to the model's max length once; each step only pays for a few compiles
    (one per bucket) instead of the full length.
    """
    longest = int(batch["attention_mask"].sum(-1).max())
    width = batch["input_ids"].shape[-1]
    t = min(next((b for b in TRAIN_BUCKETS if b >= longest), width), width)
    return {k: v[..., :t] if k in SEQUENCE_KEYS else v for k, v in batch.items()}


def _with_answer_targets(encoded: dict[str, np.ndarray], k: int | None = None) -> dict[str, np.ndarray]:
    return {**encoded, **answer_targets(encoded["labels"], k)}


def _pretrain_batches(cfg: ZooBuildConfig, tokenizer, rng: np.random.Generator):
    corpus = pretraining_corpus(cfg.tasks, n_texts=cfg.pretrain.num_texts, n_records=cfg.pretrain.num_records,
                                seed=cfg.seed)
    texts = _with_answer_targets(_encode_texts(corpus["texts"], tokenizer, 48))
    records = _with_answer_targets(
        encode_examples(corpus["records"], tokenizer, max_len=cfg.model.max_len, pad_to=cfg.model.max_len,
                        overflow="truncate_left"))
    b = cfg.pretrain.batch_size
    step = 0
    while True:  # alternate plain text and format records; two shapes, two compiles
        source = texts if step % 2 == 0 else records
        idx = rng.integers(0, source["input_ids"].shape[0], b)
        yield _trim_to_bucket({k: v[idx] for k, v in source.items()})
        step += 1


def _adapter_batches(train: dict[str, np.ndarray], batch_size: int, seed: int):
    """``batches(step)`` -> ``[N, B, T]``: each adapter draws from its own task's train split."""
    n, m = train["input_ids"].shape[:2]

    def batches(step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((seed, step))
        idx = rng.integers(0, m, (n, batch_size))
        rows = np.arange(n)[:, None]
        return _trim_to_bucket({k: v[rows, idx] for k, v in train.items()})

    return batches


def _adapter_quality(model, tokenizer, stack, tasks: list[str], data: dict, n_eval: int, max_len: int) -> dict:
    """Each adapter's F1 on its own task's test split (greedy generation)."""
    from evojax_merge.eval.evaluate import generate_for_population

    records = [data[t]["test"][:n_eval] for t in tasks]
    outputs = generate_for_population(model, tokenizer, stack, records, max_len=max_len, overflow="truncate_left")
    return {
        t: ie_scores(outs, [r["output"] for r in recs], parse_task_name(t)[0])
        for t, outs, recs in zip(tasks, outputs, records, strict=True)
    }


def build_zoo(cfg: ZooBuildConfig = ZooBuildConfig(), cache_dir: str | Path | None = None,
              progress: bool = True) -> Zoo:
    """Return the cached zoo for ``cfg``, building it first if needed."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache / f"zoo-{cfg.digest()}"
    return Zoo(root, cached_build(root, lambda tmp: _build_into(tmp, cfg, progress)))


def _build_into(out: Path, cfg: ZooBuildConfig, progress: bool) -> dict:
    timings = {}
    t0 = time.perf_counter()
    data = generate_zoo(cfg.tasks)
    tasks = list(data)
    (out / "data").mkdir(parents=True)
    for t in tasks:
        (out / "data" / f"{t}.json").write_text(json.dumps(data[t]))
    tokenizer = build_zoo_tokenizer(cfg.tasks)
    timings["data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pad, bos, eos = special_ids(tokenizer)
    spec = cfg.model
    model_cfg = ModelConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, head_dim=spec.hidden_size // spec.num_attention_heads,
        max_position_embeddings=spec.max_len * 2, tie_word_embeddings=True,
        bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
    )
    model = LlamaForCausalLM(model_cfg, rngs=nnx.Rngs(cfg.seed))
    rng = np.random.default_rng(cfg.seed)
    model, losses = pretrain(model, _pretrain_batches(cfg, tokenizer, rng), cfg.pretrain.steps, cfg.pretrain.lr,
                             progress=progress)
    save_model(model, out / "base")
    save_tokenizer(tokenizer, out / "base")
    timings["pretrain_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    encoded = [encode_examples(data[t]["train"], tokenizer, max_len=spec.max_len, pad_to=spec.max_len,
                               overflow="truncate_left") for t in tasks]
    k = max(int((e["labels"] != IGNORE_INDEX).sum(1).max()) for e in encoded)  # longest answer of all tasks
    encoded = [_with_answer_targets(e, k) for e in encoded]
    train = {key: np.stack([e[key] for e in encoded]) for key in encoded[0]}
    a = cfg.adapters
    stack = init_lora_stack(model, len(tasks), a.rank, a.lora_alpha, jax.random.key(cfg.seed + 1))
    stack, curve = train_adapters(model, stack, _adapter_batches(train, a.batch_size, cfg.seed), a.steps, a.lr,
                                  progress=progress)
    for i, t in enumerate(tasks):
        save_peft_adapter(stack.adapter(i), out / "adapters" / t, base_model_name_or_path="base",
                          metadata={"task": t})
    timings["adapters_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    quality = _adapter_quality(model, tokenizer, stack, tasks, data, a.eval_examples, spec.max_len)
    timings["adapter_eval_s"] = time.perf_counter() - t0
    f1 = [q["f1"] for q in quality.values()]
    log.info("zoo built: %d tasks, adapter F1 mean %.3f min %.3f", len(tasks), np.mean(f1), np.min(f1))
    return {
        "format_version": ZOO_FORMAT_VERSION,
        "config": dataclasses.asdict(cfg),
        "tasks": tasks,
        "timings": timings,
        "pretrain_final_loss": float(np.mean(losses[-20:])),
        "adapter_final_loss": {t: float(curve[-10:, i].mean()) for i, t in enumerate(tasks)},
        "adapter_test": quality,
    }
