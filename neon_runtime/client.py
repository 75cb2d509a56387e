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
runs only the heads on them (see `neon_runtime.server`). The first full reply gives the client_id's key
(`features.key`); every later request carries it (`features_key`), so no other process can store features under
this client_id, nor have this client's light requests act on its camera view. One connection answers one request at
a time: `sibling()` opens another with the same client_id and key (a feature-refresh thread beside the control
loop).

A reply that does not come within `reply_timeout_s` raises RemoteError and drops the connection (a late reply
must not be taken for the next request's); the next request connects again, so a restarted server is picked up.
"""

from __future__ import annotations

import uuid
import warnings
from pathlib import Path

from websockets.exceptions import ConnectionClosed

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


def executable_action_space(meta: dict, url: str):
    """The G1ActionSpace a server's metadata describes, or RemoteError when nothing it sends could move the arms:
    arm joints missing from its action space, or a dry-run server (--dry-run, or untrained heads). neon-g1 and
    neon-sim refuse such a server before anything moves."""
    from neon.action_space import ARM_JOINTS, G1ActionSpace, missing_arm_joints

    missing = missing_arm_joints(j.get("name") for j in meta.get("action_space", {}).get("joints", []))
    if missing:
        raise RemoteError(f"the action space of the server at {url} lacks arm joint(s) {', '.join(missing)}: the arms "
                          f"are driven through all {len(ARM_JOINTS)} ({', '.join(ARM_JOINTS[:2])}, ...)", "no_arms")
    if meta.get("dry_run", True):
        raise RemoteError(f"the server at {url} is dry-run only (its metadata says dry_run: true: started with "
                          "--dry-run, or its heads are untrained): none of its chunks is executable. Serve a trained "
                          "checkpoint without --dry-run", "dry_run")
    return G1ActionSpace.from_dict(meta["action_space"])


class RemotePolicy:
    def __init__(self, url: str, token: str | None = None, open_timeout_s: float = 10.0, client_id: str | None = None,
                 reply_timeout_s: float = 10.0, _keys: dict | None = None):
        if not reply_timeout_s > 0:
            raise ValueError(f"reply_timeout_s must be positive, got {reply_timeout_s}")
        self.client_id = client_id or f"remote-{uuid.uuid4().hex[:12]}"
        self.url, self._token, self._open_timeout_s, self.reply_timeout_s = url, token, open_timeout_s, reply_timeout_s
        self.ws, self._closed = None, False
        self._keys = {} if _keys is None else _keys  # "features": the key of our newest stored features (siblings share)
        self._connect()

    def _connect(self) -> None:
        import websockets.sync.client as ws_client

        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        try:
            with warnings.catch_warnings():  # held open for the client's life (not a `with` block), closed in close()
                warnings.simplefilter("ignore", DeprecationWarning)
                ws = ws_client.connect(self.url, compression=None, max_size=None, additional_headers=headers,
                                       open_timeout=self._open_timeout_s)
                self._metadata = wire.unpackb(ws.recv(timeout=self._open_timeout_s))
        except (OSError, TimeoutError) as e:
            raise RemoteError(f"cannot connect to neon-serve at {self.url}: {e}") from None
        if self._metadata.get("needs_token"):
            ws.close()
            raise RemoteError(f"{self.url} needs a token (pass token=; neon-ros and neon-g1: --token-file / the "
                              "token_file parameter, or $NEON_TOKEN)")
        self.ws = ws

    def metadata(self) -> dict:
        return self._metadata

    def warm_up(self) -> None:
        """Nothing to do: the server warmed its model up before it said it was ready."""

    def infer(self, request: dict, reuse_features: bool = False) -> dict:
        """The server's reply to one request. `reuse_features`: a light request (no image or audio; the state,
        eef, lidar, prefix and timestamp it carries) on the features of this client's last full request.
        RemoteError: the server refused it, no reply within reply_timeout_s, or the connection was lost."""
        message = {"client_id": self.client_id, **{k: v for k, v in request.items() if v is not None}}
        if reuse_features:
            message["reuse_features"] = True

        if self._keys.get("features"):  # the key our client_id's features were given: proves they are ours
            message["features_key"] = self._keys["features"]
        if self._closed:
            raise RemoteError(f"this client of {self.url} was closed")
        if self.ws is None:  # dropped after a timeout or a failure: connect again (a restarted server)
            self._connect()
        try:
            self.ws.send(wire.packb(message))
            reply = wire.unpackb(self.ws.recv(timeout=self.reply_timeout_s))
        except TimeoutError:
            self._drop()
            raise RemoteError(f"no reply from {self.url} within {self.reply_timeout_s:g} s (the connection is "
                              "dropped; the next request connects again)", "timeout") from None
        except (OSError, ConnectionClosed) as e:
            self._drop()
            raise RemoteError(f"the connection to {self.url} failed: {e}", "connection") from None
        if "error" in reply:
            raise RemoteError(f"server: {reply['error']}: {reply['detail']}", reply["error"])
        key = (reply.get("features") or {}).get("key")
        if key:
            self._keys["features"] = key
        return reply

    def heads(self, state, timestamp: float | None = None, **fields) -> dict:
        """A light request, the heads only: `state` (and eef, lidar, prefix) on this client's newest features on the
        server."""
        return self.infer({"state": state, "timestamp": timestamp, **fields}, reuse_features=True)

    tick = heads  # the old name

    def sibling(self) -> RemotePolicy:
        """Another connection to the same server under the same client_id (so it shares the stored features)."""
        return RemotePolicy(self.url, self._token, self._open_timeout_s, self.client_id, self.reply_timeout_s,
                            self._keys)

    def _drop(self) -> None:
        ws, self.ws = self.ws, None
        if ws is not None:
            ws.close()

    def close(self) -> None:
        self._closed = True
        self._drop()
