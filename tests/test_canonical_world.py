"""The main job's world ships with the package: the same bits on every machine (issue 23).

A build's weights depend on the CPU that trains them, so the README's world is not rebuilt but loaded from
``evojax_merge/zoo/canonical/``; its checksum is pinned here, and a cache key of a world built here names
the platform, so it never promises more than the build can keep.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.zoo.ie_build import build_ie_zoo, load_zoo_config
from evojax_merge.zoo.realization import CANONICAL_ROOT, canonical_dir, weights_checksum

SHIPPED = CANONICAL_ROOT / "ie-seed0"
# The weights of the shipped realization (python -m evojax_merge.zoo.realization checksum <dir>): a changed
# file fails here even if its manifest were changed with it.
SHIPPED_SHA256 = "5f04850f8b278b0c7dbc96dac31cc73a9913888361ecb0a23d9b6e41d51ee4d0"


def test_the_shipped_world_has_the_pinned_checksum():
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    assert weights_checksum(SHIPPED) == manifest["weights_sha256"] == SHIPPED_SHA256
    assert manifest["gate"]["split"] == "validation"  # its gate read no test record
    assert len(list(SHIPPED.rglob("*.safetensors"))) == 1 + len(manifest["adapters"]) == 17


def test_the_default_recipe_loads_the_shipped_world_without_building(tmp_path):
    cfg = load_zoo_config("conf/zoo/ie.yaml")
    assert canonical_dir("ie", dataclasses.asdict(cfg)) == SHIPPED
    zoo = build_ie_zoo(cfg, cache_dir=tmp_path, progress=False)
    assert zoo.root == SHIPPED and not any(tmp_path.iterdir())  # nothing built, nothing cached
    # another realization of the same design is not the shipped one: it is built (here: not asked for)
    other = dataclasses.replace(cfg, seed=1, tasks=dataclasses.replace(cfg.tasks, seed=1))
    assert canonical_dir("ie", dataclasses.asdict(other)) is None


def test_the_world_config_describes_the_shipped_realization():
    from hydra import compose, initialize_config_dir

    from evojax_merge.runner.build import build_world, config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        spec = build_world(compose("config", overrides=["+experiment=ood"]))
        assert spec.describe()["canonical"] == "ie-seed0"
        built_here = build_world(compose("config", overrides=["+experiment=ood", "world.canonical=false"]))
        assert built_here.describe()["canonical"] is None


def test_a_changed_shipped_file_is_refused(tmp_path):
    copy = tmp_path / "ie-seed0"
    shutil.copytree(SHIPPED, copy)
    weights = copy / "adapters" / "ner_news" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    cfg = dataclasses.asdict(load_zoo_config("conf/zoo/ie.yaml"))
    with pytest.raises(EvoMergeInputError, match=r"ie-seed0/manifest.json: the weights' SHA-256 is [0-9a-f]{12}, "
                                                 r"the manifest records [0-9a-f]{12}"):
        canonical_dir("ie", cfg, root=tmp_path)


def test_a_built_world_s_cache_key_names_the_platform(monkeypatch):
    cfg = load_zoo_config("conf/zoo/ie.yaml")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    default = cfg.digest()
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=AVX2")
    assert cfg.digest() != default  # another ISA builds other bits: another cache entry
