"""The real experiment, step by step: splits, one adapter per set, then each OOD target, each a resumable unit.

    python experiments/real/run.py WORK [--data-dir ../shared/data/bmm-ie] [--profile cpu|gpu] [--model smollm2]
        [--report experiments/results/real] [--targets conll04,nyt] [--sets ...] [--dry-run] [-- OVERRIDES]

Units, in order (each a subprocess; a unit whose ``WORK/units/<unit>.json`` says it finished is skipped, so a
rerun of the same command resumes after a kill, and an interrupted unit resumes at its own checkpoints):

    splits              experiments/real/prepare.py: fixed-seed train / validation / test files per set
    adapter/<set>       python -m evojax_merge.pool train --chunk 1 --chunk-index k: one adapter per set
    own/<set>           python -m evojax_merge.train +experiment=real_ood setting=id with the set's own adapter
                        alone: the base and the own adapter on the set's test split (ID reference, own-task table)
    ood/<target>        the same entry, setting ood: the pool minus the target's adapter
    report              experiments/real/report.py: REPORT.md under --report

Units share one persistent XLA compilation cache (``WORK/jax_cache``), so a shape is compiled once for all
of them. Each unit's wall time, peak RSS (``os.wait4``'s ``ru_maxrss``) and exit status go to
``WORK/units/<unit>.json``.
Nothing is committed here. With ``--report OUT`` the report is rebuilt after every finished unit, so OUT can
be committed as results complete; ``--with-adapters`` keeps the trained pool there too, and
``--restore OUT`` puts OUT's finished units back into an empty WORK (a new machine resumes where OUT stopped).
``--data-dir`` defaults to ``real.data_dir`` of conf/experiment/real_ood.yaml, resolved
against the repository root; a missing directory is one line naming that key.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "experiments" / "real"))

from prepare import OOD_TARGETS, SETS  # noqa: E402

# profile -> (split sizes, history, trainer flags, engine overrides)
PROFILES: dict[str, dict] = {
    # rows of at most 384 tokens (longer records left out before the split), batch 4: the trainer's backward
    # then holds ~3 GB (batch 8 of 768-token rows held 13 GB and was killed)
    "cpu": {"sizes": (64, 50, 50), "history": "drop", "max_tokens": 384,
            "train": ["--epochs", "1", "--lr", "1e-3", "--batch-size", "4", "--chunk", "1"],
            "engine": []},
    # The paper's budget (a GPU): population 20, 20 + 40 generations, 20 x 15 validation records (as many
    # batches of 15 as the validation split holds), the budget's grids, 3-shot history, the whole test split.
    "gpu": {"sizes": (200, 50, 50), "history": "keep", "max_tokens": None,
            "train": ["--epochs", "2", "--lr", "1e-4", "--dtype", "bfloat16"],
            "engine": ["budget.population_size=20", "budget.stage1_generations=20", "budget.stage2_generations=40",
                       "budget.grid_lambdas=[0.1,0.3,0.5,0.7,1.0]", "budget.grid_densities=[0.5,0.7,0.9,1.0]",
                       "budget.preselect_top_k=9", "budget.lorahub_population_size=10", "budget.lorahub_generations=4",
                       "data.validation.batch_size=15", "data.validation.num_batches=20", "experiment.max_len=null",
                       "experiment.test_batch_size=8", "population_chunk=auto", "world.dtype=bfloat16"]},
}


def default_data_dir() -> Path:
    """``real.data_dir`` of conf/experiment/real_ood.yaml, relative to the repository root."""
    import yaml

    cfg = yaml.safe_load((REPO / "conf" / "experiment" / "real_ood.yaml").read_text())
    return (REPO / cfg["real"]["data_dir"]).resolve()


def _error(msg: str):
    from evojax_merge.errors import EvoMergeInputError

    return EvoMergeInputError(msg)


class Driver:
    """The units of one WORK directory (see the module docstring)."""

    def __init__(self, work: Path, data_dir: Path, profile: str = "cpu", model: str = "smollm2",
                 report: Path | None = None, targets: tuple[str, ...] = OOD_TARGETS,
                 sets: tuple[str, ...] = tuple(SETS), extra: tuple[str, ...] = (), dry_run: bool = False,
                 sizes: tuple[int, int, int] | None = None, with_adapters: bool = False):
        if profile not in PROFILES:
            raise _error(f"--profile: {profile!r} is not one of {', '.join(PROFILES)}")
        if not Path(data_dir).is_dir():
            raise _error(f"real.data_dir: {data_dir} is not a directory (the authors' IE sets, laid out like "
                         "BMM_code/data/Userdata/datasets/; --data-dir overrides it)")
        bad = [t for t in targets if t not in sets]
        if bad:
            raise _error(f"--targets: {bad[0]!r} is not among the sets ({', '.join(sets)})")
        self.work, self.data_dir, self.profile = Path(work).resolve(), Path(data_dir).resolve(), PROFILES[profile]
        self.profile_name, self.model, self.report = profile, model, report
        self.targets, self.sets, self.extra, self.dry_run = tuple(targets), tuple(sorted(sets)), tuple(extra), dry_run
        self.sizes = tuple(sizes) if sizes else tuple(self.profile["sizes"])
        self.with_adapters = with_adapters
        self.expected_adapters: dict[str, str] | None = None  # set by restore(): the restored results' adapters

    # -- the units' commands --------------------------------------------------------------------
    def data(self) -> Path:
        return self.work / "data"

    def adapter_dirs(self, without: str | None = None) -> list[str]:
        return [str(self.work / "adapters" / s) for s in self.sets if s != without]

    def _world(self) -> list[str]:
        if self.model == "smollm2":
            return ["world=gguf"]
        p = Path(self.model)
        if p.suffix == ".gguf":
            return ["world=gguf", f"world.model.path={p}"]
        return ["world=files", f"world.model.path={p}"]

    def _task(self, name: str) -> list[str]:
        """The one task of a unit (the config's default task, conll04, replaced)."""
        t = SETS[name][1]
        d = self.data() / name
        return ["~world.tasks.conll04", f"+world.tasks.{name}.type={t}",
                f"+world.tasks.{name}.validation={d / 'validation.json'}",
                f"+world.tasks.{name}.test={d / 'test.json'}",
                f"real.work={self.work}"]

    def units(self) -> list[tuple[str, list[str]]]:
        """``(unit, command)`` in order."""
        py = sys.executable
        sizes = self.sizes
        out = [("splits", [py, str(REPO / "experiments/real/prepare.py"), str(self.data_dir), str(self.data()),
                           "--train", str(sizes[0]), "--validation", str(sizes[1]), "--test", str(sizes[2]),
                           "--history", self.profile["history"], "--only", ",".join(self.sets),
                           *(["--max-tokens", str(self.profile["max_tokens"]), "--model", self.model]
                             if self.profile["max_tokens"] else [])])]
        for k, s in enumerate(self.sets):  # the trainer's chunks are the sorted task names, one per chunk
            out.append((f"adapter/{s}", [py, "-m", "evojax_merge.pool", "train", "--model", self.model,
                                         "--data", str(self.data() / "train"), "--out", str(self.work / "adapters"),
                                         "--prompt-style", "llamafactory", *self.profile["train"],
                                         "--chunk-index", str(k), "--save-every", "2",
                                         "--json", str(self.work / "adapters" / f".{s}.summary.json")]))
        engine = [py, "-m", "evojax_merge.train", "+experiment=real_ood", *self._world(),
                  *self.profile["engine"], "logger=none", "progress=false"]
        # each set's own-adapter run right after its adapter: the own-task table fills in while the pool trains
        trained = [u for u in out if u[0].startswith("adapter/")]
        out = out[:1] + [x for u in trained for x in (u, self._own(engine, u[0].split("/", 1)[1]))]
        for t in self.targets:
            adapters = "[" + ",".join(self.adapter_dirs()) + "]"
            out.append((f"ood/{t}", [*engine, *self._task(t), f"setting.targets=[{t}]", f"world.adapters={adapters}",
                                     f"hydra.run.dir={self.work / 'runs' / 'ood' / t}", *self.extra]))
        if self.report is not None:
            out.append(("report", self.report_command()))
        return out

    def report_command(self) -> list[str]:
        return [sys.executable, str(REPO / "experiments/real/report.py"), str(self.work), str(self.report),
                "--profile", self.profile_name, *(["--with-adapters"] if self.with_adapters else [])]

    def restore(self, source: Path) -> list[str]:
        """Put back into WORK what a report directory (``report.py`` OUT) holds of finished units: the adapters
        (with ``--with-adapters``), each run's results.json and predictions, and the units' records; never over
        what WORK already has. Returns the units restored. The splits are made again (fixed seed)."""
        source = Path(source)
        if not (source / "units").is_dir():
            raise _error(f"--restore: {source} holds no units/ (a report.py OUT directory of an earlier run)")
        restored = []
        for rec in sorted((source / "units").glob("*.json")):
            unit = json.loads(rec.read_text()).get("unit", "")
            kind, _, name = unit.partition("/")
            src = {"adapter": source / "adapters" / name, "ood": source / name, "own": source / "own" / name}.get(kind)
            dst = {"adapter": self.work / "adapters" / name, "ood": self.work / "runs" / "ood" / name,
                   "own": self.work / "runs" / "own" / name}.get(kind)
            if src is None or not src.is_dir() or self.done(unit):
                continue
            marker = "adapter_model.safetensors" if kind == "adapter" else "results.json"
            if not (src / marker).is_file() or (dst / marker).exists():
                continue
            shutil.copytree(src, dst, dirs_exist_ok=True)
            self.record(unit).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(rec, self.record(unit))
            restored.append(unit)
        sums = source / "adapters.sha256.json"
        if any(u.split("/")[0] in ("ood", "own") for u in restored) and sums.is_file():
            self.expected_adapters = json.loads(sums.read_text())
        return restored

    def check_adapters(self) -> None:
        """Restored merging results stand only on the adapters they were made with: an adapter trained again
        here (another CPU can round differently) must have the recorded checksum."""
        from evojax_merge.fileio import file_sha256

        for name, want in list((self.expected_adapters or {}).items()):
            path = self.work / "adapters" / name / "adapter_model.safetensors"
            if not path.is_file():
                continue  # not trained yet: checked before a later unit
            if file_sha256(path) != want:
                raise _error(f"{path}: differs from the adapter the restored results were made with "
                             f"(adapters.sha256.json); restore with --with-adapters' copies or start a new WORK")
            del self.expected_adapters[name]  # verified once, not hashed again before every unit

    def _own(self, engine: list[str], s: str) -> tuple[str, list[str]]:
        return (f"own/{s}", [*engine, *self._task(s), "setting=id", "~setting.targets", f"setting.experts=[{s}]",
                             "setting.multitask=false",
                             "method=[base,best_single]", f"world.adapters=[{self.work / 'adapters' / s}]",
                             f"hydra.run.dir={self.work / 'runs' / 'own' / s}", *self.extra])

    # -- running ----------------------------------------------------------------------------------
    def record(self, unit: str) -> Path:
        return self.work / "units" / f"{unit.replace('/', '__')}.json"

    def complete(self, unit: str) -> bool:
        """Whether a unit's output is there (a trainer stopped by a signal saves and exits 0 unfinished)."""
        kind, _, name = unit.partition("/")
        if kind == "splits":
            return (self.data() / "splits.json").is_file()
        if kind == "adapter":
            return (self.work / "adapters" / name / "adapter_model.safetensors").is_file()
        if kind in ("ood", "own"):
            return (self.work / "runs" / kind / name / "results.json").is_file()
        return True

    def done(self, unit: str) -> bool:
        p = self.record(unit)
        return p.is_file() and json.loads(p.read_text()).get("returncode") == 0 and self.complete(unit)

    def run_unit(self, unit: str, cmd: list[str]) -> dict:
        """Run one unit's command (its output appended to ``WORK/logs/<unit>.log``); its wall time and peak RSS."""
        log = self.work / "logs" / f"{unit.replace('/', '__')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with log.open("a") as fh:
            fh.write(f"\n$ {shlex.join(cmd)}\n")
            fh.flush()
            env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(self.work / "jax_cache"),  # compiled once
                   "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "2"}                    # for all units
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env)
            while True:
                try:
                    _, status, usage = os.wait4(proc.pid, 0)
                    break
                except ChildProcessError:  # reaped elsewhere
                    status, usage = 0, None
                    break
                except InterruptedError:
                    continue
        rc = os.waitstatus_to_exitcode(status)
        info = {"unit": unit, "returncode": rc, "wall_s": round(time.time() - t0, 1),
                "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3) if usage else None,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "command": cmd}
        prev = json.loads(self.record(unit).read_text()) if self.record(unit).is_file() else {}
        info["attempts_wall_s"] = [*prev.get("attempts_wall_s", []), info["wall_s"]]
        self.record(unit).parent.mkdir(parents=True, exist_ok=True)
        self.record(unit).write_text(json.dumps(info, indent=1))
        return info

    def run(self, only: str | None = None) -> int:
        for unit, cmd in self.units():
            if only and not unit.startswith(only) and unit != "splits":  # the splits come first, always
                continue
            if unit.split("/")[0] in ("own", "ood") and not self.dry_run:
                self.check_adapters()
            if self.done(unit) and unit != "report":
                print(f"[real] {unit}: done before, skipped", flush=True)
                continue
            if self.dry_run:
                print(f"[real] {unit}: {shlex.join(cmd)}", flush=True)
                continue
            print(f"[real] {unit}: started {time.strftime('%H:%M:%S')}", flush=True)
            info = self.run_unit(unit, cmd)
            print(f"[real] {unit}: exit {info['returncode']}, {info['wall_s']:.0f} s, peak RSS "
                  f"{info['peak_rss_gb']} GB", flush=True)
            if info["returncode"] == 0 and not self.complete(unit):
                print(f"[real] {unit}: stopped before it finished (a signal); rerun the same command to resume",
                      file=sys.stderr, flush=True)
                return 1
            if info["returncode"] != 0:
                print(f"[real] {unit} failed; see {self.work / 'logs'}; rerun the same command to resume",
                      file=sys.stderr, flush=True)
                return 1
            if unit.startswith("adapter/"):
                self.check_adapters()  # before the report: it would record this adapter's checksum as the results'
            if self.report is not None and unit.split("/")[0] in ("adapter", "own", "ood"):
                # the report follows every finished unit, so what is done can be committed as it completes
                subprocess.run(self.report_command(), cwd=REPO, stdout=subprocess.DEVNULL, check=False)
        return 0


def _sizes(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise _error(f"--sizes: {text!r} is not train,validation,test (three counts)")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path, help="where splits, adapters, runs, logs and unit records go")
    ap.add_argument("--data-dir", type=Path, default=None, help="the authors' IE sets (default: real.data_dir)")
    ap.add_argument("--profile", default="cpu", help="cpu (the reduced budget) or gpu (the paper's)")
    ap.add_argument("--model", default="smollm2", help="smollm2, a .gguf file or an HF model directory")
    ap.add_argument("--report", type=Path, default=None, help="write REPORT.md here at the end")
    ap.add_argument("--targets", default=",".join(OOD_TARGETS))
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--only", default=None, help="run the units whose name starts with this (e.g. adapter/), "
                    "after the splits")
    ap.add_argument("--dry-run", action="store_true", help="print the commands of the units still to run")
    ap.add_argument("--sizes", default=None, help="train,validation,test records per set (default: the profile's)")
    ap.add_argument("--with-adapters", action="store_true", help="the report also keeps the trained adapters")
    ap.add_argument("--restore", type=Path, default=None,
                    help="first put back the finished units a report directory holds (resume in an empty WORK)")
    args = ap.parse_args(argv)
    from evojax_merge.errors import EvoMergeInputError

    try:
        driver = Driver(args.work, args.data_dir or default_data_dir(), args.profile, args.model, args.report,
                        tuple(t for t in args.targets.split(",") if t), tuple(s for s in args.sets.split(",") if s),
                        tuple(extra), args.dry_run, _sizes(args.sizes), args.with_adapters)
        if args.restore is not None:
            units = driver.restore(args.restore)
            print(f"[real] restored from {args.restore}: {', '.join(units) or 'nothing'}", flush=True)
        return driver.run(args.only)
    except EvoMergeInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
