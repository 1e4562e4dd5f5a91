"""``RemoteMergeService``: the search's ``Evaluator`` over HTTP.

    with RemoteMergeService(url, api_key, pool_id="default", records=val_records) as ev:
        losses = ev.evaluate(alpha, beta, generation)      # alpha, beta: [P, N]
        # ... or hand ``ev`` to evo_merging_search / lorahub_search like a MergeEvaluator

It opens a session on construction (the server tokenizes the records and builds the same
``MergeEvaluator`` an in-process run would), sends each population in one request, and deletes
the session on ``close()``. Floats travel as JSON numbers, which round-trip exactly, so the losses
equal the in-process ones bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence

import httpx
import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.search.fitness import ValidationConfig
from evojax_merge.search.genome import check_population

DEFAULT_VALIDATION = ValidationConfig()  # the paper's 20 batches of 15


class RemoteServiceError(RuntimeError):
    """A non-validation failure from the service (auth, unknown session, limits, server error)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _message(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (json.JSONDecodeError, AttributeError):
        return response.text[:500]
    if isinstance(detail, list):
        return "; ".join(f"{d.get('field', '?')}: {d.get('msg', '')}" for d in detail if isinstance(d, dict))
    return str(detail)


def raise_for_status(response: httpx.Response) -> httpx.Response:
    """422 -> ``EvoMergeInputError`` (bad input, one line); any other failure -> ``RemoteServiceError``."""
    if response.status_code < 400:
        return response
    if response.status_code == 422:
        raise EvoMergeInputError(f"merge service: {_message(response)}")
    raise RemoteServiceError(response.status_code, _message(response))


class RemoteMergeService:
    """An ``Evaluator`` (``num_adapters``, ``evaluate``) backed by a session on a merge service."""

    def __init__(
        self,
        url: str,
        api_key: str,
        pool_id: str = "default",
        records: Sequence[Mapping] | None = None,
        *,
        dataset: str | None = None,
        adapters: Sequence[str] | None = None,
        validation: ValidationConfig = DEFAULT_VALIDATION,
        prune: str = "A",
        max_len: int | None = None,
        timeout: float = 600.0,
        client: httpx.Client | None = None,
    ):
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._own_client = client is None
        # Retries cover connection failures only; a request that reached the server is not resent.
        self._client = client or httpx.Client(timeout=timeout, transport=httpx.HTTPTransport(retries=2))
        body: dict = {"pool_id": pool_id, "validation": dataclasses.asdict(validation), "prune": prune}
        if records is not None:
            body["records"] = [dict(r) for r in records]
        if dataset is not None:
            body["dataset"] = dataset
        if adapters is not None:
            body["adapters"] = list(adapters)
        if max_len is not None:
            body["max_len"] = max_len
        try:
            self.info: dict = self._request("POST", "/v1/sessions", body)
        except BaseException:
            self._close_client()
            raise
        self.session_id: str = self.info["session_id"]
        self.num_adapters: int = int(self.info["num_adapters"])
        self.adapters: list[str] = list(self.info["adapters"])
        self.pool_id = pool_id
        self.prune = prune
        self._closed = False

    # -- transport -------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        response = self._client.request(method, self.url + path, json=body, headers=self._headers)
        return raise_for_status(response).json()

    # -- the Evaluator protocol ----------------------------------------------------------------
    def evaluate(self, alpha, beta, generation: int = 0) -> np.ndarray:
        """Validation CE ``[P]`` of each candidate ``(alpha[p], beta[p])``, from one request."""
        n = self.num_adapters
        alpha = check_population(alpha, n, name="alpha")  # fail fast on NaN/shape before a round trip
        beta = check_population(beta, n, name="beta")
        out = self._request("POST", f"/v1/sessions/{self.session_id}/evaluate", {
            "alpha": alpha.astype(np.float64).tolist(),
            "beta": beta.astype(np.float64).tolist(),
            "generation": int(generation),
        })
        return np.asarray([np.nan if v is None else v for v in out["losses"]], np.float32)

    def generate(self, alpha, beta, prompts: Sequence[str | Mapping], max_new_tokens: int = 64) -> list[str]:
        """Greedy continuations of ``prompts`` (strings or alpaca records) under one merge."""
        n = self.num_adapters
        out = self._request("POST", f"/v1/sessions/{self.session_id}/generate", {
            "alpha": check_population(alpha, n, name="alpha")[0].astype(np.float64).tolist(),
            "beta": check_population(beta, n, name="beta")[0].astype(np.float64).tolist(),
            "prompts": [p if isinstance(p, str) else dict(p) for p in prompts],
            "max_new_tokens": int(max_new_tokens),
        })
        return list(out["texts"])

    # -- the rest ------------------------------------------------------------------------------
    def genome(self, alpha, beta) -> dict:
        """The document the provider's ``export`` command turns into a PEFT adapter."""
        return {"pool_id": self.pool_id, "adapters": self.adapters, "prune": self.prune,
                "alpha": np.asarray(alpha, np.float64).tolist(), "beta": np.asarray(beta, np.float64).tolist()}

    def close(self) -> None:
        """Delete the session on the server (idempotent) and close the connection pool."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        try:
            self._request("DELETE", f"/v1/sessions/{self.session_id}")
        except RemoteServiceError as e:
            if e.status != 404:  # already gone (expired) is fine
                raise
        finally:
            self._close_client()

    def _close_client(self) -> None:
        if self._own_client:
            self._client.close()

    def __enter__(self) -> RemoteMergeService:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def health(url: str, timeout: float = 10.0) -> dict:
    """``GET /v1/health`` (no key)."""
    return raise_for_status(httpx.get(url.rstrip("/") + "/v1/health", timeout=timeout)).json()


def list_pools(url: str, api_key: str, timeout: float = 30.0) -> dict:
    """``GET /v1/pools``: pool ids, adapter names, genome layouts and the server's limits."""
    response = httpx.get(url.rstrip("/") + "/v1/pools", headers={"Authorization": f"Bearer {api_key}"},
                         timeout=timeout)
    return raise_for_status(response).json()
