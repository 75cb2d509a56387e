"""RemotePolicy: the runtime's `infer` interface (see `neon_runtime.policy`) on a running neon-serve.

    policy = RemotePolicy("ws://127.0.0.1:8000/ws", token=os.environ.get("NEON_TOKEN"))
    policy.metadata()["dry_run"]      # the server's settings, read from its greeting
    reply = policy.infer({"image": frame, "instruction": "wave", "state": joints, "timestamp": time.time()})

It speaks the server's openpi-compatible WebSocket protocol (msgpack-numpy,
metadata on connect). Replies come back as the server made them: the server
already applied its safety layer, and its `dry_run` travels in every reply.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from neon_runtime import wire


class RemoteError(RuntimeError):
    """The server refused a request or cannot be used; the message carries its reason."""


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
    def __init__(self, url: str, token: str | None = None, open_timeout_s: float = 10.0):
        import websockets.sync.client as ws_client

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

    def infer(self, request: dict) -> dict:
        self.ws.send(wire.packb({k: v for k, v in request.items() if v is not None}))
        reply = wire.unpackb(self.ws.recv())
        if "error" in reply:
            raise RemoteError(f"server: {reply['error']}: {reply['detail']}")
        return reply

    def close(self) -> None:
        self.ws.close()
