"""The HTTP API and web page of `dualenc.serve` (FastAPI on uvicorn).

    POST /search        {"query": "...", "k": 10, "rerank": true}  -> hits + time per stage
    POST /search/batch  {"queries": ["...", ...], "k": 10}        -> {"results": [...]}
    GET  /healthz  GET /info  GET /  (the page)  GET /docs  (OpenAPI, from FastAPI)

Bodies are read here, not by FastAPI, so that every bad input gets one JSON error naming the
field: {"error": "field 'k': must be ≤ 100, got 1000", "field": "k"} with 400 (not JSON, not
UTF-8), 413 (body too large), 422 (a field missing, empty, out of range, unknown) or 503 (queue
full); never a traceback. Requests carry only queries: no path or model name is taken from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import re
from importlib import resources
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from dualenc.serve.batcher import DynamicBatcher, QueueFull
from dualenc.serve.engine import Query, SearchEngine

log = logging.getLogger(__name__)
STATIC = resources.files("dualenc.serve") / "static"


class BadRequest(Exception):
    """A request the server refuses: HTTP status, one line, and the field it concerns."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def request_models(engine: SearchEngine):
    """(SearchRequest, BatchRequest) with this server's limits: unknown fields are refused."""
    cfg = engine.config
    Text = Annotated[StrictStr, Field(min_length=1, max_length=cfg.max_query_chars)]
    K = Annotated[StrictInt, Field(ge=1, le=cfg.max_k)]

    def not_blank(v):
        texts = [v] if isinstance(v, str) else v
        if any(not t.strip() for t in texts):
            raise ValueError("must not be empty or blank")
        return v

    class SearchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        query: Text
        k: K = cfg.default_k
        rerank: StrictBool | None = Field(None, description="default: rerank if a CE is loaded")
        _blank = field_validator("query")(not_blank)

    class BatchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        queries: Annotated[list[Text], Field(min_length=1, max_length=cfg.max_batch_queries)]
        k: K = cfg.default_k
        rerank: StrictBool | None = None
        _blank = field_validator("queries")(not_blank)

    return SearchRequest, BatchRequest


def _validation_error(e: ValidationError | RequestValidationError) -> BadRequest:
    """The first pydantic error as one line naming the field (`queries.3` for list items)."""
    err = e.errors()[0]
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    field = ".".join(loc) or None
    kind, msg = err.get("type", ""), err.get("msg", "invalid")
    msg = re.sub(r" after validation, not \d+$", "", msg)  # pydantic's list-length wording
    if kind == "missing":
        msg = "required"
    elif kind == "extra_forbidden":
        msg = "unknown field"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    elif kind.startswith(("less_than", "greater_than", "too_long", "too_short", "string_too")):
        got = err.get("input")
        if isinstance(got, str):
            msg += f", got {len(got):,} characters"
        elif isinstance(got, list):
            msg += f", got {len(got):,} items"
        else:
            msg += f", got {got!r}"
    msg = msg[:1].lower() + msg[1:]
    where = f"field '{field}': " if field else ""
    return BadRequest(422, f"{where}{msg}", field)


async def _read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refusing (413) past `limit` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"request body of {int(declared):,} bytes exceeds {limit:,} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, f"request body exceeds {limit:,} bytes")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(400, f"body is not UTF-8 (byte {e.start}: {body[e.start]:#04x})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRequest(
            400, f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status)


def create_app(engine: SearchEngine) -> FastAPI:
    """The app over a loaded (and, for serving, warmed-up) engine; the batcher runs while the
    app does (its lifespan)."""
    cfg = engine.config
    SearchRequest, BatchRequest = request_models(engine)
    batcher = DynamicBatcher(
        engine.search,
        respond=engine.respond,
        max_batch=cfg.max_batch,
        max_wait_s=cfg.max_wait_ms / 1e3,
        max_queue=cfg.max_queue,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        # What is loaded by now (model, index, corpus, tokenizer: ~640k objects for SciFact)
        # lives as long as the server; left in the collector's generations, every full
        # collection walked them all: 270 ms with the GIL held, a pause for every request in
        # flight (p99 at concurrency 32: 450 ms). Frozen, a full collection visits only
        # per-request garbage.
        gc.collect()
        gc.freeze()
        batcher.start()
        yield
        batcher.close()

    app = FastAPI(
        title="dualenc.serve",
        version=engine.info()["dualenc_version"],
        summary="Search a dualenc index: retrieve, then rerank.",
        lifespan=lifespan,
    )
    app.state.engine, app.state.batcher = engine, batcher

    @app.exception_handler(BadRequest)
    async def bad_request(_req, e: BadRequest):
        return _error(e.status, e.message, e.field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_req, e: StarletteHTTPException):
        return _error(e.status_code, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(_req, e: RequestValidationError):
        bad = _validation_error(e)
        return _error(bad.status, bad.message, bad.field)

    @app.exception_handler(Exception)
    async def internal(_req, e: Exception):  # a bug, not bad input: logged here, not sent
        log.exception("internal error")
        return _error(500, f"internal error ({type(e).__name__}); see the server log")

    async def parse(request: Request, model):
        try:
            obj = await _read_json(request, cfg.max_body_bytes)
        except ClientDisconnect:
            raise BadRequest(400, "client disconnected while sending the body") from None
        if not isinstance(obj, dict):
            raise BadRequest(400, f"body must be a JSON object, got {type(obj).__name__}")
        try:
            req = model.model_validate(obj)
        except ValidationError as e:
            raise _validation_error(e) from None
        if req.rerank and engine.reranker is None:
            msg = "field 'rerank': this server has no cross-encoder (--rerank_model)"
            raise BadRequest(422, msg, "rerank")
        return req

    async def answer(queries: list[Query]) -> list[dict]:
        try:
            futures = [batcher.submit(q) for q in queries]
        except QueueFull as e:
            raise BadRequest(503, f"server busy: {e}; retry later") from None
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    def schema(model) -> dict:
        body = {"content": {"application/json": {"schema": model.model_json_schema()}}}
        return {"requestBody": {"required": True, **body}}

    @app.post("/search", openapi_extra=schema(SearchRequest))
    async def search(request: Request) -> JSONResponse:
        """Top-k hits for one query, with first-stage and cross-encoder scores and stage times."""
        req = await parse(request, SearchRequest)
        rr = engine.reranker is not None if req.rerank is None else req.rerank
        (res,) = await answer([Query(req.query, req.k, rr)])
        return JSONResponse(res)

    @app.post("/search/batch", openapi_extra=schema(BatchRequest))
    async def search_batch(request: Request) -> JSONResponse:
        """Many queries in one request; they share batches with concurrent requests."""
        req = await parse(request, BatchRequest)
        rr = engine.reranker is not None if req.rerank is None else req.rerank
        return JSONResponse({"results": await answer([Query(q, req.k, rr) for q in req.queries])})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        ok = batcher.alive()
        body = {"status": "ok" if ok else "batcher stopped", "queued": batcher.pending()}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/info")
    async def info() -> JSONResponse:
        sizes = dict(sorted(batcher.batch_sizes.items()))
        served = {"batches": batcher.batches, "queries": batcher.items, "batch_sizes": sizes}
        return JSONResponse({**engine.info(), "served": served})

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app
