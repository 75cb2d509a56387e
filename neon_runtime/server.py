"""The inference server: HTTP (FastAPI) and an openpi-compatible WebSocket, behind the safety layer.

    POST /predict   JSON or msgpack (Content-Type: application/msgpack) observation -> action chunk
    WS   /ws  (/)   openpi protocol: metadata on connect, then msgpack observation -> {"actions", "server_timing"}
    GET  /health /ready /metadata /metrics
    POST /reload    swap the checkpoint (token required)

Requests are answered by a `PolicyRunner` around a `LocalPolicy` (neon_runtime.policy),
which applies the safety layer; this module only speaks the protocols.
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
from neon_runtime.policy import PolicyRunner, Superseded
from neon_runtime.safety import SafetyError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MSGPACK = "application/msgpack"


@dataclass
class ServerSettings:
    token: str | None = None
    max_request_bytes: int = 16 * 1024 * 1024
    default_model_note: str = ""
    audio_source: object = None  # a neon_runtime.sensors.AudioRing: fills requests that carry no audio
    profile: str = ""


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

    image: str | list = Field(description="base64 JPEG/PNG, or HxWx3 uint8 nested lists (msgpack: an ndarray)")
    instruction: str = Field("", description="what to do; openpi key: prompt")
    state: list[float] | dict[str, float] | None = Field(
        None, description="joint positions in action-space order, or {joint name: value}; openpi key: observation/state")
    audio: list[float] | None = Field(None, description="16 kHz mono samples in [-1, 1]")
    lidar: list[list[float]] | None = Field(None, description="N x 3 or N x 4 points (x, y, z m, intensity)")
    eef: list[float] | dict[str, list[float]] | None = Field(
        None, description="14 values, or {'left': 7, 'right': 7}: x, y, z, qw, qx, qy, qz")
    timestamp: float | None = Field(None, description="observation time, Unix seconds")


class PredictResponse(BaseModel):
    actions: list[list[float]] = Field(description="(T, D) chunk in physical units (rad, m/s), inside joint limits")
    joint_names: list[str]
    fps: float = Field(description="rate at which chunk steps are meant to be executed")
    observation_timestamp: float | None = Field(description="the observation time the chunk is anchored to")
    speech: str = Field(description="what the robot should say ('' = nothing)")
    speech_confidence: float
    dry_run: bool = Field(description="true: computed for inspection, not to be executed")
    safety: dict = Field(description="what the safety layer changed")
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


async def answer(runner: PolicyRunner, settings: ServerSettings, data, client: str | None) -> dict:
    """One decoded request (a dict of observation fields) -> the policy's reply."""
    request, ignored = parse_request(data)
    if request.get("audio") is None and settings.audio_source is not None and runner.local.policy.config.use_audio:
        heard = settings.audio_source.read(AUDIO_WINDOW_S)
        request["audio"] = heard if len(heard) else None
    reply = await runner.infer(runner.local.prepare(request), client)
    reply["ignored_keys"] = ignored
    return reply


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
                         413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})
    async def predict(request: Request):
        t0 = time.perf_counter()
        if not _auth_ok(settings, request.headers.get("authorization")):
            return reject("unauthorized", 401, "missing or wrong bearer token")
        length = int(request.headers.get("content-length") or 0)
        body = b"" if length > settings.max_request_bytes else await request.body()
        if max(length, len(body)) > settings.max_request_bytes:
            return reject("too_large", 413, f"request is {max(length, len(body))} bytes, the limit is "
                          f"{settings.max_request_bytes}")
        try:
            data = decode_body(request.headers.get("content-type", ""), body)
            out = await answer(runner, settings, data, request.headers.get("x-client-id"))
        except (InputError, wire.WireError) as e:
            return reject("bad_input", 422 if isinstance(e, InputError) else 400, str(e))
        except (SafetyError, Superseded) as e:
            return reject("unsafe" if isinstance(e, SafetyError) else "superseded", 409, str(e))
        metrics.requests.labels("http").inc()
        metrics.request.labels("http").observe(time.perf_counter() - t0)
        if request.headers.get("accept", "").startswith(MSGPACK):
            return Response(wire.packb(out), media_type=MSGPACK)
        out["actions"] = np.asarray(out["actions"], np.float32).round(6).tolist()
        return out

    @app.post("/reload", summary="Swap the checkpoint without dropping connections (token required)",
              responses={401: {"model": ErrorResponse}, 400: {"model": ErrorResponse}})
    async def reload(request: Request):
        if not settings.token or not _auth_ok(settings, request.headers.get("authorization")):
            return reject("unauthorized", 401, "reload needs the server's token (start neon-serve with --token)")
        try:
            path = (await request.json())["model"]
        except Exception:
            return reject("bad_input", 400, 'body must be JSON {"model": "<checkpoint folder or Hub id>"}')
        try:
            return await asyncio.to_thread(runner.reload, path)
        except Exception as e:
            return reject("reload_failed", 400, f"{type(e).__name__}: {e}")

    @app.websocket("/ws")
    @app.websocket("/")  # openpi's WebsocketClientPolicy connects to the bare host:port
    async def ws(socket: WebSocket):
        await serve_socket(socket, runner, settings, metrics)

    return app


async def serve_socket(socket: WebSocket, runner: PolicyRunner, settings: ServerSettings, metrics: Metrics) -> None:
    """The openpi protocol: metadata on connect, then one msgpack observation -> one reply (or an error map)."""
    header = socket.headers.get("authorization")
    await socket.accept()
    authed = _auth_ok(settings, header)
    await socket.send_bytes(wire.packb({**metadata(runner, settings), "needs_token": not authed}))
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
                        await socket.send_bytes(wire.packb({"authenticated": True}))
                        continue
                    metrics.rejected.labels("unauthorized").inc()
                    await socket.send_bytes(wire.packb({"error": "unauthorized",
                                                        "detail": "send {'token': ...} or an Authorization header"}))
                    continue
                out = await answer(runner, settings, data, client)
                metrics.requests.labels("ws").inc()
                metrics.request.labels("ws").observe(time.perf_counter() - t0)
                await socket.send_bytes(wire.packb(out))
            except (InputError, wire.WireError, SafetyError, Superseded, json.JSONDecodeError) as e:
                reason = {SafetyError: "unsafe", Superseded: "superseded"}.get(type(e), "bad_input")
                metrics.rejected.labels(reason).inc()
                await socket.send_bytes(wire.packb({"error": reason, "detail": str(e)}))
    except WebSocketDisconnect:
        pass
