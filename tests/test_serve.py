"""`vaecf serve` on a real loopback port: answers equal `vaecf recommend` (alone and under 32
concurrent clients), every bad request gets its 4xx, a full queue gets 503, the API key is
enforced, SIGTERM drains, and `vaecf bench serve` runs end to end.

Servers are `python -m vaecf serve` subprocesses (what users run) or, where the test must hold
the model still, the same app under uvicorn in a thread; every one is stopped by its fixture or
context manager, and every request has a timeout.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from helpers import ML_SMALL

from vaecf.bench.serve import Server

TIMEOUT = 30
# Users of the bundled ratings (their movieIds rated >= 3.5 in the file), read once.
_USERS: dict[int, list[int]] = {}


def user_items(user: int) -> list[int]:
    if not _USERS:
        import pyarrow.csv as pacsv

        for row in pacsv.read_csv(ML_SMALL).to_pylist():
            if row["rating"] >= 3.5:
                _USERS.setdefault(row["userId"], []).append(row["movieId"])
    return _USERS[user]


@pytest.fixture(scope="session")
def serve_run(runs) -> Path:
    """The small int-id run the recommend tests use (trained once per session, conftest)."""
    return runs["int"]


@pytest.fixture(scope="module")
def server(serve_run):
    """`vaecf serve` in a subprocess on a free port, stopped after the module."""
    with Server(serve_run, ["--max-batch", "64", "--top-k", "10"]) as running:
        yield running


@pytest.fixture(scope="module")
def recommender(serve_run):
    from vaecf.serving.recommender import Recommender

    return Recommender.from_run(serve_run)


def expected(recommender, items: list, k: int = 10, exclude_seen: bool = True) -> dict:
    """What `vaecf recommend --user-items` computes for one user, in the server's shape: the
    same parsing and scoring calls, scores rounded to 6 decimals as its JSON output."""
    from vaecf.serving.items import request_from_items
    from vaecf.serving.recommender import score_request

    request = request_from_items(",".join(map(str, items)), recommender.item_map)
    recs = score_request(recommender, request, k, exclude_seen)
    return {"items": recs.items[0], "scores": [round(float(s), 6) for s in recs.scores[0]],
            "unknown": request.unknown}


def assert_same_answer(got: dict, want: dict) -> None:
    """Equal items and unknown ids; scores equal to float32 rounding. A batch of many users and a
    batch of one sum the matmuls in another order (|difference| <= 4e-6 measured), so two items
    whose scores differ by less than that may trade places."""
    assert got["unknown"] == want["unknown"]
    assert len(got["items"]) == len(want["items"])
    assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)
    for position, (a, b) in enumerate(zip(got["items"], want["items"], strict=True)):
        if a != b:  # only a near-tie may swap
            other = want["items"].index(a)
            assert abs(want["scores"][other] - want["scores"][position]) <= 1e-5, (got, want)


def post(url: str, path: str, body: object, **kwargs) -> httpx.Response:
    content = body if isinstance(body, str | bytes) else json.dumps(body)
    return httpx.post(url + path, content=content, timeout=TIMEOUT, **kwargs)


def test_answers_equal_vaecf_recommend(server, serve_run, cli):
    for items, k, exclude in ([user_items(1), 10, True], [user_items(7)[:5], 25, True],
                              [[1, "260", " 1196 ", "nosuch", 99999999, 1, "+2", "0260",
                                "99999999999999999999999"], 10, True],
                              [user_items(68), 7, False]):
        response = post(server.url, "/v1/recommend",
                        {"items": items, "k": k, "exclude_seen": exclude})
        assert response.status_code == 200, response.text
        got = response.json()
        args = ["--user-items", ",".join(str(i).strip() for i in items), "--top-k", k]
        result = cli("recommend", "--run", serve_run, *args, "--format", "json",
                     *([] if exclude else ["--include-seen"]))
        assert result.code == 0, result.err
        doc = json.loads(result.out)
        want = {"items": [r["item"] for r in doc["recommendations"]],
                "scores": [r["score"] for r in doc["recommendations"]],
                "unknown": doc["unknown_items"]}
        assert_same_answer(got, want)
        assert all(isinstance(i, int) for i in got["items"])
    assert got["unknown"] == [] and set(got["items"]) & set(user_items(68))  # include seen


def concurrent_answers(url: str, todo: list[int], clients: int = 32) -> list[tuple[int, dict]]:
    """POST /v1/recommend for every user in ``todo`` from ``clients`` concurrent clients, each
    over a connection of its own: (user, answer) pairs, in the order answered."""
    todo, answers = list(todo), []

    async def one_client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
            while todo:
                user = todo.pop()
                response = await client.post("/v1/recommend", json={"items": user_items(user)})
                assert response.status_code == 200, response.text
                answers.append((user, response.json()))

    async def all_clients() -> None:
        await asyncio.gather(*(one_client() for _ in range(clients)))

    asyncio.run(all_clients())
    return answers


def test_answers_under_32_concurrent_clients_equal_single_user_calls(server, recommender):
    user_items(1)
    users = sorted(_USERS)[:64]
    wants = {u: expected(recommender, user_items(u), 10) for u in users}
    before = httpx.get(server.url + "/metrics", timeout=TIMEOUT).text
    answers = concurrent_answers(server.url, [u for u in users for _ in range(3)])
    assert sorted(user for user, _ in answers) == sorted(users * 3)
    for user, got in answers:
        assert_same_answer(got, wants[user])
    # They were batched: fewer model calls than requests.
    after = httpx.get(server.url + "/metrics", timeout=TIMEOUT).text
    calls = _value(after, "vaecf_batch_size_users_count") - _value(
        before, "vaecf_batch_size_users_count")
    assert 0 < calls < 3 * len(users)


def _value(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_batch_endpoint_answers_each_user_as_alone(server, recommender):
    users = [1, 7, 68, 414]
    response = post(server.url, "/v1/recommend:batch",
                    {"users": [{"items": user_items(u)} for u in users], "k": 12})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(users)
    for user, got in zip(users, results, strict=True):
        assert_same_answer(got, expected(recommender, user_items(user), 12))


TOO_MANY_ITEMS = {"items": list(range(10_001))}


@pytest.mark.parametrize(("body", "status", "names"), [
    ('{"items": [1, 260', 400, "malformed JSON"),
    ("", 400, "the request needs a JSON body"),
    ("[1, 2]", 400, "JSON object"),
    ({"items": []}, 422, "items"),
    (TOO_MANY_ITEMS, 422, "items"),
    ({"items": "1,260"}, 422, "items"),
    ({"items": [1.5]}, 422, "items[0]"),
    ({"items": [1, True]}, 422, "items[1]"),
    ({"items": [1, None]}, 422, "items[1]"),
    ({"items": ["  "]}, 422, "empty"),
    ({"items": [1 << 70]}, 422, "64-bit"),
    ({"items": [1], "k": 0}, 422, "k"),
    ({"items": [1], "k": 1001}, 422, "k"),
    ({"items": [1], "k": "5"}, 422, "k"),
    ({"items": [1], "exclude_seen": "yes"}, 422, "exclude_seen"),
    ({"items": [1], "colour": "red"}, 422, "colour"),
    ({"items": ["nosuch", 99999999]}, 422, "none of the 2 item id(s) is known"),
])
def test_bad_requests_get_a_4xx_naming_the_problem(server, body, status, names):
    response = post(server.url, "/v1/recommend", body)
    assert response.status_code == status, response.text
    assert names in response.json()["error"]


def test_bad_batch_requests_and_oversized_bodies(server):
    response = post(server.url, "/v1/recommend:batch",
                    {"users": [{"items": [1]}, {"items": ["nosuch"]}]})
    assert response.status_code == 422 and "users[1].items" in response.json()["error"]
    assert post(server.url, "/v1/recommend:batch", {"users": []}).status_code == 422
    response = post(server.url, "/v1/recommend", b"[" + b"1," * 600_000 + b"1]")
    assert response.status_code == 413 and "larger than" in response.json()["error"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(300):
            yield b" " * 10_000

    response = httpx.post(server.url + "/v1/recommend", content=chunks(), timeout=TIMEOUT)
    assert response.status_code == 413
    assert httpx.get(server.url + "/v1/recommend", timeout=TIMEOUT).status_code == 405
    assert httpx.get(server.url + "/nowhere", timeout=TIMEOUT).json() == {"error": "Not Found"}
    # The server is still fine.
    assert post(server.url, "/v1/recommend", {"items": [1, 260]}).status_code == 200


def test_model_probes_metrics_and_openapi(server, serve_run):
    model = httpx.get(server.url + "/v1/model", timeout=TIMEOUT).json()
    run = json.loads((serve_run / "run.json").read_text())
    assert (model["kind"], model["model"]) == ("Mult-VAE", "multvae")
    assert model["arguments"] == {k: v for k, v in run["model"].items() if k != "name"}
    assert (model["hidden"], model["latent"]) == (run["model"]["hidden"], run["model"]["latent"])
    assert model["items"] == run["model"]["n_items"]
    assert model["dataset_fingerprint"] == run["dataset"]["fingerprint"]
    assert model["best_epoch"] == run["best"]["epoch"]
    assert model["metrics"] == run["best"]["metrics"]
    assert model["serving"]["max_batch"] == 64 and model["precision"] == "fp32"
    assert httpx.get(server.url + "/healthz", timeout=TIMEOUT).json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz", timeout=TIMEOUT).status_code == 200
    metrics = httpx.get(server.url + "/metrics", timeout=TIMEOUT).text
    for name in ('vaecf_http_requests_total{endpoint="/v1/recommend",status="200"}',
                 'vaecf_http_request_duration_seconds_bucket{endpoint="/v1/recommend"',
                 "vaecf_batch_size_users_bucket", "vaecf_queue_depth"):
        assert name in metrics
    schema = httpx.get(server.url + "/openapi.json", timeout=TIMEOUT).json()
    assert {"/v1/recommend", "/v1/recommend:batch", "/v1/model", "/healthz", "/readyz",
            "/metrics"} <= set(schema["paths"])
    body = schema["paths"]["/v1/recommend"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("/RecommendRequest")
    assert "items" in schema["components"]["schemas"]["RecommendRequest"]["properties"]


@contextmanager
def app_on_a_thread(app):
    """The app under uvicorn on a free loopback port, in a thread; stopped on exit."""
    import uvicorn

    from vaecf.serving.http import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        sock.close()


def _held_app(serve_run, precision: str = "fp32", **config):
    """The real app over a recommender whose model calls wait for ``gate``."""
    from vaecf.model.rundir import RunDir
    from vaecf.serving.http import ServeConfig, create_app, model_info
    from vaecf.serving.items import ItemMap
    from vaecf.serving.recommender import Recommender

    entered, gate = threading.Event(), threading.Event()

    class Held(Recommender):
        def top_k(self, *args, **kwargs):
            entered.set()
            assert gate.wait(TIMEOUT)
            return super().top_k(*args, **kwargs)

    run = RunDir.open(serve_run)
    held = Held(run.load_model(), ItemMap(run.item_ids), precision)
    return create_app(held, model_info(run, held), ServeConfig(**config)), entered, gate


def test_a_full_queue_answers_503_with_retry_after(serve_run):
    app, entered, gate = _held_app(serve_run, max_batch=1, max_queue=1)
    with app_on_a_thread(app) as url:
        results: dict[str, httpx.Response] = {}

        def send(name: str) -> threading.Thread:
            thread = threading.Thread(target=lambda: results.__setitem__(
                name, post(url, "/v1/recommend", {"items": [1, 260]})))
            thread.start()
            return thread

        first = send("first")  # taken by the worker, which then waits on the gate
        assert entered.wait(TIMEOUT)
        second = send("second")  # waits in the queue, which is now full
        deadline = time.monotonic() + TIMEOUT
        while _value(httpx.get(url + "/metrics", timeout=TIMEOUT).text,
                     "vaecf_queue_depth") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        third = post(url, "/v1/recommend", {"items": [1, 260]})
        assert third.status_code == 503
        assert third.headers["retry-after"] == "1" and "busy" in third.json()["error"]
        gate.set()
        first.join(TIMEOUT)
        second.join(TIMEOUT)
        assert results["first"].status_code == results["second"].status_code == 200
        assert post(url, "/v1/recommend", {"items": [1, 260]}).status_code == 200
        assert 'status="503"' in httpx.get(url + "/metrics", timeout=TIMEOUT).text


def test_api_key_is_enforced(serve_run):
    app, _, gate = _held_app(serve_run, api_key="s3cret-key")
    gate.set()
    with app_on_a_thread(app) as url:
        body = {"items": [1, 260]}
        assert post(url, "/v1/recommend", body).status_code == 401
        wrong = post(url, "/v1/recommend", body, headers={"Authorization": "Bearer s3cret"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert "API key" in wrong.json()["error"]
        basic = post(url, "/v1/recommend", body, headers={"Authorization": "Basic s3cret-key"})
        assert basic.status_code == 401
        good = {"Authorization": "Bearer s3cret-key"}
        assert post(url, "/v1/recommend", body, headers=good).status_code == 200
        for path in ("/v1/model", "/metrics"):
            assert httpx.get(url + path, timeout=TIMEOUT).status_code == 401
            assert httpx.get(url + path, headers=good, timeout=TIMEOUT).status_code == 200
        for path in ("/healthz", "/readyz", "/openapi.json"):
            assert httpx.get(url + path, timeout=TIMEOUT).status_code == 200


def test_bf16_weights_answer_as_vaecf_recommend_precision_bf16(serve_run, cli):
    app, _, gate = _held_app(serve_run, "bf16")
    gate.set()
    items = user_items(1)
    with app_on_a_thread(app) as url:
        assert httpx.get(url + "/v1/model", timeout=TIMEOUT).json()["precision"] == "bf16"
        got = post(url, "/v1/recommend", {"items": items, "k": 10}).json()
    doc = json.loads(cli("recommend", "--run", serve_run, "--user-items",
                         ",".join(map(str, items)), "--precision", "bf16", "--format",
                         "json").out)
    assert_same_answer(got, {"items": [r["item"] for r in doc["recommendations"]],
                             "scores": [r["score"] for r in doc["recommendations"]],
                             "unknown": doc["unknown_items"]})


def test_a_recvae_run_serves_too(small_dataset, tmp_path, cli):
    run = tmp_path / "recvae"
    trained = cli("train", "--data", small_dataset, "--out", run, "--model", "recvae",
                  "--epochs", "1", "--batch-size", "100", "--hidden", "32", "--latent", "8",
                  "--backend", "cpu", "--quiet")
    assert trained.code == 0, trained.err
    app, _, gate = _held_app(run)
    gate.set()
    items = user_items(7)
    with app_on_a_thread(app) as url:
        model = httpx.get(url + "/v1/model", timeout=TIMEOUT).json()
        assert (model["kind"], model["model"], model["hidden"]) == ("RecVAE", "recvae", 32)
        got = post(url, "/v1/recommend", {"items": items, "k": 10}).json()
    doc = json.loads(cli("recommend", "--run", run, "--user-items", ",".join(map(str, items)),
                         "--format", "json").out)
    assert_same_answer(got, {"items": [r["item"] for r in doc["recommendations"]],
                             "scores": [r["score"] for r in doc["recommendations"]],
                             "unknown": doc["unknown_items"]})


@pytest.mark.parametrize(("args", "message"), [
    (["--host", "0.0.0.0"], "--api-key-env NAME"),
    (["--host", "0.0.0.0", "--api-key-env", "VAECF_NO_SUCH_VARIABLE"], "is not set"),
    (["--api-key-env", "X", "--no-auth"], "not both"),
    (["--top-k", "100000"], "--top-k"),
    (["--precision", "int8"], "--precision"),
    (["--workers", "0"], "--workers 0: must be from 1 to 64"),
    (["--max-wait-ms", "nan"], "--max-wait-ms nan: must be from 0 to 1000"),
    (["--max-wait-ms", "inf"], "--max-wait-ms inf: must be from 0 to 1000"),
    (["bench", "--client", "curl"], "'curl' is not one of 'httptools', 'h11', 'httpx'"),
])
def test_command_line_mistakes_are_one_line_exit_2(serve_run, cli, args, message):
    command = ["bench", "serve"] if args[0] == "bench" else ["serve"]
    result = cli(*command, "--run", serve_run, *args[len(command) - 1:])
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.err


def test_a_port_in_use_is_one_line_exit_2(serve_run, cli):
    from vaecf.serving.http import bind

    taken = bind("127.0.0.1", 0)
    try:
        result = cli("serve", "--run", serve_run, "--port", taken.getsockname()[1])
    finally:
        taken.close()
    assert result.code == 2 and "cannot listen on 127.0.0.1:" in result.err


def test_not_a_run_is_one_line_exit_2(tmp_path, cli):
    result = cli("serve", "--run", tmp_path)
    assert result.code == 2 and "not a vaecf run directory" in result.err


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_real_server_takes_its_key_from_the_environment_and_drains_on_sigterm(serve_run, stop):
    """SIGHUP (the terminal or ssh session closed) drains as SIGTERM does."""
    key = {"Authorization": "Bearer k-123"}
    with Server(serve_run, ["--max-batch", "1", "--api-key-env", "VAECF_TEST_KEY"],
                env={"VAECF_TEST_KEY": "k-123"}) as running:
        assert "auth: API key from $VAECF_TEST_KEY" in "".join(running.stdout)
        assert post(running.url, "/v1/recommend", {"items": [1]}).status_code == 401
        assert post(running.url, "/v1/recommend", {"items": [1]}, headers=key).status_code == 200

        # One model call per user (--max-batch 1), 600 users in one request: in flight for a
        # while, and still answered in full after SIGTERM.
        body = {"users": [{"items": user_items(1 + i % 50)} for i in range(600)], "k": 5}
        answer: dict[str, object] = {}

        def call() -> None:
            try:
                answer["response"] = post(running.url, "/v1/recommend:batch", body,
                                          headers=key)
            except httpx.HTTPError as error:
                answer["response"] = error
            answer["at"] = time.monotonic()

        thread = threading.Thread(target=call)
        thread.start()
        deadline = time.monotonic() + TIMEOUT
        # Wait until the request is being scored (its users fill the queue).
        while _value(httpx.get(running.url + "/metrics", headers=key, timeout=TIMEOUT).text,
                     "vaecf_queue_depth") < 1:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.005)
        running.process.send_signal(stop)
        signalled = time.monotonic()
        thread.join(TIMEOUT)
        code = running.process.wait(TIMEOUT)
        response = answer["response"]
        assert isinstance(response, httpx.Response), response
        assert response.status_code == 200 and len(response.json()["results"]) == 600
        assert answer["at"] > signalled  # it was in flight when the signal came
        assert code == 0, "".join(running.stderr)
        assert "finishing the requests in flight" in "".join(running.stdout)
        with pytest.raises(httpx.ConnectError):
            httpx.get(running.url + "/healthz", timeout=TIMEOUT)


def test_a_failed_model_call_is_a_json_500_and_the_server_goes_on(serve_run):
    from vaecf.model.rundir import RunDir
    from vaecf.serving.http import ServeConfig, create_app, model_info
    from vaecf.serving.items import ItemMap
    from vaecf.serving.recommender import Recommender

    class Failing(Recommender):
        def top_k(self, seen, *args, **kwargs):
            if seen.shape[0] == 1 and seen.indices.size == 1:  # the user with one item fails
                raise RuntimeError("the model broke")
            return super().top_k(seen, *args, **kwargs)

    run = RunDir.open(serve_run)
    failing = Failing(run.load_model(), ItemMap(run.item_ids))
    with app_on_a_thread(create_app(failing, model_info(run, failing), ServeConfig())) as url:
        broken = post(url, "/v1/recommend", {"items": [1]})
        assert broken.status_code == 500
        assert broken.json() == {"error": "internal server error"}
        assert post(url, "/v1/recommend", {"items": [1, 260]}).status_code == 200
        metrics = httpx.get(url + "/metrics", timeout=TIMEOUT).text
    assert _value(metrics, 'vaecf_http_requests_total{endpoint="/v1/recommend",status="500"}') == 1


@pytest.mark.parametrize(("client", "workers", "relative"),
                         [("h11", 1, True), ("httptools", 1, False), ("httptools", 2, False)])
def test_bench_serve_runs_end_to_end(serve_run, tmp_path, cli, client, workers, relative,
                                     monkeypatch):
    out = tmp_path / "serve.json"
    if relative:   # the server child runs elsewhere: a relative --run must still be found
        monkeypatch.chdir(serve_run.parent)
    run = Path(serve_run.name) if relative else serve_run
    result = cli("bench", "serve", "--run", run, "--concurrency", "1,4",
                 "--requests", "60", "--client", client, "--workers", workers, "--json", out)
    assert result.code == 0, result.err
    r = json.loads(out.read_text())
    assert r["client"] == client
    assert r["server_args"][-2:] == ["--workers", str(workers)]
    assert [level["concurrency"] for level in r["levels"]] == [1, 4]
    for level in r["levels"]:
        assert level["requests"] == 60 and level["errors"] == 0
        assert level["requests_per_s"] == pytest.approx(60 / level["seconds"], rel=1e-6)
        assert level["mean_batch_size"] >= 1
    assert r["server_exit_code"] == 0
    assert r["empty_round_trip_ms"]["p50"] > 0 and r["in_process_one_user_ms"]["p50"] > 0
    assert r["rss_mb"]["after"] > 0
    assert "requests/s" in result.err  # Rich output goes to stderr, as in every command


def test_item_ids_map_the_same_through_the_dict_and_through_index_in():
    """ItemMap.columns looks small inputs up in a dict and large ones with pc.index_in."""
    import numpy as np
    import pyarrow as pa

    from vaecf.serving.items import SMALL_LOOKUP, ItemMap

    rng = np.random.default_rng(0)
    for ids in (pa.array(np.arange(1000, 1500, dtype=np.int64)),
                pa.array([f"m{i}" for i in range(1000, 1500)])):
        item_map = ItemMap(ids)
        tokens = [str(v) for v in rng.integers(900, 1600, 300)]
        tokens += [f"m{v}" for v in rng.integers(900, 1600, 300)]
        tokens += [" 1200", "+1201", "01202", "-0", "1e3", "", "x", "9" * 25, "-" + "9" * 19]
        small = item_map.columns(pa.array(tokens))
        large = item_map.columns(pa.array(tokens * (SMALL_LOOKUP // len(tokens) + 1)))
        np.testing.assert_array_equal(large[: len(tokens)], small)
        assert (small >= 0).any() and (small < 0).any()


def test_a_second_ctrl_c_stops_at_once_without_a_traceback(serve_run):
    """The first Ctrl-C drains; a second one, with a long request still in flight, stops the
    server at once: exit 130, one line, no traceback."""
    with Server(serve_run, ["--max-batch", "1"]) as running:
        body = {"users": [{"items": user_items(1 + i % 50)} for i in range(600)], "k": 5}
        thread = threading.Thread(target=lambda: _ignore_errors(
            lambda: post(running.url, "/v1/recommend:batch", body)))
        thread.start()
        deadline = time.monotonic() + TIMEOUT
        while _value(httpx.get(running.url + "/metrics", timeout=TIMEOUT).text,
                     "vaecf_queue_depth") < 1:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.005)
        running.process.send_signal(signal.SIGINT)
        time.sleep(0.3)
        assert running.process.poll() is None, "the first Ctrl-C did not drain"
        running.process.send_signal(signal.SIGINT)
        code = running.process.wait(TIMEOUT)
        thread.join(TIMEOUT)
    err = "".join(running.stderr)
    assert code == 130, err
    assert "second Ctrl-C; stopped without finishing" in err and "Traceback" not in err


def test_sigterm_while_loading_is_one_line(serve_run):
    import subprocess
    import sys

    from helpers import ROOT

    child = subprocess.Popen([sys.executable, "-m", "vaecf", "serve", "--run", str(serve_run),
                              "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=ROOT)
    # TensorFlow's library mapped: the command is past its checks and loading the model.
    maps = Path(f"/proc/{child.pid}/maps")
    deadline = time.monotonic() + TIMEOUT
    while "libtensorflow" not in maps.read_text():
        assert time.monotonic() < deadline and child.poll() is None, child.communicate()
        time.sleep(0.01)
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=TIMEOUT)
    assert "listening on" not in out, "the signal came after loading"
    assert child.returncode == 128 + signal.SIGTERM, err
    assert err.strip() == "vaecf serve: SIGTERM while loading; stopped", err


def _ignore_errors(call) -> None:
    """Run ``call``; the server stopping under it is what the test wants."""
    import contextlib

    with contextlib.suppress(httpx.HTTPError):
        call()
