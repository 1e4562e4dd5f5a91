"""The black-box merge service against a real uvicorn server on 127.0.0.1 (issue 6).

One tiny world (random Llama, word-level tokenizer, 4 random PEFT adapters) and one server per
module. Every HTTP response any test receives is checked for arrays shaped like a pool matrix.
"""

from __future__ import annotations

import json
import logging

import httpx
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from evojax_merge.data.batching import encode_examples
from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora import LoraAdapter, load_pool, module_path, save_peft_adapter
from evojax_merge.models import LlamaForCausalLM, ModelConfig, save_model
from evojax_merge.search.evo_merging import EvoMergingConfig, default_stage_runner, evo_merging_search
from evojax_merge.search.fitness import MergeEvaluator, ValidationConfig
from evojax_merge.service.app import create_app
from evojax_merge.service.client import RemoteMergeService, RemoteServiceError, health, list_pools
from evojax_merge.service.export import export_genome
from evojax_merge.service.leakcheck import adapter_matrix_shapes, matrix_leaks
from evojax_merge.service.loadtest import count_sessions, run_loadtest
from evojax_merge.service.provider import load_provider
from evojax_merge.service.server import ServerThread
from evojax_merge.service.sessions import Session, SessionLimitError, SessionNotFound, SessionStore
from evojax_merge.service.settings import ServiceSettings, load_api_keys, parse_keys
from evojax_merge.zoo.tokenizer import build_tokenizer, save_tokenizer

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-fedcba9876543210"
NUM_ADAPTERS, RANK = 4, 2
VALIDATION = ValidationConfig(batch_size=4, num_batches=2, seed=1)
SETTINGS = ServiceSettings(api_keys=(KEY_A, KEY_B), max_population=8, max_records=32, max_record_chars=400,
                           max_seq_len=48, max_prompts=3, max_prompt_chars=300, max_prompt_tokens=40,
                           max_new_tokens=8, max_sessions_per_key=8, max_body_bytes=200_000, buckets=(16, 32, 48))

WORDS = "paris london rome tokyo lima oslo john mary ana li bob eve city person works lives in at the".split()


def _records(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        person, city = rng.choice(WORDS[6:12]), rng.choice(WORDS[:6])
        out.append({"instruction": "find the city", "input": f"{person} lives in {city} near the {rng.choice(WORDS)}",
                    "output": f"city : {city}"})
    return out


RECORDS = _records(12, 0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Model, tokenizer, 4 PEFT adapters and a named dataset on disk."""
    root = tmp_path_factory.mktemp("service_world")
    tok = build_tokenizer([json.dumps(r) for r in RECORDS] + ["instruction input answer user assistant"])
    save_tokenizer(tok, root / "tokenizer")
    cfg = ModelConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    save_model(LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)), root / "base")
    rng = np.random.default_rng(7)
    for i in range(NUM_ADAPTERS):
        A, B = {}, {}
        for layer in range(cfg.num_hidden_layers):
            for proj, (d_out, d_in) in cfg.module_shapes().items():
                A[module_path(layer, proj)] = jnp.asarray(0.5 * rng.normal(size=(RANK, d_in)), jnp.float32)
                B[module_path(layer, proj)] = jnp.asarray(0.5 * rng.normal(size=(d_out, RANK)), jnp.float32)
        save_peft_adapter(LoraAdapter(A=A, B=B, scale=jnp.asarray(2.0)), root / f"adapter_{i}")
    (root / "val.json").write_text(json.dumps(RECORDS))
    return root


@pytest.fixture(scope="module")
def provider(world):
    return load_provider(world / "base", {"default": str(world / "adapter_*")}, world / "tokenizer",
                         {"val": str(world / "val.json")})


@pytest.fixture(scope="module")
def server(provider):
    app = create_app(provider, SETTINGS)
    with ServerThread(app) as srv:
        srv.app = app
        yield srv


SEEN = {"responses": 0, "leaks": []}


@pytest.fixture(scope="module")
def shapes(provider):
    return adapter_matrix_shapes(provider.pools.values())


@pytest.fixture
def http(shapes):
    """An httpx client whose every JSON response is walked for pool-matrix-shaped arrays."""

    def inspect(response: httpx.Response):
        response.read()
        SEEN["responses"] += 1
        if response.headers.get("content-type", "").startswith("application/json"):
            SEEN["leaks"] += matrix_leaks(response.json(), shapes)

    with httpx.Client(timeout=120, event_hooks={"response": [inspect]}) as client:
        yield client


def _auth(key=KEY_A):
    return {"Authorization": f"Bearer {key}"}


def _session(http, server, key=KEY_A, **body):
    body = {"pool_id": "default", "records": RECORDS, "validation": VALIDATION.__dict__, **body}
    r = http.post(server.url + "/v1/sessions", json=body, headers=_auth(key))
    assert r.status_code == 201, r.text
    return r.json()


# -- remote == in-process ------------------------------------------------------------------------
@pytest.mark.slow
def test_remote_search_equals_in_process(server, provider, http):
    pool = provider.pools["default"]
    cfg = EvoMergingConfig(population_size=4, stage1_generations=2, stage2_generations=2)
    runner = default_stage_runner(progress=False)
    examples = encode_examples(RECORDS, provider.tokenizer, max_len=SETTINGS.max_seq_len, buckets=SETTINGS.buckets)
    local = evo_merging_search(MergeEvaluator(provider.model, pool.stack, examples, VALIDATION), pool.stack, cfg,
                               seed=3, runner=runner)
    with RemoteMergeService(server.url, KEY_A, "default", RECORDS, validation=VALIDATION, client=http) as remote:
        assert remote.num_adapters == NUM_ADAPTERS
        result = evo_merging_search(remote, pool.stack, cfg, seed=3, runner=runner)
        sid = remote.session_id
    np.testing.assert_array_equal(result.best_genome, local.best_genome)
    assert result.best_fitness == local.best_fitness
    for got, want in zip(result.stages, local.stages, strict=True):
        np.testing.assert_array_equal(got.history, want.history)
    assert http.get(f"{server.url}/v1/sessions/{sid}", headers=_auth()).status_code == 404  # closed


def test_resample_mode_and_named_dataset(server, provider, http):
    pool = provider.pools["default"]
    val = ValidationConfig(batch_size=3, num_batches=2, resample=True, seed=5)
    examples = encode_examples(RECORDS, provider.tokenizer, max_len=SETTINGS.max_seq_len, buckets=SETTINGS.buckets)
    local = MergeEvaluator(provider.model, pool.stack, examples, val)
    rng = np.random.default_rng(0)
    alpha, beta = rng.uniform(0, 1, (3, 4)), rng.uniform(-1.5, 1.5, (3, 4))
    with RemoteMergeService(server.url, KEY_A, "default", dataset="val", validation=val, client=http) as remote:
        for generation in (0, 1, 7):
            np.testing.assert_array_equal(remote.evaluate(alpha, beta, generation),
                                          local.evaluate(alpha, beta, generation))
        assert not np.array_equal(remote.evaluate(alpha, beta, 0), remote.evaluate(alpha, beta, 1))


PROMPTS = ["find the city", RECORDS[0]]


def test_generate(server, http):
    with RemoteMergeService(server.url, KEY_A, "default", RECORDS, validation=VALIDATION, client=http) as remote:
        texts = remote.generate([1.0, 0.5, 1.0, 0.2], [0.7, -0.4, 0.1, 0.3], PROMPTS, max_new_tokens=5)
        assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
        assert texts == remote.generate([1.0, 0.5, 1.0, 0.2], [0.7, -0.4, 0.1, 0.3], PROMPTS, max_new_tokens=5)


@pytest.mark.slow  # a real HTTP round trip of generation (7 s)
def test_generate_decodes_exactly_like_a_local_run(server, provider, http):
    """One decoding rule (cut at EOS, special tokens dropped, stripped) for the service and local runs."""
    import jax

    from evojax_merge.eval.evaluate import generate_for_population
    from evojax_merge.search.evo_merging import merged_adapter

    alpha = np.array([1.0, 0.5, 1.0, 0.2], np.float32)
    beta = np.array([0.7, -0.4, 0.1, 0.3], np.float32)
    with RemoteMergeService(server.url, KEY_A, "default", RECORDS, validation=VALIDATION, client=http) as remote:
        texts = remote.generate(alpha, beta, RECORDS[:3], max_new_tokens=6)
    adapter = merged_adapter(provider.pools["default"].stack, alpha, beta, "A")
    local = generate_for_population(provider.model, provider.tokenizer, jax.tree.map(lambda x: x[None], adapter),
                                    RECORDS[:3], max_len=256, max_new_tokens=6)[0]
    assert texts == local
    assert all(t == t.strip() for t in texts)


def test_adapter_subset(server, http):
    info = _session(http, server, adapters=["adapter_2", "adapter_0"])
    assert info["num_adapters"] == 2 and info["adapters"] == ["adapter_2", "adapter_0"]
    assert [lay["length"] for lay in info["layouts"]] == [2, 2]
    url = f"{server.url}/v1/sessions/{info['session_id']}"
    r = http.post(url + "/evaluate", json={"alpha": [[1.0] * 4], "beta": [[0.25] * 4]}, headers=_auth())
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "alpha[0]"
    assert http.delete(url, headers=_auth()).status_code == 200


@pytest.mark.slow
def test_export_is_provider_side(world, server, tmp_path):
    pool = load_pool(str(world / "adapter_*"), load_config_of(world))
    genome = {"adapters": ["adapter_1", "adapter_3"], "alpha": [0.5, 1.0], "beta": [0.3, -0.2], "prune": "A"}
    out = export_genome(world / "base", str(world / "adapter_*"), genome, tmp_path / "merged")
    merged = load_pool([out], load_config_of(world))
    assert merged.rank == pool.rank and (out / "evojax_merge.json").is_file()
    with pytest.raises(EvoMergeInputError, match="beta"):
        export_genome(world / "base", str(world / "adapter_*"), {**genome, "beta": [0.3, 9.0]}, tmp_path / "bad")
    routes = {getattr(r, "path", "") for r in server.app.routes}
    assert not any("export" in p for p in routes)


def load_config_of(world):
    from evojax_merge.models import load_config

    return load_config(world / "base")


# -- auth and validation -------------------------------------------------------------------------
def test_auth(server, http):
    assert http.get(server.url + "/v1/health").json()["status"] == "ok"  # no key needed
    for headers in ({}, _auth("wrong-key-0123456789"), {"Authorization": "Basic " + KEY_A}, {"X-API-Key": ""}):
        for method, path in (("GET", "/v1/pools"), ("GET", "/v1/sessions"), ("POST", "/v1/sessions"),
                             ("POST", "/v1/sessions/x/evaluate"), ("DELETE", "/v1/sessions/x"),
                             ("GET", "/v1/openapi.json")):
            r = http.request(method, server.url + path, headers=headers, content=b"{not json")
            assert r.status_code == 401, (method, path, headers, r.text)
    assert http.get(server.url + "/v1/pools", headers={"X-API-Key": KEY_B}).status_code == 200
    # a session is visible only to the key that made it
    sid = _session(http, server, KEY_A)["session_id"]
    ok = {"alpha": [[1.0] * 4], "beta": [[0.25] * 4]}
    for method, path, body in (("GET", "", None), ("POST", "/evaluate", ok), ("DELETE", "", None),
                               ("POST", "/generate", {"alpha": [1.0] * 4, "beta": [0.2] * 4, "prompts": ["x"]})):
        r = http.request(method, f"{server.url}/v1/sessions/{sid}{path}", json=body, headers=_auth(KEY_B))
        assert r.status_code == 404, (method, path, r.text)
    assert sid not in {s["session_id"] for s in http.get(server.url + "/v1/sessions", headers=_auth(KEY_B)).json()[
        "sessions"]}
    assert http.delete(f"{server.url}/v1/sessions/{sid}", headers=_auth(KEY_A)).status_code == 200
    assert http.delete(f"{server.url}/v1/sessions/{sid}", headers=_auth(KEY_A)).status_code == 404


def _evaluate_cases():
    row, half = [1.0] * 4, [0.25] * 4
    return [
        ({"alpha": [[1.0] * 3], "beta": [half]}, "alpha[0]"),  # vector length vs layout
        ({"alpha": [row], "beta": [half + [0.1]]}, "beta[0]"),
        ({"alpha": [row, [1.0] * 5], "beta": [half, half]}, "alpha[1]"),  # ragged
        ({"alpha": [[1.0, 1.0, 1.0, 1.2]], "beta": [half]}, "alpha"),  # out of bounds
        ({"alpha": [row], "beta": [[0.25, 0.25, -1.6, 0.25]]}, "beta"),
        ({"alpha": [row] * 9, "beta": [half] * 9}, "alpha"),  # population > max 8
        ({"alpha": [row, row], "beta": [half]}, "beta"),  # population sizes differ
        ({"alpha": [], "beta": []}, "alpha"),
        ({"alpha": [row], "beta": [half], "generation": -1}, "generation"),
        ({"alpha": [["a", 1, 1, 1]], "beta": [half]}, "alpha[0][0]"),
        ({"alpha": [row], "beta": [half], "populaton": 3}, "populaton"),  # unknown field
        ({"beta": [half]}, "alpha"),
    ]


def test_validation_failures_are_422_naming_the_field_and_change_nothing(server, http):
    sid = _session(http, server)["session_id"]
    url = f"{server.url}/v1/sessions/{sid}"
    good = {"alpha": [[1.0] * 4] * 4, "beta": [[0.25] * 4] * 4}
    assert http.post(url + "/evaluate", json=good, headers=_auth()).status_code == 200
    before = http.get(url, headers=_auth()).json()
    sessions_before = count_sessions(server.url, KEY_A)
    for body, field in _evaluate_cases():
        r = http.post(url + "/evaluate", json=body, headers=_auth())
        assert r.status_code == 422, (body, r.text)
        assert field in [d["field"] for d in r.json()["detail"]], (field, r.json())
    nan = b'{"alpha": [[1, 1, NaN, 1]], "beta": [[0.25, 0.25, 0.25, 0.25]]}'
    inf = b'{"alpha": [[1, 1, 1, 1]], "beta": [[0.25, Infinity, 0.25, 0.25]]}'
    for raw, field in ((nan, "alpha"), (inf, "beta")):
        r = http.post(url + "/evaluate", content=raw, headers={**_auth(), "content-type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == field and "finite" in r.text, r.text
    for raw in (b'{"alpha": [[1, 1', b"", b"[1, 2", b"null"):
        r = http.post(url + "/evaluate", content=raw, headers={**_auth(), "content-type": "application/json"})
        assert r.status_code == 422, (raw, r.text)
        assert r.json()["detail"][0]["field"] == "body", r.text
    r = http.post(url + "/evaluate", content=b'{"alpha": [[1, 1', headers={**_auth(), "content-type":
                                                                            "application/json"})
    assert "malformed JSON" in r.json()["detail"][0]["msg"]
    gen = {"alpha": [1.0] * 4, "beta": [0.2] * 4, "prompts": ["find the city"]}
    for patch, field in (({"prompts": ["x"] * 4}, "prompts"), ({"prompts": ["x" * 301]}, "prompts[0].instruction"),
                         ({"prompts": ["paris " * 49]}, "prompts[0]"),  # under 300 chars but > 40 tokens
                         ({"prompts": []}, "prompts"), ({"max_new_tokens": 9}, "max_new_tokens"),
                         ({"alpha": [1.0] * 3}, "alpha"), ({"beta": [0.2, 0.2, 0.2, 2.0]}, "beta"),
                         ({"prompts": [{"input": "no instruction"}]}, "prompts[0]")):
        r = http.post(url + "/generate", json={**gen, **patch}, headers=_auth())
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == field, (patch, r.text)
    assert http.get(url, headers=_auth()).json() == before  # nothing changed
    assert count_sessions(server.url, KEY_A) == sessions_before
    assert http.delete(url, headers=_auth()).status_code == 200


def test_session_creation_failures(server, http):
    url = server.url + "/v1/sessions"
    base = {"pool_id": "default", "records": RECORDS}
    long_answer = {"instruction": "x", "output": "paris " * 60}
    cases = [
        ({**base, "pool_id": "nope"}, "pool_id"),
        ({**base, "records": RECORDS * 3}, "records"),  # 36 > 32
        ({**base, "records": [{"instruction": "x" * 401, "output": "y"}]}, "records[0].instruction"),
        ({**base, "records": [RECORDS[0], {"instruction": "x"}]}, "records[1]"),
        ({**base, "records": [RECORDS[0], "text"]}, "records[1]"),
        ({**base, "records": []}, "records"),
        ({**base, "records": [long_answer]}, "records"),  # the answer alone is over max_len
        ({"pool_id": "default"}, "body"),
        ({**base, "dataset": "val"}, "body"),
        ({"pool_id": "default", "dataset": "nope"}, "dataset"),
        ({**base, "adapters": ["adapter_9"]}, "adapters[0]"),
        ({**base, "adapters": ["adapter_1", "adapter_1"]}, "adapters"),
        ({**base, "max_len": 4096}, "max_len"),
        ({**base, "prune": "C"}, "prune"),
        ({**base, "validation": {"batch_size": 0}}, "validation.batch_size"),
    ]
    before = count_sessions(server.url, KEY_A)
    for body, field in cases:
        r = http.post(url, json=body, headers=_auth())
        assert r.status_code == 422, (body, r.text)
        assert field in [d["field"] for d in r.json()["detail"]], (field, r.json())
    big = b'{"pool_id": "default", "records": [' + b'{"instruction": "x", "output": "y"},' * 10_000 + b"]}"
    assert http.post(url, content=big, headers={**_auth(), "content-type": "application/json"}).status_code == 413
    assert count_sessions(server.url, KEY_A) == before


def test_max_sessions_per_key(server, http):
    ids = [_session(http, server, KEY_B)["session_id"] for _ in range(SETTINGS.max_sessions_per_key)]
    r = http.post(server.url + "/v1/sessions", json={"pool_id": "default", "records": RECORDS}, headers=_auth(KEY_B))
    assert r.status_code == 429, r.text
    assert _session(http, server, KEY_A)["session_id"]  # other keys are unaffected
    for sid in ids:
        assert http.delete(f"{server.url}/v1/sessions/{sid}", headers=_auth(KEY_B)).status_code == 200
    assert count_sessions(server.url, KEY_B) == 0
    for s in http.get(server.url + "/v1/sessions", headers=_auth()).json()["sessions"]:
        http.delete(f"{server.url}/v1/sessions/{s['session_id']}", headers=_auth())


def test_client_errors(server, http):
    with pytest.raises(RemoteServiceError) as e:
        RemoteMergeService(server.url, "wrong-key-0123456789", "default", RECORDS, client=http)
    assert e.value.status == 401
    with pytest.raises(EvoMergeInputError, match="pool_id"):
        RemoteMergeService(server.url, KEY_A, "nope", RECORDS, client=http)
    with RemoteMergeService(server.url, KEY_A, "default", RECORDS, validation=VALIDATION, client=http) as remote:
        with pytest.raises(EvoMergeInputError, match="outside the bounds"):
            remote.evaluate(np.full((1, 4), 2.0), np.full((1, 4), 0.25))  # the server's message
        with pytest.raises(EvoMergeInputError, match="non-finite"):
            remote.evaluate(np.full((1, 4), np.nan), np.full((1, 4), 0.25))  # caught before sending
    assert list_pools(server.url, KEY_A)["pools"][0]["layouts"][1] == {"searched": "beta", "length": 4,
                                                                       "lower": -1.5, "upper": 1.5}
    assert health(server.url)["status"] == "ok"


def test_cli_export_and_loadtest(world, server, tmp_path, monkeypatch, capsys):
    from evojax_merge.service.__main__ import main

    (tmp_path / "genome.json").write_text(json.dumps({"alpha": [1.0, 0.5, 1.0, 1.0], "beta": [0.25] * 4}))
    common = ["--model", str(world / "base"), "--pool", str(world / "adapter_*")]
    assert main(["export", *common, "--genome", str(tmp_path / "genome.json"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    (tmp_path / "bad.json").write_text("{")
    assert main(["export", *common, "--genome", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x")]) == 2
    capsys.readouterr()
    monkeypatch.setenv("EVOJAX_MERGE_API_KEYS", KEY_B)
    assert main(["loadtest", "--url", server.url, "--dataset", "val", "--requests", "24", "--clients", "3",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["requests"] == 24 and report["errors"] == 0 and report["sessions_after"] == 0


def test_session_store_ttl_and_limits():
    now = [0.0]
    store = SessionStore(max_per_owner=2, ttl_s=10, clock=lambda: now[0])
    ids = [store.reserve("a"), store.reserve("a")]
    with pytest.raises(SessionLimitError):
        store.reserve("a")  # pending reservations count
    store.release(ids[1])
    store.commit(Session(ids[0], "a", "p", ("x",), None, None, "A", {}, 8))
    with pytest.raises(SessionNotFound):
        store.get("b", ids[0])  # another owner
    now[0] = 5.0
    assert store.get("a", ids[0]).id == ids[0]  # touching it renews it
    now[0] = 14.0
    assert store.get("a", ids[0]).id == ids[0]
    now[0] = 30.0
    with pytest.raises(SessionNotFound):
        store.get("a", ids[0])
    assert len(store) == 0


def test_keys_and_settings(tmp_path):
    assert parse_keys("# comment\na-key, b-key\n\nc-key") == ("a-key", "b-key", "c-key")
    (tmp_path / "keys").write_text(KEY_A + "\n")
    assert load_api_keys(tmp_path / "keys") == (KEY_A,)
    assert load_api_keys(environ={"EVOJAX_MERGE_API_KEYS": f"{KEY_A},{KEY_B}"}) == (KEY_A, KEY_B)
    with pytest.raises(EvoMergeInputError, match="no API keys"):
        ServiceSettings(api_keys=())
    with pytest.raises(EvoMergeInputError, match="shorter"):
        ServiceSettings(api_keys=("short",))


def test_requests_are_logged_without_their_data(server, http, caplog):
    with caplog.at_level(logging.INFO, logger="evojax_merge.service.access"):
        sid = _session(http, server)["session_id"]
        http.post(f"{server.url}/v1/sessions/{sid}/evaluate", headers=_auth(),
                  json={"alpha": [[0.123456] * 4] * 4, "beta": [[0.25] * 4] * 4})
        http.delete(f"{server.url}/v1/sessions/{sid}", headers=_auth())
    lines = [r.getMessage() for r in caplog.records if r.name == "evojax_merge.service.access"]
    assert any(line.startswith(f"POST /v1/sessions/{sid}/evaluate 200") and f"session={sid}" in line
               for line in lines), lines
    assert any(line.startswith("POST /v1/sessions 201") and f"session={sid}" in line for line in lines), lines
    text = "\n".join(lines)
    assert "0.123456" not in text and "lives in" not in text and KEY_A not in text


# -- load and leaks ------------------------------------------------------------------------------
@pytest.mark.slow
def test_load(server, shapes):
    report = run_loadtest(server.url, KEY_A, "default", RECORDS, requests=1000, clients=8, population=4,
                          matrix_shapes=shapes)
    print("\n[service load test]", report.summary())
    assert report.errors == 0, report.first_error
    assert report.requests == 1000 and report.sessions == 8
    assert report.sessions_after == report.sessions_before
    assert report.health_ok and report.matrix_leaks == 0
    assert len(server.app.state.sessions) == 0


def test_no_response_carries_an_adapter_matrix(server, provider, http, shapes):
    # the checker itself finds a real pool matrix
    a = np.asarray(next(iter(provider.pools["default"].stack.A.values())))
    assert matrix_leaks({"x": [1, {"y": a[0].tolist()}]}, shapes) and matrix_leaks(a.tolist(), shapes)
    # one call of every route (the hook walks each response), then the tally of the whole module
    seen_before = SEEN["responses"]
    sid = _session(http, server)["session_id"]
    url = f"{server.url}/v1/sessions/{sid}"
    http.get(server.url + "/v1/health")
    http.get(server.url + "/v1/pools", headers=_auth())
    http.get(server.url + "/v1/sessions", headers=_auth())
    http.get(url, headers=_auth())
    for path, body in (("/evaluate", {"alpha": [[1.0] * 4] * 4, "beta": [[0.25] * 4] * 4}),
                       ("/generate", {"alpha": [1.0] * 4, "beta": [0.2] * 4, "prompts": PROMPTS, "max_new_tokens": 5})):
        assert http.post(url + path, headers=_auth(), json=body).status_code == 200
    http.get(server.url + "/v1/openapi.json", headers=_auth())
    http.delete(url, headers=_auth())
    assert SEEN["responses"] >= seen_before + 9
    assert SEEN["leaks"] == []
