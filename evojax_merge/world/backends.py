"""Where an experiment's merges are evaluated: in this process (the weights are ours) or through a
black-box merge service (only control vectors leave, only losses and texts come back).

Every backend answers the same questions, so one experiment engine drives them all (a third,
:class:`SourcesBackend`, holds full fine-tunes instead of a LoRA pool):

- the catalog: adapter names, which task each adapter was trained on (and its kind, where known), the
  task records;
- ``open_cell(target, pool_idx, val_records, validation, max_len)``: a :class:`Cell` whose
  ``evaluator_for(prune)`` scores populations of ``(alpha, beta)`` on that pool;
- ``answers(cell, outcomes, records, max_len, task)``: each outcome's greedy answers to ``task``'s test
  records (``task``: the cell's target unless a multi-task cell names one of its tasks);
- ``score(task, answers, records)``: the task's metric (IE P/R/F1, or exact match).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.data.batching import encode_records
from evojax_merge.errors import EvoMergeInputError
from evojax_merge.eval.evaluate import generate_for_population, score
from evojax_merge.methods.base import Outcome, SourcesCell
from evojax_merge.models.delta import fold_into_params
from evojax_merge.search.fitness import MergeEvaluator, ValidationConfig, batch_plan

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Cell:
    """One (target, pool, validation set): what its methods share."""

    target: str
    pool_idx: list[int]
    pool_names: list[str]
    evaluator_for: Callable[[str], object]
    stack: object = None  # the pool's LoraStack when the weights are ours
    close: Callable[[], None] = lambda: None
    sources: SourcesCell | None = None  # full fine-tunes (a SourcesBackend's cell)


def note_padding(stats: dict, target: str, examples: dict, validation: ValidationConfig) -> None:
    """Log, and keep in ``stats["padding"]`` (results.json's ``prompt``), the pad tokens of the fixed
    validation batches (:meth:`~evojax_merge.search.fitness.BatchPlan.padding`)."""
    width = int(examples["input_ids"].shape[1])
    pad = batch_plan(np.asarray(examples["attention_mask"]).sum(1), validation, width).padding(width)
    stats["padding"] = pad
    log.info("%s validation: %d batches of %d at %s tokens: padding waste %.1f%% of tokens (%.1f%% at one length "
             "%d%s)", target, pad["batches"], pad["batch_size"], "/".join(map(str, pad["widths"])), 100 * pad["waste"],
             100 * pad["one_length_waste"], width, "" if validation.by_length else "; data.validation.by_length=true "
             "sorts the batches by length")


class _Scored:
    """The task-type metric, shared by the LoRA backends."""

    def score(self, task: str, answers: list[str], records: list[dict]) -> dict:
        return score(answers, records, self.task_type(task))


class LocalBackend(_Scored):
    """The world's model and pool, in this process."""

    remote = False

    def __init__(self, world, max_new_tokens: int, population_chunk: int | str | None = "auto",
                 progress: bool = True, default_targets: Sequence[str] = ()):
        self.world = world
        self.default_targets = tuple(default_targets)
        self.names = list(world.pool.names)
        self.records = world.records
        self.adapter_kinds = dict(world.adapter_kinds)
        self.max_new_tokens = max_new_tokens
        self.population_chunk = population_chunk
        self.progress = progress
        self.test_fit: dict[str, dict] = {}  # task -> what fitting did to its test prompts (generate_for_population)
        self.test_batch_size: int | None = None  # experiment.test_batch_size (engine.run_cells sets it)

    def own_adapter(self, task: str) -> str | None:
        return self.world.own_adapter(task)

    def task_type(self, task: str) -> str:
        return self.world.task_type(task)

    def open_cell(self, target: str, pool_idx: Sequence[int], val_records: list[dict],
                  validation: ValidationConfig, max_len: int) -> Cell:
        pool = self.world.pool.subset(list(pool_idx))
        enc = encode_records(val_records, self.world.tokenizer, max_len, **self.world.encoding(target, "validation"))
        self.world.note_fit(target, enc, val_records)
        examples = enc.arrays
        note_padding(self.world.prompt_stats.setdefault(target, {}), target, examples, validation)
        evaluators: dict[str, MergeEvaluator] = {}

        def evaluator_for(prune: str) -> MergeEvaluator:
            if prune not in evaluators:
                evaluators[prune] = MergeEvaluator(self.world.model, pool.stack, examples, validation, prune=prune,
                                                   population_chunk=self.population_chunk)
            return evaluators[prune]

        return Cell(target, list(pool_idx), list(pool.names), evaluator_for, pool.stack)

    def check(self, targets, max_len: int | None, test_examples: int) -> None:
        """Every target's splits exist and fit, before anything runs."""
        self.world.check_splits(set(targets), max_len, test_examples)

    def prompt_stats(self, target: str, task: str | None = None) -> dict:
        """What fitting did to ``target``'s validation rows and (once generated) ``task``'s test prompts."""
        stats = dict(self.world.prompt_stats.get(target, {}))
        if (task or target) in self.test_fit:
            stats["test"] = self.test_fit[task or target]
        return stats

    def answers(self, cell: Cell, outcomes: list[Outcome], records: list[dict], max_len: int,
                task: str | None = None) -> list[list[str]]:
        """Greedy test answers of every outcome; the adapter ones in batched calls."""
        from evojax_merge.logs import progress_bar

        world, texts, task = self.world, {}, task or cell.target
        gen_kw = world.encoding(task, "test", training=False)
        bar = progress_bar(len(outcomes), f"{task}: test generation", self.progress)
        by_shape: dict[tuple, list[int]] = {}  # adapters of one rank and module set generate in one batch
        for i, o in enumerate(outcomes):
            if o.adapter is not None and o.model is None:
                by_shape.setdefault(tuple((m, a.shape) for m, a in sorted(o.adapter.A.items())), []).append(i)
        for lora_idx in by_shape.values():
            stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[outcomes[i].adapter for i in lora_idx])
            fit: dict = {}  # the test prompts' fitting, for results.json (the same for every outcome)
            outs = generate_for_population(world.model, world.tokenizer, stacked, records, max_len,
                                           self.max_new_tokens, fit=fit, batch_rows=self.test_batch_size, **gen_kw)
            self.test_fit[task] = fit
            texts.update(zip(lora_idx, outs, strict=True))
            bar.update(len(lora_idx))
        split = None
        for i, o in enumerate(outcomes):
            if i in texts:
                continue
            model = world.model
            if o.model is not None:
                model = o.model
            elif o.delta is not None:
                from flax import nnx

                split = split or nnx.split(world.model)
                model = nnx.merge(split[0], fold_into_params(split[1], o.delta))
            texts[i] = generate_for_population(model, world.tokenizer, None, records, max_len, self.max_new_tokens,
                                               batch_rows=self.test_batch_size, **gen_kw)[0]
            bar.update(1)
        bar.close()
        return [texts[i] for i in range(len(outcomes))]


class RemoteBackend(_Scored):
    """A merge service's pool. Adapter ``name`` was trained on task ``adapter_tasks.get(name, name)``;
    ``adapter_kinds`` (optional) says which adapters are siblings, anti-adapters, distractors."""

    remote = True

    def __init__(self, service_cfg: dict, records: dict, max_new_tokens: int,
                 adapter_tasks: dict[str, str] | None = None, task_types: dict[str, str] | None = None,
                 adapter_kinds: dict[str, str] | None = None, default_targets: Sequence[str] = ()):
        from evojax_merge.service.client import list_pools

        self.default_targets = tuple(default_targets)
        self.url, self.key = service_cfg["url"], service_cfg.get("api_key")
        self.pool_id = service_cfg.get("pool_id", "default")
        self.timeout = float(service_cfg.get("timeout_s", 600.0))
        if not self.url:
            raise EvoMergeInputError("world.service.url: missing (the merge service's address)")
        if not self.key:
            raise EvoMergeInputError("world.service.api_key: missing (set it or EVOJAX_MERGE_API_KEY)")
        served = list_pools(self.url, self.key, timeout=self.timeout)
        pools = {p["id"]: p for p in served["pools"]}
        self.max_prompts = int(served.get("limits", {}).get("max_prompts", 64))  # per generate request
        if self.pool_id not in pools:
            raise EvoMergeInputError(f"world.service.pool_id: {self.pool_id!r} is not served "
                                     f"(served: {', '.join(pools)})")
        self.names = list(pools[self.pool_id]["adapters"])
        self.adapter_tasks = {n: (adapter_tasks or {}).get(n, n) for n in self.names}
        self.adapter_kinds = {n: k for n, k in (adapter_kinds or {}).items() if n in self.names}
        self.records = records
        self.task_types = dict(task_types or {})
        self.max_new_tokens = max_new_tokens

    def own_adapter(self, task: str) -> str | None:
        return next((a for a, t in self.adapter_tasks.items() if t == task), None)

    def task_type(self, task: str) -> str:
        """The declared type (the zoo's own, or world.tasks.NAME.type); never guessed from the name."""
        if task not in self.task_types:
            raise EvoMergeInputError(f"world.tasks.{task}.type: no type declared for task {task!r}")
        return self.task_types[task]

    def check(self, targets, max_len: int | None, test_examples: int) -> None:
        for task in sorted(targets):
            self.task_type(task)
            for split in ("validation", "test"):
                if not self.records.get(task, {}).get(split):
                    raise EvoMergeInputError(f"world.tasks.{task}.{split}: missing; target {task!r} needs "
                                             "validation and test records")

    def prompt_stats(self, target: str, task: str | None = None) -> dict:
        return {}  # the service fits the prompts

    def open_cell(self, target: str, pool_idx: Sequence[int], val_records: list[dict],
                  validation: ValidationConfig, max_len: int) -> Cell:
        from evojax_merge.service.client import RemoteMergeService

        names = [self.names[i] for i in pool_idx]
        sessions: dict[str, RemoteMergeService] = {}

        def evaluator_for(prune: str) -> RemoteMergeService:
            if prune not in sessions:
                sessions[prune] = RemoteMergeService(self.url, self.key, self.pool_id, records=val_records,
                                                     adapters=names, validation=validation, prune=prune,
                                                     max_len=max_len, timeout=self.timeout)
            return sessions[prune]

        def close() -> None:
            for s in sessions.values():
                s.close()

        return Cell(target, list(pool_idx), names, evaluator_for, None, close)

    def answers(self, cell: Cell, outcomes: list[Outcome], records: list[dict], max_len: int,
                task: str | None = None) -> list[list[str]]:
        out = []  # the service formats the prompts: ``task`` changes nothing here
        for o in outcomes:
            if o.genome is None:
                raise EvoMergeInputError(f"method {o.method}: its result is not a control vector, "
                                         "so a merge service cannot generate with it")
            alpha, beta = (np.asarray(v, np.float32) for v in o.genome)
            service, texts = cell.evaluator_for(o.prune), []
            for start in range(0, len(records), self.max_prompts):  # within the service's request limit
                texts += service.generate(alpha, beta, records[start: start + self.max_prompts],
                                          max_new_tokens=self.max_new_tokens)
            out.append(texts)
        return out


class SourcesBackend:
    """Full fine-tunes of one base (Sakana's world): every cell merges all sources for the world's target;
    methods get a :class:`SourcesCell`; answers are greedy decodes of each outcome's model; the metric is
    exact-match accuracy (precision = recall = F1)."""

    remote = False
    metric = "accuracy"  # exact-match accuracy of the greedy answer (precision = recall = F1 = accuracy)

    def __init__(self, world, sources: Sequence[str], val_examples: int | None = None, progress: bool = False):
        self.world, self.sources, self.val_examples, self.progress = world, tuple(sources), val_examples, progress
        unknown = [s for s in self.sources if s not in world.source_dirs]
        if unknown:
            have = ", ".join(world.source_dirs)
            raise EvoMergeInputError(f"world.sources: unknown source {unknown[0]!r} (have {have})")
        self.names = list(self.sources)
        tasks = [world.target, *(world.own_task[s] for s in self.sources if s in world.own_task)]
        self.records = {t: world.records(t) for t in dict.fromkeys(tasks)}
        self.adapter_kinds: dict[str, str] = {}
        self.default_targets = (world.target,)
        self.tokenizer = world.tokenizer
        self._cell: SourcesCell | None = None

    def own_adapter(self, task: str) -> str | None:
        return next((s for s in self.sources if self.world.own_task.get(s) == task), None)

    def task_type(self, task: str) -> str:
        return "exact"

    def check(self, targets, max_len: int | None, test_examples: int) -> None:
        for t in targets:
            if t not in self.records or not self.records[t].get("validation") or not self.records[t].get("test"):
                raise EvoMergeInputError(f"setting.targets: {t!r} has no validation and test records in this world")

    def prompt_stats(self, target: str, task: str | None = None) -> dict:
        return {}

    def sources_cell(self) -> SourcesCell:
        """The stacked sources, their base and the target's validation batch (made once per backend)."""
        if self._cell is None:
            import jax.numpy as jnp

            from evojax_merge.models.io import _read_safetensors
            from evojax_merge.models.sources import load_sources
            from evojax_merge.search.sakana import validation_batch
            from evojax_merge.zoo.sakana_world import encode

            w, tok, length = self.world, self.tokenizer, self.world.max_len
            stack = load_sources([w.source_dirs[s] for s in self.sources])
            base = {k: jnp.asarray(v) for k, v in _read_safetensors(w.base_dir).items()}
            val = encode(w.records(w.target)["validation"][: self.val_examples], tok, length)
            own = []
            for s in self.sources:  # a source's own data: its task's training records (validation if it has none)
                splits = w.records(w.own_task[s]) if s in w.own_task else {}
                recs = splits.get("train") or splits.get("validation")
                own.append(encode(recs, tok, length) if recs else None)
            self._cell = SourcesCell(stack, base, validation_batch(val), self.sources, tuple(own), val)
        return self._cell

    def open_cell(self, target: str, pool_idx: Sequence[int], val_records: list[dict],
                  validation: ValidationConfig, max_len: int | None) -> Cell:
        def no_evaluator(prune: str):
            raise EvoMergeInputError("this world holds full fine-tunes: it has no LoRA evaluator")

        return Cell(target, list(pool_idx), [self.sources[i] for i in pool_idx], no_evaluator,
                    sources=self.sources_cell())

    def answers(self, cell: Cell, outcomes: list[Outcome], records: list[dict], max_len: int | None,
                task: str | None = None) -> list[list[str]]:
        from evojax_merge.models.functional import ParamsModel

        out = []
        for o in outcomes:
            model = o.model
            if model is None:  # the base model alone
                model = ParamsModel(cell.sources.stack.config, cell.sources.base)
            out.append(generate_answers(model, records, self.tokenizer, self.world.max_len))
        return out

    def score(self, task: str, answers: list[str], records: list[dict]) -> dict:
        from evojax_merge.zoo.sakana_world import accuracy

        acc = accuracy(answers, records)
        return {"precision": acc, "recall": acc, "f1": acc, "accuracy": acc}


@functools.partial(jax.jit, static_argnums=3)
def _greedy(model, ids, lengths, steps: int):
    from evojax_merge.models.functional import greedy_decode

    # module level: one compile per model structure and shape, shared by every method and seed
    return greedy_decode(model.logits, ids, lengths, steps)


def generate_answers(model, records: list[dict], tokenizer, max_len: int, steps: int = 3) -> list[str]:
    """Greedy answers (cache-free decode) of any model with ``.logits(ids, mask, at)`` (Sakana's world)."""
    from evojax_merge.zoo.sakana_world import answer_text, encode

    enc = encode(records, tokenizer, max_len)
    cols = np.arange(max_len)[None]
    ids = np.where(cols < enc["prompt_len"][:, None], enc["input_ids"], tokenizer.pad_token_id)
    if int(enc["prompt_len"].max()) + steps > max_len:
        raise EvoMergeInputError(f"prompts too long for {steps} generated tokens within max_len={max_len}")
    toks = _greedy(model, jnp.asarray(ids), jnp.asarray(enc["prompt_len"]), steps)
    return answer_text(np.asarray(toks), tokenizer)
