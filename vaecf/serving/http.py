"""``vaecf serve``: a trained run behind an HTTP/JSON API (FastAPI on uvicorn).

Endpoints (the OpenAPI schema is at ``/openapi.json``, browsable at ``/docs``):

- ``POST /v1/recommend`` ``{"items": [...], "k": 10, "exclude_seen": true}`` →
  ``{"items": [...], "scores": [...], "unknown": [...]}``: one user, as
  ``vaecf recommend --user-items`` (same parsing, same scoring call, scores rounded to 6 decimals
  as its JSON output);
- ``POST /v1/recommend:batch`` ``{"users": [{"items": [...]}, ...], "k": 10, "exclude_seen":
  true}`` → ``{"results": [...]}`` one answer per user, in order;
- ``GET /v1/model``: model kind and sizes, item count, dataset fingerprint, best epoch, metrics;
- ``GET /healthz`` (the process answers), ``GET /readyz`` (model loaded and warmed, not
  shutting down), ``GET /metrics`` (Prometheus text format).

Every user goes through the :class:`vaecf.serving.batcher.Batcher`, so concurrent requests share
model calls. The two POST endpoints are answered by :class:`Service` itself (see
:class:`Recommend`), the other paths by FastAPI. Errors are JSON ``{"error": "..."}``: 400
malformed JSON, 401 missing or wrong API key, 404/405 unknown path or method, 413 body over
:data:`MAX_BODY_BYTES`, 422 a field with a wrong type or out of range, or a user none of whose
items the model knows, 503 (with ``Retry-After``) queue full, 500 a failed model call.

When an API key is set, every path except ``/healthz``, ``/readyz``, ``/docs`` and
``/openapi.json`` needs ``Authorization: Bearer KEY``, compared in constant time.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from vaecf.errors import VaecfError
from vaecf.serving.batcher import Batcher, Job, Overloaded, score_jobs
from vaecf.serving.items import ItemMap, known_columns
from vaecf.serving.recommender import Recommender

MAX_BODY_BYTES = 1 << 20
MAX_ITEMS_PER_USER = 10_000
MAX_USERS_PER_REQUEST = 1_000
MAX_K = 1_000
MAX_ID_CHARS = 256
RETRY_AFTER_S = 1
# Paths anyone may read when an API key is set (probes and the API's own description).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/openapi.json", "/docs/oauth2-redirect"})
ENDPOINTS = ("/v1/recommend", "/v1/recommend:batch", "/v1/model", "/healthz", "/readyz",
             "/metrics")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
                   0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
INT64 = (-(1 << 63), (1 << 63) - 1)


# An item id: an integer in int64 or a non-empty string, trimmed as --user-items trims (checked
# by pydantic's core, not Python code per item: ~40 us for 180 ids).
ItemId = (Annotated[StrictInt, Field(ge=INT64[0], le=INT64[1])]
          | Annotated[StrictStr, StringConstraints(strip_whitespace=True, min_length=1,
                                                   max_length=MAX_ID_CHARS)])
_UNION_TAGS = frozenset({"constrained-int", "constrained-str", "int", "str"})
Items = Annotated[list[ItemId], Field(
    min_length=1, max_length=MAX_ITEMS_PER_USER,
    description="Original ids of the items the user interacted with (integers or strings, as "
    "in the training input).", examples=[[1, 260, 1196]])]
K = Annotated[StrictInt | None, Field(
    ge=1, le=MAX_K, description="Items to return (default: the server's --top-k; at most "
    f"{MAX_K} and the model's item count).")]
ExcludeSeen = Annotated[StrictBool, Field(
    description="Never recommend the user's own items.")]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: Items
    k: K = None
    exclude_seen: ExcludeSeen = True


class BatchUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: Items


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    users: Annotated[list[BatchUser], Field(min_length=1, max_length=MAX_USERS_PER_REQUEST)]
    k: K = None
    exclude_seen: ExcludeSeen = True


class Recommendation(BaseModel):
    items: list[int | str] = Field(description="Recommended original item ids, best first.")
    scores: list[float] = Field(description="Their scores (decoder logits), 6 decimals.")
    unknown: list[str] = Field(description="Given ids the model does not know (skipped).")


class BatchResponse(BaseModel):
    results: list[Recommendation]


class ErrorResponse(BaseModel):
    error: str


ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 413, 422, 503)}


@dataclass
class ServeConfig:
    """What ``vaecf serve`` was asked for (see its --help)."""

    max_batch: int = 256
    max_wait_ms: float = 2.0
    max_queue: int = 1024
    top_k: int = 10
    api_key: str | None = None


@dataclass
class ServeState:
    """The running service: its batcher (None until the app has started) and whether it is
    shutting down."""

    batcher: Batcher | None = None
    draining: bool = False


class Metrics:
    """Prometheus series in a registry of their own (one per app).

    Under ``vaecf serve --workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set by the supervisor,
    :mod:`vaecf.serving.workers`) every worker writes its values to files in that directory and
    a scrape, whichever worker answers it, sums them over all workers (prometheus-client's
    multiprocess mode): the queue depth over the live workers, counters and histograms over
    every worker that ever ran.
    """

    def __init__(self, max_batch: int) -> None:
        import os

        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.shared_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.requests = Counter("vaecf_http_requests", "HTTP requests answered.",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("vaecf_http_request_duration_seconds",
                                 "Time from request to the end of the response.", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, max_batch})
        self.batch_size = Histogram("vaecf_batch_size_users", "Users per model call.",
                                    buckets=[s for s in sizes if s <= max_batch],
                                    registry=self.registry)
        self.batch_seconds = Histogram("vaecf_batch_duration_seconds",
                                       "Time of one model call (scoring, top-k, id mapping).",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        # Set by the batcher as users come and go (a callback gauge cannot be summed over
        # processes).
        self.queue_depth = Gauge("vaecf_queue_depth", "Users waiting for a model call.",
                                 registry=self.registry, multiprocess_mode="livesum")
        # The labelled children, looked up once each: labels() checks its arguments and takes
        # the metric's lock on every call.
        self._counted: dict[tuple[str, int], Any] = {}
        self._timed: dict[str, Any] = {}

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        counter = self._counted.get((endpoint, status))
        if counter is None:
            counter = self._counted[endpoint, status] = self.requests.labels(endpoint,
                                                                             str(status))
        latency = self._timed.get(endpoint)
        if latency is None:
            latency = self._timed[endpoint] = self.latency.labels(endpoint)
        counter.inc()
        latency.observe(seconds)

    def observe_batch(self, users: int, seconds: float) -> None:
        self.batch_size.observe(users)
        self.batch_seconds.observe(seconds)

    def text(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        if self.shared_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, self.shared_dir)
        return generate_latest(registry)


ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]
# What an endpoint answered by :class:`Service` itself gives: (status, JSON document, extra
# headers or None).
Answer = tuple[int, Any, dict[str, str] | None]
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# As Starlette's JSONResponse writes JSON (compact, UTF-8, no NaN), without its Response object.
_encode_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False,
                                separators=(",", ":")).encode
_log = logging.getLogger("uvicorn.error")


async def _send_json(send: Callable, status: int, document: Any,
                     headers: dict[str, str] | None = None) -> int:
    """Send ``document`` as the whole JSON response; returns ``status``."""
    body = _encode_json(document).encode()
    raw = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    if headers:
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
    return status


class Service:
    """The ASGI app ``vaecf serve`` runs: in front of every request it counts and times it for
    /metrics, checks the API key, and refuses bodies over ``max_body`` bytes before they are
    parsed (by Content-Length, or by counting a chunked body; bodies are read as JSON whatever
    their Content-Type). ``direct`` endpoints (the two POST /v1/recommend paths) are answered
    here, as functions of the body; every other path goes on to ``app`` (FastAPI), whose
    middleware, routing and request objects cost more than the rest of a recommend request's
    HTTP handling together (see docs/serving-http.md).

    Attributes:
        state: the running service (batcher, draining), set by the app's lifespan.
    """

    def __init__(self, app: ASGIApp, state: ServeState, metrics: Metrics, api_key: str | None,
                 direct: dict[str, Callable[[bytes], Awaitable[Answer]]],
                 max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.state = state
        self.metrics = metrics
        self.api_key = api_key.encode() if api_key else None
        self.direct = direct
        self.max_body = max_body

    def _authorized(self, scope: dict) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(),
                                                                           self.api_key)
        return False

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":   # lifespan
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope["path"]
        status = 499  # the client went away before an answer started
        try:
            if self.api_key is not None and path not in OPEN_PATHS \
                    and not self._authorized(scope):
                status = await _send_json(send, 401, {"error": "missing or wrong API key: send "
                                          "'Authorization: Bearer KEY'"},
                                          {"www-authenticate": "Bearer"})
                return
            body = None
            if scope["method"] in BODY_METHODS:
                body = await self._read_body(scope, receive)
                if body is None:
                    status = await _send_json(send, 413, {"error": "request body is larger "
                                              f"than {self.max_body:,} bytes"})
                    return
            endpoint = self.direct.get(path)
            if endpoint is None:
                async def counted_send(message: dict) -> None:
                    nonlocal status
                    if message["type"] == "http.response.start":
                        status = message["status"]
                    await send(message)

                await self.app(scope, receive if body is None else _replay(body, receive),
                               counted_send)
            elif scope["method"] != "POST":
                status = await _send_json(send, 405, {"error": "Method Not Allowed"},
                                          {"allow": "POST"})
            else:
                status = await _send_json(send, *await endpoint(body))
        finally:
            self.metrics.observe_request(path if path in ENDPOINTS else "other", status,
                                         time.perf_counter() - start)

    async def _read_body(self, scope: dict, receive: Callable) -> bytes | None:
        """The whole body, or None when it is over the limit."""
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _replay(body: bytes, receive: Callable) -> Callable:
    """An ASGI receive that gives ``body`` once, then waits on the real one (disconnects)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _error_location(loc: tuple) -> str:
    """("users", 2, "items", 0) -> "users[2].items[0]"."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _item_problem(value: Any, errors: list[dict]) -> str:
    """One message for an item id that matched neither branch of :data:`ItemId`."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"item id {value} is outside the 64-bit integer range"
    if isinstance(value, str):
        for error in errors:
            if error["type"].startswith("string_"):
                return ("an item id is an empty string" if error["type"] == "string_too_short"
                        else f"an item id is longer than {MAX_ID_CHARS} characters")
    return (f"an item id is an integer or a string, not {type(value).__name__} "
            f"{json.dumps(value)[:40]}")


def _validation_message(errors: list[dict]) -> tuple[int, str]:
    """(status, one line) for pydantic's errors of a request body: 400 for unparsable JSON or a
    body that is not an object, else 422 naming the first field at fault."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return 400, f"malformed JSON: {detail}".rstrip(": ")
    loc = tuple(first.get("loc", ()))
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    count = len(errors)
    if loc and loc[-1] in _UNION_TAGS:
        # An item id fails both branches of the union: one problem, one message.
        loc = loc[:-1]
        same = [e for e in errors if tuple(e["loc"])[:-1] == loc]
        msg, count = _item_problem(first.get("input"), same), count - len(same) + 1
    location = _error_location(loc)
    if location == "body":
        return 400, f"the body must be a JSON object: {msg}"
    more = f" (and {count - 1} more problem(s))" if count > 1 else ""
    return 422, f"{location}: {msg}{more}"


def model_info(run: Any, recommender: Recommender) -> dict[str, Any]:
    """What ``GET /v1/model`` answers, from the run directory."""
    from vaecf.model.registry import MODELS

    model = recommender.model
    best = run.best or {}
    return {
        "kind": MODELS[run.model_name].title,
        "model": run.model_name,
        "items": recommender.item_map.n_items,
        "hidden": int(model.hidden),
        "latent": int(model.latent),
        "arguments": {k: v for k, v in run.meta["model"].items() if k != "name"},
        "item_id_type": str(recommender.item_map.ids.type),
        "precision": getattr(recommender, "precision", "fp32"),
        "dataset_fingerprint": run.dataset_fingerprint,
        "train_users": run.meta["dataset"].get("train_users"),
        "status": run.status,
        "created": run.meta.get("created"),
        "best_epoch": best.get("epoch"),
        "best_step": best.get("step"),
        "metrics": best.get("metrics", {}),
        "versions": run.meta.get("versions", {}),
    }


def load_service(run: Any, precision: str, config: ServeConfig) -> tuple[Service, dict[str, Any]]:
    """The app serving the best weights of ``run`` (a :class:`vaecf.model.rundir.RunDir`),
    loaded and warmed up, and what ``GET /v1/model`` says of it."""
    recommender = Recommender(run.load_model(), ItemMap(run.item_ids), precision)
    warm_up(recommender, config.max_batch, config.top_k)
    info = model_info(run, recommender)
    return create_app(recommender, info, config), info


def warm_up(recommender: Recommender, max_batch: int, top_k: int) -> None:
    """Trace the scoring graph and run every power-of-two batch size up to ``max_batch``
    through the path requests take, so no request pays for tracing or first-use setup."""
    n_items = recommender.item_map.n_items
    rng = np.random.default_rng(0)
    size = 1
    while True:
        columns = np.sort(rng.choice(n_items, size=min(5, n_items), replace=False))
        jobs = [Job(columns.astype(np.int32), top_k, True) for _ in range(size)]
        score_jobs(recommender, jobs)
        if size >= max_batch:
            break
        size = min(2 * size, max_batch)
    score_jobs(recommender, [Job(columns.astype(np.int32), top_k, False)])


class Recommend:
    """``POST /v1/recommend`` and ``POST /v1/recommend:batch`` as functions of the request
    body, answered by :class:`Service` without FastAPI's per-request machinery; their OpenAPI
    description comes from :func:`create_app`.

    A body is parsed by pydantic's own JSON parser straight into its model (about half the time
    of ``json.loads`` then validation), each user's ids by the same
    :func:`vaecf.serving.items.known_columns` as ``--user-items``, and every user goes through
    the batcher.
    """

    def __init__(self, item_map: ItemMap, config: ServeConfig, state: ServeState) -> None:
        self.item_map = item_map
        self.config = config
        self.state = state

    async def one(self, body: bytes) -> Answer:
        return await self._answer(self.recommend, body)

    async def many(self, body: bytes) -> Answer:
        return await self._answer(self.recommend_batch, body)

    async def recommend(self, body: bytes) -> dict[str, Any]:
        """Top-k items for one user (the same answer as `vaecf recommend --user-items`)."""
        request = RecommendRequest.model_validate_json(body)
        k = self._k(request.k)
        columns, unknown = known_columns(request.items, self.item_map, "items")
        (result,) = await self._run([Job(columns, k, request.exclude_seen)])
        return _recommendation(result, unknown)

    async def recommend_batch(self, body: bytes) -> dict[str, Any]:
        """Top-k items for each of many users, in order; refused whole (422 naming the user) if
        any user has no item the model knows."""
        request = BatchRequest.model_validate_json(body)
        if len(request.users) > self.config.max_queue:
            raise VaecfError(f"users: {len(request.users):,} users is more than the server's "
                             f"queue holds ({self.config.max_queue:,}); send fewer per request")
        k = self._k(request.k)
        users = [known_columns(user.items, self.item_map, f"users[{i}].items")
                 for i, user in enumerate(request.users)]
        results = await self._run([Job(columns, k, request.exclude_seen) for columns, _ in users])
        return {"results": [_recommendation(result, unknown)
                            for (_, unknown), result in zip(users, results, strict=True)]}

    async def _answer(self, handler: Callable[[bytes], Awaitable[dict[str, Any]]],
                      body: bytes) -> Answer:
        """``handler``'s answer, or the error it raised as its status and JSON message."""
        if not body.strip():   # pydantic would say "EOF while parsing a value at ... column 0"
            return 400, {"error": "the request needs a JSON body"}, None
        try:
            return 200, await handler(body), None
        except ValidationError as error:
            status, message = _validation_message(error.errors(include_url=False))
        except VaecfError as error:
            status, message = 422, str(error)
        except Overloaded:
            return 503, {"error": f"server busy: more than {self.config.max_queue:,} users are "
                                  "waiting; retry later"}, {"retry-after": str(RETRY_AFTER_S)}
        except Exception:  # noqa: BLE001 - a failed model call: logged, and a JSON 500
            _log.exception("a recommend request failed")
            status, message = 500, "internal server error"
        return status, {"error": message}, None

    def _k(self, k: int | None) -> int:
        k = self.config.top_k if k is None else k
        if k > self.item_map.n_items:
            raise VaecfError(f"k: {k} is more than the model's {self.item_map.n_items:,} items")
        return k

    async def _run(self, jobs: list[Job]) -> list[tuple[list[Any], list[float]]]:
        batcher = self.state.batcher
        if batcher is None or not batcher.running:
            raise Overloaded()
        return await batcher.submit(jobs)


def _recommendation(result: tuple[list[Any], list[float]], unknown: list[str]) -> dict[str, Any]:
    """One user's answer: items, scores rounded to 6 decimals as the CLI's JSON, unknown ids."""
    items, scores = result
    return {"items": items, "scores": [round(s, 6) for s in scores], "unknown": unknown}


def create_app(recommender: Recommender, info: dict[str, Any], config: ServeConfig) -> Service:
    """The ASGI app serving ``recommender`` (already warmed up, see :func:`warm_up`)."""
    metrics = Metrics(config.max_batch)
    state = ServeState()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher = Batcher(recommender, config.max_batch, config.max_wait_ms / 1e3,
                          config.max_queue, metrics.observe_batch, metrics.queue_depth.set)
        batcher.start()
        state.batcher = batcher
        try:
            yield
        finally:
            state.draining = True
            await batcher.stop()

    app = FastAPI(
        # No OpenTelemetry: its per-request check of three providers is time for nothing here.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title="vaecf", version="1",
        summary="Mult-VAE recommendations for users given as the items they interacted with.",
        lifespan=lifespan,
        responses=ERRORS,
    )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, error: StarletteHTTPException) -> Response:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    recommend = Recommend(recommender.item_map, config, state)
    # A router that never serves describes the two endpoints that Service answers itself.
    described = APIRouter()
    for path, handler, body_model, answer_model in (
            ("/v1/recommend", recommend.recommend, RecommendRequest, Recommendation),
            ("/v1/recommend:batch", recommend.recommend_batch, BatchRequest, BatchResponse)):
        described.add_api_route(path, _described_elsewhere, methods=["POST"],
                                name=handler.__name__, description=inspect.getdoc(handler),
                                response_model=answer_model, tags=["recommend"],
                                responses=ERRORS, openapi_extra=_body_schema(body_model))

    @app.get("/v1/model", tags=["model"])
    async def model() -> dict[str, Any]:
        """The served run: model kind and sizes, item count, dataset fingerprint, best epoch and
        its validation metrics, and this server's batching settings."""
        return {**info, "serving": {"max_batch": config.max_batch,
                                    "max_wait_ms": config.max_wait_ms,
                                    "max_queue": config.max_queue, "top_k": config.top_k}}

    @app.get("/healthz", tags=["probes"])
    async def healthz() -> dict[str, str]:
        """The process is up and answering."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"], responses={503: {"model": ErrorResponse}})
    async def readyz() -> JSONResponse:
        """The model is loaded and warmed and the server is not shutting down."""
        batcher = state.batcher
        if state.draining or batcher is None or not batcher.running:
            return JSONResponse({"error": "not ready" if not state.draining
                                 else "shutting down"}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["probes"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus text format: requests by endpoint and status, latency histogram,
        batch-size histogram, queue depth."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary,
                                 routes=[*described.routes, *app.routes])
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model_ in (RecommendRequest, BatchRequest):
                body_schema = model_.model_json_schema(ref_template=_REF)
                components.update(body_schema.pop("$defs", {}))
                components[model_.__name__] = body_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return Service(app, state, metrics, config.api_key,
                   {"/v1/recommend": recommend.one, "/v1/recommend:batch": recommend.many})


def _described_elsewhere() -> None:
    """The endpoint of a route that is only described (in OpenAPI), never served: its path is
    answered by :class:`Service` before FastAPI routes anything."""


_REF = "#/components/schemas/{model}"


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI ``requestBody`` of an endpoint whose JSON body is ``model``."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": _REF.format(model=model.__name__)}}}}}


def bind(host: str, port: int, listen: bool = True):
    """A TCP socket bound to host:port (port 0: any free one), listening unless ``listen`` is
    False: then it only holds the port for the listeners :func:`listener` opens beside it.

    Raises:
        VaecfError: the address cannot be used (in use, not this machine's, no permission).
    """
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise VaecfError(f"--host: cannot resolve {host!r}: {error.strerror}") from None
    family, kind, proto, _, address = infos[0]
    if not listen and port != 0:
        _refuse_a_listener(family, address)
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if not listen:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
        if listen:
            sock.listen(2048)
    except OSError as error:
        sock.close()
        raise VaecfError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: Any) -> str:
    """``http://host:port`` of a bound socket (an IPv6 host in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _refuse_a_listener(family: int, address: tuple) -> None:
    """Raise if something already listens on ``address``. Sockets with SO_REUSEPORT of the same
    user may bind a port together, so a second ``vaecf serve --workers`` on a port in use
    would otherwise start and take part of the first one's connections.

    Raises:
        VaecfError: a connection to the address succeeds.
    """
    import ipaddress
    import socket

    host, port = address[:2]
    if ipaddress.ip_address(host).is_unspecified:   # 0.0.0.0 or ::: ask this machine
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        if probe.connect_ex((host, port)) == 0:
            raise VaecfError(f"cannot listen on {address[0]}:{port}: another server is "
                             "listening there")


def listener(holder: Any):
    """A listening socket of its own on the address ``holder`` (from ``bind(..., listen=False)``)
    holds: the kernel spreads new connections evenly over such listeners (SO_REUSEPORT), where
    processes sharing one listening socket take them as fast as each accepts (64 connections
    arriving together split 16/48 between two workers)."""
    import socket

    sock = socket.socket(holder.family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(holder.getsockname())
    sock.listen(2048)
    return sock


def serve(app: Service, sock: Any, on_listening: Callable[[str], None],
          graceful_timeout_s: int = 30, announce_stop: bool = True) -> None:
    """Run ``app`` on the bound socket until SIGTERM or Ctrl-C; then stop accepting, finish the
    requests in flight (up to ``graceful_timeout_s``), and return normally. A second Ctrl-C
    stops at once. ``announce_stop``: print that it is stopping (a worker of
    :mod:`vaecf.serving.workers` leaves that to its supervisor)."""
    import gc
    import signal

    import uvicorn

    state = app.state

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if state.draining and sig == signal.SIGINT and announce_stop:
                # A second Ctrl-C: stop now. uvicorn's own forced exit cancels the tasks in
                # flight with a CancelledError traceback and exits 0.
                print("vaecf serve: second Ctrl-C; stopped without finishing the requests in "
                      "flight", file=sys.stderr, flush=True)
                os._exit(130)
            if not state.draining and announce_stop:
                print("vaecf serve: stopping; finishing the requests in flight", flush=True)
            state.draining = True
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # SIGHUP (the terminal or ssh session closed) drains like SIGTERM; uvicorn itself
            # only listens to SIGINT and SIGTERM.
            hangup = signal.signal(signal.SIGHUP, self.handle_exit)
            try:
                with super().capture_signals():
                    yield
            finally:
                signal.signal(signal.SIGHUP, hangup)

        async def startup(self, sockets: list | None = None) -> None:
            await super().startup(sockets)
            if not self.should_exit:
                on_listening(url_of(sock))

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=graceful_timeout_s,
                            loop="auto", http="auto", server_header=False)
    # The model, TensorFlow and the libraries are millions of long-lived objects: without this,
    # each full collection of Python's cyclic GC walks them all while every request waits (p99
    # at 64 clients 195-240 ms; frozen: 39-46 ms, and ~15% more requests/s).
    gc.collect()
    gc.freeze()
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully; with these
    # handlers in place that re-raise is a no-op, so a drained server exits 0.
    previous = {s: signal.signal(s, lambda *_: None)
                for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        Server(config).run(sockets=[sock])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
