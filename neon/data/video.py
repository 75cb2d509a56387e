"""Video files with PyAV: encode frames into an mp4, decode frames by timestamp.

LeRobot stores camera streams as mp4 (AV1 by default; H.264 and MPEG-4 in
older datasets). Decoding seeks to the keyframe before the requested time and
decodes forward, so random access costs at most one GOP.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration at level 3

# Encoder preference per codec family; the first one PyAV has wins.
ENCODERS = {"av1": ["libsvtav1", "libaom-av1", "av1"], "h264": ["libx264", "h264"], "mpeg4": ["mpeg4"]}
_ENCODER_OPTIONS = {"libsvtav1": {"preset": "10", "crf": "30"}, "libx264": {"preset": "veryfast", "crf": "20"},
                    "mpeg4": {"qscale": "2"}}


class VideoError(RuntimeError):
    """A video file is missing, unreadable, or lacks the requested frame."""


def pick_encoder(codec: str) -> str:
    import av

    for name in ENCODERS.get(codec, [codec]):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:
            continue
    raise VideoError(f"no encoder for {codec!r} in this PyAV build (tried {', '.join(ENCODERS.get(codec, [codec]))})")


class VideoWriter:
    """An mp4 written frame batch by frame batch (LeRobot v3.0 appends episodes to one file until it rolls over)."""

    def __init__(self, path: str | Path, fps: float, codec: str = "av1", gop: int = 15):
        self.path, self.fps, self.codec, self.gop = Path(path), fps, codec, gop
        self.encoder = pick_encoder(codec)
        self.container = self.stream = None
        self.frames = self.bytes = 0  # frames written; encoded bytes muxed so far (the encoder may hold a few frames)

    def write(self, frames: np.ndarray) -> None:
        """Append UInt8[(T, H, W, 3)] frames."""
        import av

        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise VideoError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
        h, w = frames.shape[1:3]
        if h % 2 or w % 2:
            raise VideoError(f"frame size must be even for yuv420p, got {h}x{w}")
        if self.encoder == "libsvtav1" and min(h, w) < 64:
            # SVT-AV1 fails intermittently on smaller frames ("no frame in undisplayed queue").
            raise VideoError(f"AV1 (SVT) needs frames of at least 64x64, got {h}x{w}; use codec h264 or mpeg4")
        if self.container is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.container = av.open(str(self.path), "w")
            self.stream = self.container.add_stream(self.encoder, rate=_rate(self.fps))
            self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, "yuv420p"
            self.stream.options = {**_ENCODER_OPTIONS.get(self.encoder, {}), "g": str(self.gop)}
            if self.encoder == "mpeg4":  # rate-controlled only: ~1 bit per pixel keeps it near AV1/H.264 quality
                self.stream.bit_rate = int(w * h * self.fps)
        elif (h, w) != (self.stream.height, self.stream.width):
            raise VideoError(f"{self.path}: frames are {h}x{w}, the file's are {self.stream.height}x{self.stream.width}")
        for frame in frames:
            for packet in self.stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                self.bytes += packet.size
                self.container.mux(packet)
        self.frames += len(frames)

    def close(self) -> dict:
        """Flush and close; return LeRobot's `info` block for the feature."""
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        return {"video.fps": self.fps, "video.height": self.stream.height, "video.width": self.stream.width,
                "video.channels": 3,
                "video.codec": {"libsvtav1": "av1", "libaom-av1": "av1", "libx264": "h264"}.get(self.encoder, self.encoder),
                "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "has_audio": False}


def encode_video(path: str | Path, frames: np.ndarray, fps: float, codec: str = "av1", gop: int = 15) -> dict:
    """Write UInt8[(T, H, W, 3)] frames to `path`; return LeRobot's `info` block for the feature."""
    writer = VideoWriter(path, fps, codec, gop)
    writer.write(frames)
    return writer.close()


def _rate(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)


class VideoReader:
    """Decode single frames by timestamp from a few open files (one reader per DataLoader worker)."""

    def __init__(self, max_open: int = 8):
        self.max_open = max_open
        self._open: OrderedDict[str, object] = OrderedDict()
        self._pid = os.getpid()

    def _container(self, path: str):
        import av

        if os.getpid() != self._pid:  # a forked DataLoader worker: the parent's open files are not this process's
            self._open = OrderedDict()
            self._pid = os.getpid()
        c = self._open.pop(path, None)
        if c is None:
            if not os.path.isfile(path):
                raise VideoError(f"video file {path} not found")
            try:
                c = av.open(path)
            except av.error.FFmpegError as e:
                raise VideoError(f"video file {path} cannot be opened: {e}") from None
            if not c.streams.video:
                c.close()
                raise VideoError(f"video file {path} has no video stream")
            # Decode on this thread only: decoder thread pools (dav1d's in particular) deadlock in
            # DataLoader workers forked from a process that had them running. Parallelism comes from workers.
            c.streams.video[0].codec_context.thread_count = 1
            while len(self._open) >= self.max_open:
                self._open.popitem(last=False)[1].close()
        self._open[path] = c
        return c

    def frame(self, path: str | Path, timestamp: float, fps: float) -> np.ndarray:
        """UInt8[(H, W, 3)] frame shown at `timestamp` seconds (nearest within half a frame)."""
        import av

        path = str(path)
        c = self._container(path)
        stream = c.streams.video[0]
        tol = 0.5 / fps
        try:
            c.seek(max(0, int((timestamp - tol) / stream.time_base)), stream=stream, backward=True, any_frame=False)
            last = None
            for frame in c.decode(stream):
                if frame.time is None:
                    continue
                if frame.time >= timestamp - tol:
                    if frame.time > timestamp + tol and last is not None:
                        frame = last
                    # One thread for the colour conversion too: swscale's slice threads (FFmpeg 8) hang in a
                    # DataLoader worker forked from a process that converted a frame before (tests/test_data.py).
                    return frame.reformat(format="rgb24", threads=1).to_ndarray()
                last = frame
        except av.error.FFmpegError as e:
            self._open.pop(path, None)
            raise VideoError(f"video file {path} is corrupted near t={timestamp:.3f}s: {e}") from None
        raise VideoError(f"video file {path} has no frame at t={timestamp:.3f}s (it ends earlier)")

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()
