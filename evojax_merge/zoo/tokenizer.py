"""The worlds' word-level tokenizer, built with ``tokenizers`` and saved for ``AutoTokenizer``.

Why word-level: every world's answer copies words from the prompt, and with one token per word the
copy is one token per word too, whatever the neighbouring punctuation; a tiny model learns that
far more easily than a copy of BPE pieces whose split depends on context.

- Normalizer: NFKC + lower case. Pre-tokenizer: split on whitespace, then every punctuation
  character is its own token. Whitespace is not a token.
- Specials: ``<pad>`` (0), ``<s>`` (1), ``</s>`` (2), ``<unk>`` (3). ``add_special_tokens=True``
  prepends ``<s>`` like Llama; :mod:`evojax_merge.data.batching` adds ``<s>``/``</s>`` itself.
- Vocabulary: the specials, then every word of the texts a world passes to :func:`build_tokenizer`
  (e.g. :func:`evojax_merge.zoo.ie_build.world_tokenizer`) plus single letters, digits and ASCII
  punctuation, sorted: deterministic, no frequency cut.
- Decoding joins tokens with single spaces: ``"person: john smith; city: paris"`` comes back
  as ``"person : john smith ; city : paris"``. :func:`evojax_merge.eval.metrics.canonical`
  compares in exactly that spacing, so the parsed tuples are the same.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
MODEL_MAX_LENGTH = 2048
# the same special tokens and settings in memory and in tokenizer_config.json
_TOKENIZER_SETTINGS = dict(pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
                           model_max_length=MODEL_MAX_LENGTH, clean_up_tokenization_spaces=False)


def _pipeline(tok: Tokenizer) -> Tokenizer:
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")]
    )
    return tok


def _words(texts: Iterable[str]) -> set[str]:
    """The pre-tokens of ``texts`` exactly as the tokenizer will see them."""
    probe = _pipeline(Tokenizer(models.WordLevel({UNK: 0}, unk_token=UNK)))
    words: set[str] = set()
    for text in texts:
        normalized = probe.normalizer.normalize_str(text)
        words.update(w for w, _ in probe.pre_tokenizer.pre_tokenize_str(normalized))
    return words


def build_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary covers every word of ``texts``."""
    base = set(string.ascii_lowercase) | set(string.digits) | set(string.punctuation)
    words = sorted((_words(texts) | base) - set(SPECIAL_TOKENS))
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *words])}
    tok = _pipeline(Tokenizer(models.WordLevel(vocab, unk_token=UNK)))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **_TOKENIZER_SETTINGS)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | os.PathLike[str]) -> Path:
    """``save_pretrained`` plus a portable ``tokenizer_config.json``.

    ``tokenizer_class`` is written as ``PreTrainedTokenizerFast`` (transformers 5 would write its
    new backend name, which 4.x cannot load), with the four special tokens spelled out.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    cfg.update(tokenizer_class="PreTrainedTokenizerFast", **_TOKENIZER_SETTINGS)
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def load_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerFast:
    """``AutoTokenizer.from_pretrained`` on a local directory."""
    return AutoTokenizer.from_pretrained(str(path))

