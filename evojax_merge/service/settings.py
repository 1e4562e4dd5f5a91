"""The service's limits and API keys: one frozen value, built from the CLI or by a test.

Every limit here is enforced by the server before anything is computed; a request over a limit
gets 422 naming the field (or 413 for a body over ``max_body_bytes``, 429 for a key already
holding ``max_sessions_per_key`` sessions).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from evojax_merge.errors import EvoMergeInputError

API_KEYS_ENV = "EVOJAX_MERGE_API_KEYS"
MIN_KEY_LENGTH = 16  # short keys are guessable; refuse them at startup


@dataclasses.dataclass(frozen=True)
class ServiceSettings:
    """API keys and request limits of one server."""

    api_keys: tuple[str, ...]
    max_population: int = 128
    max_records: int = 2048  # validation records per session
    max_record_chars: int = 16384  # per string field of a record (and per history turn)
    max_seq_len: int = 512  # tokens per validation example (longer prompts are left-truncated)
    max_prompts: int = 64  # prompts per generate request
    max_prompt_chars: int = 8192
    max_prompt_tokens: int = 512
    max_new_tokens: int = 256
    max_sessions_per_key: int = 4
    session_ttl_s: float = 3600.0  # idle sessions are dropped after this long
    max_body_bytes: int = 32 * 1024 * 1024
    alpha_bounds: tuple[float, float] = (0.0, 1.0)
    beta_bounds: tuple[float, float] = (-1.5, 1.5)
    buckets: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048)

    def __post_init__(self):
        if not self.api_keys:
            raise EvoMergeInputError(f"no API keys: set {API_KEYS_ENV} or pass --api-key-file")
        for i, key in enumerate(self.api_keys):
            if len(key) < MIN_KEY_LENGTH:
                raise EvoMergeInputError(f"API key {i}: shorter than {MIN_KEY_LENGTH} characters")
        for name in ("max_population", "max_records", "max_record_chars", "max_seq_len", "max_prompts",
                     "max_prompt_chars", "max_prompt_tokens", "max_new_tokens", "max_sessions_per_key",
                     "max_body_bytes"):
            if getattr(self, name) < 1:
                raise EvoMergeInputError(f"service setting {name}={getattr(self, name)}: must be >= 1")

    def public_limits(self) -> dict:
        """The limits a client may see (no keys)."""
        out = dataclasses.asdict(self)
        del out["api_keys"]
        return out


def parse_keys(text: str) -> tuple[str, ...]:
    """Keys separated by commas or newlines; blanks and ``#`` comment lines are skipped."""
    keys = []
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        keys.extend(k.strip() for k in line.split(",") if k.strip())
    return tuple(dict.fromkeys(keys))  # de-duplicated, order kept


def load_api_keys(key_file: str | os.PathLike[str] | None = None, environ: dict | None = None) -> tuple[str, ...]:
    """Keys from ``key_file`` when given, else from ``$EVOJAX_MERGE_API_KEYS``."""
    if key_file is not None:
        path = Path(key_file)
        if not path.is_file():
            raise EvoMergeInputError(f"{path}: API key file not found")
        return parse_keys(path.read_text())
    env = os.environ if environ is None else environ
    return parse_keys(env.get(API_KEYS_ENV, ""))
