"""neon-serve over real uvicorn on loopback: HTTP, WebSocket, openpi-client, batching, bad input, auth, reload."""

import base64
import io
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets.sync.client as ws_client
from conftest import as_trained, attach, random_weights, tiny_config
from PIL import Image
from serving import runner_for, serve

from neon.model import NeonVLA
from neon_runtime import wire
from neon_runtime.cli import main as serve_main
from neon_runtime.policy import Superseded
from neon_runtime.safety import SafetyConfig
from neon_runtime.server import Metrics, ServerSettings, create_app

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token"


def make_model(backbones, seed=0, **config):

    model = as_trained(attach(NeonVLA(tiny_config("neon-tiny/qwen2.5-vl", **config)), backbones))
    random_weights(model, seed)
    return model


def image(seed=0, size=224):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def png_b64(img):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module", params=["torch", "onnx"])
def server(backbones, request, tmp_path_factory):
    """The same server with PyTorch heads and with ONNX Runtime heads (`neon-serve --heads onnx`)."""
    model, heads = make_model(backbones), None
    if request.param == "onnx":
        from neon_runtime.onnx_heads import ONNX_DIR, OnnxHeads, export_heads

        ckpt = model.save_pretrained(tmp_path_factory.mktemp("onnx") / "ckpt")
        export_heads(model, ckpt / ONNX_DIR)
        heads = OnnxHeads.beside(ckpt)
    # 2 s age limit: a loaded CI machine must not turn these round trips into stale refusals (the age checks
    # themselves are tested with their own limits).
    runner = runner_for(model, SafetyConfig(max_joint_velocity=100.0, max_observation_age_s=2.0), heads, "test-model",
                        max_batch=8,
                        max_wait_ms=20, metrics=Metrics())
    with serve(create_app(runner, ServerSettings(token=None))) as addr:
        yield addr, runner
    runner.close()


def obs_json(seed=0, **kw):
    return {"image": png_b64(image(seed)), "instruction": f"pick up block {seed}", "state": [0.0] * 28,
            "timestamp": time.time(), **kw}


def test_http_json_and_msgpack_round_trip(server):
    addr, runner = server
    body = obs_json(1)
    r = httpx.post(f"http://{addr}/predict", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    actions = np.array(out["actions"])
    space = runner.local.policy.space
    assert actions.shape == (16, 28) and (actions >= space.lower - 1e-5).all() and (actions <= space.upper + 1e-5).all()
    assert out["joint_names"] == space.names and out["fps"] == 30.0
    assert out["observation_timestamp"] == pytest.approx(body["timestamp"])
    assert {"backbone", "heads", "safety", "queue", "total"} <= set(out["server_timing"])
    assert isinstance(out["speech"], str) and out["dry_run"] is False
    packed = wire.packb({"image": image(1), "instruction": "pick up block 1", "state": np.zeros(28, np.float32)})
    r = httpx.post(f"http://{addr}/predict", content=packed, timeout=60,
                   headers={"content-type": "application/msgpack", "accept": "application/msgpack"})
    assert r.status_code == 200
    out2 = wire.unpackb(r.content)
    assert out2["actions"].dtype == np.float32 and np.allclose(out2["actions"], actions, atol=1e-4)
    # State by joint name, in any order.
    named = {n: 0.0 for n in reversed(space.names)}
    r = httpx.post(f"http://{addr}/predict", json={**obs_json(1), "state": named}, timeout=60)
    assert r.status_code == 200 and np.allclose(r.json()["actions"], actions, atol=1e-4)


def test_health_ready_metadata_metrics_openapi(server):
    addr, _ = server
    assert httpx.get(f"http://{addr}/health").json() == {"status": "ok"}
    assert httpx.get(f"http://{addr}/ready").json() == {"status": "ready"}
    meta = httpx.get(f"http://{addr}/metadata").json()
    assert meta["schema_version"] == 1 and meta["num_action_steps"] == 16
    assert meta["action_space"]["control_mode"] == "arms_only" and meta["modalities"]["image"]
    assert meta["model"]["source"] == "test-model"
    httpx.post(f"http://{addr}/predict", json=obs_json(2), timeout=60)
    text = httpx.get(f"http://{addr}/metrics").text
    for name in ("neon_stage_seconds_bucket", 'stage="backbone"', "neon_batch_size_count", "neon_queue_depth",
                 "neon_requests_total"):
        assert name in text, name
    spec = httpx.get(f"http://{addr}/openapi.json").json()
    assert {"/predict", "/health", "/ready", "/metadata", "/metrics", "/reload"} <= set(spec["paths"])
    assert "422" in spec["paths"]["/predict"]["post"]["responses"]
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/msgpack"} <= set(body)
    assert "instruction" in body["application/json"]["schema"]["properties"]


def test_websocket_round_trip_and_errors_keep_the_connection(server):
    addr, _ = server
    with ws_client.connect(f"ws://{addr}/ws", compression="deflate", max_size=None) as c:
        assert c.response.headers.get("sec-websocket-extensions") is None  # compression refused: off
        meta = wire.unpackb(c.recv())
        assert meta["schema_version"] == 1 and not meta["needs_token"]
        good = {"observation/image": image(3), "observation/state": np.zeros(28, np.float32), "prompt": "wave"}
        c.send(wire.packb(good))
        out = wire.unpackb(c.recv())
        assert out["actions"].shape == (16, 28) and "server_timing" in out
        for bad, reason in ((b"\x93\x01", "bad_input"),
                            (wire.packb({**good, "observation/image": image(3).astype(np.float32)}), "bad_input"),
                            (wire.packb({**good, "observation/state": np.full(28, np.nan, np.float32)}), "bad_input"),
                            (wire.packb({**good, "bogus": 1}), "bad_input")):
            c.send(bad)
            err = wire.unpackb(c.recv())
            assert err["error"] == reason and err["detail"]
        c.send(wire.packb(good))
        assert wire.unpackb(c.recv())["actions"].shape == (16, 28)  # still usable


def test_unmodified_openpi_client(server):
    addr, _ = server
    python = ROOT / ".venv-openpi" / "bin" / "python"
    assert python.exists(), "the openpi client environment is missing: run scripts/setup.sh"
    host, port = addr.split(":")
    script = f"""
import numpy as np
from openpi_client.websocket_client_policy import WebsocketClientPolicy
policy = WebsocketClientPolicy(host="{host}", port={port})
meta = policy.get_server_metadata()
out = policy.infer({{"observation/image": np.zeros((224, 224, 3), np.uint8),
                    "observation/wrist_image": np.zeros((224, 224, 3), np.uint8),
                    "observation/state": np.zeros(28, np.float32), "prompt": "pick up the cup"}})
print(meta["num_action_steps"], out["actions"].shape, sorted(out["server_timing"])[0], out["ignored_keys"])
"""
    r = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "16 (16, 28) backbone ['observation/wrist_image']", r.stdout


def test_concurrent_clients_get_their_own_answers(server, backbones):
    addr, runner = server
    n = 8
    expected = {}
    for i in range(n):
        ref = runner.local.policy.predict(image=image(10 + i), instruction=f"pick up block {i}", state=np.zeros(28))
        expected[i] = runner.local.safety.apply(ref.actions, np.zeros(28, np.float32), ref.fps)[0]
    results, batch_sizes = {}, []

    def client(i):
        r = httpx.post(f"http://{addr}/predict", timeout=120,
                       json={"image": png_b64(image(10 + i)), "instruction": f"pick up block {i}", "state": [0.0] * 28})
        results[i] = np.array(r.json()["actions"])
        batch_sizes.append(r.json()["server_timing"]["batch_size"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(n):
        assert np.allclose(results[i], expected[i], atol=1e-4), i
    assert max(batch_sizes) > 1  # they were micro-batched


@pytest.mark.parametrize("case,status", [
    ("truncated_msgpack", 400), ("wrong_dtype", 422), ("wrong_shape", 422), ("nan_state", 422),
    ("oversized", 413), ("unknown_keys", 422), ("missing_image", 422), ("stale", 409), ("bad_json", 422),
])
def test_bad_input_gets_4xx_and_server_keeps_serving(server, case, status):
    addr, _ = server
    url = f"http://{addr}/predict"
    mp = {"content-type": "application/msgpack"}
    good = {"image": image(4), "instruction": "wave", "state": np.zeros(28, np.float32)}
    if case == "truncated_msgpack":
        r = httpx.post(url, content=wire.packb(good)[:100], headers=mp)
    elif case == "wrong_dtype":
        r = httpx.post(url, content=wire.packb({**good, "image": image(4).astype(np.float64)}), headers=mp)
    elif case == "wrong_shape":
        r = httpx.post(url, content=wire.packb({**good, "image": image(4).transpose(2, 0, 1).copy()}), headers=mp)
    elif case == "nan_state":
        r = httpx.post(url, content=wire.packb({**good, "state": np.full(28, np.nan, np.float32)}), headers=mp)
    elif case == "oversized":
        r = httpx.post(url, content=b"\0" * (17 * 1024 * 1024), headers=mp)
    elif case == "unknown_keys":
        r = httpx.post(url, json={**obs_json(4), "gripper_force": 3})
    elif case == "missing_image":
        r = httpx.post(url, json={"instruction": "wave", "state": [0.0] * 28})
    elif case == "stale":
        r = httpx.post(url, json=obs_json(4, timestamp=time.time() - 10))
    else:
        r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["detail"]
    assert httpx.post(url, json=obs_json(5), timeout=60).status_code == 200


def test_auth_and_hot_reload_under_load(backbones, tmp_path):
    model = make_model(backbones, seed=1)
    other = make_model(backbones, seed=2)
    other.save_pretrained(tmp_path / "v2")
    runner = runner_for(model, max_batch=4, max_wait_ms=5, source="v1")
    with serve(create_app(runner, ServerSettings(token=TOKEN, model_root=str(tmp_path)))) as addr:
        url = f"http://{addr}/predict"
        auth = {"authorization": f"Bearer {TOKEN}"}
        assert httpx.post(url, json=obs_json(6)).status_code == 401
        assert httpx.post(url, json=obs_json(6), headers={"authorization": "Bearer nope"}).status_code == 401
        for path in ("/metadata", "/metrics", "/docs", "/openapi.json"):  # nothing about the model without the token
            assert httpx.get(f"http://{addr}{path}").status_code == 401, path
            assert httpx.get(f"http://{addr}{path}", headers=auth).status_code == 200, path
        for path in ("/health", "/ready"):
            assert httpx.get(f"http://{addr}{path}").status_code == 200, path
        with ws_client.connect(f"ws://{addr}/ws") as c:  # token as the first message
            assert wire.unpackb(c.recv()) == {"needs_token": True}  # and no metadata before it
            c.send(wire.packb({"observation/image": image(6), "prompt": "x"}))
            assert wire.unpackb(c.recv())["error"] == "unauthorized"
            c.send(wire.packb({"token": TOKEN}))
            welcome = wire.unpackb(c.recv())
            assert welcome["authenticated"] and welcome["metadata"]["action_space"]["control_mode"] == "arms_only"
            c.send(wire.packb({"observation/image": image(6), "prompt": "x", "observation/state": np.zeros(28)}))
            assert wire.unpackb(c.recv())["actions"].shape == (16, 28)
        before = httpx.post(url, json=obs_json(7), headers=auth, timeout=60).json()["actions"]
        statuses, stop = [], threading.Event()

        def hammer():
            while not stop.is_set():
                # No timestamp: on a loaded 2-core machine a request may legitimately be refused as stale (409).
                statuses.append(httpx.post(url, json=obs_json(7, timestamp=None), headers=auth, timeout=60).status_code)

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        assert httpx.post(f"http://{addr}/reload", json={"model": str(tmp_path / "v2")}).status_code == 401
        r = httpx.post(f"http://{addr}/reload", json={"model": str(tmp_path / "v2")}, headers=auth, timeout=120)
        assert r.status_code == 200 and r.json()["reloads"] == 1
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        assert len(statuses) > 5 and set(statuses) == {200}  # nothing failed while swapping
        after = httpx.post(url, json=obs_json(7), headers=auth, timeout=60).json()["actions"]
        assert not np.allclose(before, after)
        assert httpx.get(f"http://{addr}/metadata", headers=auth).json()["model"]["source"] == str(tmp_path / "v2")
        bad = httpx.post(f"http://{addr}/reload", json={"model": str(tmp_path / "missing")}, headers=auth)
        assert bad.status_code == 400 and httpx.post(url, json=obs_json(7), headers=auth).status_code == 200
        # Only from --model-root (or --allow-hub patterns), and only the same action space unless forced.
        outside = httpx.post(f"http://{addr}/reload", json={"model": "/etc"}, headers=auth)
        assert outside.status_code == 403 and "--model-root" in outside.json()["detail"]
        hub = httpx.post(f"http://{addr}/reload", json={"model": "someone/neon-g1"}, headers=auth)
        assert hub.status_code == 403 and "--allow-hub" in hub.json()["detail"]
        wb = as_trained(NeonVLA(tiny_config("neon-tiny/qwen2.5-vl", "whole_body"))).save_pretrained(tmp_path / "wb")
        refused = httpx.post(f"http://{addr}/reload", json={"model": str(wb)}, headers=auth, timeout=120)
        assert refused.status_code == 400 and "another action space" in refused.json()["detail"]
        assert httpx.get(f"http://{addr}/metadata", headers=auth).json()["model"]["source"] == str(tmp_path / "v2")
        forced = httpx.post(f"http://{addr}/reload", json={"model": str(wb), "force": True}, headers=auth, timeout=120)
        assert forced.status_code == 200
        assert httpx.get(f"http://{addr}/metadata", headers=auth).json()["action_space"]["control_mode"] == "whole_body"
    runner.close()


def test_newest_observation_wins(backbones):
    model = make_model(backbones)
    runner = runner_for(model, max_batch=1, max_wait_ms=0)
    obs = runner.local.prepare({"image": image(8), "instruction": "wave", "state": np.zeros(28)})
    blocker = runner.submit(obs)  # occupies the model
    old = runner.submit(obs, client="robot-1")
    new = runner.submit(obs, client="robot-1")
    with pytest.raises(Superseded):
        old.result(timeout=60)
    assert new.result(timeout=60)["actions"].shape == (16, 28)
    blocker.result(timeout=60)
    runner.close()


def blocked_model(runner, monkeypatch):
    """Make the runner's model wait on the returned Event (set it to let every pass through)."""
    gate, real = threading.Event(), runner.local.policy.predict_batch

    def waiting(*a, **kw):
        gate.wait(60)
        return real(*a, **kw)

    monkeypatch.setattr(runner.local.policy, "predict_batch", waiting)
    return gate


def test_a_full_lane_answers_503_with_retry_after_and_counts_it(backbones, monkeypatch):
    """The lanes are bounded (before: unbounded queues, so a flood grew memory and every robot's wait)."""
    from neon_runtime.policy import Overloaded

    runner = runner_for(make_model(backbones), max_batch=1, max_wait_ms=0, max_queue=2, metrics=Metrics())
    gate = blocked_model(runner, monkeypatch)
    obs = runner.local.prepare({"image": image(8), "instruction": "wave", "state": np.zeros(28)})
    first = runner.submit(obs)  # taken by the lane's thread, waiting in the model
    assert wait_for_depth(runner, 0)
    queued = [runner.submit(obs), runner.submit(obs)]  # the lane's two places
    with pytest.raises(Overloaded, match="holds 2 requests"):
        runner.submit(obs)
    with serve(create_app(runner, ServerSettings(token=None))) as addr:
        r = httpx.post(f"http://{addr}/predict", json=obs_json(8), timeout=60)
        assert r.status_code == 503 and r.json()["error"] == "overloaded" and r.headers["retry-after"] == "1"
        assert 'neon_rejected_total{reason="overloaded"} 1.0' in httpx.get(f"http://{addr}/metrics").text
        gate.set()
        for f in (first, *queued):
            assert f.result(timeout=60)["actions"].shape == (16, 28)
        assert httpx.post(f"http://{addr}/predict", json=obs_json(8), timeout=60).status_code == 200
    runner.close()


def wait_for_depth(runner, depth: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while runner._depth() != depth:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_cancelled_request_does_not_kill_its_lane(backbones, monkeypatch):
    """A client gives up (its future is cancelled) while its request runs: the lane's thread used to die on
    set_result, and every later request on that lane waited for ever."""
    runner = runner_for(make_model(backbones), max_batch=1, max_wait_ms=0)
    gate = blocked_model(runner, monkeypatch)
    obs = runner.local.prepare({"image": image(8), "instruction": "wave", "state": np.zeros(28)})
    doomed = runner.submit(obs)
    assert wait_for_depth(runner, 0)
    doomed.cancel()
    gate.set()
    assert runner.submit(obs).result(timeout=60)["actions"].shape == (16, 28)
    assert all(t.is_alive() for t in runner._threads)
    runner.close()


def test_an_image_beyond_the_pixel_limit_is_refused_naming_it(server):
    addr, _ = server
    buf = io.BytesIO()
    Image.new("RGB", (4096, 4096)).save(buf, format="PNG")  # 50 MB decoded, a few kB sent
    big = base64.b64encode(buf.getvalue()).decode()
    r = httpx.post(f"http://{addr}/predict", json=obs_json(1, image=big), timeout=60)
    assert r.status_code == 422 and "4096x4096" in r.json()["detail"] and "limit of 4194304" in r.json()["detail"]
    assert httpx.post(f"http://{addr}/predict", json=obs_json(1), timeout=60).status_code == 200


def test_decoding_runs_off_the_event_loop(backbones, monkeypatch):
    """A request whose decoding takes 2 s does not stall the server's other clients (before: it ran on the event
    loop, and a 4096 x 4096 PNG held every WebSocket client, robots' light requests included, for 0.8 s)."""
    import neon_runtime.server as server_module

    runner = runner_for(make_model(backbones), max_batch=1, max_wait_ms=0)
    real = server_module.parse_request

    def slow(data):
        if isinstance(data, dict) and data.get("instruction") == "slow":
            time.sleep(2.0)
        return real(data)

    monkeypatch.setattr(server_module, "parse_request", slow)
    with serve(create_app(runner, ServerSettings(token=None))) as addr:
        t = threading.Thread(target=httpx.post, args=(f"http://{addr}/predict",),
                             kwargs={"json": obs_json(2, instruction="slow"), "timeout": 60})
        t.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        assert httpx.get(f"http://{addr}/health", timeout=10).status_code == 200
        assert time.monotonic() - t0 < 1.2
        t.join()
    runner.close()


def test_serve_refuses_open_binding_without_token(capsys):
    assert serve_main(["--host", "0.0.0.0"]) == 2
    assert "pass --token" in capsys.readouterr().err
    assert serve_main(["--heads", "onnx", "--model", "/nonexistent/ckpt"]) == 2
    assert "neither a checkpoint folder" in capsys.readouterr().err


def test_metadata_is_the_same_over_http_and_websocket(server):
    """One description of the policy: what /metadata says as JSON is what the WebSocket greeting says in msgpack."""
    addr, runner = server
    meta = httpx.get(f"http://{addr}/metadata").json()
    with ws_client.connect(f"ws://{addr}/ws") as c:
        greeting = wire.unpackb(c.recv())
    assert greeting.pop("needs_token") is False and greeting == meta
    assert meta["safety"]["max_joint_velocity"] == 100.0 and meta["dry_run"] is False
    assert meta["model"]["trained_steps"] == 1 and len(meta["action_space"]["joints"]) == 28


def test_what_is_not_executable_and_what_is_refused(backbones, monkeypatch, caplog):
    """No state, no timestamp, untrained heads: computed but marked not executable, with the reason. An
    observation that grew too old while it waited or ran: refused."""
    from neon.policy import NeonPolicy
    from neon_runtime.policy import LocalPolicy
    from neon_runtime.safety import SafetyError

    absolute = as_trained(attach(NeonVLA(tiny_config("neon-tiny/qwen2.5-vl", default_representation="absolute")),
                                 backbones))  # absolute targets: a request may lack the state
    local = LocalPolicy(NeonPolicy(absolute), SafetyConfig(max_observation_age_s=0.5))
    fresh = {"image": image(1), "instruction": "wave", "state": np.zeros(28), "timestamp": time.time()}
    assert local.infer(fresh)["dry_run"] is False
    for missing, why in (("state", "no joint state"), ("timestamp", "no timestamp")):
        reply = local.infer({k: v for k, v in {**fresh, "timestamp": time.time()}.items() if k != missing})
        assert reply["dry_run"] is True and any(why in n for n in reply["safety"]["notes"]), missing
    slow = local.policy.predict_batch
    monkeypatch.setattr(local.policy, "predict_batch", lambda obs: (time.sleep(0.6), slow(obs))[1])
    with pytest.raises(SafetyError, match="old"):  # fresh when it arrived, 0.6 s old when the chunk was ready
        local.infer({**fresh, "timestamp": time.time()})
    monkeypatch.undo()
    untrained = attach(NeonVLA(tiny_config("neon-tiny/qwen2.5-vl")), backbones)  # fresh heads: no training steps
    with caplog.at_level("WARNING"):
        local = LocalPolicy(NeonPolicy(untrained), source="fresh heads")
    assert "untrained" in caplog.text and local.metadata()["dry_run"] is True
    reply = local.infer({**fresh, "timestamp": time.time()})
    assert reply["dry_run"] is True and any("untrained" in n for n in reply["safety"]["notes"])


def test_chunked_bodies_are_cut_off_at_the_limit(backbones):
    """A body without Content-Length is refused once it passes the limit, while it is still arriving."""
    import select
    import socket

    runner = runner_for(make_model(backbones), max_batch=1, max_wait_ms=0)
    with serve(create_app(runner, ServerSettings(max_request_bytes=400_000))) as addr:
        host, port = addr.split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"POST /predict HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n".encode())
            chunk, sent, answer = b"x" * 50_000, 0, b""
            while sent < 20_000_000 and not answer:  # 50 times the limit, if the server waited for the end
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
                if select.select([sock], [], [], 0.05)[0]:
                    answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413") and sent <= 1_000_000, (answer[:40], sent)
        assert httpx.post(f"http://{addr}/predict", json=obs_json(3), timeout=60).status_code == 200
    runner.close()


def test_inference_errors_are_structured_and_the_server_keeps_serving(server, monkeypatch):
    addr, runner = server
    real = runner.local.policy.predict_batch

    def broken(observations, *a, **kw):
        if any(o.instruction == "break" for o in observations):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(observations, *a, **kw)

    monkeypatch.setattr(runner.local.policy, "predict_batch", broken)
    r = httpx.post(f"http://{addr}/predict", json=obs_json(4, instruction="break"), timeout=60)
    assert r.status_code == 503 and r.json()["error"] == "inference_failed" and "illegal memory" in r.json()["detail"]
    with ws_client.connect(f"ws://{addr}/ws") as c:
        c.recv()
        c.send(wire.packb({"image": image(4), "instruction": "break", "state": np.zeros(28)}))
        assert wire.unpackb(c.recv())["error"] == "inference_failed"
        c.send(wire.packb({"image": image(4), "instruction": "wave", "state": np.zeros(28)}))
        assert wire.unpackb(c.recv())["actions"].shape == (16, 28)  # the same connection keeps working
    assert httpx.post(f"http://{addr}/predict", json=obs_json(4), timeout=60).status_code == 200
    assert 'neon_rejected_total{reason="inference_failed"} 2.0' in httpx.get(f"http://{addr}/metrics").text


def test_a_client_leaving_mid_request_is_not_an_inference_failure(server, monkeypatch):
    """neon-g1 closes its connection to end a request in flight: no error frame, no traceback, nothing counted."""
    addr, runner = server
    real = runner.local.policy.predict_batch

    def slow(observations, *a, **kw):
        time.sleep(1.0)
        return real(observations, *a, **kw)

    def failures() -> float:
        m = re.search(r'neon_rejected_total\{reason="inference_failed"\} (\S+)', httpx.get(f"http://{addr}/metrics").text)
        return float(m.group(1)) if m else 0.0

    before = failures()
    monkeypatch.setattr(runner.local.policy, "predict_batch", slow)
    with ws_client.connect(f"ws://{addr}/ws") as c:
        c.recv()
        c.send(wire.packb({"image": image(4), "instruction": "wave", "state": np.zeros(28), "timestamp": time.time()}))
    time.sleep(2.0)  # the answer is ready after the client left
    assert failures() == before
    assert httpx.post(f"http://{addr}/predict", json=obs_json(4), timeout=60).status_code == 200


def test_client_id_in_the_body_drives_newest_wins(server, monkeypatch):
    addr, runner = server
    seen = []
    infer = runner.infer
    monkeypatch.setattr(runner, "infer", lambda prepared, client=None: (seen.append(client), infer(prepared, client))[1])
    assert httpx.post(f"http://{addr}/predict", json=obs_json(2, client_id="robot-7"), timeout=60).status_code == 200
    with ws_client.connect(f"ws://{addr}/ws") as c:
        c.recv()
        c.send(wire.packb({"image": image(2), "instruction": "wave", "state": np.zeros(28), "client_id": "arm-left"}))
        c.recv()
        c.send(wire.packb({"image": image(2), "instruction": "wave", "state": np.zeros(28)}))
        c.recv()
    assert seen[:2] == ["robot-7", "arm-left"] and seen[2].startswith("ws-")
    r = httpx.post(f"http://{addr}/predict", json=obs_json(2, client_id=7), timeout=60)
    assert r.status_code == 422 and "client_id" in r.json()["detail"]


def test_main_job_serves_the_embedded_default():
    """README's main job: neon-serve on the embedded default (trained once, then cached), queried by neon_runtime.query."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "neon_runtime.cli", "--port", str(port), "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        meta = httpx.get(f"http://127.0.0.1:{port}/metadata").json()
        assert "embedded default" in meta["model"]["note"] and "trained" in meta["model"]["note"]
        beats = re.search(r"held-out chunk MSE (-?\d+)% below holding still", meta["model"]["note"])
        assert beats and int(beats.group(1)) > 0, meta["model"]["note"]  # it beats holding still, and says by how much
        assert meta["dry_run"] is False and meta["model"]["trained_steps"] > 0
        r = subprocess.run([sys.executable, "-m", "neon_runtime.query", "--url", f"http://127.0.0.1:{port}"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "chunk 16 x 28 at 30 fps" in r.stdout and "left_shoulder_pitch" in r.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_failed_default_build_is_shown_and_never_cached(tmp_path, monkeypatch, capfd):
    """With the runtime but not the trainer's dependencies (here: tensorboard made unimportable), the embedded
    default cannot be trained: the error says so, the trainer's own output is shown, and nothing is cached."""
    from neon_runtime.default_model import DefaultModelError, default_checkpoint

    blocker = tmp_path / "no_tensorboard"
    (blocker / "tensorboard").mkdir(parents=True)
    (blocker / "tensorboard" / "__init__.py").write_text("raise ImportError(\"No module named 'tensorboard'\")\n")
    monkeypatch.setenv("PYTHONPATH", str(blocker))
    monkeypatch.setenv("NEON_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DefaultModelError, match=r"needs the trainer.*Nothing was cached"):
        default_checkpoint()
    assert "tensorboard" in capfd.readouterr().err  # the trainer's error reached the log, not swallowed
    assert not any((tmp_path / "cache" / "default").glob("tiny-omni-arms-*"))
    assert serve_main(["--port", "0"]) == 2  # neon-serve says why and exits; it does not serve untrained heads
    assert "building the embedded default failed" in capfd.readouterr().err


def test_a_model_without_prefix_training_refuses_a_prefix(server):
    addr, _ = server
    assert httpx.get(f"http://{addr}/metadata").json()["prefix_max_steps"] == 0
    r = httpx.post(f"http://{addr}/predict", json=obs_json(1, prefix=[[0.0] * 28] * 2), timeout=60)
    assert r.status_code == 422 and r.json()["error"] == "bad_input"
    assert "not trained with committed steps (prefix_max_steps=0)" in r.json()["detail"]
    r = httpx.post(f"http://{addr}/predict", json=obs_json(1, prefix=[]), timeout=60)  # an empty one is none
    assert r.status_code == 200 and r.json()["committed_steps"] == 0


def test_prefix_over_http_and_websocket(backbones):
    """A prefix-conditioned model: the committed steps come back as the chunk's first steps, over JSON and the
    WebSocket alike; a bad prefix is refused and the server keeps serving."""
    model = make_model(backbones, prefix_max_steps=4)
    space = model.action_space
    fast = SafetyConfig(max_joint_velocity=100.0, max_hand_velocity=100.0, max_observation_age_s=2.0)
    runner = runner_for(model, fast, max_batch=4, max_wait_ms=5)
    rng = np.random.default_rng(0)
    prefix = np.clip(np.cumsum(rng.normal(0, 0.01, (3, 28)), axis=0), space.lower, space.upper).astype(np.float32)
    with serve(create_app(runner, ServerSettings())) as addr:
        url = f"http://{addr}/predict"
        assert httpx.get(f"http://{addr}/metadata").json()["prefix_max_steps"] == 4
        r = httpx.post(url, json=obs_json(1, prefix=prefix.tolist()), timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        actions = np.array(out["actions"])
        assert out["committed_steps"] == 3 and np.allclose(actions[:3], prefix, atol=1e-6)
        plain = np.array(httpx.post(url, json=obs_json(1), timeout=60).json()["actions"])
        assert not np.allclose(plain[3:], actions[3:], atol=1e-4)  # the continuation follows the prefix
        with ws_client.connect(f"ws://{addr}/ws") as c:
            assert wire.unpackb(c.recv())["prefix_max_steps"] == 4
            good = {"image": image(1), "instruction": "pick up block 1", "state": np.zeros(28, np.float32),
                    "prefix": prefix}
            c.send(wire.packb(good))
            reply = wire.unpackb(c.recv())
            assert reply["committed_steps"] == 3 and np.allclose(reply["actions"], actions, atol=1e-4)
            for bad, match in ((np.zeros((5, 28), np.float32), "prefix has 5 steps.*prefix_max_steps=4"),
                               (np.full((2, 28), np.nan, np.float32), "prefix holds NaN"),
                               (np.zeros((2, 3), np.float32), "prefix must be d x 28")):
                c.send(wire.packb({**good, "prefix": bad}))
                err = wire.unpackb(c.recv())
                assert err["error"] == "bad_input" and re.search(match, err["detail"]), err
            c.send(wire.packb(good))
            assert wire.unpackb(c.recv())["committed_steps"] == 3  # still usable
        r = httpx.post(url, json=obs_json(1, prefix=[[0.0] * 28] * 5), timeout=60)
        assert r.status_code == 422 and "prefix_max_steps=4" in r.json()["detail"]
        assert httpx.post(url, json=obs_json(1, prefix=[[0.0] * 28, [0.0]]), timeout=60).status_code == 422
    runner.close()
