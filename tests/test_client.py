"""RemotePolicy against a WebSocket server on loopback that greets like neon-serve and then hangs: the reply timeout,
the dropped connection, and connecting again to a restarted server."""

import threading
import time

import pytest
from websockets.sync.server import serve

from neon_runtime import wire
from neon_runtime.client import RemoteError, RemotePolicy


class Server:
    """Greets with metadata; then answers each request with {"ok": n} unless `hang` is set (then never)."""

    def __init__(self, port: int = 0):
        self.hang, self.requests = threading.Event(), 0
        self.srv = serve(self._handle, "127.0.0.1", port)
        self.port = self.srv.socket.getsockname()[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def _handle(self, ws):
        ws.send(wire.packb({"dry_run": False}))
        for message in ws:
            wire.unpackb(message)
            self.requests += 1
            if self.hang.is_set():
                continue
            ws.send(wire.packb({"ok": self.requests}))

    def stop(self):
        self.srv.shutdown()


def test_a_hung_server_times_out_drops_the_connection_and_a_restarted_one_is_reconnected():
    server = Server()
    policy = RemotePolicy(f"ws://127.0.0.1:{server.port}", reply_timeout_s=0.3)
    assert policy.infer({"state": [0.0]}) == {"ok": 1}
    server.hang.set()
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match="no reply .* within 0.3 s") as e:
        policy.infer({"state": [0.0]})
    assert e.value.reason == "timeout" and 0.25 <= time.monotonic() - t0 < 2.0 and policy.ws is None
    port = server.port
    server.stop()
    with pytest.raises(RemoteError, match="cannot connect"):  # the server is down: refused at once
        policy.infer({"state": [0.0]})
    restarted = Server(port)
    try:
        assert policy.infer({"state": [0.0]}) == {"ok": 1}  # connected again, to the new server
    finally:
        policy.close()
        restarted.stop()
    with pytest.raises(RemoteError, match="was closed"):
        policy.infer({"state": [0.0]})
    with pytest.raises(ValueError, match="reply_timeout_s"):
        RemotePolicy("ws://127.0.0.1:1", reply_timeout_s=0)
