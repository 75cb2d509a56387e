"""The runtime's one policy interface, `infer(request) -> reply`, and the server's micro-batching runner.

    policy = LocalPolicy(NeonPolicy.from_pretrained(path), SafetyConfig())   # in-process
    policy = RemotePolicy("ws://127.0.0.1:8000/ws")                           # a neon-serve (client.py)
    reply = policy.infer({"image": frame, "instruction": "wave", "state": joints, "timestamp": time.time()})

A request holds the observation's fields (`neon.observation`; for a
prefix-conditioned model the committed `prefix` among them, see
`NeonPolicy.predict`) and an optional `timestamp` (Unix s); a reply holds
`actions` Float[(T, D)] (physical, through the safety layer), `joint_names`,
`fps`, `committed_steps`, `speech`, `speech_confidence`, `safety`, `dry_run`,
`observation_timestamp`, `features` (the backbone features the chunk was computed from: `id`, `age_s`,
`observation_timestamp`, `instruction`, `reused`) and `server_timing`. `metadata()`
is the same on both sides. The safety layer runs once per deployment, in
`LocalPolicy`; a remote client takes the server's replies and `dry_run` as they are.

Two-rate control (`neon_runtime.two_rate`): `LocalPolicy.encode` computes an observation's backbone features
once and `infer(request, features=)` runs only the heads on them with the request's fresh state, through the
same safety layer; features older than `SafetyConfig.max_feature_age_s`, or from a model since reloaded, are
refused (`FeaturesUnavailable`). The runner keeps each named client's newest features for the server's
light requests (`PolicyRunner.reused_features`).

`PolicyRunner` serves a LocalPolicy to many clients from one inference thread (and a
second one for heads-only requests, so they never wait behind a backbone forward):
it waits up to `max_wait_ms` for up to `max_batch` requests (a lone client
never waits), a client's newer observation replaces its queued one (the old
one is answered "superseded"; full and heads-only requests separately), and
`reload` swaps the policy between batches and drops every stored feature.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import queue
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, InvalidStateError
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

from neon.observation import Observation
from neon.policy import Features, NeonPolicy
from neon_runtime.safety import SafetyConfig, SafetyError, SafetyLayer

log = logging.getLogger(__name__)


class Policy(Protocol):
    def infer(self, request: dict) -> dict: ...

    def metadata(self) -> dict: ...

    def warm_up(self) -> None: ...


class FeaturesUnavailable(SafetyError):
    """A heads-only request without usable backbone features (none for this client, too old, from a model since
    reloaded): never answered without vision; the message says what to send."""


class Prepared(NamedTuple):
    """A validated request, ready for `LocalPolicy.run`."""

    observation: Observation
    timestamp: float | None  # Unix s, None: not executable
    features: Features | None = None  # reused backbone features: only the heads run
    keep_as: str | None = None  # a client_id to keep this request's features under (`PolicyRunner`)
    features_key: str | None = None  # the key that client_id's stored features were given (`FeatureStore`)


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

    def prepare(self, request: dict, features: Features | None = None) -> Prepared:
        """Validate a request's fields (InputError) and refuse a stale one (SafetyError). With `features`, the
        request carries no image or audio: only the heads will run, on these (refused when unusable)."""
        fields = dict(request)
        timestamp = fields.pop("timestamp", None)
        self.safety.check_age(timestamp)
        if features is not None:
            self.check_features(features)
        return Prepared(self.policy.observation(features, **fields), timestamp, features)

    def check_features(self, features: Features) -> float:
        """Age in seconds of reusable features; FeaturesUnavailable when they are too old or not this model's."""
        if not features.belongs_to(self.policy):
            raise FeaturesUnavailable("the backbone features were computed by a model that has since been reloaded: "
                                      "send a full observation (image + instruction) first")
        age, limit = features.age_s(), self.safety_config.max_feature_age_s
        if age > limit:
            raise FeaturesUnavailable(f"the backbone features are {age:.3f} s old (from the image's timestamp), older "
                                      f"than the {limit} s limit (max_feature_age_s): send a full observation "
                                      "(image + instruction) to refresh them")
        return age

    def encode(self, request: dict) -> Features:
        """The backbone's features for a request's image, instruction (and audio), stamped with its `timestamp`:
        for `infer(..., features=)` until the next camera frame."""
        return self.policy.encode(request.get("image"), request.get("instruction", ""), request.get("audio"),
                                  request.get("timestamp"))

    def run(self, prepared: list[Prepared], kept: list | None = None) -> list[dict | SafetyError]:
        """Replies for prepared requests: full ones in one backbone forward, heads-only ones (reused features)
        in one heads pass; every chunk passes the safety layer (a chunk it refuses is answered with the
        SafetyError, the others are not held back by it). `kept`, when given, receives each reply's Features
        (the reusable ones of full requests, stamped with their timestamp; None for the others)."""
        predictions, model_ms, errors = [None] * len(prepared), [0.0] * len(prepared), {}
        fresh = [i for i, p in enumerate(prepared) if p.features is None]
        reused = []
        for i, p in enumerate(prepared):
            if p.features is not None:
                try:
                    self.check_features(p.features)  # again: queueing counts, and a reload may have come between
                    reused.append(i)
                except SafetyError as e:
                    errors[i] = e
        for group, features in ((fresh, None), (reused, [prepared[i].features for i in reused])):
            if not group:
                continue
            t0 = time.perf_counter()
            observations = [prepared[i].observation for i in group]
            out = (self.policy.predict_batch(observations) if features is None
                   else self.policy.predict_batch(observations, features))
            ms = round((time.perf_counter() - t0) * 1e3, 3)
            for i, p in zip(group, out, strict=True):
                predictions[i], model_ms[i] = p, ms
        replies = []
        for i, ((obs, timestamp, reuse, *_), p) in enumerate(zip(prepared, predictions, strict=True)):
            if kept is not None:
                kept.append(None)
            if i in errors:
                replies.append(errors[i])
                continue
            t1 = time.perf_counter()
            try:
                self.safety.check_age(timestamp)  # again: queueing and the forward pass count
                actions, report = self.safety.apply(p.actions, obs.state, p.fps)
            except SafetyError as e:
                replies.append(e)
                continue
            features = reuse or (p.features.stamped(timestamp) if p.features is not None else None)
            if kept is not None and reuse is None:
                kept[-1] = features
            if timestamp is None:
                report.refuse(f"the request has no timestamp, so its age cannot be held to "
                              f"{self.safety_config.max_observation_age_s} s")
            if self.untrained:
                report.refuse("the heads are untrained (the checkpoint records no training steps)")
            timings = {**p.timings_ms, "safety": round((time.perf_counter() - t1) * 1e3, 3),
                       "model_batch": model_ms[i], "batch_size": len(prepared)}
            used = None if features is None else {**features.describe(), "reused": reuse is not None}
            replies.append({"actions": actions, "joint_names": p.joint_names, "fps": p.fps,
                            "committed_steps": p.committed_steps,
                            "observation_timestamp": timestamp, "speech": p.speech,
                            "speech_confidence": p.speech_confidence, "safety": report.to_dict(),
                            "dry_run": not report.executable, "features": used, "server_timing": timings})
        return replies

    def infer(self, request: dict, features: Features | None = None) -> dict:
        """One reply; with `features` (from `encode`), only the heads run, on them and the request's state."""
        reply = self.run([self.prepare(request, features)])[0]
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
            "reuse_features": True,  # light requests: state only, on the client's stored backbone features
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
        deployed = old.config.backbone  # this deployment's encode path stays (ConfigError where it cannot)
        serve_backbone_as(new.config.backbone, deployed.encode, deployed.compile_mode)
        a, b = old.action_space.to_dict(), new.action_space.to_dict()
        changed = [k for k in ("joints", "fps") if a[k] != b[k]]
        if changed and not force:
            raise ValueError(f"{path} has another action space ({' and '.join(changed)} differ from the one being "
                             'served); send "force": true to load it anyway')
        wanted = asdict(new.config.backbone)
        if old.backbone is not None and wanted["load_in_4bit"] == "auto":  # settles on this device as the old did
            wanted["load_in_4bit"] = old.backbone.info.quantized_4bit
        if old.backbone is not None and asdict(old.config.backbone) == wanted:
            new.backbone = old.backbone
            new.record_backbone_precision()
            new.to(old.backbone.device).eval()
        else:
            new.load_backbone(device)
        heads = None
        if deployed.compile_mode != "none":  # captured heads: the new model's, captured the same way
            from neon.predictor import compiled_heads

            heads = compiled_heads(new, deployed.compile_mode)
        elif self.policy.heads is not None:  # keep serving with ONNX heads: the new checkpoint's export
            from neon_runtime.onnx_heads import OnnxHeads

            heads = OnnxHeads.beside(path)
        return LocalPolicy(NeonPolicy(new, heads), self.safety_config, str(path))


def serve_backbone_as(cfg, encode: str | None, compile_mode: str = "none") -> None:
    """Set how a loaded checkpoint's `BackboneConfig` encodes while it is served: `encode` None keeps the
    checkpoint's. Neither setting changes the features (tests/test_static_encode.py), so the heads see what they
    were trained on. Raises ConfigError where the backbone cannot (e.g. static on Cosmos-Reason2)."""
    if encode is not None:
        cfg.encode = encode
    cfg.compile_mode = compile_mode
    cfg.validate()


class Superseded(RuntimeError):
    """A newer observation from the same client replaced this one before it ran."""


class Overloaded(RuntimeError):
    """The request lane is full: try again shortly (the server answers 503 with Retry-After)."""

    retry_after_s = 1


def _settle(future: Future, result=None, error: BaseException | None = None) -> None:
    """Give a request's future its reply or error; one already settled or cancelled (its client gave up) is left as
    it is, so a lane's thread never dies of it."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


def _may_use(owner: str | None, key: str | None) -> bool:
    """A client_id whose owner key is `owner` (None: free) may be used with `key` (compared in constant time)."""
    return owner is None or (key is not None and hmac.compare_digest(str(key), owner))


class FeatureStore:
    """The newest backbone features per client_id, for at most `max_clients` clients (the one refreshed longest
    ago is dropped first) and at most `max_age_s` old (older ones are dropped). Thread-safe.

    A client_id belongs to whoever stored features under it first: the server issues it a key (128 random bits,
    back in the reply as `features.key`) that its later requests carry as `features_key`. A full request under a
    client_id whose stored features are another's (a missing or wrong key) is refused until those features age out;
    so is a light request naming a wrong key. Anyone with the server's token could otherwise replace a robot's
    features and swap the camera view its light requests act on."""

    def __init__(self, max_clients: int = 64, max_age_s: float = float("inf")):
        if max_clients < 1 or not max_age_s > 0:
            raise ValueError(f"max_feature_clients must be >= 1 and max_age_s > 0, got {max_clients}, {max_age_s}")
        self.max_clients, self.max_age_s = max_clients, max_age_s
        self._items: OrderedDict[str, tuple[Features, str]] = OrderedDict()
        self._lock = threading.Lock()

    def _owner_key(self, client: str) -> str | None:
        """The key of the client_id's live entry (None: free). Call with the lock held."""
        entry = self._items.get(client)
        return None if entry is None or entry[0].age_s() > self.max_age_s else entry[1]

    def check_owner(self, client: str, key: str | None) -> None:
        """FeaturesUnavailable unless a full request carrying `key` may store features under `client`."""
        with self._lock:
            owner = self._owner_key(client)
        if not _may_use(owner, key):
            raise FeaturesUnavailable(f"client_id {client!r} is in use: its stored features belong to another "
                                      "client (send the features_key your first full request got back, or another "
                                      f"client_id; it frees up once they are {self.max_age_s:g} s old)")

    def put(self, client: str, features: Features, key: str | None = None) -> str | None:
        """Keep `features` for `client` -> its key (the one given, or a new one when the client_id was free); None
        when the client_id turned out to be another's (nothing stored)."""
        with self._lock:
            owner = self._owner_key(client)
            if not _may_use(owner, key):
                return None
            key = owner or secrets.token_hex(16)
            self._items[client] = (features, key)
            self._items.move_to_end(client)
            while len(self._items) > self.max_clients:
                self._items.popitem(last=False)
            for old in [c for c, (f, _) in self._items.items() if c != client and f.age_s() > self.max_age_s]:
                del self._items[old]
        return key

    def get(self, client: str | None, key: str | None = None) -> Features:
        if not client:
            raise FeaturesUnavailable("a request that reuses features needs a client_id (the one its full "
                                      "observations were sent with)")
        with self._lock:
            features, stored_key = self._items.get(client, (None, None))
        if features is None:
            raise FeaturesUnavailable(f"no stored features for client_id {client!r} (none sent yet, dropped for "
                                      f"newer clients beyond {self.max_clients} or for age, or by a reload): send a "
                                      "full observation (image + instruction) with this client_id first")
        if key is not None and not hmac.compare_digest(str(key), stored_key):
            raise FeaturesUnavailable(f"the features stored for client_id {client!r} belong to another client (its "
                                      "features_key differs): send a full observation under your own client_id")
        return features

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __contains__(self, client: str) -> bool:
        return client in self._items

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class _Request:
    prepared: Prepared
    client: str | None
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)
    cancelled: bool = False

    @property
    def key(self) -> tuple[str, bool] | None:
        """Newest-wins key: a client's heads-only ticks never supersede its feature refreshes, nor the reverse."""
        return None if self.client is None else (self.client, self.prepared.features is not None)


class PolicyRunner:
    """Requests -> replies on two lanes (full requests; heads-only ones), each a bounded queue (`max_queue`: beyond
    it `submit` raises Overloaded) and a thread that batches."""

    def __init__(self, local: LocalPolicy, max_batch: int = 8, max_wait_ms: float = 5.0, metrics=None,
                 max_feature_clients: int = 64, max_queue: int = 64):
        if max_batch < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be >= 1 and max_wait_ms >= 0, got {max_batch}, "
                             f"{max_queue}, {max_wait_ms}")
        self.local = local
        self.features = FeatureStore(max_feature_clients, local.safety_config.max_feature_age_s)
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1e3
        self.metrics = metrics
        # Two lanes, keyed by "heads only": light requests never wait behind a backbone forward.
        self.max_queue = max_queue
        self._queues: dict[bool, queue.Queue[_Request | None]] = {lane: queue.Queue(max_queue) for lane in (False, True)}
        self._pending: dict[tuple[str, bool], _Request] = {}
        self._lock = threading.Lock()  # guards _pending and policy swaps
        self._stop = threading.Event()
        self.ready = threading.Event()
        self.reloads = 0
        self._last_batch = {False: 1, True: 1}
        self._threads = [threading.Thread(target=self._loop, args=(lane,), daemon=True,
                                          name="neon-heads" if lane else "neon-inference") for lane in (False, True)]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ submission
    def submit(self, prepared: Prepared, client: str | None = None) -> Future:
        """Queue a prepared request; a `prepared.keep_as` client_id keeps its features for later light requests.
        Overloaded when its lane already holds `max_queue` requests."""
        req = _Request(Prepared(*prepared), client)
        lane = self._queues[req.prepared.features is not None]
        with self._lock:
            try:
                lane.put_nowait(req)
            except queue.Full:
                which = "heads" if req.prepared.features is not None else "full-request"
                raise Overloaded(f"the {which} lane holds {self.max_queue} requests (max_queue): try again in "
                                 f"{Overloaded.retry_after_s} s") from None
            if client is not None:
                old = self._pending.get(req.key)
                if old is not None and not old.cancelled:
                    old.cancelled = True
                    _settle(old.future, error=Superseded("a newer observation from this client replaced this one"))
                    if self.metrics:
                        self.metrics.rejected.labels("superseded").inc()
                self._pending[req.key] = req
        if self.metrics:
            self.metrics.queue_depth.set(self._depth())
        return req.future

    async def infer(self, prepared: Prepared, client: str | None = None) -> dict:
        return await asyncio.wrap_future(self.submit(prepared, client))

    def reused_features(self, client: str | None, key: str | None = None) -> Features:
        """The newest features kept for `client`, which must be the ones `key` names when given
        (FeaturesUnavailable otherwise)."""
        return self.features.get(client, key)

    def warm_up(self) -> None:
        """Run one request through the whole path before `ready` is set."""
        self.submit(self.local.prepare(self.local.policy.example("warm up"))).result(timeout=600)
        self.ready.set()

    # ------------------------------------------------------------------ the inference threads
    def _depth(self) -> int:
        return sum(q.qsize() for q in self._queues.values())

    def _take_batch(self, lane: bool) -> list[_Request]:
        q = self._queues[lane]
        first = q.get()
        if first is None:
            return []
        batch, deadline = [first], time.perf_counter() + self.max_wait
        if q.empty() and self._last_batch[lane] == 1:
            # A lone client: nothing queued behind it, and the last batch was alone too. Waiting would only add
            # latency; under load, requests pile up during each forward and are taken at once below.
            return batch
        while len(batch) < self.max_batch:
            left = deadline - time.perf_counter()
            try:
                item = q.get(timeout=max(0.0, left)) if left > 0 else q.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._stop.set()
                break
            batch.append(item)
        return batch

    def _loop(self, lane: bool) -> None:
        """One lane's thread: full requests (backbone + heads), or heads-only ones (`lane` True)."""
        while not self._stop.is_set():
            batch = self._take_batch(lane)
            if not batch:
                break
            with self._lock:
                live = [r for r in batch if not r.cancelled]
                for r in live:
                    if r.client is not None and self._pending.get(r.key) is r:
                        del self._pending[r.key]
                local = self.local
            if self.metrics:
                self.metrics.queue_depth.set(self._depth())
            self._last_batch[lane] = len(live)
            if not live:
                continue
            t0 = time.perf_counter()
            kept: list[Features | None] = []
            try:
                replies = local.run([r.prepared for r in live], kept)
            except Exception as e:
                log.exception("inference failed")
                for r in live:
                    _settle(r.future, error=e)
                continue
            if self.metrics:
                self.metrics.batch_size.observe(len(live))
            with self._lock:  # before the replies go out: a client's next light request finds them
                if local is self.local:  # not from a policy a reload has just replaced
                    for r, features, reply in zip(live, kept, replies, strict=True):
                        if features is not None and r.prepared.keep_as:
                            key = self.features.put(r.prepared.keep_as, features, r.prepared.features_key)
                            if key and isinstance(reply, dict) and reply.get("features"):
                                reply["features"]["key"] = key  # what its later requests carry
            for r, reply in zip(live, replies, strict=True):
                if isinstance(reply, SafetyError):
                    _settle(r.future, error=reply)
                    continue
                reply["server_timing"]["queue"] = round((t0 - r.enqueued) * 1e3, 3)
                if self.metrics:
                    for stage in ("backbone", "audio", "heads", "postprocess", "safety", "queue"):
                        if stage in reply["server_timing"]:
                            self.metrics.stage.labels(stage).observe(reply["server_timing"][stage] / 1e3)
                _settle(r.future, reply)

    # ------------------------------------------------------------------ reload and shutdown
    def reload(self, path: str | Path, force: bool = False, device: str | None = None) -> dict:
        """Load a new checkpoint (reusing the loaded backbone when it is the same) and swap it in; on any
        failure the old one keeps serving."""
        new = self.local.reloaded(path, force, device)
        with self._lock:
            self.local = new
            self.reloads += 1
            self.features.clear()  # the old model's features: its heads, not the new ones, were trained on them
        log.info("reloaded checkpoint %s", path)
        return {"reloaded": str(path), "reloads": self.reloads}

    def close(self) -> None:
        self._stop.set()
        for q in self._queues.values():
            try:
                q.put_nowait(None)  # wakes a waiting thread; a full lane's thread sees _stop after its batch
            except queue.Full:
                pass
        for t in self._threads:
            t.join(timeout=5)
