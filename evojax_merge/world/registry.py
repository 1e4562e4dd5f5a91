"""Hydra's ConfigStore entries of the ``world/`` group that YAML cannot express."""

from __future__ import annotations


def register_configs() -> None:
    """Store ``world/files_tasks``: an open ``tasks`` node that ``conf/world/files.yaml`` builds on, so the plain
    override ``world.tasks.NAME.validation=...`` adds a task without Hydra's ``+``."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    node = OmegaConf.create({"tasks": {}})
    OmegaConf.set_struct(node.tasks, False)
    ConfigStore.instance().store(group="world", name="files_tasks", node=node)
