"""The runtime's one policy interface, `infer(request) -> reply`, and the server's micro-batching runner.

    policy = LocalPolicy(NeonPolicy.from_pretrained(path), SafetyConfig())   # in-process
    policy = RemotePolicy("ws://127.0.0.1:8000/ws")                           # a neon-serve (client.py)
    reply = policy.infer({"image": frame, "instruction": "wave", "state": joints, "timestamp": time.time()})

A request holds the observation's fields (`neon.observation`; for a
prefix-conditioned model the committed `prefix` among them, see
`NeonPolicy.predict`) and an optional `timestamp` (Unix s); a reply holds
`actions` Float[(T, D)] (physical, through the safety layer), `joint_names`,
`fps`, `committed_steps`, `speech`, `speech_confidence`, `safety`, `dry_run`,
`observation_timestamp` and `server_timing`. `metadata()`
is the same on both sides. The safety layer runs once per deployment, in
`LocalPolicy`; a remote client takes the server's replies and `dry_run` as they are.

`PolicyRunner` serves a LocalPolicy to many clients from one inference thread:
it waits up to `max_wait_ms` for up to `max_batch` requests (a lone client
never waits), a client's newer observation replaces its queued one (the old
one is answered "superseded"), and `reload` swaps the policy between batches.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol


from neon.observation import Observation
from neon.policy import NeonPolicy
from neon_runtime.safety import SafetyConfig, SafetyError, SafetyLayer

log = logging.getLogger(__name__)


class Policy(Protocol):
    def infer(self, request: dict) -> dict: ...

    def metadata(self) -> dict: ...

    def warm_up(self) -> None: ...


class LocalPolicy:
    """A NeonPolicy in this process, behind the safety layer."""

    def __init__(self, policy: NeonPolicy, safety: SafetyConfig | None = None, source: str = ""):
        self.policy, self.source = policy, source
        self.safety_config = (safety or SafetyConfig()).validate()
        self.safety = SafetyLayer(policy.space, self.safety_config)
        self.untrained = policy.model.trained_steps <= 0
        if self.untrained:
            log.warning("%s: the heads are untrained (no training steps recorded): dry run only, every chunk is "
                        "marked not executable", source or "this model")

    def prepare(self, request: dict) -> tuple[Observation, float | None]:
        """Validate a request's fields (InputError) and refuse a stale one (SafetyError)."""
        fields = dict(request)
        timestamp = fields.pop("timestamp", None)
        self.safety.check_age(timestamp)
        return self.policy.observation(**fields), timestamp

    def run(self, prepared: list[tuple[Observation, float | None]]) -> list[dict | SafetyError]:
        """Replies for prepared requests, in one backbone forward; every chunk passes the safety layer
        (a chunk it refuses is answered with the SafetyError, the others are not held back by it)."""
        t0 = time.perf_counter()
        predictions = self.policy.predict_batch([obs for obs, _ in prepared])
        model_ms = round((time.perf_counter() - t0) * 1e3, 3)
        replies = []
        for (obs, timestamp), p in zip(prepared, predictions, strict=True):
            t1 = time.perf_counter()
            try:
                self.safety.check_age(timestamp)  # again: queueing and the forward pass count
                actions, report = self.safety.apply(p.actions, obs.state, p.fps)
            except SafetyError as e:
                replies.append(e)
                continue
            if timestamp is None:
                report.refuse(f"the request has no timestamp, so its age cannot be held to "
                              f"{self.safety_config.max_observation_age_s} s")
            if self.untrained:
                report.refuse("the heads are untrained (the checkpoint records no training steps)")
            timings = {**p.timings_ms, "safety": round((time.perf_counter() - t1) * 1e3, 3), "model_batch": model_ms,
                       "batch_size": len(prepared)}
            replies.append({"actions": actions, "joint_names": p.joint_names, "fps": p.fps,
                            "committed_steps": p.committed_steps,
                            "observation_timestamp": timestamp, "speech": p.speech,
                            "speech_confidence": p.speech_confidence, "safety": report.to_dict(),
                            "dry_run": not report.executable, "server_timing": timings})
        return replies

    def infer(self, request: dict) -> dict:
        reply = self.run([self.prepare(request)])[0]
        if isinstance(reply, SafetyError):
            raise reply
        return reply

    def metadata(self) -> dict:
        m, space = self.policy.model, self.policy.space
        return {
            "model": {"source": self.source, "backbone": m.config.backbone.model_id,
                      "trainable_parameters": m.parameter_counts()["total"], "norm_stats_source": m.norm_stats.source,
                      "trained_steps": m.trained_steps,
                      "heads": "torch" if self.policy.heads is None else "onnx",
                      "heads_provider": getattr(self.policy.heads, "provider", "pytorch")},
            "action_space": space.to_dict(),
            "num_action_steps": m.config.num_action_steps,
            "prefix_max_steps": m.config.prefix_max_steps,  # committed steps a request may carry (0: none)
            "modalities": {"image": True, "instruction": True, "state": True, "audio": m.config.use_audio,
                           "lidar": m.config.use_lidar, "eef": m.config.use_eef},
            "safety": asdict(self.safety_config),
            "dry_run": self.safety_config.dry_run or self.untrained,  # true: no chunk of this policy is executable
        }

    def warm_up(self) -> None:
        """Run the whole path once (the first forward is the slow one) before anything is executed."""
        self.infer(self.policy.example("warm up"))

    def reloaded(self, path: str | Path, force: bool = False, device: str | None = None) -> LocalPolicy:
        """The same deployment (safety, heads backend, backbone when it is the same) on another checkpoint.

        A checkpoint whose action space (joint names, limits, fps) differs from the one being served is
        refused unless `force`: the robot side was set up for this one.
        """
        from neon.model import NeonVLA

        new = NeonVLA.from_pretrained(path)
        old = self.policy.model
        a, b = old.action_space.to_dict(), new.action_space.to_dict()
        changed = [k for k in ("joints", "fps") if a[k] != b[k]]
        if changed and not force:
            raise ValueError(f"{path} has another action space ({' and '.join(changed)} differ from the one being "
                             'served); send "force": true to load it anyway')
        if old.backbone is not None and asdict(old.config.backbone) == asdict(new.config.backbone):
            new.backbone = old.backbone
            new.to(old.backbone.device).eval()
        else:
            new.load_backbone(device)
        heads = None
        if self.policy.heads is not None:  # keep serving with ONNX heads: the new checkpoint's export
            from neon_runtime.onnx_heads import OnnxHeads

            heads = OnnxHeads.beside(path)
        return LocalPolicy(NeonPolicy(new, heads), self.safety_config, str(path))


class Superseded(RuntimeError):
    """A newer observation from the same client replaced this one before it ran."""


@dataclass
class _Request:
    prepared: tuple[Observation, float | None]
    client: str | None
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)
    cancelled: bool = False


class PolicyRunner:
    def __init__(self, local: LocalPolicy, max_batch: int = 8, max_wait_ms: float = 5.0, metrics=None):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}")
        self.local = local
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1e3
        self.metrics = metrics
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._pending: dict[str, _Request] = {}
        self._lock = threading.Lock()  # guards _pending and policy swaps
        self._stop = threading.Event()
        self.ready = threading.Event()
        self.reloads = 0
        self._last_batch = 1
        self._thread = threading.Thread(target=self._loop, name="neon-inference", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ submission
    def submit(self, prepared: tuple[Observation, float | None], client: str | None = None) -> Future:
        req = _Request(prepared, client)
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

    async def infer(self, prepared: tuple[Observation, float | None], client: str | None = None) -> dict:
        return await asyncio.wrap_future(self.submit(prepared, client))

    def warm_up(self) -> None:
        """Run one request through the whole path before `ready` is set."""
        self.submit(self.local.prepare(self.local.policy.example("warm up"))).result(timeout=600)
        self.ready.set()

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
                local = self.local
            if self.metrics:
                self.metrics.queue_depth.set(self._queue.qsize())
            self._last_batch = len(live)
            if not live:
                continue
            t0 = time.perf_counter()
            try:
                replies = local.run([r.prepared for r in live])
            except Exception as e:
                log.exception("inference failed")
                for r in live:
                    r.future.set_exception(e)
                continue
            if self.metrics:
                self.metrics.batch_size.observe(len(live))
            for r, reply in zip(live, replies, strict=True):
                if isinstance(reply, SafetyError):
                    r.future.set_exception(reply)
                    continue
                reply["server_timing"]["queue"] = round((t0 - r.enqueued) * 1e3, 3)
                if self.metrics:
                    for stage in ("backbone", "audio", "heads", "postprocess", "safety", "queue"):
                        if stage in reply["server_timing"]:
                            self.metrics.stage.labels(stage).observe(reply["server_timing"][stage] / 1e3)
                r.future.set_result(reply)

    # ------------------------------------------------------------------ reload and shutdown
    def reload(self, path: str | Path, force: bool = False, device: str | None = None) -> dict:
        """Load a new checkpoint (reusing the loaded backbone when it is the same) and swap it in; on any
        failure the old one keeps serving."""
        new = self.local.reloaded(path, force, device)
        with self._lock:
            self.local = new
            self.reloads += 1
        log.info("reloaded checkpoint %s", path)
        return {"reloaded": str(path), "reloads": self.reloads}

    def close(self) -> None:
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout=5)
