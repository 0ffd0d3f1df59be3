"""The HTTP face of ``perfusion serve`` (FastAPI): the JSON API, the images, and the merchant's page.

    GET  /                      the page: pick a merchant, type a prompt, click the candidates you like
    GET  /healthz               200 when the model is loaded
    GET  /v1/info               versions, models, limits, queue
    GET  /v1/merchants          the prepared data's merchant ids (a merchant token: its own)
    POST /v1/generate           {"merchant_id", "prompt", "n"?, "seed"?, "features"?} → candidates
    GET  /v1/images/{id}        a candidate's PNG
    POST /v1/sessions           {"session_id", "merchant_id", "prompt", "candidates", "selected"} → recorded

Who asks: once the server has a token — the operator's, or any merchant token in the workspace's tokens
file (``serving/tokens.py``) — every route but ``/`` and ``/healthz`` needs one (``Authorization: Bearer
TOKEN``; 401 without, with the reason). A merchant token acts for its merchant only: another merchant's
id in a body is a 403, another merchant's image a 404 (as if it did not exist), and no answer shows it a
path on the server. Bodies over ``max_body_bytes`` are refused before they are read whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from importlib import metadata
from importlib.resources import files
from typing import Any, Optional, Union

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from perfusion_cli.config import MAX_SEED, ServeConfig
from perfusion_cli.data.identifiers import canonical_id
from perfusion_cli.data.merchants import UnknownMerchant
from perfusion_cli.data.records import RowError
from perfusion_cli.errors import ConfigError
from perfusion_cli.serving.batcher import Busy, MicroBatcher, TooMany
from perfusion_cli.serving.journal import SessionConflict
from perfusion_cli.serving.studio import BadPick, Studio
from perfusion_cli.serving.tokens import OPERATOR, Grant, TokenFile

SERVED_SHOWN = 64  # merchants of the latest requests run, in /v1/info for the operator
PATHS = ("model", "reward_model", "data", "logs", "base_model")  # /v1/info keys that may name server paths

FeatureValue = Union[str, float, int, bool, None]


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    merchant_id: Union[str, int, float]
    prompt: str
    n: Optional[int] = None
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED)
    features: Optional[dict[str, FeatureValue]] = None


class SessionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session_id: Union[str, int, float]
    merchant_id: Union[str, int, float]
    prompt: str
    candidates: list[str] = Field(max_length=64)
    selected: list[str] = Field(max_length=64)


def create_app(studio: Studio, config: ServeConfig, token: str | None, info: dict[str, Any],
               tokens: TokenFile | None = None, guarded: bool = False) -> FastAPI:
    """``token``: the operator's; ``tokens``: the merchant tokens; ``guarded``: a token is needed even when
    neither exists (the server listens beyond loopback)."""
    batcher = MicroBatcher(studio.generate, config.max_batch_images, config.max_wait_ms / 1000, config.queue_size,
                           config.max_pending_per_merchant)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(title="perfusion serve", docs_url=None, redoc_url=None, openapi_url="/v1/openapi.json",
                  lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes, read_timeout_s=config.read_timeout_s)
    page = files("perfusion_cli.serving").joinpath("page.html").read_text(encoding="utf-8")

    def caller(request: Request) -> Optional[Grant]:
        """Who asks: None on an open server (loopback, no token anywhere), else the presented token's grant."""
        try:
            required = guarded or token is not None or (tokens is not None and tokens.exists())
        except ConfigError as exc:  # a damaged tokens file: refuse everyone rather than guess
            raise HTTPException(503, f"the server cannot read its tokens: {exc}") from None
        if not required:
            return None
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            raise HTTPException(401, "this server needs a token: Authorization: Bearer TOKEN (the operator's, or a "
                                     "merchant's from `perfusion token add MERCHANT_ID`)",
                                headers={"WWW-Authenticate": "Bearer"})
        if token is not None and hmac.compare_digest(presented.encode(), token.encode()):
            return Grant(OPERATOR, None)
        grant = tokens.grant(presented) if tokens is not None else None
        if grant is None:
            raise HTTPException(401, "this token is unknown or revoked", headers={"WWW-Authenticate": "Bearer"})
        return grant

    def acting_for(grant: Optional[Grant], merchant: str) -> None:
        if grant is not None and not grant.allows(merchant):
            raise HTTPException(403, f"this token acts for merchant {grant.merchant_id!r} only")

    def for_merchant(grant: Optional[Grant]) -> Optional[str]:
        """The one merchant a caller may see, or None for every merchant (the operator, an open server)."""
        return None if grant is None else grant.merchant_id

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/healthz")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/info")
    def describe(grant: Optional[Grant] = Depends(caller)) -> dict:
        merchant = for_merchant(grant)
        shown = info if merchant is None else {key: value for key, value in info.items() if key not in PATHS}
        answer = {**shown, "token_required": grant is not None, "merchant": merchant,
                  "recorded_sessions": studio.journal.count(merchant),
                  "queue": {"waiting": batcher.waiting, "size": config.queue_size,
                            "batches": batcher.batches, "requests": batcher.requests},
                  "limits": {"max_n": config.max_n, "default_n": config.default_n,
                             "max_prompt_chars": config.max_prompt_chars, "max_body_bytes": config.max_body_bytes,
                             "request_timeout_s": config.request_timeout_s, "read_timeout_s": config.read_timeout_s,
                             "max_pending_per_merchant": config.max_pending_per_merchant}}
        if merchant is None:  # the operator (or anyone, on an open server): who was served lately, and tokens
            answer["queue"]["served"] = list(batcher.served)[-SERVED_SHOWN:]
            if tokens is not None:
                answer["merchant_tokens"] = tokens.active()
        return answer

    @app.get("/v1/merchants")
    def merchants(grant: Optional[Grant] = Depends(caller)) -> dict:
        merchant = for_merchant(grant)
        return {"merchants": studio.merchants if merchant is None else [merchant]}

    @app.post("/v1/generate")
    async def generate(body: GenerateBody, grant: Optional[Grant] = Depends(caller)) -> dict:
        n = config.default_n if body.n is None else body.n
        if not 1 <= n <= config.max_n:
            raise HTTPException(422, f"n must be in 1..{config.max_n}, got {n}")
        prompt = _text(body.prompt, "prompt", config.max_prompt_chars)
        merchant = _identifier(body.merchant_id, "merchant_id")
        acting_for(grant, merchant)
        try:
            ask = studio.ask(merchant, prompt, n, body.seed, body.features)
        except UnknownMerchant as exc:
            raise HTTPException(404, str(exc)) from None
        except ConfigError as exc:
            raise HTTPException(422, str(exc)) from None
        try:
            future = batcher.submit(ask, n, lane=merchant)
        except Busy:
            raise HTTPException(503, f"{config.queue_size} requests are already waiting: retry shortly",
                                headers={"Retry-After": "1"}) from None
        except TooMany:
            raise HTTPException(429, f"merchant {merchant!r} already has {config.max_pending_per_merchant} requests "
                                     f"waiting or running (max_pending_per_merchant): retry shortly",
                                headers={"Retry-After": "1"}) from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=config.request_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"no answer within {config.request_timeout_s:g} s (request_timeout_s); "
                                     f"the server is overloaded or the model too slow") from None

    @app.get("/v1/images/{image_id}")
    def image(image_id: str, grant: Optional[Grant] = Depends(caller)) -> Response:
        merchant = for_merchant(grant)
        if merchant is not None:
            shown = studio.gallery.shown(image_id)
            if shown is None or shown.merchant_id != merchant:
                raise HTTPException(404, "no such image")  # another merchant's image does not exist for this one
        data = studio.gallery.image(image_id)
        if data is None:
            raise HTTPException(404, "no such image")
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})

    @app.post("/v1/sessions")
    def sessions(body: SessionBody, grant: Optional[Grant] = Depends(caller)) -> dict:
        # a plain def: the fsync runs in FastAPI's thread pool
        session_id = _identifier(body.session_id, "session_id")
        merchant = _identifier(body.merchant_id, "merchant_id")
        acting_for(grant, merchant)
        prompt = _text(body.prompt, "prompt", config.max_prompt_chars)
        try:
            written = studio.record(session_id, merchant, prompt, body.candidates, body.selected,
                                    recorded_by=None if grant is None else grant.token_id)
        except BadPick as exc:
            raise HTTPException(422, str(exc)) from None
        except SessionConflict as exc:
            raise HTTPException(409, str(exc)) from None
        answer = {"session_id": session_id, "recorded": written, "duplicate": not written,
                  "candidates": len(body.candidates), "selected": len(body.selected)}
        if for_merchant(grant) is None:
            answer["logs"] = str(studio.journal.sessions_path)
        return answer

    return app


def _identifier(value: str | int | float, name: str) -> str:
    """An id in its canonical form (``data/identifiers.py``: the form prepare gives the logs it records), or 422."""
    try:
        return canonical_id(value, name)
    except RowError as exc:
        raise HTTPException(422, exc.detail) from None


def _text(value: str, name: str, limit: int) -> str:
    text = value.strip()
    if not text:
        raise HTTPException(422, f"{name} must not be empty")
    if len(text) > limit:
        raise HTTPException(422, f"{name} is longer than {limit} characters")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise HTTPException(422, f"{name} is not valid Unicode (a lone surrogate)")
    return text


def versions() -> dict[str, str]:
    out = {}
    for package in ("perfusion", "torch", "diffusers", "transformers", "fastapi", "uvicorn"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


class BodyLimit:
    """Refuse a request body over ``limit`` bytes — by its Content-Length at once, else once that many bytes have
    come — or one that has not arrived whole within ``read_timeout_s`` (408): every body is read here, against
    both bounds, and handed on only when complete (``slow_clients`` bounds the headers)."""

    def __init__(self, app, limit: int, read_timeout_s: float):
        self.app, self.limit, self.read_timeout_s = app, limit, read_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = JSONResponse({"detail": f"the request body is over {self.limit} bytes"}, status_code=413)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await too_big(scope, receive, send)
        body, more = b"", True
        deadline = asyncio.get_running_loop().time() + self.read_timeout_s
        while more:
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except asyncio.TimeoutError:
                late = JSONResponse({"detail": f"the request body did not arrive within {self.read_timeout_s:g} s "
                                               f"(read_timeout_s)"}, status_code=408, headers={"Connection": "close"})
                return await late(scope, receive, send)
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await too_big(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
