"""Experiment tracking: W&B (offline unless WANDB_MODE says otherwise) or nothing.

Per generation: best / mean / std fitness, sigma, and histograms of the searched genome. At the
end: the results table, the best genomes, the merged adapter as an artifact, the full config.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np


def artifact_name(name: str) -> str:
    """A W&B artifact name (letters, digits, ``-``, ``_``, ``.``) for a run label such as
    ``ner_medicine-evo_merging@N=3`` or ``t-evo_merging[no_scale]``: every other run of characters becomes ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")


class NullTracker:
    def log_generation(self, run: str, stage: str, generation: int, row: dict, genome: np.ndarray | None,
                       genome_name: str = "genome") -> None:
        pass

    def log_results(self, results: dict, table_md: str) -> None:
        pass

    def log_adapter(self, name: str, directory: Path) -> None:
        pass

    def log_report(self, tables: dict[str, tuple[list[str], list[list]]], images: dict[str, Path],
                   markdown: str) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker(NullTracker):
    def __init__(self, project: str, entity: str | None, mode: str, tags: list[str], config: dict, run_dir: Path,
                 name: str):
        import wandb

        self._wandb = wandb
        self.run = wandb.init(project=project, entity=entity, mode=os.environ.get("WANDB_MODE", mode), tags=tags,
                              config=config, dir=str(run_dir), name=name, reinit="finish_previous")
        self._step = 0

    def log_generation(self, run: str, stage: str, generation: int, row: dict, genome: np.ndarray | None,
                       genome_name: str = "genome") -> None:
        """One history row per generation: best/mean/std fitness, sigma, a histogram of the best genome."""
        data = {f"{run}/{stage}/{k}": v for k, v in row.items()}
        data[f"{run}/{stage}/generation"] = generation
        if genome is not None:
            data[f"{run}/{stage}/{genome_name}"] = self._wandb.Histogram(np.asarray(genome))
        self.run.log(data, step=self._step)
        self._step += 1

    def log_results(self, results: dict, table_md: str) -> None:
        methods = results["methods"]
        table = self._wandb.Table(columns=["method", "precision", "recall", "f1"])
        for label, res in methods.items():
            table.add_data(label, res["precision"], res["recall"], res["f1"])
        self.run.summary["results"] = table  # the summary, so the history stays one row per generation
        for label, res in methods.items():
            self.run.summary[f"{label}/f1"] = res["f1"]
        self.run.summary["results_md"] = table_md

    def log_adapter(self, name: str, directory: Path) -> None:
        artifact = self._wandb.Artifact(artifact_name(name), type="lora-adapter")
        artifact.add_dir(str(directory))
        self.run.log_artifact(artifact)

    def log_report(self, tables: dict[str, tuple[list[str], list[list]]], images: dict[str, Path],
                   markdown: str) -> None:
        """A seeded report (``python -m evojax_merge.report``): its tables, its PNGs and its Markdown."""
        data = {name: self._wandb.Table(columns=columns, data=rows) for name, (columns, rows) in tables.items()}
        data.update({name: self._wandb.Image(str(path)) for name, path in images.items()})
        self.run.log(data)
        self.run.summary["report_md"] = markdown

    def finish(self) -> None:
        self.run.finish()


def make_tracker(logger_cfg: dict, config: dict, run_dir: Path, name: str) -> NullTracker:
    if logger_cfg.get("name", "none") == "none":
        return NullTracker()
    return WandbTracker(logger_cfg.get("project", "evojax_merge"), logger_cfg.get("entity"),
                        logger_cfg.get("mode", "offline"), list(logger_cfg.get("tags", [])), config, run_dir, name)
