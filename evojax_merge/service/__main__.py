"""Command line: serve the merge service, export a merged adapter, or load-test a server.

    python -m evojax_merge.service [serve] --model DIR --pool 'ID=GLOB' --tokenizer DIR \\
        --host 127.0.0.1 --port 8010 [--api-key-file F] [--dataset NAME=FILE] [--max-population 128]
    python -m evojax_merge.service export --model DIR --pool GLOB --genome genome.json --out DIR
    python -m evojax_merge.service loadtest --url http://127.0.0.1:8010 --pool-id default \\
        --records val.json [--requests 1000 --clients 8 --population 4]

Keys come from ``--api-key-file`` or ``$EVOJAX_MERGE_API_KEYS`` (comma-separated).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.service.settings import ServiceSettings, load_api_keys

_LIMITS = [f for f in dataclasses.fields(ServiceSettings) if f.type in ("int", "float", int, float)]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evojax_merge.service", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the HTTP service")
    s.add_argument("--model", required=True, help="base model directory (HF config.json + safetensors)")
    s.add_argument("--pool", action="append", required=True, metavar="[ID=]GLOB",
                   help="adapter pool: a glob of PEFT directories; repeat with ID= for several pools")
    s.add_argument("--tokenizer", help="tokenizer directory (default: the model directory)")
    s.add_argument("--dataset", action="append", default=[], metavar="NAME=FILE",
                   help="a validation set the provider holds (.json/.jsonl alpaca records)")
    s.add_argument("--dtype", choices=("float32", "bfloat16"))
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8010)
    s.add_argument("--api-key-file", help="keys, one per line or comma-separated")
    for f in _LIMITS:
        s.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                       help=f"default {f.default}")

    e = sub.add_parser("export", help="write the merged adapter of a genome as a PEFT directory")
    e.add_argument("--model", required=True)
    e.add_argument("--pool", required=True, metavar="GLOB")
    e.add_argument("--genome", required=True, help="JSON {alpha, beta, adapters?, prune?}")
    e.add_argument("--out", required=True)

    t = sub.add_parser("loadtest", help="concurrent evaluate requests against a running server")
    t.add_argument("--url", default="http://127.0.0.1:8010")
    t.add_argument("--api-key-file")
    t.add_argument("--pool-id", default="default")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--records", help="validation records file (.json/.jsonl)")
    src.add_argument("--dataset", help="a dataset the server holds")
    t.add_argument("--requests", type=int, default=1000)
    t.add_argument("--clients", type=int, default=8)
    t.add_argument("--population", type=int, default=4)
    t.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def _first_key(key_file: str | None) -> str:
    keys = load_api_keys(key_file)
    if not keys:
        raise EvoMergeInputError("no API key: set EVOJAX_MERGE_API_KEYS or pass --api-key-file")
    return keys[0]


def _serve(args) -> None:
    from evojax_merge.service.app import create_app
    from evojax_merge.service.provider import load_provider, parse_named
    from evojax_merge.service.server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = ServiceSettings(api_keys=load_api_keys(args.api_key_file),
                               **{f.name: getattr(args, f.name) for f in _LIMITS})
    datasets = {}
    for spec in args.dataset:
        name, sep, path = spec.partition("=")
        if not sep or not name:
            raise EvoMergeInputError(f"--dataset {spec}: expected NAME=FILE")
        datasets[name] = path
    state = load_provider(args.model, parse_named(args.pool), args.tokenizer, datasets, args.dtype)
    serve(create_app(state, settings), args.host, args.port)


def _export(args) -> None:
    from evojax_merge.service.export import export_genome, read_genome

    out = export_genome(args.model, args.pool, read_genome(args.genome), args.out)
    print(f"wrote {out}")


def _loadtest(args) -> int:
    from evojax_merge.data.records import load_records
    from evojax_merge.service.loadtest import run_loadtest

    records = load_records(args.records) if args.records else None
    report = run_loadtest(args.url, _first_key(args.api_key_file), args.pool_id, records, dataset=args.dataset,
                          requests=args.requests, clients=args.clients, population=args.population)
    print(json.dumps(dataclasses.asdict(report), indent=2) if args.json else report.summary())
    ok = report.errors == 0 and report.health_ok and report.sessions_after == report.sessions_before
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv.insert(0, "serve")  # `python -m evojax_merge.service --model ...` means serve
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            _serve(args)
        elif args.command == "export":
            _export(args)
        else:
            return _loadtest(args)
    except EvoMergeInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
