"""Request and response bodies of the ``/v1`` routes.

Shapes only; limits that depend on the server's settings (population size, record count, prompt
length, bounds) are checked by :mod:`evojax_merge.service.validation`. Unknown fields are refused
(``extra="forbid"``), so a misspelt field is a 422 naming it rather than a silent default.
Responses hold scalars, names and text: never a weight, a gradient or a per-token value.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PruneMode = Literal["A", "B", "both", "none"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- requests ----------------------------------------------------------------------------------
class ValidationSpec(_Strict):
    """How the session's validation loss is sampled (``search.fitness.ValidationConfig``)."""

    batch_size: int = Field(15, ge=1, le=4096)
    num_batches: int = Field(20, ge=1, le=4096)
    resample: bool = False
    seed: int = Field(0, ge=0, le=2**32 - 1)
    by_length: bool = False
    bucket_step: int | None = Field(None, ge=1, le=4096)


class CreateSessionRequest(_Strict):
    """A session: one pool (optionally a named subset of it) and a validation set."""

    pool_id: str = Field(min_length=1, max_length=128)
    records: list[Any] | None = Field(None, description="alpaca records {instruction, input, output, history?}")
    dataset: str | None = Field(None, max_length=128, description="a validation set the provider holds")
    adapters: list[str] | None = Field(None, description="adapter names to keep, in this order (default: all)")
    validation: ValidationSpec = ValidationSpec()
    prune: PruneMode = "A"
    max_len: int | None = Field(None, ge=2, description="tokens per example (default: the server's maximum)")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.records is None) == (self.dataset is None):
            raise ValueError("give exactly one of 'records' or 'dataset'")
        return self


class EvaluateRequest(_Strict):
    """A whole population: row p is candidate p's (alpha, beta)."""

    alpha: list[list[float]]
    beta: list[list[float]]
    generation: int = Field(0, ge=0, le=2**31 - 1, description="selects the batches in resample mode")


class GenerateRequest(_Strict):
    """One control vector and the prompts to continue (a string is a record's instruction)."""

    alpha: list[float]
    beta: list[float]
    prompts: list[str | dict[str, Any]]
    max_new_tokens: int | None = Field(None, ge=1, description="default: min(64, the server's limit)")


# -- responses ---------------------------------------------------------------------------------
class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    uptime_s: float


class Layout(BaseModel):
    """One searchable vector: its length and box bounds (``search.genome.GenomeLayout``)."""

    searched: Literal["alpha", "beta"]
    length: int
    lower: float
    upper: float


class PoolInfo(BaseModel):
    id: str
    num_adapters: int
    adapters: list[str]
    rank: int
    layouts: list[Layout]


class DatasetInfo(BaseModel):
    id: str
    num_records: int


class PoolsResponse(BaseModel):
    pools: list[PoolInfo]
    datasets: list[DatasetInfo]
    limits: dict[str, Any]


class SessionInfo(BaseModel):
    session_id: str
    pool_id: str
    adapters: list[str]
    num_adapters: int
    num_examples: int
    seq_len: int
    prune: PruneMode
    validation: ValidationSpec
    layouts: list[Layout]
    evaluations: int
    created_at: float


class SessionsResponse(BaseModel):
    sessions: list[SessionInfo]


class EvaluateResponse(BaseModel):
    losses: list[float | None] = Field(description="validation CE per candidate; null if not finite")
    generation: int
    elapsed_ms: float


class GenerateResponse(BaseModel):
    texts: list[str]


class Deleted(BaseModel):
    session_id: str
    deleted: bool = True
