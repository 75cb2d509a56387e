"""A real uvicorn server on 127.0.0.1 in a background thread, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import threading
import time

import uvicorn


@contextlib.contextmanager
def serve(app, port: int = 0):
    """Run `app` on 127.0.0.1 at `port` (0: a free one); yield 'host:port'."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws_per_message_deflate=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and server.servers):
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def runner_for(model, safety=None, heads=None, source: str = "", **kwargs):
    """A warmed-up PolicyRunner serving `model` (a NeonVLA with its backbone) as neon-serve would.

    Without `safety`, observations may be 2 s old (not 0.5): a loaded CI machine must not turn plumbing tests into
    stale refusals; the age checks are tested with their own limits."""
    from neon.policy import NeonPolicy
    from neon_runtime.policy import LocalPolicy, PolicyRunner
    from neon_runtime.safety import SafetyConfig

    safety = safety or SafetyConfig(max_observation_age_s=2.0)

    runner = PolicyRunner(LocalPolicy(NeonPolicy(model, heads), safety, source), **kwargs)
    runner.warm_up()
    return runner
