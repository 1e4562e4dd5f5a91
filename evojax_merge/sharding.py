"""Model parallelism next to the population axis: a ``("pop", "model")`` mesh.

When the base does not fit one device (see ``python -m evojax_merge.bench --plan``), its weights
are split over a ``"model"`` mesh axis in the Megatron layout while the population stays split
over ``"pop"``:

    column-parallel  q, k, v, gate, up  W [d_out, d_in]: P("model", None);  B [N, d_out, r]: P(None, "model", None)
    row-parallel     o, down            W [d_out, d_in]: P(None, "model");  A [N, r, d_in]: P(None, None, "model")
    embedding, lm_head                  [V, H]: P("model", None)
    norms, the other factor, the sorted magnitudes, the data: replicated

A dimension that does not divide the axis size stays replicated. The compiled call is the same
``population_ce``; GSPMD propagates the input shardings and inserts the collectives.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.adapter import LoraStack
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.search.fitness import MergeEvaluator, ValidationConfig

COLUMN = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
ROW = ("o_proj", "down_proj")


def make_mesh(pop: int, model: int, devices=None) -> Mesh:
    """A ``pop × model`` mesh over the first ``pop · model`` devices."""
    devices = jax.devices() if devices is None else list(devices)
    if pop < 1 or model < 1 or pop * model > len(devices):
        raise EvoMergeInputError(f"mesh {pop} x {model}: needs {pop * model} devices, {len(devices)} available")
    return Mesh(np.array(devices[: pop * model]).reshape(pop, model), ("pop", "model"))


def _fit(spec: tuple, shape: tuple[int, ...], size: int) -> PartitionSpec:
    """``spec`` with every axis that does not divide ``size`` replicated instead."""
    return PartitionSpec(*(a if a is None or shape[i] % size == 0 else None for i, a in enumerate(spec)))


def param_spec(name: str, shape: tuple[int, ...], size: int) -> PartitionSpec:
    """The PartitionSpec of one base parameter, by its HF-style name."""
    proj = name.rsplit(".", 2)[-2] if name.endswith(".weight") else ""
    if len(shape) == 2 and proj in COLUMN:
        return _fit(("model", None), shape, size)
    if len(shape) == 2 and proj in ROW:
        return _fit((None, "model"), shape, size)
    if len(shape) == 2 and ("embed_tokens" in name or name == "lm_head"):
        return _fit(("model", None), shape, size)
    return PartitionSpec()


def shard_params(params: nnx.State, mesh: Mesh) -> nnx.State:
    """The base parameters placed on ``mesh`` by ``param_spec``."""
    size = mesh.shape["model"]
    leaves = []
    for path, var in nnx.to_flat_state(params):
        name = ".".join(str(p) for p in path)
        x = var[...]
        spec = param_spec(name, tuple(x.shape), size)
        leaves.append((path, var.replace(jax.device_put(x, NamedSharding(mesh, spec)))))
    return nnx.from_flat_state(leaves)


def shard_stack(stack: LoraStack, mesh: Mesh) -> LoraStack:
    """The pool placed to match the base: column modules split B's d_out, row modules A's d_in."""
    size = mesh.shape["model"]

    def put(x, spec):
        return jax.device_put(x, NamedSharding(mesh, _fit(spec, tuple(x.shape), size)))

    A = {m: put(a, (None, None, "model") if m.rsplit(".", 1)[1] in ROW else ()) for m, a in stack.A.items()}
    B = {m: put(b, (None, "model", None) if m.rsplit(".", 1)[1] in COLUMN else ()) for m, b in stack.B.items()}
    return LoraStack(A=A, B=B, scale=put(stack.scale, ()))


def replicate(tree, mesh: Mesh):
    return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, PartitionSpec())), tree)


class ShardedEvaluator(MergeEvaluator):
    """A ``MergeEvaluator`` on a ``("pop", "model")`` mesh: the population split over ``"pop"``,
    the base and the pool over ``"model"``. Same losses as one device, up to float reassociation
    in the cross-device sums."""

    def __init__(self, model: LlamaForCausalLM, stack: LoraStack, examples: Mapping[str, np.ndarray],
                 mesh: Mesh, validation: ValidationConfig | None = None, prune: str = "A"):
        super().__init__(model, stack, examples, validation or ValidationConfig(), prune=prune)
        if tuple(mesh.axis_names) != ("pop", "model"):
            raise EvoMergeInputError(f"mesh axes {mesh.axis_names}, expected ('pop', 'model')")
        self.mesh = mesh
        self._out_sharding = NamedSharding(mesh, PartitionSpec())
        self.params = shard_params(self.params, mesh)
        self.stack = shard_stack(self.stack, mesh)
        self.magnitudes = replicate(self.magnitudes, mesh)
        self.data = replicate(self.data, mesh)
        if hasattr(self, "ce_fn"):  # evaluators that call population_ce(fn, args, ...)
            from evojax_merge.search.fitness import PopulationCE

            self.ce_fn = PopulationCE(self.graphdef, prune, None, mesh)
            self.ce_args = {"params": self.params, "stack": self.stack, "magnitudes": self.magnitudes,
                            "data": self.data}

    def _shard(self, x: np.ndarray) -> tuple[jax.Array, int]:
        """Pad the population to a multiple of the ``"pop"`` axis and split it there."""
        p, n = x.shape[0], self.mesh.shape["pop"]
        padded = -(-p // n) * n
        if padded != p:  # repeat the last candidate; its losses are dropped
            x = np.concatenate([x, np.repeat(x[-1:], padded - p, axis=0)])
        return jax.device_put(x, NamedSharding(self.mesh, PartitionSpec("pop"))), p
