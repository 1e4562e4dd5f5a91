import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from hf_oracles import build_hf_model, build_peft_adapter  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module: one pytest process compiles thousands of them,
    and kept for the whole suite they grew its RSS past 5 GB by 15% of the suite (CI segfaulted inside
    XLA's compiler near the end). Tests never rely on a compile surviving across modules."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


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
