"""python -m evojax_merge.bench --stream-memory on a tiny model: every streamed white-box method built
from its config, XLA's bytes per module call, the largest module's output exactly one update, and a
working set that does not grow with the number of adapters (one task vector alive at a time)."""

from __future__ import annotations

import json

import pytest

from evojax_merge.bench.stream_memory import main

METHODS = ["ties", "della", "emr", "tsv_m"]


def _run(n: int, tmp_path=None) -> dict:
    argv = ["--model", "bench-tiny", "--adapters", str(n), "--rank", "4", "--pool-dtype", "float32", "--methods",
            *METHODS]
    return main(argv + (["--json", str(tmp_path / "m.json")] if tmp_path else []))


def test_stream_memory_figures_on_a_tiny_model(tmp_path):
    small, large = _run(4, tmp_path), _run(16)
    assert json.loads((tmp_path / "m.json").read_text()) == small
    assert set(small["methods"]) == set(METHODS)
    assert small["module_shapes"] == {"128x256": 8, "256x256": 8, "256x688": 4, "688x256": 8}
    update = small["reference"]["largest_module_update"]
    assert update == 688 * 256 * 2  # one bf16 update of the largest module
    assert set(small["methods"]["emr"]["programs"]) == {"rescaler_sums", "modulated"}
    for name in METHODS:
        s, g = small["methods"][name], large["methods"][name]
        assert s["worst_module"] in ([256, 688], [688, 256]), name
        worst = s["programs"][s["program"]]["worst"]
        assert s["peak"] == worst["arguments"] + worst["temp"] + worst["output"] > 0
        assert worst["output"] == update, name  # the call returns one module's update, nothing more
        assert g["arguments"] == 4 * s["arguments"]  # the module's factors: 16 adapters instead of 4
        # 4x the adapters: the temporaries grow by less than one float32 update of the module
        assert g["temp"] - s["temp"] < 688 * 256 * 4, name
    # 16 adapters: one module's working set is below the stack of its 16 dense task vectors
    assert all(m["peak"] < large["reference"]["one_module_dense_stack_f32"] for m in large["methods"].values())


def test_a_method_without_module_programs_is_refused():
    with pytest.raises(SystemExit, match="best_single"):
        main(["--model", "bench-tiny", "--adapters", "2", "--methods", "best_single"])
