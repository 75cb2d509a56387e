"""Runs the model off the event loop, micro-batching concurrent requests, behind the safety layer.

Requests go into a queue; one inference thread takes the first, waits up to
`max_wait_ms` for more (at most `max_batch`; no wait for a lone client whose
last batch was alone too), runs them as one backbone
forward, applies the safety layer to each chunk and resolves each request's
future on the event loop. A client that sends a new observation while its
previous one still waits in the queue replaces it (the newest observation
wins; the old request is answered "superseded"). `reload` swaps the model
between two batches: nothing in flight fails.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neon.inputs import Observation
from neon.model import NeonVLA
from neon_runtime.safety import SafetyConfig, SafetyLayer

log = logging.getLogger(__name__)


class Superseded(RuntimeError):
    """A newer observation from the same client replaced this one before it ran."""


@dataclass
class _Request:
    obs: Observation
    client: str | None
    timestamp: float | None
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)
    cancelled: bool = False


class PolicyRunner:
    def __init__(self, model: NeonVLA, safety: SafetyConfig | None = None, max_batch: int = 8,
                 max_wait_ms: float = 5.0, metrics=None, source: str = ""):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}")
        self.model, self.source = model, source
        self.safety_config = safety or SafetyConfig()
        self.safety = SafetyLayer(model.action_space, self.safety_config)
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1e3
        self.metrics = metrics
        self._queue: queue.Queue[_Request] = queue.Queue()
        self._pending: dict[str, _Request] = {}
        self._lock = threading.Lock()  # guards _pending and model swaps
        self._stop = threading.Event()
        self.ready = threading.Event()
        self.reloads = 0
        self._last_batch = 1
        self._thread = threading.Thread(target=self._loop, name="neon-inference", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ submission
    def submit(self, obs: Observation, client: str | None = None, timestamp: float | None = None) -> Future:
        req = _Request(obs, client, timestamp)
        with self._lock:
            if client is not None:
                old = self._pending.get(client)
                if old is not None and not old.cancelled:
                    old.cancelled = True
                    old.future.set_exception(Superseded("a newer observation from this client replaced this one"))
                    if self.metrics:
                        self.metrics.rejected.labels("superseded").inc()
                self._pending[client] = req
        self._queue.put(req)
        if self.metrics:
            self.metrics.queue_depth.set(self._queue.qsize())
        return req.future

    async def infer(self, obs: Observation, client: str | None = None, timestamp: float | None = None) -> dict:
        return await asyncio.wrap_future(self.submit(obs, client, timestamp))

    # ------------------------------------------------------------------ the inference thread
    def _take_batch(self) -> list[_Request]:
        first = self._queue.get()
        if first is None:
            return []
        batch, deadline = [first], time.perf_counter() + self.max_wait
        if self._queue.empty() and self._last_batch == 1:
            # A lone client: nothing queued behind it, and the last batch was alone too. Waiting would only add
            # latency; under load, requests pile up during each forward and are taken at once below.
            return batch
        while len(batch) < self.max_batch:
            left = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=max(0.0, left)) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._stop.set()
                break
            batch.append(item)
        return batch

    def _loop(self) -> None:
        while not self._stop.is_set():
            batch = self._take_batch()
            if not batch:
                break
            with self._lock:
                live = [r for r in batch if not r.cancelled]
                for r in live:
                    if r.client is not None and self._pending.get(r.client) is r:
                        del self._pending[r.client]
                model, safety = self.model, self.safety
            if self.metrics:
                self.metrics.queue_depth.set(self._queue.qsize())
            self._last_batch = len(live)
            if not live:
                continue
            try:
                t0 = time.perf_counter()
                preds = model.predict_batch([r.obs for r in live])
                model_ms = (time.perf_counter() - t0) * 1e3
            except Exception as e:
                log.exception("inference failed")
                for r in live:
                    r.future.set_exception(e)
                continue
            if self.metrics:
                self.metrics.batch_size.observe(len(live))
            for r, p in zip(live, preds, strict=True):
                try:
                    t1 = time.perf_counter()
                    actions, report = safety.apply(p.actions, r.obs.state, p.fps)
                    timings = dict(p.timings_ms)
                    timings["safety"] = round((time.perf_counter() - t1) * 1e3, 3)
                    timings["queue"] = round((t0 - r.enqueued) * 1e3, 3)
                    timings["model_batch"] = round(model_ms, 3)
                    timings["batch_size"] = len(live)
                    if self.metrics:
                        for stage in ("backbone", "audio", "heads", "postprocess", "safety", "queue"):
                            if stage in timings:
                                self.metrics.stage.labels(stage).observe(timings[stage] / 1e3)
                    r.future.set_result({
                        "actions": actions, "joint_names": p.joint_names, "fps": p.fps,
                        "observation_timestamp": r.timestamp, "speech": p.speech,
                        "speech_confidence": p.speech_confidence, "safety": report.to_dict(),
                        "dry_run": not report.executable, "server_timing": timings,
                    })
                except Exception as e:
                    r.future.set_exception(e)

    # ------------------------------------------------------------------ reload and shutdown
    def reload(self, path: str | Path) -> dict:
        """Load a new checkpoint (reusing the loaded backbone when it is the same) and swap it in."""
        new = NeonVLA.from_pretrained(path)
        old = self.model
        if old.heads_runtime is not None:  # keep serving with ONNX heads: the new checkpoint's export
            from neon.model import resolve_checkpoint
            from neon_runtime.onnx_heads import use_onnx_heads

            use_onnx_heads(new, resolve_checkpoint(str(path), None))
        if old.backbone is not None and _same_backbone(old, new):
            new.backbone = old.backbone
            new.to(old.backbone.device).eval()
        else:
            new.load_backbone()
        safety = SafetyLayer(new.action_space, self.safety_config)
        with self._lock:
            self.model, self.safety, self.source = new, safety, str(path)
            self.reloads += 1
        log.info("reloaded checkpoint %s", path)
        return {"reloaded": str(path), "reloads": self.reloads}

    def close(self) -> None:
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout=5)


def _same_backbone(a: NeonVLA, b: NeonVLA) -> bool:
    from dataclasses import asdict

    return asdict(a.config.backbone) == asdict(b.config.backbone)


def chunk_to_list(actions: np.ndarray) -> list[list[float]]:
    return np.asarray(actions, dtype=np.float32).round(6).tolist()
