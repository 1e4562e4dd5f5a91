"""DAM training: only the merge coefficients learn, with optax Adam (docs/methods.md §5).

Over 400 lines: the objective, both model kinds (a LoRA pool, full fine-tunes), the batch schedule and the
checkpointed loop are one training procedure; the pure merge math is ``merge/dam.py``.

Objective (``objective="kl"``), with the merged model's logits ``z`` and source k's precomputed
logits ``z_k`` on source k's own data:

    L = T² · Σ_k mean_tokens KL(softmax(z_k/T) ‖ softmax(z/T))
        + λ_cos · Σ_layers mean_{a<b} cos(c_a, c_b) + λ_1 Σ|c| + λ_2 Σ c²

T = 2, λ_cos = 0.01. With ``top_k`` only source k's k largest logits per token are stored and both
distributions are renormalised over those k ids (as arcee-ai/DAM's top-k trainer). The source
logits are computed once, before training, so a step is one forward (and its backward) of the
merged model over one batch of every source's data, concatenated. ``objective="ce"`` replaces the
KL term by the answer-only cross-entropy on the target's validation set (the "DAM w/o KL" variant).

One epoch by default: each step takes ``batch_size`` fresh examples of every source. A step whose
coefficients come out non-finite stops training with a one-line :class:`DamNonFiniteError` naming
the step and the key; it carries the last finite coefficients.

Two kinds of world plug in as a :class:`DamModel`: full fine-tunes stacked on a leading axis
(:class:`FullDamModel`) and a LoRA pool on one base (:class:`LoraDamModel`).
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.adapter import LoraAdapter, LoraStack
from evojax_merge.merge.dam import (
    DamParts,
    cosine_similarity_term,
    dam_merge,
    dam_merge_lora,
    first_non_finite,
    init_coefficients,
    init_lora_coefficients,
    l1_l2_terms,
)
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.models.loss import IGNORE_INDEX, answer_loss, answer_targets


@dataclasses.dataclass(frozen=True)
class DamConfig:
    objective: str = "kl"  # "kl": distil every source on its own data; "ce": CE on the target's validation set
    temperature: float = 2.0
    lambda_cos: float = 0.01
    lambda_l1: float = 0.0
    lambda_l2: float = 0.0
    lr: float = 1e-3
    epochs: int = 1
    batch_size: int = 4  # examples per source per step (ce: examples per step)
    top_k: int | None = None  # None: full source logits; k: the k largest per token
    positions: str = "answer"  # where the KL is taken: "answer" tokens or "all" real tokens
    examples_per_source: int | None = None  # cap on each source's data (None: all of it)
    embeddings: bool = False  # full models: coefficients on the token embedding too
    norms: bool = False  # full models: coefficients on the RMSNorm weights too
    seed: int = 0

    def check(self) -> None:
        if self.objective not in ("kl", "ce"):
            raise EvoMergeInputError(f"dam.objective: {self.objective!r} is not 'kl' or 'ce'")
        if self.positions not in ("answer", "all"):
            raise EvoMergeInputError(f"dam.positions: {self.positions!r} is not 'answer' or 'all'")
        for key in ("temperature", "lr"):
            if not getattr(self, key) > 0:
                raise EvoMergeInputError(f"dam.{key}: must be > 0, got {getattr(self, key)}")
        for key in ("epochs", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise EvoMergeInputError(f"dam.{key}: must be >= 1, got {getattr(self, key)}")
        if self.top_k is not None and self.top_k < 1:
            raise EvoMergeInputError(f"dam.top_k: must be >= 1 or null, got {self.top_k}")

    @property
    def parts(self) -> DamParts:
        return DamParts(embeddings=self.embeddings, norms=self.norms)


class DamNonFiniteError(EvoMergeInputError):
    """Training produced NaN/Inf coefficients; ``coefficients`` are the last finite ones."""

    def __init__(self, message: str, step: int, coefficients: dict[str, np.ndarray], history: list[dict]):
        super().__init__(message)
        self.step, self.coefficients, self.history = step, coefficients, history


# -- the two kinds of world ------------------------------------------------------------------------
class DamModel(abc.ABC):
    """What the trainer needs: arrays (``args``), initial coefficients, merged and source logits."""

    names: tuple[str, ...]
    args: dict

    @abc.abstractmethod
    def init(self) -> dict[str, jax.Array]:
        """The coefficients at the start: 1/N for every source, column and merged weight."""

    @abc.abstractmethod
    def merged_logits(self, args, coeffs, ids, mask, pos) -> jax.Array:
        """Logits of the merge under ``coeffs`` at the positions ``pos``."""

    @abc.abstractmethod
    def source_logits(self, args, k, ids, mask, pos) -> jax.Array:
        """Logits of source ``k`` alone at the positions ``pos``."""

    @property
    def num_sources(self) -> int:
        return len(self.names)

    def _structure(self) -> tuple:
        return (type(self), self.graphdef)

    # Hashable by structure (jit static argument): models of one shape share their compiles.
    def __hash__(self) -> int:
        return hash(self._structure())

    def __eq__(self, other) -> bool:
        return isinstance(other, DamModel) and self._structure() == other._structure()


def _hf_name(path: tuple) -> str:
    name = ".".join(str(p) for p in path)
    return {"model.embed_tokens.embedding": "model.embed_tokens.weight", "lm_head": "lm_head.weight"}.get(name, name)


class FullDamModel(DamModel):
    """N full models of one architecture; ``stacked`` maps HF tensor names to ``[N, ...]``."""

    def __init__(self, template: LlamaForCausalLM, stacked: Mapping[str, jax.Array], names: Sequence[str],
                 parts: DamParts | None = None):
        self.graphdef, state = nnx.split(template)
        self._flat = [(p, v) for p, v in nnx.to_flat_state(state)]
        for p, v in self._flat:
            name = _hf_name(p)
            if name not in stacked:
                raise EvoMergeInputError(f"dam: the stacked sources lack tensor {name!r}")
            if tuple(stacked[name].shape[1:]) != tuple(v.shape):
                raise EvoMergeInputError(f"dam: {name!r} has shape {tuple(stacked[name].shape[1:])}, "
                                         f"the model needs {tuple(v.shape)}")
        self.names = tuple(names)
        self.parts = parts or DamParts()
        self.config = template.config
        self.args = {"stacked": dict(stacked)}

    def _structure(self) -> tuple:
        return (type(self), self.graphdef, tuple(p for p, _ in self._flat))

    def init(self):
        return init_coefficients(self.args["stacked"], self.parts)

    def model_for(self, weights: Mapping[str, jax.Array]) -> LlamaForCausalLM:
        leaves = [(p, v.replace(weights[_hf_name(p)].astype(v.dtype))) for p, v in self._flat]
        return nnx.merge(self.graphdef, nnx.from_flat_state(leaves))

    def merged_weights(self, coeffs) -> dict[str, jax.Array]:
        return dam_merge(self.args["stacked"], coeffs)

    def merged_logits(self, args, coeffs, ids, mask, pos):
        model = self.model_for(dam_merge(args["stacked"], coeffs))
        return model(ids, mask, logits_at=pos)[0]

    def source_logits(self, args, k, ids, mask, pos):
        model = self.model_for({n: w[k] for n, w in args["stacked"].items()})
        return model(ids, mask, logits_at=pos)[0]


class LoraDamModel(DamModel):
    """A LoRA pool on one base: the merged adapter has rank N·r, the base weights are fixed."""

    def __init__(self, model: LlamaForCausalLM, stack: LoraStack, names: Sequence[str]):
        if stack.num_adapters != len(names):
            raise EvoMergeInputError(f"dam: {stack.num_adapters} adapters but {len(names)} names")
        self.graphdef, params = nnx.split(model)
        self.names = tuple(names)
        self.args = {"params": params, "stack": stack}

    def init(self):
        return init_lora_coefficients(self.args["stack"])

    def merged_adapter(self, coeffs) -> LoraAdapter:
        return dam_merge_lora(self.args["stack"], coeffs)

    def merged_logits(self, args, coeffs, ids, mask, pos):
        model = nnx.merge(self.graphdef, args["params"])
        return model(ids, mask, lora=dam_merge_lora(args["stack"], coeffs), logits_at=pos)[0]

    def source_logits(self, args, k, ids, mask, pos):
        model = nnx.merge(self.graphdef, args["params"])
        return model(ids, mask, lora=args["stack"].adapter(k), logits_at=pos)[0]


# -- data ------------------------------------------------------------------------------------------
def _positions(examples: Mapping[str, np.ndarray], how: str, k: int | None = None) -> dict[str, np.ndarray]:
    """Where the loss is taken: ``pos [B, K]``, ``mask [B, K]`` (and ``tgt`` for answer tokens)."""
    if how == "answer":
        t = answer_targets(np.asarray(examples["labels"]), k)
        return {"pos": t["answer_pos"], "mask": t["answer_mask"], "tgt": t["answer_tgt"]}
    am = np.asarray(examples["attention_mask"]).astype(bool)
    b, length = am.shape
    pos = np.broadcast_to(np.arange(length, dtype=np.int32), (b, length)).copy()
    return {"pos": pos, "mask": am, "tgt": np.zeros((b, length), np.int32)}


def _pad_to(x: np.ndarray, length: int, value: int) -> np.ndarray:
    if x.shape[1] >= length:
        return x[:, :length]
    return np.pad(x, ((0, 0), (0, length - x.shape[1])), constant_values=value)


def stack_source_data(data: Sequence[Mapping[str, np.ndarray] | None], names: Sequence[str],
                      cfg: DamConfig) -> dict[str, np.ndarray]:
    """Every source's examples as ``[N, M, ...]``: padded to one length, cut to one count M."""
    for d, name in zip(data, names, strict=True):
        if d is None or len(d.get("input_ids", ())) == 0:
            raise EvoMergeInputError(f"dam: source {name!r} has no data for its KL term")
        for key in ("input_ids", "attention_mask", "labels"):
            if key not in d:
                raise EvoMergeInputError(f"dam: the data of source {name!r} lacks {key!r}")
    m = min(len(d["input_ids"]) for d in data)
    if cfg.examples_per_source is not None:
        m = min(m, int(cfg.examples_per_source))
    length = max(d["input_ids"].shape[1] for d in data)
    padded = [{"input_ids": _pad_to(np.asarray(d["input_ids"])[:m], length, 0),
               "attention_mask": _pad_to(np.asarray(d["attention_mask"])[:m], length, 0),
               "labels": _pad_to(np.asarray(d["labels"])[:m], length, IGNORE_INDEX)} for d in data]
    k = None
    if cfg.positions == "answer":
        k = max(int((p["labels"][:, 1:] != IGNORE_INDEX).sum(1).max(initial=1)) for p in padded)
    out = [dict(p, **_positions(p, cfg.positions, k)) for p in padded]
    for o, name in zip(out, names, strict=True):
        if not o["mask"].any():
            raise EvoMergeInputError(f"dam: source {name!r} has no {cfg.positions} tokens for its KL term")
    return {key: np.stack([o[key] for o in out]) for key in out[0]}


def precompute_source_logits(model: DamModel, data: Mapping[str, np.ndarray], cfg: DamConfig,
                             chunk: int = 16) -> dict[str, np.ndarray]:
    """Source k's logits (or top-k values and ids) on source k's own data: ``[N, M, K, V | k]``."""
    fn = partial(_source_logits, model)
    vals, ids_out = [], []
    n, m = data["input_ids"].shape[:2]
    for k in range(n):
        kv, ki = [], []
        for s in range(0, m, chunk):
            z = fn(model.args, k, jnp.asarray(data["input_ids"][k, s:s + chunk]),
                   jnp.asarray(data["attention_mask"][k, s:s + chunk]), jnp.asarray(data["pos"][k, s:s + chunk]))
            if cfg.top_k is not None:
                v, i = jax.lax.top_k(z, min(cfg.top_k, z.shape[-1]))
                kv.append(np.asarray(v))
                ki.append(np.asarray(i, np.int32))
            else:
                kv.append(np.asarray(z))
        vals.append(np.concatenate(kv))
        if ki:
            ids_out.append(np.concatenate(ki))
        if not np.isfinite(vals[-1]).all():
            raise EvoMergeInputError(f"dam: source {model.names[k]!r} gives non-finite logits on its own data")
    out = {"teacher": np.stack(vals)}
    if ids_out:
        out["teacher_ids"] = np.stack(ids_out)
    return out


def prepare_source_data(model: DamModel, source_data: Sequence[Mapping[str, np.ndarray] | None] | None,
                        cfg: DamConfig) -> dict[str, np.ndarray]:
    """The KL objective's data: every source's examples stacked (:func:`stack_source_data`) with its own
    logits on them (:func:`precompute_source_logits`); the same for every learning rate and epoch count."""
    if source_data is None or len(source_data) != model.num_sources:
        got = 0 if source_data is None else len(source_data)
        raise EvoMergeInputError(f"dam: {model.num_sources} sources but data for {got}")
    data = stack_source_data(source_data, model.names, cfg)
    data.update(precompute_source_logits(model, data, cfg))
    return data


# -- the objective ---------------------------------------------------------------------------------
def kl_to_teacher(student: jax.Array, teacher: jax.Array, mask: jax.Array, temperature: float,
                  teacher_ids: jax.Array | None = None) -> jax.Array:
    """``T² · mean_tokens KL(softmax(teacher/T) ‖ softmax(student/T))`` over ``mask``.

    ``student [B, K, V]``; ``teacher [B, K, V]``, or ``[B, K, k]`` logits at ``teacher_ids`` (both
    sides then renormalised over those k ids).
    """
    if teacher_ids is not None:
        student = jnp.take_along_axis(student, teacher_ids, axis=-1)
    logq = jax.nn.log_softmax(student.astype(jnp.float32) / temperature, axis=-1)
    logp = jax.nn.log_softmax(teacher.astype(jnp.float32) / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)
    return temperature**2 * jnp.where(mask, kl, 0.0).sum() / jnp.maximum(mask.sum(), 1)


def dam_loss(model: DamModel, cfg: DamConfig, args, coeffs, batch) -> tuple[jax.Array, dict]:
    """The total loss of one step and its parts."""
    if cfg.objective == "kl":
        n, b = batch["input_ids"].shape[:2]
        flat = {k: v.reshape((n * b,) + v.shape[2:]) for k, v in batch.items()}
        z = model.merged_logits(args, coeffs, flat["input_ids"], flat["attention_mask"], flat["pos"])
        z = z.reshape((n, b) + z.shape[1:])
        per_source = jax.vmap(lambda s, t, msk, ti: kl_to_teacher(s, t, msk, cfg.temperature, ti))(
            z, batch["teacher"], batch["mask"], batch.get("teacher_ids"))
        data_term = per_source.sum()
    else:
        z = model.merged_logits(args, coeffs, batch["input_ids"], batch["attention_mask"], batch["pos"])
        data_term = answer_loss(z, batch["tgt"], batch["mask"])
    cos = cosine_similarity_term(coeffs)
    l1, l2 = l1_l2_terms(coeffs)
    total = data_term + cfg.lambda_cos * cos + cfg.lambda_l1 * l1 + cfg.lambda_l2 * l2
    return total, {"loss": total, cfg.objective: data_term, "cos": cos, "l1": l1, "l2": l2}


@partial(jax.jit, static_argnums=0)
def _source_logits(model: DamModel, args, k, ids, mask, pos):
    return model.source_logits(args, k, ids, mask, pos)


@partial(jax.jit, static_argnums=(0, 1))
def dam_step(model: DamModel, cfg: DamConfig, args, coeffs, opt_state, batch, lr=None):
    """One Adam step: ``-> (coeffs, opt_state, loss parts, all coefficients finite)``.

    Module-level and keyed on the model's structure and the config, so runs of one shape (seeds,
    targets) share one compile. ``lr``: the learning rate as an array (traced, so every point of a
    learning-rate grid shares the compile); None: ``cfg.lr``. Adam at rate 1 scaled by ``lr`` is
    bit-identical to Adam at ``lr`` (both multiply the same direction by ``-lr`` in float32).
    """
    (_, parts), grads = jax.value_and_grad(lambda c: dam_loss(model, cfg, args, c, batch), has_aux=True)(coeffs)
    updates, opt_state = optax.adam(cfg.lr if lr is None else 1.0).update(grads, opt_state, coeffs)
    if lr is not None:
        updates = jax.tree.map(lambda u: u * lr, updates)
    coeffs = optax.apply_updates(coeffs, updates)
    finite = jnp.all(jnp.stack([jnp.isfinite(c).all() for c in jax.tree.leaves(coeffs)]))
    return coeffs, opt_state, parts, finite


@dataclasses.dataclass
class DamResult:
    coefficients: dict[str, np.ndarray]
    history: list[dict]  # one row per step: step, loss and its parts
    steps: int
    forward_examples: int  # examples pushed through a model forward (source logits + training)
    backward_examples: int  # examples whose backward was taken (training)
    precompute_s: float
    train_s: float


def _batches(num_examples: int, cfg: DamConfig, rng: np.random.Generator, num_sources: int | None):
    """Per epoch a fresh permutation per source, cut into steps of ``batch_size``."""
    bs = min(cfg.batch_size, num_examples)
    steps = num_examples // bs
    for _ in range(cfg.epochs):
        perms = [rng.permutation(num_examples) for _ in range(num_sources or 1)]
        for s in range(steps):
            rows = np.stack([p[s * bs:(s + 1) * bs] for p in perms])
            yield rows if num_sources is not None else rows[0]


def history_columns(cfg: DamConfig) -> tuple[str, ...]:
    """The loss parts of a history row, in order (after its ``step``)."""
    return ("loss", cfg.objective, "cos", "l1", "l2")


def _history_rows(history: np.ndarray, steps: int, columns: Sequence[str]) -> list[dict]:
    return [{"step": i + 1, **dict(zip(columns, map(float, history[i]), strict=True))} for i in range(steps)]


def train_dam(model: DamModel, cfg: DamConfig, source_data: Sequence[Mapping[str, np.ndarray] | None] | None = None,
              target_data: Mapping[str, np.ndarray] | None = None, init: Mapping[str, jax.Array] | None = None,
              log_every: int = 0, runner=None, on_step: Callable[[dict], None] | None = None,
              loop_name: str = "dam", prepared: Mapping[str, np.ndarray] | None = None) -> DamResult:
    """Train the coefficients for one epoch (``cfg.epochs``) and return them with the loss curve.

    ``source_data[k]``: examples (``input_ids``, ``attention_mask``, ``labels``) of source k, for
    the KL objective. ``target_data``: the target's validation examples, for the CE objective.

    ``runner``: a :class:`~evojax_merge.search.checkpoint.CheckpointRunner`. The training loop then runs
    as its ``loop("dam", ...)``: the coefficients, Adam's state and the loss history are saved every
    ``interval`` steps unless the previous save is still being written (a step can be much cheaper than
    a save), and always at the last step and on a stop; a stop request saves and raises ``Preempted``,
    and a rerun resumes bit-identically. Without one, or with a stage
    runner that has no ``loop`` (``checkpoint.enabled=false``), nothing is saved.
    ``on_step(row)``: after every step, with its history row. ``loop_name``: the loop's name in the
    runner's checkpoints (a learning-rate / epochs grid runs one loop per grid point, one after another).
    ``prepared``: :func:`prepare_source_data`'s output for the KL objective, computed once for a grid (its
    forwards are then not counted here); ``source_data`` is not read.
    """
    cfg.check()
    coeffs = {k: jnp.asarray(v, jnp.float32) for k, v in (init if init is not None else model.init()).items()}
    bad = first_non_finite({k: np.asarray(v) for k, v in coeffs.items()}, model.names)
    if bad is not None:
        raise EvoMergeInputError(f"dam: non-finite initial coefficient in {bad}")
    t0 = time.perf_counter()
    forward = 0
    if cfg.objective == "kl":
        if prepared is not None:  # stacked and with the sources' logits already (a grid shares them)
            data = dict(prepared)
        else:
            data = prepare_source_data(model, source_data, cfg)
            forward += int(data["input_ids"].shape[0] * data["input_ids"].shape[1])
        keys = ["input_ids", "attention_mask", "pos", "mask", "teacher"] + (["teacher_ids"] if cfg.top_k else [])
        num_examples, num_sources = data["input_ids"].shape[1], model.num_sources
    else:
        if target_data is None or len(target_data.get("input_ids", ())) == 0:
            raise EvoMergeInputError("dam: the ce objective needs the target's validation data")
        data = dict(target_data, **_positions(target_data, "answer"))
        keys = ["input_ids", "attention_mask", "pos", "mask", "tgt"]
        num_examples, num_sources = len(data["input_ids"]), None
    device_data = {k: jnp.asarray(data[k]) for k in keys}
    precompute_s = time.perf_counter() - t0

    # the seed only orders batches on the host, epochs only lengthen the schedule, the rate is traced: one
    # compile serves every seed and every point of a learning-rate / epochs grid
    static_cfg = dataclasses.replace(cfg, seed=0, lr=1.0, epochs=1)
    lr = jnp.asarray(cfg.lr, jnp.float32)
    # every step's rows, drawn up front: step i is a function of (state, i) alone, so a resume continues exactly
    schedule = list(_batches(num_examples, cfg, np.random.default_rng(cfg.seed), num_sources))
    columns = history_columns(cfg)
    state = {"coeffs": coeffs, "opt_state": optax.adam(cfg.lr).init(coeffs),
             "history": np.full((len(schedule), len(columns)), np.nan, np.float32)}

    def step_fn(state: dict, i: int) -> dict:
        batch = _gather_batch(device_data, jnp.asarray(schedule[i]))
        new, new_state, parts, finite = dam_step(model, static_cfg, model.args, state["coeffs"], state["opt_state"],
                                                 batch, lr)
        values = [float(parts[c]) for c in columns]
        if not bool(finite):
            where = first_non_finite({k: np.asarray(v) for k, v in new.items()}, model.names)
            last = {k: np.asarray(v) for k, v in state["coeffs"].items()}
            raise DamNonFiniteError(
                f"dam: non-finite coefficients in {where} at step {i + 1} (loss {values[0]:.4g}); "
                f"kept the coefficients of step {i}", i, last, _history_rows(state["history"], i, columns))
        history = np.array(state["history"])
        history[i] = values
        return {"coeffs": new, "opt_state": new_state, "history": history}

    def after_step(state: dict, done: int) -> None:
        if on_step is not None:
            on_step(_history_rows(state["history"], done, columns)[-1])
        if log_every and done % log_every == 0:
            print(f"dam step {done}: loss {float(state['history'][done - 1, 0]):.5f}", flush=True)

    t1 = time.perf_counter()
    if getattr(runner, "loop", None) is None:
        for i in range(len(schedule)):
            state = step_fn(state, i)
            after_step(state, i + 1)
    else:
        state = runner.loop(loop_name, state, step_fn, len(schedule), on_step=after_step, when_idle=True)
    steps = len(schedule)
    trained = sum(int(rows.size) for rows in schedule)
    return DamResult({k: np.asarray(v) for k, v in state["coeffs"].items()},
                     _history_rows(state["history"], steps, columns), steps, forward + trained, trained,
                     precompute_s, time.perf_counter() - t1)


@jax.jit
def _gather_batch(data: dict, rows: jax.Array) -> dict:
    """Rows ``[N, b]`` (one set per source) or ``[b]`` of every array."""
    if rows.ndim == 2:
        src = jnp.arange(rows.shape[0])[:, None]
        return {k: v[src, rows] for k, v in data.items()}
    return {k: v[rows] for k, v in data.items()}
