"""The inference server: HTTP (FastAPI) and an openpi-compatible WebSocket, behind the safety layer.

    POST /predict   JSON or msgpack (Content-Type: application/msgpack) observation -> action chunk
    WS   /ws  (/)   openpi protocol: metadata on connect, then msgpack observation -> {"actions", "server_timing"}
    GET  /health /ready /metadata /metrics
    POST /reload    swap the checkpoint (token required; only from --model-root or --allow-hub)

With a token, everything but /health and /ready needs it (the OpenAPI docs too), and
the WebSocket says nothing about the model before the client has authenticated.

Requests are answered by a `PolicyRunner` around a `LocalPolicy` (neon_runtime.policy),
which applies the safety layer; this module only speaks the protocols.

Real-time chunking: a model trained with `prefix_max_steps` > 0 (see /metadata) takes an optional
`prefix`, the d <= prefix_max_steps steps of this chunk the robot has already committed to (joint targets,
action-space order, d x D); the reply is still the whole chunk on the same clock, its first
`committed_steps` = d steps being the prefix as sent. A prefix for a model trained without one, a longer
one, a wrong shape or NaN/Inf is refused as bad input (422, or an error message on the WebSocket); an
empty prefix is no prefix. openpi clients never send one and are unaffected.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from neon import __version__
from neon.observation import AUDIO_WINDOW_S, InputError
from neon_runtime import wire
from neon_runtime.observation import parse_request
from neon_runtime.policy import FeaturesUnavailable, Overloaded, PolicyRunner, Superseded
from neon_runtime.safety import SafetyError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MSGPACK = "application/msgpack"


OPEN_PATHS = ("/health", "/ready")  # the only routes answered without the token


@dataclass
class ServerSettings:
    token: str | None = None
    max_request_bytes: int = 16 * 1024 * 1024
    default_model_note: str = ""
    audio_source: object = None  # a neon_runtime.sensors.AudioRing: fills requests that carry no audio
    profile: str = ""
    model_root: str | None = None  # /reload loads local checkpoints only below this folder
    allow_hub: tuple[str, ...] = ()  # ... and Hub ids only when they match one of these fnmatch patterns
    device: str | None = None  # where a reloaded model goes (the backbone is reused when it is the same)


def reload_refusal(settings: ServerSettings, model: str) -> str | None:
    """Why `model` may not be loaded by /reload (None: it may)."""
    from fnmatch import fnmatch
    from pathlib import Path

    from neon.hub import looks_like_repo_id

    path = Path(model).expanduser()
    if path.exists() or not looks_like_repo_id(model):
        root = Path(settings.model_root).resolve() if settings.model_root else None
        if root is None or not path.resolve().is_relative_to(root):
            return f"{model} is not below the server's --model-root ({settings.model_root or 'not set'})"
    elif not any(fnmatch(model, pattern) for pattern in settings.allow_hub):
        return f"Hub id {model} matches none of the server's --allow-hub patterns ({', '.join(settings.allow_hub) or 'none'})"
    return None


class Metrics:
    """Prometheus metrics in a registry of their own (one per app, so tests can run several)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
        self.stage = Histogram("neon_stage_seconds", "latency per inference stage", ["stage"], buckets=buckets,
                               registry=self.registry)
        self.request = Histogram("neon_request_seconds", "request latency, receipt to reply", ["transport"],
                                 buckets=buckets, registry=self.registry)
        self.batch_size = Histogram("neon_batch_size", "observations per model forward", buckets=(1, 2, 4, 8, 16, 32, 64),
                                    registry=self.registry)
        self.queue_depth = Gauge("neon_queue_depth", "observations waiting for the model", registry=self.registry)
        self.rejected = Counter("neon_rejected_total", "requests refused", ["reason"], registry=self.registry)
        self.requests = Counter("neon_requests_total", "requests answered", ["transport"], registry=self.registry)


class PredictRequest(BaseModel):
    """One observation (JSON form; the msgpack form carries the same keys with NumPy arrays)."""

    image: str | list | None = Field(None, description="base64 JPEG/PNG, or HxWx3 uint8 nested lists (msgpack: an "
                                     "ndarray); required, except in a light request (reuse_features)")
    instruction: str = Field("", description="what to do; openpi key: prompt")
    state: list[float] | dict[str, float] | None = Field(
        None, description="joint positions in action-space order, or {joint name: value}; openpi key: observation/state")
    audio: list[float] | None = Field(None, description="16 kHz mono samples in [-1, 1]")
    lidar: list[list[float]] | None = Field(None, description="N x 3 or N x 4 points (x, y, z m, intensity)")
    eef: list[float] | dict[str, list[float]] | None = Field(
        None, description="14 values, or {'left': 7, 'right': 7}: x, y, z, qw, qx, qy, qz")
    prefix: list[list[float]] | None = Field(
        None, description="d x D joint targets (action-space order) the robot has already committed to for this "
        "chunk's steps 0..d-1, while the request was in flight; only for a model whose /metadata "
        "prefix_max_steps >= d (else 422); [] = none. The reply's first d steps are these, the rest continue them")
    timestamp: float | None = Field(None, description="observation time, Unix seconds; without it the chunk is "
                                    "not executable (its age cannot be checked)")
    client_id: str | None = Field(None, description="keys newest-wins: a newer request from the same client "
                                  "replaces its older one still waiting (else the X-Client-Id header); a full "
                                  "request's backbone features are kept under it for light requests")
    reuse_features: bool = Field(False, description="a light request: no image, no audio; only the heads run, on "
                                 "the newest backbone features kept for this client_id, with this request's state, "
                                 "eef, lidar, prefix. 409 no_features when there are none, they are older than "
                                 "max_feature_age_s, or the model was reloaded since")


class PredictResponse(BaseModel):
    actions: list[list[float]] = Field(description="(T, D) chunk in physical units (rad, m/s), inside joint limits")
    joint_names: list[str]
    fps: float = Field(description="rate at which chunk steps are meant to be executed")
    committed_steps: int = Field(0, description="d: actions[:d] are the request's prefix, actions[d:] predicted")
    observation_timestamp: float | None = Field(description="the observation time the chunk is anchored to")
    speech: str = Field(description="what the robot should say ('' = nothing)")
    speech_confidence: float
    dry_run: bool = Field(description="true: not to be executed (a dry-run server, untrained heads, no state or no "
                                      "timestamp in the request; safety.notes says which)")
    safety: dict = Field(description="what the safety layer changed")
    features: dict | None = Field(None, description="the backbone features the chunk read: id, age_s (since their "
                                  "image's timestamp), observation_timestamp, instruction, reused (a light request)")
    server_timing: dict = Field(description="per-stage milliseconds")
    ignored_keys: list[str] = []


class ErrorResponse(BaseModel):
    error: str
    detail: str


def _auth_ok(settings: ServerSettings, header: str | None) -> bool:
    if not settings.token:
        return True
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() not in ("bearer", "api-key"):
        return False
    return hmac.compare_digest(value.strip().encode(), settings.token.encode())


def metadata(runner: PolicyRunner, settings: ServerSettings) -> dict:
    """The policy's own description (see LocalPolicy.metadata) plus the server's settings."""
    meta = runner.local.metadata()
    meta["model"]["note"] = settings.default_model_note
    return {"schema_version": SCHEMA_VERSION, "neon_version": __version__, **meta, "max_batch": runner.max_batch,
            "profile": settings.profile, "local_microphone": settings.audio_source is not None,
            "auth": bool(settings.token)}


async def answer(runner: PolicyRunner, settings: ServerSettings, data, client: str | None,
                 named: str | None = None) -> dict:
    """One decoded request (a dict of observation fields) -> the policy's reply.

    A `client_id` in the request (else `named`, the X-Client-Id header; else `client`, the transport's) keys
    newest-wins: a newer request from the same client replaces its older one while that still waits. Only a
    named client keeps its features (for its light requests, `reuse_features`).
    """
    prepared, client, ignored = await asyncio.to_thread(_prepare, runner, settings, data, client, named)
    reply = await runner.infer(prepared, client)
    reply["ignored_keys"] = ignored
    return reply


def _prepare(runner: PolicyRunner, settings: ServerSettings, data, client: str | None, named: str | None):
    """`answer`'s CPU work, off the event loop (decoding an image can take a while: no other client waits on it)."""
    request, ignored = parse_request(data)
    named = request.pop("client_id", None) or named
    client = named or client
    reuse, key = request.pop("reuse_features"), request.pop("features_key", None)
    if (not reuse and request.get("audio") is None and settings.audio_source is not None
            and runner.local.policy.config.use_audio):
        heard = settings.audio_source.read(AUDIO_WINDOW_S)
        request["audio"] = heard if len(heard) else None
    if reuse:
        prepared = runner.local.prepare(request, runner.reused_features(named, key))
    else:
        if named:
            runner.features.check_owner(named, key)
        prepared = runner.local.prepare(request)._replace(keep_as=named, features_key=key)
    return prepared, client, ignored


def decode_body(content_type: str, body: bytes):
    if content_type.startswith(MSGPACK):
        return wire.unpackb(body)
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"body is not valid JSON: {e}") from None


def create_app(runner: PolicyRunner, settings: ServerSettings | None = None, metrics: Metrics | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    metrics = metrics or runner.metrics or Metrics()
    runner.metrics = metrics
    app = FastAPI(title="Neon inference server", version=__version__,
                  description="Observations in, 16-step Unitree G1 action chunks out, through the safety layer.")
    app.state.runner, app.state.settings, app.state.metrics = runner, settings, metrics

    def reject(reason: str, status: int, detail: str) -> JSONResponse:
        metrics.rejected.labels(reason).inc()
        return JSONResponse({"error": reason, "detail": detail}, status_code=status)

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if request.url.path not in OPEN_PATHS and not _auth_ok(settings, request.headers.get("authorization")):
            return reject("unauthorized", 401, "missing or wrong bearer token")
        return await call_next(request)

    @app.get("/health", summary="The process is alive")
    async def health():
        return {"status": "ok"}

    @app.get("/ready", summary="The model is loaded and warmed up", responses={503: {"model": ErrorResponse}})
    async def ready():
        if not runner.ready.is_set():
            return JSONResponse({"error": "not_ready", "detail": "warming up"}, status_code=503)
        return {"status": "ready"}

    @app.get("/metadata", summary="Action space, modalities, model card, safety settings, schema version")
    async def get_metadata():
        return metadata(runner, settings)

    @app.get("/metrics", summary="Prometheus metrics")
    async def get_metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    body_doc = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": PredictRequest.model_json_schema()},
        MSGPACK: {"schema": {"type": "string", "format": "binary",
                             "description": "msgpack map with the same keys; arrays as msgpack-numpy (openpi's format)"}},
    }}}

    @app.post("/predict", response_model=PredictResponse, summary="One observation -> one action chunk",
              openapi_extra=body_doc,
              responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 409: {"model": ErrorResponse},
                         413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    async def predict(request: Request):
        return await predict_http(request, runner, settings, metrics, reject)

    @app.post("/reload", summary="Swap the checkpoint without dropping connections (token required)",
              responses={401: {"model": ErrorResponse}, 400: {"model": ErrorResponse}, 403: {"model": ErrorResponse}})
    async def reload(request: Request):
        if not settings.token:
            return reject("unauthorized", 401, "reload needs the server's token (start neon-serve with --token)")
        try:
            body = await request.json()
            path, force = str(body["model"]), bool(body.get("force", False))
        except Exception:
            return reject("bad_input", 400, 'body must be JSON {"model": "<checkpoint folder or Hub id>"[, "force": true]}')
        refusal = reload_refusal(settings, path)
        if refusal:
            return reject("forbidden", 403, refusal)
        try:
            return await asyncio.to_thread(runner.reload, path, force, settings.device)
        except Exception as e:
            return reject("reload_failed", 400, f"{type(e).__name__}: {e}")

    @app.websocket("/ws")
    @app.websocket("/")  # openpi's WebsocketClientPolicy connects to the bare host:port
    async def ws(socket: WebSocket):
        await serve_socket(socket, runner, settings, metrics)

    return app


async def predict_http(request: Request, runner: PolicyRunner, settings: ServerSettings, metrics: Metrics, reject):
    """POST /predict: the body read up to the size limit, decoded, answered; every refusal a JSON error."""
    t0, limit = time.perf_counter(), settings.max_request_bytes
    if int(request.headers.get("content-length") or 0) > limit:
        return reject("too_large", 413, f"request is {request.headers['content-length']} bytes, the limit is {limit}")
    body = bytearray()
    async for piece in request.stream():  # chunked bodies carry no length: cut them off at the limit
        body += piece
        if len(body) > limit:
            return reject("too_large", 413, f"request is over the {limit}-byte limit")
    try:
        data = decode_body(request.headers.get("content-type", ""), bytes(body))
        header = request.headers.get("x-client-id")
        out = await answer(runner, settings, data, header, header)
    except (InputError, wire.WireError) as e:
        return reject("bad_input", 422 if isinstance(e, InputError) else 400, str(e))
    except Overloaded as e:
        response = reject("overloaded", 503, str(e))
        response.headers["Retry-After"] = str(Overloaded.retry_after_s)
        return response
    except (SafetyError, Superseded) as e:
        reason = ("no_features" if isinstance(e, FeaturesUnavailable) else "unsafe" if isinstance(e, SafetyError)
                  else "superseded")
        return reject(reason, 409, str(e))
    except Exception as e:  # the model failed: say so, keep serving
        log.exception("inference failed")
        return reject("inference_failed", 503, f"{type(e).__name__}: {e}")
    metrics.requests.labels("http").inc()
    metrics.request.labels("http").observe(time.perf_counter() - t0)
    if request.headers.get("accept", "").startswith(MSGPACK):
        return Response(wire.packb(out), media_type=MSGPACK)
    out["actions"] = np.asarray(out["actions"], np.float32).round(6).tolist()
    return out


async def serve_socket(socket: WebSocket, runner: PolicyRunner, settings: ServerSettings, metrics: Metrics) -> None:
    """The openpi protocol: metadata on connect, then one msgpack observation -> one reply (or an error map)."""
    header = socket.headers.get("authorization")
    await socket.accept()
    authed = _auth_ok(settings, header)
    # openpi's protocol: metadata first. Not before authentication, though: then only that a token is needed.
    await socket.send_bytes(wire.packb({**metadata(runner, settings), "needs_token": False} if authed
                                       else {"needs_token": True}))
    client = f"ws-{id(socket)}"
    try:
        while True:
            msg = await socket.receive()
            if msg["type"] == "websocket.disconnect":
                break
            t0 = time.perf_counter()
            raw = msg.get("bytes")
            if raw is None and msg.get("text") is not None:
                raw = msg["text"].encode()
            try:
                if len(raw) > settings.max_request_bytes:
                    raise wire.WireError(f"message is {len(raw)} bytes, the limit is {settings.max_request_bytes}")
                data = wire.unpackb(raw) if msg.get("bytes") is not None else json.loads(raw)
                if not authed:
                    token = data.get("token") if isinstance(data, dict) else None
                    if token is not None and _auth_ok(settings, f"Bearer {token}"):
                        authed = True
                        await socket.send_bytes(wire.packb({"authenticated": True, "metadata": metadata(runner, settings)}))
                        continue
                    metrics.rejected.labels("unauthorized").inc()
                    await socket.send_bytes(wire.packb({"error": "unauthorized",
                                                        "detail": "send {'token': ...} or an Authorization header"}))
                    continue
                out = await answer(runner, settings, data, client)
                metrics.requests.labels("ws").inc()
                metrics.request.labels("ws").observe(time.perf_counter() - t0)
                await socket.send_bytes(wire.packb(out))
            except WebSocketDisconnect:
                raise  # the client left while its request was answered (neon-g1 closes to end one in flight)
            except Exception as e:  # every error is a message; the connection stays usable
                known = (InputError, wire.WireError, SafetyError, Superseded, Overloaded, json.JSONDecodeError)
                reason = {SafetyError: "unsafe", Superseded: "superseded", Overloaded: "overloaded",
                          FeaturesUnavailable: "no_features"}.get(type(e), "bad_input")
                if not isinstance(e, known):
                    log.exception("inference failed")
                    reason = "inference_failed"
                metrics.rejected.labels(reason).inc()
                await socket.send_bytes(wire.packb({"error": reason, "detail": f"{type(e).__name__}: {e}"
                                                    if reason == "inference_failed" else str(e)}))
    except WebSocketDisconnect:
        pass
