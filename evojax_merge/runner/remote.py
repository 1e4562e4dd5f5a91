"""The same experiments against a black-box merge service: only control vectors leave this
process, only losses and generated texts come back.

The user side holds the task records (the zoo's are generated locally from the seed: no weights
needed) and the optimizer. Methods that need weights (task arithmetic, TIES, DARE) are white-box
and are skipped here; Evo-Merging, LoraHub, the uniform average, the best single adapter and the
base model are all expressible as (alpha, beta) vectors.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.eval.evaluate import score
from evojax_merge.runner.experiment import ExperimentSpec, pick_targets
from evojax_merge.runner.methods import MethodSettings
from evojax_merge.search.evo_merging import StageRunner, evo_merging_search, lorahub_search
from evojax_merge.search.fitness import ValidationConfig

log = logging.getLogger(__name__)
REMOTE_METHODS = ("evo_merging", "lorahub", "uniform", "best_single", "base")


def _remote_vectors(method: str, service, settings: MethodSettings, runner: StageRunner | None
                    ) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """(alpha, beta, validation fitness, details) of ``method``, found through ``service``."""
    n = service.num_adapters
    if method == "evo_merging":
        res = evo_merging_search(service, None, settings.evo_merging, seed=settings.seed, prune=settings.prune,
                                 runner=runner)
        return res.alpha, res.beta, res.best_fitness, {"stages": {s.name: s.history_rows() for s in res.stages}}
    if method == "lorahub":
        res = lorahub_search(service, None, settings.lorahub, seed=settings.seed, runner=runner)
        return res.alpha, res.beta, res.best_fitness, {}
    alpha = np.ones(n, np.float32)
    if method == "uniform":
        beta = np.full(n, 1.0 / n, np.float32)
    elif method == "best_single":
        losses = service.evaluate(np.ones((n, n), np.float32), np.eye(n, dtype=np.float32))
        beta = np.eye(n, dtype=np.float32)[int(np.argmin(losses))]
    elif method == "base":  # beta = 0: the merged adapter is zero, i.e. the base model alone
        beta = np.zeros(n, np.float32)
    else:
        raise EvoMergeInputError(f"method: {method!r} needs the weights; remote runs support {REMOTE_METHODS}")
    ce = float(service.evaluate(alpha[None], beta[None])[0])
    return alpha, beta, ce, {}


def run_remote_experiment(records: dict, spec: ExperimentSpec, settings: MethodSettings,
                          validation: ValidationConfig, service_cfg: dict, runner_for=None,
                          task_types: dict[str, str] | None = None) -> dict:
    """Run ``spec``'s OOD cells through the service at ``service_cfg['url']``."""
    from evojax_merge.service.client import RemoteMergeService, list_pools

    if spec.setting != "ood":
        raise EvoMergeInputError("service=remote: only experiment.setting=ood is supported remotely")
    url, key, pool_id = service_cfg["url"], service_cfg.get("api_key"), service_cfg.get("pool_id", "default")
    if not key:
        raise EvoMergeInputError("service.api_key: missing (set it or EVOJAX_MERGE_API_KEY)")
    pools = {p["id"]: p for p in list_pools(url, key)["pools"]}
    if pool_id not in pools:
        raise EvoMergeInputError(f"service.pool_id: {pool_id!r} is not served (served: {', '.join(pools)})")
    names = list(pools[pool_id]["adapters"])
    targets = pick_targets(records, spec)
    methods = [m for m in spec.methods if m in REMOTE_METHODS]
    skipped = sorted(set(spec.methods) - set(methods))
    if skipped:
        log.info("white-box methods skipped in a remote run: %s", ", ".join(skipped))
    results: dict[str, dict] = {}
    for target in targets:
        if not task_types or target not in task_types:
            raise EvoMergeInputError(f"data.tasks.{target}.type: no type declared for task {target!r}")
        adapters = [a for a in names if a != target]  # OOD: the target's own adapter is left out
        test = records[target]["test"][: spec.test_examples]
        with RemoteMergeService(url, key, pool_id, records=records[target]["validation"], adapters=adapters,
                                validation=validation, prune=settings.prune, max_len=spec.max_len) as service:
            for method in methods:
                runner = runner_for(f"{target}/{method}") if runner_for else None
                alpha, beta, fitness, details = _remote_vectors(method, service, settings, runner)
                texts = service.generate(alpha, beta, test, max_new_tokens=spec.max_new_tokens)
                cell = {**score(texts, test, task_types[target]), "val_fitness": fitness,
                        "pool_size": len(adapters), "alpha": alpha.tolist(), "beta": beta.tolist(), **details}
                results.setdefault(method, {"per_task": {}})["per_task"][target] = cell
                log.info("%-14s %-18s F1 %.3f (val %.4f)", method, target, cell["f1"], fitness)
    for res in results.values():
        cells = list(res["per_task"].values())
        for k in ("precision", "recall", "f1"):
            res[k] = float(np.mean([c[k] for c in cells]))
    return {"methods": results, "remote": dataclasses.asdict(validation) | {"url": url, "pool_id": pool_id}}
