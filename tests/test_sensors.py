"""Local microphone paths: PortAudio on an ALSA file device set up by the test, no sound card, UDP PCM on loopback."""

import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np

from neon_runtime.sensors import AudioRing, UdpPcmMic

ALSA_CONF = "/usr/share/alsa/alsa.conf"


def run_with_alsa(tmp_path, config: str | None, code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if config is not None:
        (tmp_path / "asoundrc").write_text(config)
        env["ALSA_CONFIG_PATH"] = f"{ALSA_CONF}:{tmp_path / 'asoundrc'}"
    else:
        env["ALSA_CONFIG_PATH"] = ALSA_CONF  # the stock configuration, and no sound card on this machine
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=60)


def test_portaudio_capture_from_alsa_file_device(tmp_path):
    t = np.arange(RATE := 16000) / RATE
    tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2")
    np.tile(tone, 3).tofile(tmp_path / "in.raw")
    config = f"""
pcm.neon_test {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{tmp_path / 'in.raw'}"
    format "raw"
}}
"""
    r = run_with_alsa(tmp_path, config, """
        import time, numpy as np
        from neon_runtime.sensors import SoundDeviceMic
        mic = SoundDeviceMic(device="neon_test")
        time.sleep(0.8)
        x = mic.ring.read(0.5)
        mic.close()
        print(mic.name, len(x), float(np.abs(x).max()))
        np.save("captured.npy", x)
    """.replace("captured.npy", str(tmp_path / "captured.npy")))
    assert r.returncode == 0, r.stderr
    name, n, peak = r.stdout.split()
    assert name == "neon_test" and int(n) == 8000 and abs(float(peak) - 8000 / 32768) < 0.01
    x = np.load(tmp_path / "captured.npy")
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spectrum) * RATE / len(x) - 440) < 5  # the tone that was in the file


def test_no_sound_card_is_a_clear_error_not_a_hang(tmp_path):
    t0 = time.monotonic()
    r = run_with_alsa(tmp_path, None, """
        from neon_runtime.sensors import SensorError, SoundDeviceMic
        try:
            SoundDeviceMic()
        except SensorError as e:
            print("SensorError:", e)
    """)
    assert r.returncode == 0, r.stderr
    assert "SensorError: no audio input device found" in r.stdout
    assert time.monotonic() - t0 < 30


def test_udp_pcm_stream_on_loopback():
    mic = UdpPcmMic(group=None, port=0, interface="127.0.0.1")
    try:
        pcm = (np.sin(np.arange(3200) / 16000 * 2 * np.pi * 300) * 10000).astype("<i2")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for chunk in np.split(pcm, 10):  # 20 ms datagrams, as the G1 sends them
                s.sendto(chunk.tobytes(), ("127.0.0.1", mic.port))
        deadline = time.monotonic() + 5
        while mic.ring.total < 3200 and time.monotonic() < deadline:
            time.sleep(0.01)
        got = mic.ring.read(1.0)
        assert len(got) == 3200 and np.allclose(got, pcm / 32768.0)
    finally:
        mic.close()


def test_ring_keeps_the_newest_audio():
    ring = AudioRing(seconds=0.5)
    ring.write(np.arange(16000, dtype=np.float32))
    assert len(ring.read(2.0)) == 8000 and ring.read(2.0)[-1] == 15999
    assert len(ring.read(0.1)) == 1600


def test_server_fills_audio_from_the_local_microphone(backbones):
    import httpx
    from conftest import attach, tiny_config
    from serving import runner_for, serve

    from neon.model import NeonVLA
    from neon_runtime.server import ServerSettings, create_app

    cfg = tiny_config("neon-tiny/qwen2.5-omni", use_audio=True)
    cfg.backbone.load_in_4bit = False
    model = attach(NeonVLA(cfg), backbones)
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    mic = UdpPcmMic(group=None, port=0, interface="127.0.0.1")
    runner = runner_for(model, max_batch=1, max_wait_ms=0)
    body = {"image": np.full((64, 64, 3), 100, np.uint8).tolist(), "instruction": "hello", "state": [0.0] * 28}
    try:
        with serve(create_app(runner, ServerSettings(audio_source=mic.ring))) as addr:
            assert httpx.get(f"http://{addr}/metadata").json()["local_microphone"] is True
            silent = httpx.post(f"http://{addr}/predict", json=body, timeout=60).json()["actions"]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto((np.sin(np.arange(8000) / 16000 * 2 * np.pi * 500) * 20000).astype("<i2").tobytes(),
                         ("127.0.0.1", mic.port))
            deadline = time.monotonic() + 5
            while mic.ring.total < 8000 and time.monotonic() < deadline:
                time.sleep(0.01)
            heard = httpx.post(f"http://{addr}/predict", json=body, timeout=60).json()["actions"]
            assert not np.allclose(silent, heard)  # the microphone reached the audio path
    finally:
        mic.close()
        runner.close()
