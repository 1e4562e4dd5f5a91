"""The FastAPI app: ``create_app(provider_state, settings)``.

    GET    /v1/health                      no key
    GET    /v1/pools                       pool ids, adapter names, genome layouts, limits
    GET    /v1/sessions                    this key's sessions
    POST   /v1/sessions                    pool (+ subset) and validation records -> a session
    GET    /v1/sessions/{id}               one session's info
    POST   /v1/sessions/{id}/evaluate      population [P, N] x2 -> P losses, one batched call
    POST   /v1/sessions/{id}/generate      one (alpha, beta) + prompts -> texts
    DELETE /v1/sessions/{id}               frees the session

Status codes: 401 missing/wrong key; 404 unknown session or another key's; 413 body too large;
422 any invalid field (named), with nothing changed; 429 too many sessions for this key.
Routes are plain ``def``: FastAPI runs them in its threadpool, and the provider's locks
serialize the device work, so a slow evaluation never blocks the event loop; ``/v1/health`` is
``async`` and so answers even while every worker thread is queued on the device.
"""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

import evojax_merge
from evojax_merge.lora import LoraPool
from evojax_merge.search.fitness import ValidationConfig
from evojax_merge.service import provider as prov
from evojax_merge.service.auth import KeyRing
from evojax_merge.service.middleware import AccessLogMiddleware, AuthMiddleware, BodyLimitMiddleware
from evojax_merge.service.schemas import (
    CreateSessionRequest,
    DatasetInfo,
    Deleted,
    EvaluateRequest,
    EvaluateResponse,
    GenerateRequest,
    GenerateResponse,
    Health,
    PoolInfo,
    PoolsResponse,
    SessionInfo,
    SessionsResponse,
)
from evojax_merge.service.sessions import Session, SessionLimitError, SessionNotFound, SessionStore
from evojax_merge.service.settings import ServiceSettings
from evojax_merge.service.validation import (
    FieldError,
    check_adapter_names,
    check_max_len,
    check_population_field,
    check_prompts,
    check_records,
    check_vector_field,
    finite_or_none,
)


def _field_name(loc) -> str:
    """``("body", "alpha", 0, 1)`` -> ``"alpha[0][1]"``."""
    name = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": [{"field": field, "msg": message}]})


def _on_request_validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, with the field named and without echoing the input back."""
    detail = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            where = err["loc"][1] if len(err.get("loc", ())) > 1 else "?"
            reason = err.get("ctx", {}).get("error", "invalid JSON")
            detail.append({"field": "body", "msg": f"malformed JSON body: {reason} at character {where}"})
        else:
            detail.append({"field": _field_name(err.get("loc", ())), "msg": err.get("msg", "invalid")})
    return JSONResponse(status_code=422, content={"detail": detail})


def _session_info(s: Session, settings: ServiceSettings) -> SessionInfo:
    return SessionInfo(
        session_id=s.id, pool_id=s.pool_id, adapters=list(s.adapters), num_adapters=s.num_adapters,
        num_examples=s.evaluator.num_examples, seq_len=s.seq_len, prune=s.prune, validation=s.validation,
        layouts=prov.layouts(s.num_adapters, settings), evaluations=s.evaluations, created_at=s.created_at,
    )


def _pool_info(pid: str, pool: LoraPool, settings: ServiceSettings) -> PoolInfo:
    return PoolInfo(id=pid, num_adapters=pool.num_adapters, adapters=list(pool.names), rank=pool.rank,
                    layouts=prov.layouts(pool.num_adapters, settings))


def create_app(provider_state: prov.ProviderState, settings: ServiceSettings) -> FastAPI:
    """The service app over ``provider_state``; ``app.state.sessions`` is its session store."""
    app = FastAPI(title="evojax_merge black-box merge service", version=evojax_merge.__version__,
                  docs_url=None, redoc_url=None, openapi_url="/v1/openapi.json")
    store = SessionStore(settings.max_sessions_per_key, settings.session_ttl_s)
    app.state.sessions = store
    app.state.settings = settings
    started = time.monotonic()

    # Added innermost first: access log -> auth -> body limit -> routes.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AuthMiddleware, keys=KeyRing(settings.api_keys))
    app.add_middleware(AccessLogMiddleware)
    app.add_exception_handler(RequestValidationError, _on_request_validation)
    app.add_exception_handler(FieldError, lambda _r, e: _error(e.status, e.field, e.message))
    app.add_exception_handler(SessionLimitError, lambda _r, e: _error(429, "session", str(e)))
    app.add_exception_handler(SessionNotFound, lambda _r, e: _error(404, "session_id", "no such session"))

    def owner(request: Request) -> str:
        return request.state.owner  # set by AuthMiddleware

    @app.get("/v1/health", response_model=Health)
    async def health() -> Health:  # on the event loop: answers even when every worker thread waits
        return Health(version=evojax_merge.__version__, uptime_s=round(time.monotonic() - started, 3))

    @app.get("/v1/pools", response_model=PoolsResponse)
    def pools() -> PoolsResponse:
        return PoolsResponse(
            pools=[_pool_info(pid, p, settings) for pid, p in provider_state.pools.items()],
            datasets=[DatasetInfo(id=k, num_records=len(v)) for k, v in provider_state.datasets.items()],
            limits=settings.public_limits(),
        )

    @app.get("/v1/sessions", response_model=SessionsResponse)
    def list_sessions(request: Request) -> SessionsResponse:
        return SessionsResponse(sessions=[_session_info(s, settings) for s in store.owned(owner(request))])

    @app.post("/v1/sessions", response_model=SessionInfo, status_code=201)
    def create_session(body: CreateSessionRequest, request: Request) -> SessionInfo:
        # Every check comes before the slot is reserved, so a bad request changes nothing.
        pool = provider_state.pools.get(body.pool_id)
        if pool is None:
            raise FieldError("pool_id", f"no pool {body.pool_id!r} (see GET /v1/pools)")
        keep = check_adapter_names(body.adapters, pool.names)
        if body.dataset is not None:
            if body.dataset not in provider_state.datasets:
                raise FieldError("dataset", f"no dataset {body.dataset!r} (see GET /v1/pools)")
            records = provider_state.datasets[body.dataset]
        else:
            records = check_records(body.records, settings.max_records, settings.max_record_chars)
        v = body.validation
        max_len = check_max_len(body.max_len, settings.max_seq_len)
        examples = prov.tokenize_validation(provider_state, records, max_len, settings.buckets)
        sid = store.reserve(owner(request))
        request.state.session_id = sid  # for the access log
        try:
            sub = pool if keep == list(range(pool.num_adapters)) else pool.subset(keep)
            evaluator = prov.build_evaluator(provider_state, sub, examples, ValidationConfig(**v.model_dump()),
                                             body.prune)
            session = Session(id=sid, owner=owner(request), pool_id=body.pool_id, adapters=sub.names,
                              stack=sub.stack, evaluator=evaluator, prune=body.prune, validation=v.model_dump(),
                              seq_len=int(examples["input_ids"].shape[1]))
            store.commit(session)
        except BaseException:
            store.release(sid)
            raise
        return _session_info(session, settings)

    @app.get("/v1/sessions/{session_id}", response_model=SessionInfo)
    def get_session(session_id: str, request: Request) -> SessionInfo:
        return _session_info(store.get(owner(request), session_id), settings)

    @app.post("/v1/sessions/{session_id}/evaluate", response_model=EvaluateResponse)
    def evaluate(session_id: str, body: EvaluateRequest, request: Request) -> EvaluateResponse:
        s = store.get(owner(request), session_id)
        n, cap = s.num_adapters, settings.max_population
        alpha = check_population_field(body.alpha, n, settings.alpha_bounds, cap, "alpha")
        beta = check_population_field(body.beta, n, settings.beta_bounds, cap, "beta")
        if alpha.shape != beta.shape:
            raise FieldError("beta", f"{beta.shape[0]} candidates, alpha has {alpha.shape[0]}")
        start = time.perf_counter()
        losses = prov.evaluate(provider_state, s.evaluator, alpha, beta, body.generation)
        store.record_evaluations(s, int(alpha.shape[0]))
        return EvaluateResponse(losses=finite_or_none(losses), generation=body.generation,
                                elapsed_ms=round(1000 * (time.perf_counter() - start), 3))

    @app.post("/v1/sessions/{session_id}/generate", response_model=GenerateResponse)
    def generate(session_id: str, body: GenerateRequest, request: Request) -> GenerateResponse:
        s = store.get(owner(request), session_id)
        alpha = check_vector_field(body.alpha, s.num_adapters, settings.alpha_bounds, "alpha")
        beta = check_vector_field(body.beta, s.num_adapters, settings.beta_bounds, "beta")
        steps = min(64, settings.max_new_tokens) if body.max_new_tokens is None else body.max_new_tokens
        if steps > settings.max_new_tokens:
            raise FieldError("max_new_tokens", f"{steps} exceeds the limit of {settings.max_new_tokens}")
        prompts = check_prompts(body.prompts, settings.max_prompts, settings.max_prompt_chars)
        texts = prov.generate_texts(provider_state, s, alpha, beta, prompts, steps,
                                    settings.max_prompt_tokens, settings.buckets)
        return GenerateResponse(texts=texts)

    @app.delete("/v1/sessions/{session_id}", response_model=Deleted)
    def delete_session(session_id: str, request: Request) -> Deleted:
        store.remove(owner(request), session_id)
        return Deleted(session_id=session_id)

    return app

