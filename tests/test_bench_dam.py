"""bench --dam: the JAX step and the PyTorch reference optimise the same objective (equal loss at init)."""

import pytest

from evojax_merge.bench.dam import main


@pytest.mark.slow
@pytest.mark.parametrize("world", ["lora", "full"])
def test_bench_dam_same_objective(world, tmp_path):
    out = main(["--world", world, "--hidden", "32", "--layers", "1", "--vocab", "64", "--sources", "3",
                "--rank", "2", "--seq", "8", "--repeats", "1", "--json", str(tmp_path / "b.json")])
    assert out["jax_loss_at_init"] == pytest.approx(out["torch_loss_at_init"], rel=1e-5)
    assert out["jax_loss_at_init"] > 0
    assert 0 < out["merge_share"] and out["a_jax_step_s"] > 0 and out["b_torch_step_s"] > 0
    assert (tmp_path / "b.json").is_file()
