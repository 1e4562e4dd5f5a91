"""A world where Sakana's cross-domain merge matters (docs/methods.md §4): a language and a skill.

The analogue of "a Japanese LLM + an English math LLM -> Japanese math" at toy scale:

- language A: short sentences about people, objects and small numbers (number words ``zero`` ..
  ``nine`` and their digits: ``three is 3 .``);
- language B: language A under a fixed, seeded word-level cipher (every alphabetic word maps to a
  made-up word; digits and punctuation stay);
- ``base``: a tiny Llama pretrained from scratch on language-A text;
- ``lang``: ``base`` adapted to language B as a vocabulary extension: the embedding and head rows
  of the B words (new to the base) are trained on B text, code-switched with A word by word in a
  ``code_switch`` fraction of the sentences (a bilingual corpus); nothing else changes;
- ``skill``: ``base``'s transformer blocks fine-tuned on arithmetic word problems in language A
  (embeddings and head frozen)
  (``tom has three pens . tom gets two more . how many pens does tom have ?`` -> ``5``);
- target ``skill_b``: the same word problems in language B, answer a digit. No model saw it.

Tasks (``world.records(task)`` -> ``{"train", "validation", "test"}`` of ``{"prompt", "answer"}``):
``skill_a`` (skill's own task), ``skill_b`` (the target), ``lang_b`` (text in B: ``answer`` is the
last word of a sentence, the language model's own task).

Stable API (shared with DAM, issue 13): :func:`build_sakana_world(cfg, cache_dir, progress)` ->
:class:`SakanaWorld` with ``base_dir``, ``source_dirs`` (``{"lang": dir, "skill": dir}``, HF
directories with config.json, model.safetensors and the tokenizer), ``tokenizer``, ``records``,
``target``, ``own_task``; :func:`encode` (records -> padded arrays with answer-only targets) and
:func:`accuracy` (exact match of the generated answer). The world is a cache directory keyed by a
hash of the config and of the source of the modules its build imports (:data:`CODE_MODULES`),
built in a temp directory and renamed into place.
"""

from __future__ import annotations

import dataclasses
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
from evojax_merge.models.io import load_model, save_model
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.models.loss import IGNORE_INDEX, answer_targets
from evojax_merge.zoo.common import default_cache_dir, source_digest
from evojax_merge.zoo.realization import platform_fingerprint, verify_weights, weights_checksum
from evojax_merge.zoo.tokenizer import build_tokenizer, load_tokenizer, save_tokenizer
from evojax_merge.zoo.trainer import _schedule, batch_loss, pretrain

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NAMES = ("tom", "ann", "bob", "sue", "max", "eva", "sam", "lea")
OBJECTS = ("apples", "pens", "books", "cats", "cups", "coins", "hats", "eggs")
ADJECTIVES = ("red", "big", "small", "old", "new", "blue")
TASKS = ("skill_a", "skill_b", "lang_b")
TARGET = "skill_b"


# every module this build imports whose code changes what it writes (tests/test_sakana_world.py checks
# the list against the build's imports)
CODE_MODULES = (
    "evojax_merge.zoo.sakana_world", "evojax_merge.zoo.tokenizer", "evojax_merge.zoo.trainer", "evojax_merge.pool.step",
    "evojax_merge.models.config", "evojax_merge.models.io", "evojax_merge.models.llama", "evojax_merge.models.loss",
    "evojax_merge.lora.adapter", "evojax_merge.logs",
)


def code_digest() -> str:
    """SHA-256 over the source of :data:`CODE_MODULES`."""
    return source_digest(CODE_MODULES)


@dataclasses.dataclass(frozen=True)
class SakanaModelSpec:
    hidden_size: int = 64
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 160
    max_len: int = 32


@dataclasses.dataclass(frozen=True)
class SakanaWorldConfig:
    model: SakanaModelSpec = SakanaModelSpec()
    corpus_size: int = 6000  # sentences of language A (pretraining) and of language B (lang)
    code_switch: float = 0.7  # fraction of the lang corpus that mixes A and B word by word
    problems: int = 3000  # word problems per language (train: skill_a only)
    validation: int = 64
    test: int = 128
    batch_size: int = 32
    pretrain_steps: int = 600
    pretrain_lr: float = 3e-3
    lang_steps: int = 400
    lang_lr: float = 1e-2
    skill_steps: int = 250
    skill_lr: float = 1e-3
    seed: int = 0

    def digest(self) -> str:
        """Hash of the world's code, this config and the platform that builds it: the cache key
        (:func:`evojax_merge.zoo.realization.platform_fingerprint`: another CPU builds other bits)."""
        blob = json.dumps({"code": code_digest(), "platform": platform_fingerprint(), **dataclasses.asdict(self)},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- the languages


def cipher(seed: int) -> dict[str, str]:
    """The fixed word-level cipher A -> B: each alphabetic word of A to a distinct made-up word."""
    words = sorted(set(_a_vocabulary()))
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


def _a_vocabulary() -> list[str]:
    fixed = ("has", "gets", "more", "gives", "away", "to", "how", "many", "does", "have", "and", "is",
             "likes", "the", "are", "then", "sees")
    return [*NUMBERS, *NAMES, *OBJECTS, *ADJECTIVES, *fixed]


def encipher(text: str, table: dict[str, str]) -> str:
    return " ".join(table.get(w, w) for w in text.split())


def _mixed(text: str, table: dict[str, str], rng: np.random.Generator, code_switch: float) -> str:
    """A language-B sentence; with probability ``code_switch`` code-switched word by word (a
    bilingual corpus, as the paper's Japanese model had)."""
    if rng.random() >= code_switch:
        return encipher(text, table)
    return " ".join(table.get(w, w) if rng.random() < 0.5 else w for w in text.split())


def _sentence(rng: np.random.Generator) -> str:
    n, n2 = rng.choice(NAMES, 2, replace=False)
    o, adj = rng.choice(OBJECTS), rng.choice(ADJECTIVES)
    k, k2 = (int(x) for x in rng.integers(0, 10, 2))
    kind = int(rng.integers(0, 8))
    if kind == 0:
        return f"{n} has {NUMBERS[k]} {o} ."
    if kind == 1:
        return f"{n} gets {NUMBERS[k]} more {o} ."
    if kind == 2:
        return f"{n} gives {NUMBERS[k]} {o} to {n2} ."
    if kind == 3:
        start = int(rng.integers(0, 7))
        return " , ".join(NUMBERS[start:start + 4]) + " ."
    if kind == 4:
        return f"{n} likes the {adj} {o} ."
    if kind == 5:
        return f"{NUMBERS[k]} is {k} ."
    if kind == 6:
        return f"{n} has {NUMBERS[k]} {o} and {n2} has {NUMBERS[k2]} {o} ."
    return f"the {o} are {adj} . {n} sees the {o} ."


def _problem(rng: np.random.Generator) -> tuple[str, str]:
    n, o = rng.choice(NAMES), rng.choice(OBJECTS)
    if rng.random() < 0.5:
        a = int(rng.integers(0, 10))
        b = int(rng.integers(0, 10 - a))
        return f"{n} has {NUMBERS[a]} {o} . {n} gets {NUMBERS[b]} more . how many {o} does {n} have ?", str(a + b)
    a = int(rng.integers(0, 10))
    b = int(rng.integers(0, a + 1))
    return f"{n} has {NUMBERS[a]} {o} . {n} gives {NUMBERS[b]} away . how many {o} does {n} have ?", str(a - b)


def generate_world_data(cfg: SakanaWorldConfig) -> dict:
    """Corpora and task splits, all from ``cfg.seed``: ``{"corpus_a", "corpus_b", "tasks"}``."""
    table = cipher(cfg.seed)
    rng = np.random.default_rng((cfg.seed, 1))
    corpus_a = [_sentence(rng) for _ in range(cfg.corpus_size)]
    corpus_b = [_mixed(_sentence(rng), table, rng, cfg.code_switch) for _ in range(cfg.corpus_size)]
    n_eval = cfg.validation + cfg.test
    probs = [_problem(rng) for _ in range(cfg.problems + n_eval)]
    held = [_problem(rng) for _ in range(n_eval)]  # target problems: fresh draws

    def split(pairs, train_n):
        recs = [{"prompt": p, "answer": a} for p, a in pairs]
        return {"train": recs[:train_n], "validation": recs[train_n:train_n + cfg.validation],
                "test": recs[train_n + cfg.validation:]}

    lang_rows = []
    for s in [encipher(_sentence(rng), table) for _ in range(n_eval)]:
        words = s.split()
        lang_rows.append((" ".join(words[:-2]), " ".join(words[-2:])))  # the last word and "."
    tasks = {
        "skill_a": split(probs, cfg.problems),
        "skill_b": split([(encipher(p, table), a) for p, a in held], 0),
        "lang_b": split(lang_rows, 0),
    }
    return {"corpus_a": corpus_a, "corpus_b": corpus_b, "tasks": tasks, "cipher": table}


# --------------------------------------------------------------------------- encoding, scoring


def encode(records: list[dict], tokenizer, length: int) -> dict[str, np.ndarray]:
    """``<s> prompt answer </s>`` right-padded to ``length``, answer-only labels.

    Returns ``input_ids, attention_mask, labels [B, length]``, ``prompt_len [B]`` (tokens up to and
    including the prompt's last, ``<s>`` counted) and ``answer_pos/answer_tgt/answer_mask [B, K]``.
    """
    pad, bos, eos = tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id
    prompts = tokenizer([r["prompt"] for r in records], add_special_tokens=False)["input_ids"]
    answers = tokenizer([r["answer"] for r in records], add_special_tokens=False)["input_ids"]
    ids = np.full((len(records), length), pad, np.int32)
    labels = np.full((len(records), length), IGNORE_INDEX, np.int32)
    plen = np.zeros(len(records), np.int32)
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        row = [bos, *p, *a, eos]
        if len(row) > length:
            raise ValueError(f"record {i}: {len(row)} tokens > {length}")
        ids[i, : len(row)] = row
        labels[i, 1 + len(p): len(row)] = row[1 + len(p):]
        plen[i] = 1 + len(p)
    mask = (ids != pad).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "prompt_len": plen,
            **answer_targets(labels)}


def answer_text(tokens: np.ndarray, tokenizer) -> list[str]:
    """Generated ids ``[B, steps]`` -> the text up to the first ``</s>`` (words joined by spaces)."""
    eos = tokenizer.eos_token_id
    out = []
    for row in np.asarray(tokens).tolist():
        row = row[: row.index(eos)] if eos in row else row
        out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return out


def accuracy(predictions: list[str], records: list[dict]) -> float:
    """Exact-match accuracy of the predicted answers (whitespace-stripped); 0.0 for no records."""
    if not records:
        return 0.0
    hits = sum(p.strip() == r["answer"].strip() for p, r in zip(predictions, records, strict=True))
    return hits / len(records)


# --------------------------------------------------------------------------- the world


@dataclasses.dataclass(frozen=True)
class SakanaWorld:
    root: Path
    manifest: dict

    @property
    def base_dir(self) -> Path:
        return self.root / "base"

    @property
    def source_dirs(self) -> dict[str, Path]:
        return {"lang": self.root / "lang", "skill": self.root / "skill"}

    @property
    def target(self) -> str:
        return TARGET

    @property
    def own_task(self) -> dict[str, str]:
        return {"lang": "lang_b", "skill": "skill_a"}

    @property
    def max_len(self) -> int:
        return int(self.manifest["config"]["model"]["max_len"])

    @property
    def tokenizer(self):
        return load_tokenizer(self.base_dir)

    def records(self, task: str) -> dict[str, list[dict]]:
        return json.loads((self.root / "data.json").read_text())["tasks"][task]


def build_sakana_world(cfg: SakanaWorldConfig = SakanaWorldConfig(), cache_dir: str | Path | None = None,
                       progress: bool = False) -> SakanaWorld:
    """Return the cached world for ``cfg``, building it first (a few minutes on 2 cores) if needed."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache / f"sakana-{cfg.digest()}"
    manifest = cached_build(root, lambda tmp: _build_into(tmp, cfg, progress))
    verify_weights(root, manifest)
    return SakanaWorld(root, manifest)


def _lm_rows(texts: list[str], tokenizer, length: int) -> dict[str, np.ndarray]:
    recs = [{"prompt": "", "answer": t} for t in texts]  # the whole sentence is the "answer": full LM loss
    enc = encode(recs, tokenizer, length)
    return {k: enc[k] for k in ("input_ids", "attention_mask", "labels")}


def _batches(data: dict[str, np.ndarray], batch_size: int, seed: int):
    rng = np.random.default_rng(seed)
    n = data["input_ids"].shape[0]
    while True:
        idx = rng.integers(0, n, batch_size)
        yield {k: v[idx] for k, v in data.items()}


def _is_vocab(path) -> bool:
    return any(getattr(k, "key", k) in ("embed_tokens", "lm_head") for k in path)


def finetune(model: LlamaForCausalLM, batches, steps: int, lr: float, train_blocks: bool,
             row_mask: np.ndarray | None) -> tuple[LlamaForCausalLM, list[float]]:
    """Adam (clipped at global norm 1) on answer-only CE. ``train_blocks``: the transformer blocks
    and the final norm train, the embeddings and head are frozen; otherwise only the rows of the
    embeddings and head where ``row_mask`` is 1 train (a vocabulary extension)."""
    graphdef, params = nnx.split(model)
    rows = None if row_mask is None else jnp.asarray(row_mask)[:, None]

    def keep(path, g):
        if _is_vocab(path):
            return g * rows if (not train_blocks and rows is not None) else jnp.zeros_like(g) if train_blocks else g
        return g if train_blocks else jnp.zeros_like(g)

    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(_schedule(lr, steps)))
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda p: batch_loss(nnx.merge(graphdef, p), batch))(params)
        grads = jax.tree_util.tree_map_with_path(keep, grads)
        updates, opt_state = opt.update(grads, opt_state, params)
        updates = jax.tree_util.tree_map_with_path(keep, updates)  # frozen stays bit-identical
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state, {k: jnp.asarray(v) for k, v in next(batches).items()})
        losses.append(float(loss))
    return nnx.merge(graphdef, params), losses


def _build_into(out: Path, cfg: SakanaWorldConfig, progress: bool) -> dict:
    timings = {}
    t0 = time.perf_counter()
    data = generate_world_data(cfg)
    texts = [*data["corpus_a"], *data["corpus_b"], *(r["prompt"] + " " + r["answer"] for t in data["tasks"].values()
                                                     for s in t.values() for r in s)]
    tokenizer = build_tokenizer(texts)
    (out / "data.json").write_text(json.dumps({"tasks": data["tasks"], "cipher": data["cipher"]}))
    spec = cfg.model
    model_cfg = ModelConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, head_dim=spec.hidden_size // spec.num_attention_heads,
        max_position_embeddings=spec.max_len * 2, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    timings["data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    base = LlamaForCausalLM(model_cfg, rngs=nnx.Rngs(cfg.seed))
    corpus_a = _lm_rows(data["corpus_a"], tokenizer, spec.max_len)
    base, base_loss = pretrain(base, _batches(corpus_a, cfg.batch_size, cfg.seed), cfg.pretrain_steps,
                               cfg.pretrain_lr, progress=progress)
    for name, model in (("base", base),):
        save_model(model, out / name)
        save_tokenizer(tokenizer, out / name)
    timings["pretrain_s"] = time.perf_counter() - t0

    finals = {"base": float(np.mean(base_loss[-20:]))}
    jobs = {
        "lang": (_lm_rows(data["corpus_b"], tokenizer, spec.max_len), cfg.lang_steps),
        "skill": ({k: v for k, v in encode(data["tasks"]["skill_a"]["train"], tokenizer, spec.max_len).items()
                   if k in ("input_ids", "attention_mask", "labels")}, cfg.skill_steps),
    }
    new_rows = np.zeros(len(tokenizer), np.float32)
    new_rows[tokenizer.convert_tokens_to_ids(sorted(data["cipher"].values()))] = 1.0
    for i, (name, (rows, steps)) in enumerate(jobs.items()):
        t0 = time.perf_counter()
        model = load_model(out / "base")  # a fresh copy of the base
        lr, rows_mask = (cfg.lang_lr, new_rows) if name == "lang" else (cfg.skill_lr, None)
        model, loss = finetune(model, _batches(rows, cfg.batch_size, cfg.seed + 10 + i), steps, lr,
                               train_blocks=name == "skill", row_mask=rows_mask)
        save_model(model, out / name)
        save_tokenizer(tokenizer, out / name)
        finals[name] = float(np.mean(loss[-20:]))
        timings[f"{name}_s"] = time.perf_counter() - t0
    return {"code_digest": code_digest(), "platform": platform_fingerprint(), "weights_sha256": weights_checksum(out),
            "config": dataclasses.asdict(cfg), "tasks": list(TASKS),
            "target": TARGET, "timings": timings, "final_loss": finals}
