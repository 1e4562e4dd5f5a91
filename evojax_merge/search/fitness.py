"""The provider side: a whole population merged and evaluated in one jit-compiled call.

    ce = jit(vmap(lambda alpha, beta: mean_b CE(forward(W, merge(pool, alpha, beta), batch_b))))

The base parameters, the pool and the sorted magnitudes are shared by every candidate
(``in_axes=None``); each candidate is one rank-r adapter applied in factor form. The validation
set lives on the device, padded to one bucketed length, so a whole search compiles once.

``data.validation.by_length=true`` (fixed batches only): the seeded subset is the same, but its rows
are sorted by length before they are cut into batches, and each group of batches of one bucket runs
at that bucket's length (:func:`batch_plan`), a few compiled shapes at most (the bucket list bounds
them). The batches' composition changes, so the CE changes too (not only its rounding); off, every
batch runs at the split's one length, as before. :meth:`MergeEvaluator.padding` measures the pad
tokens either way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from functools import partial
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from evojax_merge.data.batching import DEFAULT_BUCKETS, bucket_length
from evojax_merge.errors import EvoMergeInputError
from evojax_merge.hostmem import release_freed_memory
from evojax_merge.lora.adapter import LoraAdapter, LoraStack
from evojax_merge.merge import evo_merge, stack_magnitudes
from evojax_merge.models.delta import fold_adapter, fold_into_params
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.models.loss import answer_loss, answer_targets
from evojax_merge.search.genome import check_alpha_beta


class Evaluator(Protocol):
    """What the search needs from a provider: losses for a population of control vectors."""

    num_adapters: int

    def evaluate(self, alpha: np.ndarray, beta: np.ndarray, generation: int = 0) -> np.ndarray:
        """Validation CE of each candidate ``(alpha[p], beta[p])``: ``[P]``."""
        ...


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    """How the validation loss is sampled (paper: 20 batches of 15 examples)."""

    batch_size: int = 15
    num_batches: int = 20
    resample: bool = False  # new batches each generation, shared by its candidates (reference: per candidate)
    seed: int = 0
    by_length: bool = False  # fixed batches: the subset sorted by length, each batch at its own bucket
    bucket_step: int | None = None  # with by_length: each batch at its longest row rounded up to a multiple of this
    #                                 (finer than the bucket list: less padding; still one shape per batch at most)


def _population_mesh() -> Mesh | None:
    devices = jax.devices()
    return Mesh(np.array(devices), ("pop",)) if len(devices) > 1 else None


def _mean_batch_ce(graphdef, params, adapter: LoraAdapter | None, data, index) -> jax.Array:
    """Mean over validation batches of the answer-only CE (transformers' loss per batch).

    ``index``: ``[batches, batch size]`` row indices, every batch at the data's length; or a tuple of
    groups ``{"rows": [batches_g, batch size], "width": [0, T_g]}`` whose batches run on the first
    ``T_g`` positions (the empty ``width`` array carries ``T_g`` in its shape, static under jit)."""
    model = nnx.merge(graphdef, params)
    groups = index if isinstance(index, (tuple, list)) else ({"rows": index, "width": None},)

    def group_losses(rows, width: int | None) -> jax.Array:
        def one_batch(_, r):
            ids, mask = data["input_ids"][r], data["attention_mask"][r]
            if width is not None:
                ids, mask = ids[:, :width], mask[:, :width]
            # logits only where the loss is taken: the vocabulary projection of the prompt is skipped
            logits, _ = model(ids, mask, lora=adapter, logits_at=data["answer_pos"][r])
            return None, answer_loss(logits, data["answer_tgt"][r], data["answer_mask"][r])

        return jax.lax.scan(one_batch, None, rows)[1]

    losses = [group_losses(g["rows"], None if g["width"] is None else g["width"].shape[-1]) for g in groups]
    return (losses[0] if len(losses) == 1 else jnp.concatenate(losses)).mean()


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """The fixed validation batches and the length each runs at.

    ``index [batches, batch size]``: row indices (the seeded subset; sorted by length with ``by_length``);
    ``widths [batches]``: each batch's length (the split's length without ``by_length``);
    ``lengths [batches, batch size]``: the rows' real tokens."""

    index: np.ndarray
    widths: np.ndarray
    lengths: np.ndarray

    @property
    def groups(self) -> list[tuple[int, int, int]]:
        """``(width, first batch, end batch)`` of each run of batches at one width, in order."""
        out: list[tuple[int, int, int]] = []
        for j, w in enumerate(self.widths.tolist()):
            if out and out[-1][0] == w:
                out[-1] = (w, out[-1][1], j + 1)
            else:
                out.append((w, j, j + 1))
        return out

    def padding(self, full_width: int) -> dict:
        """Pad tokens among all tokens the batches forward: ``waste``, and ``one_length_waste`` had every
        batch run at ``full_width`` (the split's one length)."""
        real = int(self.lengths.sum())
        tokens = int((self.widths * self.index.shape[1]).sum())
        one = int(self.index.size * full_width)
        return {"tokens": tokens, "pad_tokens": tokens - real, "waste": 1.0 - real / max(tokens, 1),
                "one_length_waste": 1.0 - real / max(one, 1), "widths": sorted({int(w) for w in self.widths}),
                "batches": int(self.index.shape[0]), "batch_size": int(self.index.shape[1])}


def batch_plan(row_lengths: np.ndarray, validation: ValidationConfig, full_width: int,
               buckets=DEFAULT_BUCKETS) -> BatchPlan:
    """The fixed batches of ``validation`` over rows of ``row_lengths`` real tokens, padded to ``full_width``.

    Rows: a seeded subset of ``num_batches x batch_size`` (fewer when the split is smaller), as
    before. With ``by_length`` (and without ``resample``) the subset is sorted by length (stably) before
    it is cut into batches, and each batch runs at the bucket of its longest row (``full_width`` is the
    last bucket), or with ``bucket_step`` at that row's length rounded up to a multiple of the step."""
    lengths = np.asarray(row_lengths).astype(np.int64)
    n = int(lengths.shape[0])
    batch_size = min(validation.batch_size, n)
    num_batches = max(1, min(validation.num_batches, n // batch_size))
    take = num_batches * batch_size
    index = np.random.default_rng(validation.seed).permutation(n)[:take].reshape(num_batches, batch_size)
    widths = np.full(num_batches, int(full_width), np.int64)
    if validation.by_length and not validation.resample:
        flat = index.reshape(-1)
        index = flat[np.argsort(lengths[flat], kind="stable")].reshape(num_batches, batch_size)
        if validation.bucket_step is not None:
            if int(validation.bucket_step) < 1:
                raise EvoMergeInputError(f"data.validation.bucket_step: {validation.bucket_step} < 1")
            step = int(validation.bucket_step)
            widths = np.asarray([min(int(full_width), -(-int(lengths[rows].max()) // step) * step) for rows in index])
        else:
            widths = np.asarray([bucket_length(int(lengths[rows].max()), buckets, int(full_width))
                                 for rows in index])
    return BatchPlan(index, widths, lengths[index])


@dataclasses.dataclass(frozen=True)
class PopulationCE:
    """``(args, alpha [P, N], beta [P, N], index) -> [P]`` CE of ``evo_merge(stack, alpha[p], beta[p])``.

    Static and hashable (it is a jit static argument); the arrays come in ``args``:
    ``{"params", "stack", "magnitudes", "data"}``. ``chunk`` vmaps that many candidates at a time
    (``lax.map``), which keeps the working set in cache on a CPU; None vmaps the whole population
    (accelerators). With a mesh the population is padded to a multiple of its size and sharded
    over the ``pop`` axis; the losses come back replicated. ``fold`` merges each candidate's adapter
    into dense weights before its forward (``W + s·B A``, :func:`fold_adapter`) instead of applying it
    in factor form: faster on a CPU one candidate at a time, but ``chunk`` copies of the weights.
    """

    graphdef: object
    prune: str = "A"
    chunk: int | None = None
    mesh: Mesh | None = None
    fold: bool = False

    def __call__(self, args, alpha, beta, index):
        p = alpha.shape[0]
        if self.mesh is not None:
            n = self.mesh.shape["pop"]
            pad = -(-p // n) * n - p
            if pad:  # repeat the last candidate; its losses are dropped
                alpha = jnp.concatenate([alpha, jnp.repeat(alpha[-1:], pad, axis=0)])
                beta = jnp.concatenate([beta, jnp.repeat(beta[-1:], pad, axis=0)])
            spread = NamedSharding(self.mesh, PartitionSpec("pop"))
            alpha = jax.lax.with_sharding_constraint(alpha, spread)
            beta = jax.lax.with_sharding_constraint(beta, spread)
        # Merge the whole population at once (B's merge is then one GEMM over the pool), then run the
        # forward candidate by candidate (chunk) or all together.
        stack, magnitudes = args["stack"], args["magnitudes"]
        adapters = jax.vmap(lambda a, b: evo_merge(stack, magnitudes, a, b, prune=self.prune))(alpha, beta)

        def candidate_ce(adapter):
            if self.fold:
                return _mean_batch_ce(self.graphdef, fold_adapter(args["params"], adapter), None, args["data"], index)
            return _mean_batch_ce(self.graphdef, args["params"], adapter, args["data"], index)

        if self.chunk is None or self.chunk >= alpha.shape[0]:
            ce = jax.vmap(candidate_ce)(adapters)
        else:
            ce = jax.lax.map(candidate_ce, adapters, batch_size=self.chunk)
        if self.mesh is not None:
            ce = jax.lax.with_sharding_constraint(ce, NamedSharding(self.mesh, PartitionSpec()))
        return ce[:p]


@partial(jax.jit, static_argnums=0)
def population_ce(fn: PopulationCE, args, alpha, beta, index):
    """One compiled call for a whole population. Module-level, so evaluators of equal shapes (the
    targets of an experiment) share one compile."""
    return fn(args, alpha, beta, index)


def resolve_population_chunk(chunk: int | str | None) -> int | None:
    """``auto``: 1 on a CPU (a whole population's forward overflows its caches), all on an accelerator."""
    if chunk == "auto":
        return 1 if jax.default_backend() == "cpu" else None
    if chunk is None or (isinstance(chunk, int) and chunk >= 1):
        return chunk
    raise EvoMergeInputError(f"population_chunk: {chunk!r} is not auto, null or a positive integer")


def fold_on_host(chunk: int | None, dtype: str) -> bool:
    """Whether a population call folds each adapter into the weights (:class:`PopulationCE` ``fold``):
    on a CPU, one float32 candidate at a time. Elsewhere the factored form keeps one copy of W."""
    return chunk == 1 and dtype == "float32" and jax.default_backend() == "cpu"


@partial(jax.jit, static_argnames=("graphdef",))
def params_ce(graphdef, params, delta, adapter, data, index):
    """CE of one model: the base with ``delta`` folded in, plus an optional adapter."""
    return _mean_batch_ce(graphdef, fold_into_params(params, delta), adapter, data, index)


class MergeEvaluator:
    """In-process evaluator over a model, a pool and tokenized validation examples."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        stack: LoraStack,
        examples: Mapping[str, np.ndarray],
        validation: ValidationConfig = ValidationConfig(),
        prune: str = "A",
        population_chunk: int | str | None = "auto",
    ):
        for key in ("input_ids", "attention_mask", "labels"):
            if key not in examples:
                raise EvoMergeInputError(f"validation examples: missing {key!r}")
        num_examples = int(examples["input_ids"].shape[0])
        if num_examples == 0:
            raise EvoMergeInputError("validation examples: empty validation set")
        self.validation = validation
        self.num_adapters = stack.num_adapters
        self.prune = prune
        self.population_chunk = resolve_population_chunk(population_chunk)
        self.stack = stack
        self.graphdef, self.params = nnx.split(model)
        which = {"A": ("A",), "B": ("B",), "both": ("A", "B"), "none": ()}[prune]
        self.magnitudes = stack_magnitudes(stack, which=which)  # sorted once, never in the search
        arrays = {k: np.asarray(examples[k]) for k in ("input_ids", "attention_mask")}
        arrays.update(answer_targets(np.asarray(examples["labels"])))
        self.data = {k: jnp.asarray(v) for k, v in arrays.items()}
        self.num_examples = num_examples
        self.batch_size = min(validation.batch_size, num_examples)
        self.num_batches = max(1, min(validation.num_batches, num_examples // self.batch_size))
        self.width = int(examples["input_ids"].shape[1])
        self.plan = batch_plan(np.asarray(examples["attention_mask"]).sum(1), validation, self.width)
        self._fixed_index = self.plan.index
        self._by_length = validation.by_length and not validation.resample
        self.mesh = _population_mesh()
        # Losses come back replicated: on a multi-host mesh a 'pop'-sharded result spans devices of other
        # processes and could not be fetched with np.asarray.
        chunk = None if self.mesh is not None else self.population_chunk
        self.ce_fn = PopulationCE(self.graphdef, prune, chunk, self.mesh, fold=fold_on_host(chunk, model.config.dtype))
        self.ce_args = {"params": self.params, "stack": stack, "magnitudes": self.magnitudes, "data": self.data}

    # -- batches -------------------------------------------------------------------------------
    def _draw_index(self, rng: np.random.Generator) -> np.ndarray:
        """``[num_batches, batch_size]`` example indices: a seeded subset, no repeats."""
        take = self.num_batches * self.batch_size
        return rng.permutation(self.num_examples)[:take].reshape(self.num_batches, self.batch_size)

    def batch_index(self, generation: int) -> np.ndarray:
        """``[num_batches, batch_size]``: the record indices generation ``generation`` is scored on."""
        if not self.validation.resample:
            return self._fixed_index
        return self._draw_index(np.random.default_rng((self.validation.seed, generation)))

    def _grouped(self, rows: np.ndarray) -> tuple[dict, ...]:
        """``rows [..., batches, batch size]`` as the by-length groups of :func:`_mean_batch_ce`."""
        lead = rows.shape[:-2]
        return tuple({"rows": rows[..., a:b, :], "width": np.zeros((*lead, 0, w), np.int32)}
                     for w, a, b in self.plan.groups)

    def traced_index(self, generation: int = 0):
        """What the compiled CE takes as ``index`` for ``generation``: :meth:`batch_index`, grouped by
        length with ``by_length``."""
        rows = self.batch_index(generation)
        return jax.tree.map(jnp.asarray, self._grouped(rows) if self._by_length else rows)

    def padding(self) -> dict:
        """Pad tokens among all the tokens the fixed batches forward (:meth:`BatchPlan.padding`)."""
        return self.plan.padding(self.width)

    # -- public API --------------------------------------------------------------------------
    def index_table(self, generations: int):
        """``[generations, num_batches, batch_size]``: the batches each generation sees (for a jitted loop);
        with ``by_length``, those rows grouped as :meth:`traced_index` groups them."""
        table = np.stack([self.batch_index(g) for g in range(max(1, generations))])
        return self._grouped(table) if self._by_length else table

    def evaluate(self, alpha, beta, generation: int = 0) -> np.ndarray:
        """Validation CE ``[P]`` of the merged adapters ``evo_merge(pool, alpha[p], beta[p])``."""
        alpha, beta = check_alpha_beta(alpha, beta, self.num_adapters)
        ce = np.asarray(population_ce(self.ce_fn, self.ce_args, jnp.asarray(alpha), jnp.asarray(beta),
                                      self.traced_index(generation)))
        if self.ce_fn.fold:  # a CPU: the call's freed buffers (a folded copy of the weights) back to the OS
            release_freed_memory()
        return ce

    def evaluate_adapter(self, adapter: LoraAdapter | None, generation: int = 0) -> float:
        """Validation CE of one adapter (None: the base model alone)."""
        return self.evaluate_dense({}, adapter, generation)

    def evaluate_dense(self, delta: Mapping[str, jax.Array], adapter: LoraAdapter | None = None,
                       generation: int = 0) -> float:
        """Validation CE with ``delta[m]`` folded into the base weights (task-vector baselines)."""
        return float(params_ce(self.graphdef, self.params, dict(delta), adapter, self.data,
                               self.traced_index(generation)))
