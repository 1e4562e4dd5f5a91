"""python -m evojax_merge.bench: the first flag picks the benchmark and the rest reach its main unchanged;
the one timer (evojax_merge.perf) every benchmark times through. Nothing here times or compiles a model."""

from __future__ import annotations

import json
import sys
import types

import pytest

from evojax_merge.bench import cli
from evojax_merge.perf import Timing, best_time, matmul_peak


def _recorder(calls: list, tag: str):
    def main(argv: list[str]) -> dict:
        calls.append((tag, list(argv)))
        return {"benchmark": tag}

    return main


def test_stream_memory_is_dispatched_lazily_with_the_rest_of_the_command_line(monkeypatch):
    calls: list = []
    fake = types.ModuleType("evojax_merge.bench.stream_memory")
    fake.main = _recorder(calls, "stream_memory")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "evojax_merge.bench.stream_memory", fake)
    out = cli.main(["--stream-memory", "--model", "llama-3.1-8b", "--json", "m.json"])
    assert out == {"benchmark": "stream_memory"}
    assert calls == [("stream_memory", ["--model", "llama-3.1-8b", "--json", "m.json"])]


@pytest.mark.parametrize("flag, module", [("--sakana", "sakana"), ("--dam", "dam")])
def test_sakana_and_dam_get_the_rest_of_the_command_line(monkeypatch, flag, module):
    import importlib

    mod = importlib.import_module(f"evojax_merge.bench.{module}")
    calls: list = []
    monkeypatch.setattr(mod, "main", _recorder(calls, module))
    assert cli.main([flag, "--repeats", "2"]) == {"benchmark": module}
    assert calls == [(module, ["--repeats", "2"])]


def test_a_subcommand_flag_only_dispatches_in_first_place():
    with pytest.raises(SystemExit):  # argparse: --dam is no flag of the population benchmark
        cli.main(["--repeats", "1", "--dam"])


def test_plan_goes_to_run_plan_and_writes_its_json(monkeypatch, tmp_path):
    from evojax_merge.bench import plan, population

    seen: list = []
    monkeypatch.setattr(plan, "run_plan", lambda args: seen.append(args) or {"plan": args.plan, "n": 1})
    monkeypatch.setattr(population, "run", lambda args: pytest.fail("the population benchmark ran"))
    out = cli.main(["--plan", "llama-3.1-8b", "--plan-chunks", "1", "4", "--json", str(tmp_path / "p.json")])
    assert out == {"plan": "llama-3.1-8b", "n": 1}
    assert seen[0].plan_chunks == [1, 4] and seen[0].mfu == 0.4 and seen[0].check_host is False
    assert json.loads((tmp_path / "p.json").read_text()) == out


def test_no_plan_runs_the_population_benchmark_with_its_flags(monkeypatch):
    from evojax_merge.bench import population

    seen: list = []
    monkeypatch.setattr(population, "run", lambda args: seen.append(args) or {"ran": True})
    assert cli.main(["--population-chunk", "1", "--json", "bench.json", "--no-torch"]) == {"ran": True}
    args = seen[0]
    assert (args.population_chunk, args.json, args.no_torch, args.no_scaling) == ("1", "bench.json", True, False)
    assert args.adapters is None and args.repeats == 3  # the population benchmark fills in its defaults


def test_best_time_warms_up_once_and_keeps_both_minima():
    calls = []
    t = best_time(lambda: calls.append(1), repeats=3)
    assert len(calls) == 4  # one warm-up (compile) call, then the timed ones
    assert isinstance(t, Timing) and t.wall_s >= 0 and t.cpu_s >= 0
    wall, cpu = t  # the DAM benchmark unpacks (wall, CPU)
    assert (wall, cpu) == (t.wall_s, t.cpu_s)
    with pytest.raises(ValueError, match="repeats"):
        best_time(lambda: None, repeats=0)


def test_matmul_peak_is_a_positive_rate():
    assert matmul_peak(size=32, repeats=1) > 0
