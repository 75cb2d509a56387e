"""RemotePolicy: the runtime's `infer` interface (see `neon_runtime.policy`) on a running neon-serve.

    policy = RemotePolicy("ws://127.0.0.1:8000/ws", token=os.environ.get("NEON_TOKEN"))
    policy.metadata()["dry_run"]      # the server's settings, read from its greeting
    reply = policy.infer({"image": frame, "instruction": "wave", "state": joints, "timestamp": time.time()})

    reply = policy.infer({"state": joints_now, "timestamp": time.time()}, reuse_features=True)  # heads only

It speaks the server's openpi-compatible WebSocket protocol (msgpack-numpy,
metadata on connect). Replies come back as the server made them: the server
already applied its safety layer, and its `dry_run` travels in every reply.

Every request carries this client's `client_id` (given, or made up once), so the server keeps the backbone
features of its full requests and a light request (`reuse_features=True`: state, eef, lidar, prefix; no image)
runs only the heads on them (see `neon_runtime.server`). One connection answers one request at a time:
`sibling()` opens another with the same client_id (a feature-refresh thread beside the control loop).
"""

from __future__ import annotations

import uuid
import warnings
from pathlib import Path

from neon_runtime import wire


class RemoteError(RuntimeError):
    """The server refused a request or cannot be used; the message carries its reason, `reason` the server's
    error code ("no_features", "unsafe", "bad_input", ...) when it gave one."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


def read_token(path: str | Path) -> str:
    """The token in a file: its first non-empty line, `NEON_TOKEN=` stripped (so neon-serve's systemd
    EnvironmentFile can be shared)."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    except OSError as e:
        raise RemoteError(f"cannot read the token file {path}: {e.strerror}") from None
    if not lines:
        raise RemoteError(f"the token file {path} is empty")
    return lines[0].removeprefix("NEON_TOKEN=").strip().strip("'\"")


class RemotePolicy:
    def __init__(self, url: str, token: str | None = None, open_timeout_s: float = 10.0, client_id: str | None = None):
        import websockets.sync.client as ws_client

        self.client_id = client_id or f"remote-{uuid.uuid4().hex[:12]}"
        self._token, self._open_timeout_s = token, open_timeout_s
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            with warnings.catch_warnings():  # held open for the client's life (not a `with` block), closed in close()
                warnings.simplefilter("ignore", DeprecationWarning)
                self.ws = ws_client.connect(url, compression=None, max_size=None, additional_headers=headers,
                                            open_timeout=open_timeout_s)
                self._metadata = wire.unpackb(self.ws.recv())
        except (OSError, TimeoutError) as e:
            raise RemoteError(f"cannot connect to neon-serve at {url}: {e}") from None
        self.url = url
        if self._metadata.get("needs_token"):
            self.ws.close()
            raise RemoteError(f"{url} needs a token (pass token=, or the ROS parameter token)")

    def metadata(self) -> dict:
        return self._metadata

    def warm_up(self) -> None:
        """Nothing to do: the server warmed its model up before it said it was ready."""

    def infer(self, request: dict, reuse_features: bool = False) -> dict:
        """The server's reply to one request. `reuse_features`: a light request (no image or audio; the state,
        eef, lidar, prefix and timestamp it carries) on the features of this client's last full request."""
        message = {"client_id": self.client_id, **{k: v for k, v in request.items() if v is not None}}
        if reuse_features:
            message["reuse_features"] = True
        self.ws.send(wire.packb(message))
        reply = wire.unpackb(self.ws.recv())
        if "error" in reply:
            raise RemoteError(f"server: {reply['error']}: {reply['detail']}", reply["error"])
        return reply

    def tick(self, state, timestamp: float | None = None, **fields) -> dict:
        """A light request: `state` (and eef, lidar, prefix) on this client's newest features on the server."""
        return self.infer({"state": state, "timestamp": timestamp, **fields}, reuse_features=True)

    def sibling(self) -> RemotePolicy:
        """Another connection to the same server under the same client_id (so it shares the stored features)."""
        return RemotePolicy(self.url, self._token, self._open_timeout_s, self.client_id)

    def close(self) -> None:
        self.ws.close()
