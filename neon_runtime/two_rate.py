"""Two-rate control: backbone features refreshed in the background, heads at the control rate on fresh state.

    runner = TwoRateRunner(LocalPolicy(policy, safety), feature_hz=5.0)     # in-process (ROS node, G1 bridge)
    runner = TwoRateRunner(RemotePolicy("ws://host:8000/ws"), feature_hz=5.0)  # against neon-serve
    runner.observe(image=frame, instruction="wave", timestamp=t_frame)      # every camera frame, any thread
    reply = runner.heads(state=joints, timestamp=t_state)                   # at >= 30 Hz: heads only
    runner.close()

A background thread encodes the newest camera frame + instruction (+ audio) at most `feature_hz` times a
second (a frame is encoded once; no new frame, no backbone pass). `heads` runs only the heads on the newest
features with the state it is given, so the chunk always starts from where the robot is; it goes through
the same safety layer as a full request (a stale state timestamp is refused, none is a dry run, features
older than `max_feature_age_s` are refused with `FeaturesUnavailable`, or `RemoteError` "no_features").

In-process it calls `LocalPolicy.encode` / `LocalPolicy.infer(request, features=)`; against a server the
refresh thread sends full requests on a second connection (`RemotePolicy.sibling`, same client_id) and a
heads pass is a light request (`reuse_features`), so it never waits behind a backbone pass on the wire.
"""

from __future__ import annotations

import logging
import threading
import time

from neon_runtime.policy import FeaturesUnavailable, LocalPolicy

log = logging.getLogger(__name__)


class TwoRateRunner:
    def __init__(self, policy, feature_hz: float = 5.0, start: bool = True):
        """`policy`: a LocalPolicy (in-process) or a RemotePolicy (neon_runtime.client) on a neon-serve."""
        if not feature_hz > 0:
            raise ValueError(f"feature_hz must be positive, got {feature_hz}")
        self.policy, self.feature_period_s = policy, 1.0 / feature_hz
        self.local = isinstance(policy, LocalPolicy)
        self._refresher = None if self.local else policy.sibling()
        self._lock = threading.Lock()  # guards the newest frame and the newest features
        self._frame: dict | None = None  # the newest camera observation (image, instruction, audio, timestamp)
        self._frame_seq = self._encoded_seq = 0
        self._features = None  # Features (in-process), or the server's description of its stored ones
        self._proprio: dict = {}  # the newest heads pass's state, eef, lidar (a full request to a server needs a state)
        self._refreshing = threading.Lock()  # one backbone pass at a time (the thread, or a caller's refresh())
        self._fresh = threading.Condition(self._lock)
        self.refreshes = 0  # backbone passes made
        self.last_error: Exception | None = None  # the refresh thread's last failure (cleared by a success)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="neon-features", daemon=True)
        if start:
            self._thread.start()

    # ------------------------------------------------------------------ the camera side
    def observe(self, image, instruction: str, audio=None, timestamp: float | None = None, state=None) -> None:
        """The newest camera frame and instruction (`timestamp`: the frame's Unix time); encoded by the
        background thread at its next turn. Thread-safe, never blocks on the model. `state`: only for a server
        before the first heads pass (its full requests carry the newest heads pass's state)."""
        with self._lock:
            self._frame = {"image": image, "instruction": instruction, "audio": audio, "timestamp": timestamp}
            if state is not None:
                self._proprio = {**self._proprio, "state": state}
            self._frame_seq += 1

    def refresh(self) -> bool:
        """Encode the newest frame now, if it has not been (True when a backbone pass ran)."""
        with self._refreshing:
            with self._lock:
                frame, seq, proprio = self._frame, self._frame_seq, self._proprio
            if frame is None or seq == self._encoded_seq:
                return False
            if self.local:
                features = self.policy.encode(frame)
            else:  # a full request: the server keeps its features under our client_id
                request = {k: v for k, v in {**proprio, **frame}.items() if v is not None}
                features = self._refresher.infer(request)["features"]
            with self._lock:
                self._features, self._encoded_seq = features, seq
                self.refreshes += 1
                self._fresh.notify_all()
            return True

    def wait_for_features(self, timeout_s: float = 30.0) -> bool:
        """Block until the first features exist (True) or `timeout_s` passes (False)."""
        with self._lock:
            return self._fresh.wait_for(lambda: self._features is not None, timeout_s)

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.refresh()
                self.last_error = None
            except Exception as e:  # a bad frame or a server hiccup: ticks use the last features until they age out
                if str(e) != str(self.last_error):
                    log.warning("feature refresh failed: %s: %s", type(e).__name__, e)
                self.last_error = e
            next_at = max(next_at + self.feature_period_s, time.monotonic())
            self._stop.wait(next_at - time.monotonic())

    # ------------------------------------------------------------------ the control side
    @property
    def features(self):
        """The newest features (in-process: `neon.policy.Features`; remote: the server's description)."""
        with self._lock:
            return self._features

    def heads(self, state, timestamp: float | None = None, eef=None, lidar=None, prefix=None) -> dict:
        """The policy's reply for this state on the newest features: only the heads run. Thread-safe."""
        request = {"state": state, "timestamp": timestamp, "eef": eef, "lidar": lidar, "prefix": prefix}
        request = {k: v for k, v in request.items() if v is not None}
        with self._lock:
            self._proprio = {k: v for k, v in request.items() if k in ("state", "eef", "lidar")}
        if self.local:
            features = self.features
            if features is None:
                raise FeaturesUnavailable("no backbone features yet: no camera frame has been encoded "
                                          "(call observe(), then wait_for_features())")
            return self.policy.infer(request, features)
        return self.policy.infer(request, reuse_features=True)

    tick = heads  # the old name

    def close(self) -> None:
        """Stop the refresh thread (after its current pass) and close the refresh connection."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        if self._refresher is not None:
            self._refresher.close()

    def __enter__(self) -> TwoRateRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
