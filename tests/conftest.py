import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from hf_oracles import build_hf_model, build_peft_adapter  # noqa: E402


@pytest.fixture(scope="session")
def llama_with_pool(tmp_path_factory):
    """A tiny HF Llama on disk plus 5 PEFT adapters (r=4, all 7 projections)."""
    root = tmp_path_factory.mktemp("llama_pool")
    base = build_hf_model("llama", root / "base", seed=0)
    adapters = [build_peft_adapter(base, root / f"adapter_{i}", seed=10 + i) for i in range(5)]
    return root / "base", adapters, base


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory):
    """One zoo cache for the whole session: the smoke zoo is built once, by its first user."""
    return tmp_path_factory.mktemp("zoo-cache")
