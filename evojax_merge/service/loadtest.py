"""A bounded load test: C concurrent clients, R evaluate requests in all, against a live server.

Sessions are opened concurrently (so session creation races too), one per client unless the
key's session limit is lower; each gets one untimed warm-up call (a compile, if its shapes are
new). Then the C client threads send their share of timed evaluate requests with random in-bounds
populations, and the sessions are deleted. The report gives throughput, latency percentiles, the
error count, the caller's session count before and after (a leak shows as a difference), and
whether ``/v1/health`` still answers.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from evojax_merge.search.fitness import ValidationConfig
from evojax_merge.service.client import RemoteMergeService, health, list_pools, raise_for_status
from evojax_merge.service.leakcheck import matrix_leaks

LOAD_VALIDATION = ValidationConfig(batch_size=4, num_batches=2)  # small: the test is of the service


@dataclasses.dataclass
class LoadTestReport:
    requests: int
    clients: int
    sessions: int
    population: int
    errors: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    warmup_max_ms: float  # the first call of each session (its compile), not in the percentiles
    sessions_before: int
    sessions_after: int
    health_ok: bool
    matrix_leaks: int
    first_error: str | None = None

    def summary(self) -> str:
        return (f"{self.requests} evaluate requests (population {self.population}) from {self.clients} clients "
                f"on {self.sessions} sessions in "
                f"{self.seconds:.2f}s: {self.requests_per_s:.1f} req/s, p50 {self.p50_ms:.1f} ms, "
                f"p99 {self.p99_ms:.1f} ms, max {self.max_ms:.1f} ms (warm-up/compile max "
                f"{self.warmup_max_ms:.0f} ms); errors {self.errors}; sessions {self.sessions_before} -> "
                f"{self.sessions_after}; health {'ok' if self.health_ok else 'FAILED'}; "
                f"matrix-shaped arrays in responses: {self.matrix_leaks}"
                + (f"; first error: {self.first_error}" if self.first_error else ""))


def count_sessions(url: str, api_key: str) -> int:
    """How many sessions ``api_key`` holds."""
    r = httpx.get(url.rstrip("/") + "/v1/sessions", headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    return len(raise_for_status(r).json()["sessions"])


def _open_sessions(count: int, make) -> tuple[list[RemoteMergeService], list[str]]:
    """``count`` sessions opened concurrently (creation races too); the ones that failed as errors."""
    opened, errors = [], []
    with ThreadPoolExecutor(count) as pool:
        for j, fut in enumerate([pool.submit(make) for _ in range(count)]):
            try:
                opened.append(fut.result())
            except Exception as e:  # noqa: BLE001 - counted and reported
                errors.append(f"session {j}: create: {e}")
    return opened, errors


def run_loadtest(
    url: str,
    api_key: str,
    pool_id: str = "default",
    records: Sequence[Mapping] | None = None,
    dataset: str | None = None,
    requests: int = 1000,
    clients: int = 8,
    population: int = 4,
    validation: ValidationConfig = LOAD_VALIDATION,
    matrix_shapes: set[tuple[int, ...]] | None = None,
    sessions: int | None = None,
    seed: int = 0,
) -> LoadTestReport:
    """Run the load test and report; errors are counted, not raised.

    ``sessions`` (default: one per client, within the key's free session slots) are opened
    concurrently and shared round-robin by the client threads.
    """
    before = count_sessions(url, api_key)
    if sessions is None:
        limit = list_pools(url, api_key)["limits"]["max_sessions_per_key"]
        sessions = max(1, min(clients, limit - before))
    shares = [requests // clients + (i < requests % clients) for i in range(clients)]
    lock = threading.Lock()
    latencies: list[float] = []
    warmups: list[float] = []
    leaks = [0]
    spans: list[tuple[float, float]] = []  # each client's timed phase
    start_line = threading.Barrier(clients)

    def inspect(response: httpx.Response) -> None:
        if matrix_shapes is not None and response.headers.get("content-type", "").startswith("application/json"):
            response.read()
            found = matrix_leaks(response.json(), matrix_shapes)
            with lock:
                leaks[0] += len(found)

    http = httpx.Client(timeout=600, event_hooks={"response": [inspect]},
                        limits=httpx.Limits(max_connections=clients + 4))  # thread-safe, shared
    services, errors = _open_sessions(sessions, lambda: RemoteMergeService(
        url, api_key, pool_id, records, dataset=dataset, validation=validation, client=http))

    def call(ev: RemoteMergeService, rng: np.random.Generator, generation: int) -> float:
        alpha = rng.uniform(0.0, 1.0, (population, ev.num_adapters))
        beta = rng.uniform(-1.5, 1.5, (population, ev.num_adapters))
        t = time.perf_counter()
        losses = ev.evaluate(alpha, beta, generation)
        if losses.shape != (population,):
            raise RuntimeError(f"got {losses.shape} losses for {population} candidates")
        return 1000 * (time.perf_counter() - t)

    def one_client(i: int) -> None:
        ev, rng = services[i % len(services)], np.random.default_rng((seed, i))
        start_line.wait()
        began, mine = time.perf_counter(), []
        for g in range(shares[i]):
            try:
                mine.append(call(ev, rng, g + 1))
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(f"client {i}, request {g}: {e}")
        with lock:
            latencies.extend(mine)
            spans.append((began, time.perf_counter()))

    try:
        if services and not errors:
            warm_rng = np.random.default_rng(seed)
            warmups.extend(call(ev, warm_rng, 0) for ev in services)  # each session's first call compiles
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(one_client, range(clients)))
    finally:
        for ev in services:
            try:
                ev.close()
            except Exception as e:  # noqa: BLE001
                errors.append(f"close {ev.session_id}: {e}")
        http.close()
    # Wall time of the timed phase: from the start line to the last client's last response.
    seconds = max(e for _, e in spans) - min(b for b, _ in spans) if spans else float("nan")
    lat = np.asarray(latencies or [np.nan])
    try:
        health_ok = health(url).get("status") == "ok"
    except Exception:  # noqa: BLE001
        health_ok = False
    return LoadTestReport(
        requests=len(latencies), clients=clients, sessions=len(services), population=population, errors=len(errors),
        seconds=seconds, requests_per_s=len(latencies) / seconds if seconds > 0 else float("nan"),
        p50_ms=float(np.percentile(lat, 50)), p99_ms=float(np.percentile(lat, 99)), max_ms=float(lat.max()),
        warmup_max_ms=max(warmups, default=float("nan")), sessions_before=before,
        sessions_after=count_sessions(url, api_key), health_ok=health_ok, matrix_leaks=leaks[0],
        first_error=errors[0] if errors else None,
    )
