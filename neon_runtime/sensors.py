"""Local sensors without ROS: the microphone as a 16 kHz mono ring buffer.

Two sources feed the same `AudioRing`:
- `SoundDeviceMic`: any PortAudio input (a USB microphone on the robot computer);
- `UdpPcmMic`: the G1's microphone array, raw 16 kHz mono s16le PCM on UDP multicast
  239.168.123.161:5555 (group and port configurable; `group=None` listens on unicast).

No input device gives a `SensorError` at once, never a hang.
"""

from __future__ import annotations

import socket
import struct
import threading

import numpy as np

from neon.observation import AUDIO_SAMPLE_RATE as RATE

G1_MIC_GROUP, G1_MIC_PORT = "239.168.123.161", 5555


class SensorError(RuntimeError):
    """A sensor cannot be opened or read; the message says which and why."""


class AudioRing:
    """Thread-safe ring of the newest `seconds` of float32 samples in [-1, 1]."""

    def __init__(self, seconds: float = 8.0):
        self.buf = np.zeros(int(seconds * RATE), np.float32)
        self.filled = 0
        self.total = 0  # samples ever written
        self._lock = threading.Lock()

    def write(self, samples: np.ndarray) -> None:
        x = np.asarray(samples)
        x = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32)
        x = x.reshape(-1)[-len(self.buf):]
        with self._lock:
            self.buf = np.roll(self.buf, -len(x))
            self.buf[-len(x):] = x
            self.filled = min(len(self.buf), self.filled + len(x))
            self.total += len(x)

    def read(self, seconds: float) -> np.ndarray:
        """The newest `seconds` of audio (less if less has arrived)."""
        with self._lock:
            n = min(int(seconds * RATE), self.filled)
            return self.buf[len(self.buf) - n:].copy()


class SoundDeviceMic:
    """A PortAudio input stream (via `sounddevice`) writing into a ring."""

    def __init__(self, device: str | int | None = None, ring: AudioRing | None = None, open_timeout_s: float = 5.0):
        self.ring = ring or AudioRing()
        try:
            import sounddevice as sd
        except OSError as e:  # libportaudio2 missing
            raise SensorError(f"PortAudio is not available ({e}); install Debian's libportaudio2") from None
        inputs = [d for d in sd.query_devices() if d["max_input_channels"] > 0]
        if not inputs:
            raise SensorError("no audio input device found (no sound card or microphone visible to PortAudio); "
                              "connect a microphone, or use the G1's multicast microphone stream")
        result: dict = {}

        def open_stream():
            try:
                stream = sd.InputStream(samplerate=RATE, channels=1, dtype="int16", device=device,
                                        callback=lambda data, frames, t, status: self.ring.write(data[:, 0]))
                stream.start()
                result["stream"] = stream
            except Exception as e:
                result["error"] = e

        opener = threading.Thread(target=open_stream, daemon=True)
        opener.start()
        opener.join(open_timeout_s)
        if opener.is_alive():
            raise SensorError(f"opening audio input {device!r} did not finish within {open_timeout_s} s")
        if "error" in result:
            raise SensorError(f"audio input {device!r} cannot be opened at 16 kHz mono: {result['error']}")
        self.stream = result["stream"]
        self.name = sd.query_devices(device, "input")["name"]

    def close(self) -> None:
        self.stream.stop()
        self.stream.close()


class UdpPcmMic:
    """Raw s16le PCM datagrams (the G1 microphone's multicast stream, or unicast) into a ring."""

    def __init__(self, group: str | None = G1_MIC_GROUP, port: int = G1_MIC_PORT, interface: str = "0.0.0.0",
                 ring: AudioRing | None = None):
        self.ring = ring or AudioRing()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            if group:
                self.sock.bind(("", port))
                mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(interface))
                self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            else:
                self.sock.bind((interface, port))
        except OSError as e:
            self.sock.close()
            raise SensorError(f"cannot listen for microphone PCM on {group or interface}:{port}: {e}") from None
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="neon-mic-udp", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if len(data) >= 2:
                self.ring.write(np.frombuffer(data[: len(data) // 2 * 2], "<i2"))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()
