"""The zoo's small related pools, one per target, like the paper's released OOD presets.

For a target ``<type>_<D>`` the pool holds (never the target's own adapter):

- the same task type in the next ``same_type`` domains (cyclically, in zoo order): the skill,
  without domain D's private labels;
- the other task types trained on D's data (the paper's "siblings trained on the target's
  dataset"): D's labels, without the skill;
- every anti-adapter and noisy duplicate of those adapters' tasks.

Pure function of the adapter names and their (task, kind) table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def related_pool(target: str, adapters: Mapping[str, Mapping[str, str]], domains: Sequence[str],
                 same_type: int = 2) -> list[str]:
    """Adapter names of ``target``'s related pool, in ``adapters`` order."""
    task_type, domain = target.split("_", 1)
    i = list(domains).index(domain)
    others = [domains[(i + k) % len(domains)] for k in range(1, len(domains))][:same_type]
    tasks = {f"{task_type}_{d}" for d in others}
    tasks |= {a["task"] for a in adapters.values() if a["kind"] == "task" and a["task"].endswith(f"_{domain}")
              and a["task"] != target}
    return [name for name, a in adapters.items()
            if a["task"] in tasks and (a["kind"] in ("task", "anti", "noisy"))]
