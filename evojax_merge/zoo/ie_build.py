"""Build (or reuse) the compositional IE zoo: task data, a tiny pretrained base LM, one LoRA per adapter.

Its config is ``conf/zoo/ie.yaml``; ``python -m evojax_merge.zoo.ie_build conf/zoo/ie.yaml`` builds it and
prints the pilot gate (:mod:`evojax_merge.zoo.gate`).

Over 400 lines: the build is one recipe (config sections, the digest, pretraining data, adapter batches,
the build itself, the manifest) whose parts change together; the world's content is ``ie_world.py``.

The zoo is a cache directory keyed by a hash of its config and of the source of the modules its
build imports (``<cache_dir>/iezoo-<hash>/``): editing any of them (:data:`CODE_MODULES`) gives a
new key, no hand-bumped version; editing another world's code does not.
:func:`evojax_merge.fileio.cached_build` builds it in a temp dir beside it, renamed into place when
complete, so an interrupted build leaves nothing half-written; temp dirs of killed builds are
removed on start.

    iezoo-<hash>/
      manifest.json         config, code digest, tasks, adapters (task, kind), build timings,
                            FLOP rates and the matmul peak, adapter F1, the pilot gate (written last)
      base/                 config.json, model.safetensors, tokenizer.json (HF directory)
      adapters/<name>/      adapter_config.json, adapter_model.safetensors (PEFT)
      data/<task>.json      {"train": [...], "validation": [...], "test": [...]} (alpaca records)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from evojax_merge.data.batching import IGNORE_INDEX, encode_examples, special_ids
from evojax_merge.data.prompt import format_prompt
from evojax_merge.eval.metrics import ie_scores
from evojax_merge.fileio import cached_build
from evojax_merge.lora.export import save_peft_adapter
from evojax_merge.models.config import ModelConfig
from evojax_merge.models.io import save_model
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.models.loss import answer_targets
from evojax_merge.zoo.common import config_sections, default_cache_dir, source_digest
from evojax_merge.zoo.flops import FlopMeter
from evojax_merge.zoo.gate import format_gate, run_gate
from evojax_merge.zoo.ie_world import (
    IEWorldConfig,
    adapter_datasets,
    generate_world,
    pretraining_corpus,
    vocabulary_texts,
)
from evojax_merge.zoo.realization import canonical_dir, platform_fingerprint, verify_weights, weights_checksum
from evojax_merge.zoo.tokenizer import build_tokenizer, save_tokenizer
from evojax_merge.zoo.trainer import check_compiler_options, init_lora_stack, pretrain, train_adapters

log = logging.getLogger(__name__)
# every module this build imports whose code changes what it writes (tests/test_ie_zoo.py checks the
# list against the build's imports): the world and its trainer, the model, the LoRA layout and
# export, the prompt and batching, the generation and metric of the adapter check and the gate
CODE_MODULES = (
    "evojax_merge.zoo.ie_build", "evojax_merge.zoo.ie_world", "evojax_merge.zoo.ie_domains",
    "evojax_merge.zoo.lexicon", "evojax_merge.zoo.gate", "evojax_merge.zoo.trainer", "evojax_merge.pool.step",
    "evojax_merge.zoo.tokenizer",
    "evojax_merge.zoo.flops", "evojax_merge.models.config", "evojax_merge.models.io", "evojax_merge.models.llama",
    "evojax_merge.models.loss", "evojax_merge.lora.adapter", "evojax_merge.lora.export", "evojax_merge.lora.pool",
    "evojax_merge.data.prompt", "evojax_merge.data.batching", "evojax_merge.eval.metrics",
    "evojax_merge.eval.generate", "evojax_merge.eval.evaluate", "evojax_merge.logs",
)
KIND = "ie"  # the zoo config group's ``kind`` of this world (conf/zoo/ie*.yaml); train.py dispatches on it


def code_digest() -> str:
    """SHA-256 over the source of :data:`CODE_MODULES`."""
    return source_digest(CODE_MODULES)


@dataclasses.dataclass(frozen=True)
class BaseModelSpec:
    hidden_size: int = 96
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 264
    max_len: int = 128  # tokens per training row (prompt + answer)


@dataclasses.dataclass(frozen=True)
class AdapterSpec:
    rank: int = 8
    lora_alpha: float = 16.0
    steps: int = 250
    batch_size: int = 8
    lr: float = 1e-2
    eval_examples: int = 50  # test examples per task adapter for the adapter F1 check
    lora_init: str = "shared"  # one LoRA-A draw for every adapter (a real pool's one seed), or independent


@dataclasses.dataclass(frozen=True)
class GateSpec:
    targets: tuple[str, ...] = ()  # empty: no gate (the smoke zoo)
    examples: int = 50

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))


@dataclasses.dataclass(frozen=True)
class IEPretrainSpec:
    """The base's pretraining; ``copy_steps`` first, on long random repeat strings only.

    A copying skill (induction heads) forms in a phase transition whose time varies with the seed:
    in the mixed corpus alone, one of two seeds' bases still copied 17% of random item lists
    exactly after 2500 steps (the other 92%). Starting on nothing but long repeat strings makes
    every answer token an induction step, so the skill forms early for every seed, but in the
    pilots it faded again in the mixed phase (42-57% on seed 0, with or without copy batches
    mixed in: ``experiments/results/zoo_pilot_gate.md``). Both are off in ``conf/zoo/ie.yaml``.
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    num_texts: int = 20000
    num_records: int = 10000
    copy_steps: int = 0
    copy_every: int = 0  # after the warm-up, every copy_every-th batch is a copy batch (0: none)


@dataclasses.dataclass(frozen=True)
class ZooBuildConfig:
    tasks: IEWorldConfig = IEWorldConfig()
    model: BaseModelSpec = BaseModelSpec()
    pretrain: IEPretrainSpec = IEPretrainSpec()
    adapters: AdapterSpec = AdapterSpec()
    gate: GateSpec = GateSpec()
    seed: int = 0
    # XLA options (``jax.jit(compiler_options=...)``) for the two training steps; they pick kernels,
    # so they change the trained weights' last bits and are part of the digest
    compiler_options: dict[str, str | bool | int] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, z: dict) -> ZooBuildConfig:
        """From the ``zoo`` config group (lists become tuples); a bad key is a one-line error.

        ``kind`` (``ie``, the marker ``train.py`` dispatches on) is accepted and not part of the config.
        """
        from evojax_merge.errors import EvoMergeInputError

        if z.get("kind", KIND) != KIND:
            raise EvoMergeInputError(f"zoo.kind: {z['kind']!r} is not {KIND!r} (this is an IE world's config)")
        options = dict(z.get("compiler_options") or {})
        z = {k: v for k, v in z.items() if k not in ("kind", "compiler_options")}
        parts = {"tasks": IEWorldConfig, "model": BaseModelSpec, "pretrain": IEPretrainSpec,
                 "adapters": AdapterSpec, "gate": GateSpec}
        return cls(**config_sections(z, parts), seed=int(z.get("seed", 0)), compiler_options=options)

    def __post_init__(self) -> None:
        from evojax_merge.errors import EvoMergeInputError

        bad = [t for t in self.gate.targets if t not in self.tasks.siblings]
        if bad:
            raise EvoMergeInputError(f"zoo.gate.targets: {bad[0]!r} has no siblings (add it to zoo.tasks.siblings)")
        if self.adapters.lora_init not in ("shared", "independent"):
            raise EvoMergeInputError(f"zoo.adapters.lora_init: {self.adapters.lora_init!r} is not shared or "
                                     "independent")
        check_compiler_options(self.compiler_options, "zoo.compiler_options")

    def digest(self) -> str:
        """The cache key: a hash of the zoo's code, this config and the platform that builds it
        (:func:`evojax_merge.zoo.realization.platform_fingerprint`: another CPU builds other bits)."""
        blob = json.dumps({"code": code_digest(), "platform": platform_fingerprint(), **dataclasses.asdict(self)},
                          sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class Zoo:
    """Paths of a built IE world and its manifest; adapters are not one per task here."""

    root: Path
    manifest: dict

    @property
    def base_dir(self) -> Path:
        return self.root / "base"

    @property
    def task_names(self) -> list[str]:
        return list(self.manifest["tasks"])

    def records(self, task: str) -> dict[str, list[dict]]:
        return json.loads((self.root / "data" / f"{task}.json").read_text())

    @property
    def adapters(self) -> dict[str, dict[str, str]]:
        """Adapter name -> {"task": the task its data imitates ("" for distractors), "kind"}."""
        return self.manifest.get("adapters") or {t: {"task": t, "kind": "task"} for t in self.task_names}


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
    every = cfg.pretrain.copy_every
    n_copy = cfg.pretrain.num_records // 2 if cfg.pretrain.copy_steps or every else 0
    corpus = pretraining_corpus(cfg.tasks, n_texts=cfg.pretrain.num_texts, n_records=cfg.pretrain.num_records,
                                n_copy=n_copy)
    texts = _with_answer_targets(_encode_texts(corpus["texts"], tokenizer, 48))
    records = _with_answer_targets(
        encode_examples(corpus["records"], tokenizer, max_len=cfg.model.max_len, pad_to=cfg.model.max_len))
    copy = _with_answer_targets(encode_examples(corpus["copy"], tokenizer, max_len=cfg.model.max_len,
                                                pad_to=cfg.model.max_len)) if n_copy else None
    b = cfg.pretrain.batch_size
    step = 0
    while True:  # copy warm-up; then one plain-text batch, then two of exercise records (+ copy batches)
        if step < cfg.pretrain.copy_steps or (every and step % every == every - 1):
            source = copy
        else:
            source = texts if step % 3 == 0 else records
        idx = rng.integers(0, source["input_ids"].shape[0], b)
        yield _trim_to_bucket({k: v[idx] for k, v in source.items()})
        step += 1


def _adapter_batches(train: dict[str, np.ndarray], counts: np.ndarray, batch_size: int, seed: int):
    """``batches(step)`` -> ``[N, B, T]``: adapter n draws from its own first ``counts[n]`` rows."""
    n = train["input_ids"].shape[0]

    def batches(step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((seed, step))
        idx = (rng.random((n, batch_size)) * counts[:, None]).astype(np.int64)
        rows = np.arange(n)[:, None]
        return _trim_to_bucket({k: v[rows, idx] for k, v in train.items()})

    return batches


def _stack_training_sets(sets: list[list[dict]], tokenizer, max_len: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each adapter's records encoded to ``max_len``, stacked ``[N, M, T]`` (short sets repeat)."""
    encoded = [encode_examples(recs, tokenizer, max_len=max_len, pad_to=max_len) for recs in sets]
    k = max(int((e["labels"] != IGNORE_INDEX).sum(1).max()) for e in encoded)  # the longest answer
    encoded = [_with_answer_targets(e, k) for e in encoded]
    m = max(e["input_ids"].shape[0] for e in encoded)
    counts = np.array([e["input_ids"].shape[0] for e in encoded])
    stacked = {key: np.stack([np.resize(e[key], (m, *e[key].shape[1:])) for e in encoded]) for key in encoded[0]}
    return stacked, counts


def _adapter_quality(model, tokenizer, stack, names: list[str], adapters: dict, data: dict, n_eval: int,
                     max_len: int) -> dict:
    """Each task adapter's F1 on its own task's test split (greedy generation)."""
    from evojax_merge.eval.evaluate import generate_for_population

    idx = [i for i, n in enumerate(names) if adapters[n]["kind"] == "task"]
    tasks = [adapters[names[i]]["task"] for i in idx]
    records = [data[t]["test"][:n_eval] for t in tasks]
    outputs = generate_for_population(model, tokenizer, stack.take(idx), records, max_len=max_len)
    return {
        t: ie_scores(outs, [r["output"] for r in recs], t.split("_", 1)[0])
        for t, outs, recs in zip(tasks, outputs, records, strict=True)
    }


def build_ie_zoo(cfg: ZooBuildConfig = ZooBuildConfig(), cache_dir: str | Path | None = None,
                 progress: bool = True, canonical: bool = True) -> Zoo:
    """The IE zoo for ``cfg``: the shipped realization of this recipe (``canonical``, the same bits on every
    machine), else the cached build of this machine, built first if needed. Weights are checked against the
    manifest's checksum either way."""
    if canonical and (shipped := canonical_dir(KIND, dataclasses.asdict(cfg))) is not None:
        _say(progress, f"IE zoo: the shipped realization {shipped.name} (world.canonical=false builds it here)")
        return Zoo(shipped, json.loads((shipped / "manifest.json").read_text()))
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache / f"iezoo-{cfg.digest()}"
    manifest = cached_build(root, lambda tmp: _build_into(tmp, cfg, progress))
    verify_weights(root, manifest)
    return Zoo(root, manifest)


def _say(progress: bool, text: str) -> None:
    """One build message, logged once (under Hydra its console and log file show it). With ``progress`` and
    no logging set up (a script), this module's logger gets a console handler first, so that it still shows."""
    if progress and not log.hasHandlers():
        import sys

        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(console)
        log.setLevel(logging.INFO)
    log.info("%s", text)


def world_tokenizer():
    """The IE world's word-level tokenizer: every world word plus the prompt template's."""
    template = format_prompt({"instruction": "x", "input": "y", "output": "x", "history": [["x", "x"]]})
    return build_tokenizer([*vocabulary_texts(), template])


def base_model_config(spec: BaseModelSpec, tokenizer) -> ModelConfig:
    """The tiny Llama of ``zoo.model`` over ``tokenizer``'s vocabulary, with tied embeddings."""
    pad, bos, eos = special_ids(tokenizer)
    return ModelConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, head_dim=spec.hidden_size // spec.num_attention_heads,
        max_position_embeddings=spec.max_len * 2, tie_word_embeddings=True,
        bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
    )


def _build_into(out: Path, cfg: ZooBuildConfig, progress: bool) -> dict:
    timings = {}
    meter = FlopMeter()
    t_start = t0 = time.perf_counter()
    data = generate_world(cfg.tasks)
    tasks = list(data)
    datasets = adapter_datasets(cfg.tasks, data)
    names = sorted(datasets)  # the order a sorted glob of adapters/* loads them in
    adapters = {n: {"task": datasets[n]["task"], "kind": datasets[n]["kind"]} for n in names}
    (out / "data").mkdir(parents=True)
    for t in tasks:
        (out / "data" / f"{t}.json").write_text(json.dumps(data[t]))
    tokenizer = world_tokenizer()
    timings["data_s"] = time.perf_counter() - t0
    _say(progress, f"IE zoo: {len(tasks)} tasks, {len(names)} adapters, vocabulary {len(tokenizer)}")

    t0 = time.perf_counter()
    spec = cfg.model
    model = LlamaForCausalLM(base_model_config(spec, tokenizer), rngs=nnx.Rngs(cfg.seed))
    rng = np.random.default_rng(cfg.seed)
    model, losses = pretrain(model, _pretrain_batches(cfg, tokenizer, rng), cfg.pretrain.steps, cfg.pretrain.lr,
                             progress=progress, meter=meter, compiler_options=cfg.compiler_options)
    save_model(model, out / "base")
    save_tokenizer(tokenizer, out / "base")
    timings["pretrain_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    train, counts = _stack_training_sets([datasets[n]["train"] for n in names], tokenizer, spec.max_len)
    a = cfg.adapters
    stack = init_lora_stack(model, len(names), a.rank, a.lora_alpha, jax.random.key(cfg.seed + 1), init=a.lora_init)
    stack, curve = train_adapters(model, stack, _adapter_batches(train, counts, a.batch_size, cfg.seed), a.steps,
                                  a.lr, progress=progress, meter=meter, compiler_options=cfg.compiler_options)
    for i, n in enumerate(names):
        save_peft_adapter(stack.adapter(i), out / "adapters" / n, base_model_name_or_path="base",
                          metadata=adapters[n])
    timings["adapters_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    quality = _adapter_quality(model, tokenizer, stack, names, adapters, data, a.eval_examples, spec.max_len)
    timings["adapter_eval_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    gate = None
    if cfg.gate.targets:
        gate = run_gate(model, tokenizer, stack, names, adapters, data, cfg.gate.targets, cfg.gate.examples,
                        spec.max_len)
        _say(progress, format_gate(gate))
    timings["gate_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    flops = meter.summary()
    from evojax_merge.perf import matmul_peak

    peak = matmul_peak() / 1e9
    flops["matmul_peak_gflops_per_s"] = peak
    f1 = [q["f1"] for q in quality.values()]
    _say(progress, f"zoo built in {timings['total_s']:.0f} s ({len(tasks)} tasks, {len(names)} adapters; "
         f"pretrain {timings['pretrain_s']:.0f} s, adapters {timings['adapters_s']:.0f} s, "
         f"gate {timings['gate_s']:.0f} s); adapter F1 on own task mean {100 * np.mean(f1):.1f} "
         f"min {100 * np.min(f1):.1f}")
    _say(progress, "achieved " + ", ".join(
        f"{k} {v['gflops_per_s']:.1f} GFLOP/s ({v['gflop']:.0f} GFLOP in {v['seconds']:.0f} s, "
        f"{v['gflops_per_cpu_s']:.1f} GFLOP per CPU-second, +{v['compile_s']:.0f} s compile)"
        for k, v in flops.items() if isinstance(v, dict))
        + f"; f32 matmul peak {peak:.1f} GFLOP/s, total at {100 * flops['total']['gflops_per_s'] / peak:.0f}% of it")
    return {
        "config": dataclasses.asdict(cfg),
        "code_digest": code_digest(),
        "platform": platform_fingerprint(),
        "weights_sha256": weights_checksum(out),
        "tasks": tasks,
        "adapters": adapters,
        "timings": timings,
        "flops": flops,
        "pretrain_final_loss": float(np.mean(losses[-20:])),
        "adapter_final_loss": {n: float(curve[-10:, i].mean()) for i, n in enumerate(names)},
        "adapter_test": quality,
        "gate": gate,
    }


def load_zoo_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ZooBuildConfig:
    """A ``conf/zoo/*.yaml`` file plus ``key.sub=value`` overrides (OmegaConf dotlist)."""
    from omegaconf import OmegaConf

    conf = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides)))
    return ZooBuildConfig.from_dict(OmegaConf.to_container(conf, resolve=True))


def main(argv: list[str] | None = None) -> int:
    """``python -m evojax_merge.zoo.ie_build CONF.yaml [CACHE_DIR] [key=value ...]``: build, print the gate.

    Exit status 1 when the gate fails.
    """
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m evojax_merge.zoo.ie_build CONF.yaml [CACHE_DIR] [key=value ...]", file=sys.stderr)
        return 2
    overrides = [a for a in args[1:] if "=" in a]
    rest = [a for a in args[1:] if "=" not in a]
    cfg = load_zoo_config(args[0], overrides)
    zoo = build_ie_zoo(cfg, rest[0] if rest else None)
    print(zoo.root)
    gate = zoo.manifest.get("gate")
    if gate:
        print(format_gate(gate))
    return 0 if gate is None or gate["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
