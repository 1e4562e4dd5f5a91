"""How well does a built IE world's base copy? Exact-match rate on lists of random word strings.

    PYTHONPATH=$PWD python experiments/ie_copy_probe.py ZOO_DIR [N]

The probe is the base's own ``join`` exercise ("Join the items with semicolons.") on 1-3 items of
two random words from the world's vocabulary: pairs no lexicon holds, so the base can only copy them.
No adapter (a zero LoRA). Prints the exact-match rate and a few answers. Writes nothing.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import jax.numpy as jnp
from transformers import AutoTokenizer

from evojax_merge.eval.evaluate import generate_for_population
from evojax_merge.lora.pool import load_pool
from evojax_merge.models.io import load_model
from evojax_merge.zoo.ie_world import _EXERCISES
from evojax_merge.zoo.lexicon import vocabulary


def _norm(text: str) -> str:
    return " ".join(text.replace(";", " ; ").split())


def main(argv: list[str]) -> int:
    root, n = Path(argv[0]), int(argv[1]) if len(argv) > 1 else 60
    model = load_model(root / "base")
    tokenizer = AutoTokenizer.from_pretrained(root / "base")
    pool = load_pool(str(root / "adapters" / "*"), model.config)
    rng, words = random.Random(5), vocabulary()
    records = []
    for _ in range(n):
        items = [f"{rng.choice(words)} {rng.choice(words)}" for _ in range(rng.randint(1, 3))]
        records.append({"instruction": _EXERCISES["join"], "input": " | ".join(items), "output": "; ".join(items)})
    zero = pool.stack.take([0])
    zero = type(zero)(A={k: jnp.zeros_like(a) for k, a in zero.A.items()}, B=zero.B, scale=zero.scale)
    answers = generate_for_population(model, tokenizer, zero, records, max_len=128, max_new_tokens=40)[0]
    exact = sum(_norm(a) == _norm(r["output"]) for a, r in zip(answers, records, strict=True)) / n
    print(f"join exact {exact:.3f} ({n} lists)")
    for a, r in list(zip(answers, records, strict=True))[:5]:
        print(f"  {r['input']!r} -> {a!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
