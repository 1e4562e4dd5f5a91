"""Train a pool of LoRA adapters, a chunk of them at a time, checkpointed, written as PEFT directories.

The tasks (sorted by name) are cut into fixed chunks of ``chunk`` adapters; chunk k holds tasks
``[k·chunk, (k+1)·chunk)`` whatever is already done, so a SLURM array can run chunk k as task k. A chunk
trains its adapters together: one jitted step (:func:`evojax_merge.pool.step.pool_step`) vmaps the loss
and backward over them, with the base's weights an argument (never folded into the program), and applies
each adapter's own clipped AdamW update. Per step and adapter n (``s = α / r``):

    L_n = Σ_{answer tokens} −log p(y_t | x_<t; W + s B_n A_n) / #answer tokens
    (A_n, B_n) ← AdamW(clip(∇L_n), η_t),   η_t the cosine schedule of transformers

The loop is :meth:`evojax_merge.search.checkpoint.CheckpointRunner.loop`: the state (LoRA factors,
optimizer state, loss curve) is saved with orbax every ``save_every`` steps and on SIGTERM / SIGUSR1 /
Ctrl-C, and a rerun resumes at the last save; since step i's batch is a function of i alone, the resumed
run ends bit-identical to an uninterrupted one. A finished chunk writes each adapter atomically
(:func:`evojax_merge.lora.export.save_peft_adapter`: temp dir, then rename) with ``evojax_merge.json``
(task, data checksum, recipe, losses), then drops its checkpoints. A task whose directory is there with
the same recipe and data is skipped; with another recipe it is an error (use another ``--out``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.adapter import PROJECTIONS, LoraStack
from evojax_merge.lora.export import save_peft_adapter
from evojax_merge.lora.pool import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.pool.data import StepPlan, TaskData, pad_id_of, task_seed
from evojax_merge.pool.step import init_lora_stack, init_pool_opt_state, pool_optimizer, pool_step
from evojax_merge.search.checkpoint import CheckpointRunner

log = logging.getLogger(__name__)

METADATA = "evojax_merge.json"
CHECKPOINTS = ".checkpoints"


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """The recipe. Defaults: the Evo-Merging authors' (r 8, α 16, all seven projections, dropout 0, AdamW,
    cosine decay, 2 epochs, batch 8, answer-only loss); lr, warmup, clipping and weight decay as
    transformers' ``Trainer`` and LLaMA-Factory's example SFT config (1e-4, none, 1.0, 0)."""

    rank: int = 8
    alpha: float = 16.0
    projections: tuple[str, ...] = PROJECTIONS
    epochs: int = 2
    batch_size: int = 8
    lr: float = 1e-4
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    lora_init: str = "shared"
    prompt_style: str = "auto"
    max_len: int | None = None
    loss_on_history: bool = False

    def check(self) -> None:
        """One-line errors naming the command-line option."""
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise EvoMergeInputError(f"--rank: must be a positive integer, got {self.rank}")
        if not self.projections:
            raise EvoMergeInputError("--projections: none given")
        for p in self.projections:
            if p not in PROJECTIONS:
                raise EvoMergeInputError(f"--projections: {p!r} is not one of {', '.join(PROJECTIONS)}")
        if len(set(self.projections)) != len(self.projections):
            raise EvoMergeInputError(f"--projections: {list(self.projections)} names one twice")
        for name, value in (("--alpha", self.alpha), ("--lr", self.lr)):
            if not value > 0:
                raise EvoMergeInputError(f"{name}: must be positive, got {value}")
        for name, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size)):
            if value <= 0:
                raise EvoMergeInputError(f"{name}: must be a positive integer, got {value}")
        if not 0 <= self.warmup_ratio < 1:
            raise EvoMergeInputError(f"--warmup-ratio: must be in [0, 1), got {self.warmup_ratio}")
        for name, value in (("--weight-decay", self.weight_decay), ("--max-grad-norm", self.max_grad_norm)):
            if value < 0:
                raise EvoMergeInputError(f"{name}: must be >= 0, got {value}")
        if self.lora_init not in ("shared", "independent"):
            raise EvoMergeInputError(f"--lora-init: {self.lora_init!r} is not shared or independent")
        if self.max_len is not None and self.max_len <= 0:
            raise EvoMergeInputError(f"--max-len: must be a positive integer, got {self.max_len}")

    def recipe(self) -> dict:
        """What an adapter was trained with (JSON): a finished adapter is reused only under the same recipe."""
        out = dataclasses.asdict(self)
        out["projections"] = list(self.projections)
        return out


def chunk_tasks(num_tasks: int, chunk: int) -> list[list[int]]:
    """Fixed chunks ``[k·chunk, (k+1)·chunk)`` of the task indices."""
    if chunk <= 0:
        raise EvoMergeInputError(f"--chunk: must be a positive integer, got {chunk}")
    return [list(range(i, min(i + chunk, num_tasks))) for i in range(0, num_tasks, chunk)]


def estimate_bytes(cfg, num_adapters: int, batch: int, length: int, answer: int, rank: int,
                   projections: Sequence[str]) -> int:
    """A rough float32 footprint of one training step: the base, then per adapter the activations kept for
    the backward (per layer and token ~12·h + 4·m + 2·heads·T floats), the answer logits and the LoRA
    factors with their gradient and two Adam moments."""
    h, m, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    base = 4 * (cfg.vocab_size * h * (1 if cfg.tie_word_embeddings else 2)
                + layers * sum(o * i for o, i in cfg.module_shapes().values()))
    acts = 4 * batch * length * layers * (12 * h + 4 * m + 2 * cfg.num_attention_heads * length)
    logits = 4 * 3 * batch * answer * cfg.vocab_size
    lora = 4 * 5 * layers * rank * sum(sum(cfg.module_shapes()[p]) for p in projections)
    return base + num_adapters * (acts + logits + lora)


def memory_budget_bytes() -> int:
    """Half the accelerator's memory, or half of this host's available memory on a CPU."""
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return int(0.5 * stats["bytes_limit"])
    return int(0.5 * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def auto_chunk(model: LlamaForCausalLM, plan: StepPlan, cfg: PoolConfig, budget: int | None = None) -> int:
    """The most adapters one step holds within ``budget`` bytes (:func:`estimate_bytes`), at least 1."""
    budget = memory_budget_bytes() if budget is None else budget
    n = len(plan.tasks)
    args = (plan.batch_size, plan.width, plan.answer_width, cfg.rank, cfg.projections)
    while n > 1 and estimate_bytes(model.config, n, *args) > budget:
        n -= 1
    return n


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def _expected_metadata(task: TaskData, cfg: PoolConfig, base: str) -> dict:
    return {"task": task.name, "data_sha256": task.sha256, "base": base, "recipe": cfg.recipe()}


def is_done(out: Path, task: TaskData, cfg: PoolConfig, base: str) -> bool:
    """True when ``out/<task>`` holds this task's adapter under this recipe; an adapter of another
    recipe, data or base there is an error (a new ``--out`` keeps both)."""
    d = out / task.name
    if not d.exists():
        return False
    meta_file = d / METADATA
    if not (meta_file.is_file() and (d / ADAPTER_CONFIG).is_file() and (d / ADAPTER_WEIGHTS).is_file()):
        raise EvoMergeInputError(f"{d}: exists but is not an adapter this trainer wrote; move it or use another --out")
    saved = json.loads(meta_file.read_text())
    want = _expected_metadata(task, cfg, base)
    for key, value in want.items():
        if saved.get(key) != value:
            if isinstance(value, dict):
                diff = sorted(k for k in value if saved.get(key, {}).get(k) != value[k])
                raise EvoMergeInputError(f"{d}: trained with another recipe ({', '.join(diff)} differ); use another "
                                         "--out")
            raise EvoMergeInputError(f"{d}: trained with another {key} ({saved.get(key)!r}); use another --out")
    return True


def initial_stack(model: LlamaForCausalLM, tasks: Sequence[TaskData], cfg: PoolConfig) -> LoraStack:
    """PEFT's init per task: with ``shared`` one A for all (seed ``cfg.seed``), with ``independent`` each
    task's own draw from :func:`evojax_merge.pool.data.task_seed`; B = 0."""
    def one(seed: int) -> LoraStack:
        return init_lora_stack(model, 1, cfg.rank, cfg.alpha, jax.random.key(seed), cfg.projections,
                               init="shared", where="--lora-init")

    stacks = [one(cfg.seed if cfg.lora_init == "shared" else task_seed(cfg.seed, t.name)) for t in tasks]
    return LoraStack(A={m: jnp.concatenate([s.A[m] for s in stacks]) for m in stacks[0].A},
                     B={m: jnp.concatenate([s.B[m] for s in stacks]) for m in stacks[0].B},
                     scale=jnp.concatenate([s.scale for s in stacks]))


def make_step(model: LlamaForCausalLM, cfg: PoolConfig):
    """``(step, params)``: the jitted step ``step(params, trainable, opt_state, scale, batch, total, warmup,
    active) -> (trainable, opt_state, losses)`` and the base's parameters to pass it."""
    graphdef, params = nnx.split(model)

    def make_opt(total, warmup):
        return pool_optimizer(cfg.lr, total, warmup, cfg.weight_decay, cfg.max_grad_norm)

    @jax.jit
    def step(params, trainable, opt_state, scale, batch, total, warmup, active):
        return pool_step(graphdef, params, trainable, opt_state, scale, batch, total, warmup, active, make_opt)

    return step, params, make_opt


def train_chunk(model: LlamaForCausalLM, tasks: Sequence[TaskData], cfg: PoolConfig, ckpt_dir: Path, *,
                pad_id: int, answer_width: int, save_every: int = 10, preemption=None, progress: bool = False,
                log_every: int = 10, label: str = "chunk") -> tuple[LoraStack, np.ndarray, dict]:
    """Train ``tasks`` together; returns the trained stack, the loss curve ``[steps, N]`` and timings."""
    plan = StepPlan(tasks, cfg.batch_size, cfg.epochs, cfg.seed, pad_id, answer_width)
    step, params, make_opt = make_step(model, cfg)
    stack = initial_stack(model, tasks, cfg)
    trainable = {"A": stack.A, "B": stack.B}
    total = jnp.asarray(plan.total)
    warmup = jnp.asarray(np.ceil(cfg.warmup_ratio * plan.total).astype(np.int32))
    state = {"trainable": trainable, "opt": init_pool_opt_state(make_opt, trainable),
             "losses": np.zeros((plan.num_steps, len(tasks)), np.float32)}
    counters = {"tokens": 0, "steps": 0, "t0": time.perf_counter()}

    def step_fn(state: dict, i: int) -> dict:
        batch, tokens = plan.batch(i)
        trainable, opt, losses = step(params, state["trainable"], state["opt"], stack.scale,
                                      {k: jnp.asarray(v) for k, v in batch.items()}, total, warmup,
                                      jnp.asarray(plan.active(i)))
        curve = state["losses"].copy()
        curve[i] = np.asarray(losses)
        counters["tokens"] += tokens
        counters["steps"] += 1
        return {"trainable": trainable, "opt": opt, "losses": curve}

    def on_step(state: dict, done: int) -> None:
        if not progress and (done % log_every == 0 or done == plan.num_steps):
            rate = counters["tokens"] / max(time.perf_counter() - counters["t0"], 1e-9)
            last = state["losses"][done - 1]
            losses = ", ".join(f"{t.name} {last[n]:.4f}" for n, t in enumerate(tasks) if done <= plan.total[n])
            log.info("%s: step %d/%d, %.0f tokens/s; loss %s", label, done, plan.num_steps, rate, losses)

    fingerprint = {"tasks": [t.name for t in tasks], "data": [t.sha256 for t in tasks], "recipe": cfg.recipe(),
                   "answer_width": answer_width}
    t0 = time.perf_counter()
    with CheckpointRunner(ckpt_dir, interval=save_every, fingerprint=fingerprint, preemption=preemption,
                          progress=progress) as runner:
        state = runner.loop("train", state, step_fn, plan.num_steps, on_step=on_step)
        resumed = runner.resumed_from
    wall = time.perf_counter() - t0
    out = LoraStack(A=state["trainable"]["A"], B=state["trainable"]["B"], scale=stack.scale)
    timing = {"wall_s": round(wall, 3), "steps_run": counters["steps"], "tokens_run": counters["tokens"],
              "resumed_from_step": resumed}
    return out, np.asarray(state["losses"]), timing


def _clean_stale(out: Path, names: Sequence[str]) -> None:
    """Temp dirs of adapter writes that were killed half-way (``.<task>.*``)."""
    for name in names:
        for stale in out.glob(f".{name}.*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)


def train_pool(model: LlamaForCausalLM, tokenizer: object, tasks: Sequence[TaskData], out: str | Path,
               cfg: PoolConfig, *, base_name: str, chunk: int | None = None, chunk_index: int | None = None,
               save_every: int = 10, preemption=None, progress: bool = False, log_every: int = 10) -> dict:
    """Train every task of ``tasks`` not yet in ``out`` (or only chunk ``chunk_index``); returns a summary.

    ``chunk=None`` picks the most adapters a step's memory estimate allows (:func:`auto_chunk`).
    Raises :class:`~evojax_merge.search.preemption.Preempted` when stopped by ``preemption`` (saved).
    """
    cfg.check()
    if save_every <= 0:
        raise EvoMergeInputError(f"--save-every: must be a positive integer, got {save_every}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EvoMergeInputError(f"--out: {out} is a file")
    answer_width = max(t.answer_tokens for t in tasks)
    if chunk is None:
        if chunk_index is not None:
            raise EvoMergeInputError("--chunk-index: needs --chunk N (the partition must not depend on memory)")
        plan = StepPlan(tasks, cfg.batch_size, cfg.epochs, cfg.seed, pad_id_of(tokenizer), answer_width)
        chunk = auto_chunk(model, plan, cfg)
    chunks = chunk_tasks(len(tasks), chunk)
    if chunk_index is not None and not 0 <= chunk_index < len(chunks):
        raise EvoMergeInputError(f"--chunk-index: {chunk_index} is past the {len(chunks)} chunks of {chunk} tasks")
    selected = range(len(chunks)) if chunk_index is None else [chunk_index]
    done = {t.name for t in tasks if is_done(out, t, cfg, base_name)}  # before anything is written
    summary: dict = {"out": str(out), "chunk": chunk, "chunks": len(chunks), "trained": [], "skipped": [],
                     "timings": {}}
    out.mkdir(parents=True, exist_ok=True)
    for k in selected:
        members = [tasks[i] for i in chunks[k]]
        todo = [t for t in members if t.name not in done]
        summary["skipped"] += [t.name for t in members if t.name in done]
        if not todo:
            continue
        _clean_stale(out, [t.name for t in todo])
        ckpt_root = out / CHECKPOINTS
        ckpt_dir = ckpt_root / f"chunk_{k}-{_digest([t.name for t in todo])}"
        for stale in ckpt_root.glob(f"chunk_{k}-*"):  # a chunk's earlier, other set of tasks
            if stale != ckpt_dir:
                shutil.rmtree(stale, ignore_errors=True)
        label = f"chunk {k + 1}/{len(chunks)} ({', '.join(t.name for t in todo)})"
        log.info("%s: training %d adapters together", label, len(todo))
        stack, curve, timing = train_chunk(model, todo, cfg, ckpt_dir, pad_id=pad_id_of(tokenizer),
                                           answer_width=answer_width,
                                           save_every=save_every, preemption=preemption, progress=progress,
                                           log_every=log_every, label=label)
        for i, t in enumerate(todo):
            steps = int(np.ceil(t.num_records / cfg.batch_size)) * cfg.epochs
            meta = {**_expected_metadata(t, cfg, base_name), "data": str(t.source), "records": t.num_records,
                    "steps": steps, "prompt_style": t.style,
                    "records_with_dropped_turns": t.records_with_dropped_turns,
                    "first_loss": float(curve[0, i]), "last_loss": float(curve[steps - 1, i])}
            save_peft_adapter(stack.adapter(i), out / t.name, base_model_name_or_path=base_name, metadata=meta)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        if ckpt_root.is_dir() and not any(ckpt_root.iterdir()):
            ckpt_root.rmdir()
        summary["trained"] += [t.name for t in todo]
        summary["timings"][f"chunk_{k}"] = timing
        log.info("%s: written (%.1f s)", label, timing["wall_s"])
    return summary

