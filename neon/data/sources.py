"""Data sources as Neon sees them: every sample mapped onto the G1 action space by joint name.

A sample (`dict`) holds:
    obs           Observation              the frame at t, validated by `neon.observation` exactly as the
                                           runtime validates a request (LiDAR N x 3 -> N x 4, unit quaternions,
                                           the newest AUDIO_WINDOW_S of audio from the episode start up to t)
    actions       Float[(T, D)]            absolute, physical; chunk step i is the action recorded i / chunk_fps
                                           after t, and a frame's action is the target for the next frame: at
                                           the dataset's own rate, step i is the target for (i + 1) / fps after
                                           t (resampled linearly when `chunk_fps` differs from the dataset's)
    action_mask   Bool[(T, D)]             False past the episode end and on joints the source lacks
    speech_target int                      index into the response vocabulary, -1 = no target
    fps           float                    the chunk's step rate
    row           int                      the frame's index among all the dataset's frames (feature cache key)
    episode, frame int
"""

from __future__ import annotations

import logging
import os
import wave
from pathlib import Path

import numpy as np

from neon.action_space import G1ActionSpace, JointMapping
from neon.data.lerobot import DatasetError, LeRobotDataset, read_jsonl
from neon.data.modality import modality_names
from neon.data.video import VideoReader
from neon.hub import resolve
from neon.observation import AUDIO_SAMPLE_RATE, AUDIO_WINDOW_S, LIDAR_CHANNELS, make_observation

log = logging.getLogger(__name__)

STATE_KEYS = ("observation.state",)
ACTION_KEYS = ("action",)
EEF_KEYS = ("observation.eef", "observation.ee_pose")
LIDAR_KEYS = ("observation.lidar", "observation.pointcloud")
AUDIO_KEYS = ("observation.audio",)
_CAMERA_PREFERENCE = ("head", "ego", "high", "front", "main")


def resolve_dataset_dir(path_or_repo: str, revision: str | None = None) -> Path:
    """A local dataset folder, or a Hub dataset repo fetched with huggingface_hub (when a network exists)."""
    return resolve(path_or_repo, "dataset", revision, error=DatasetError)


def _first_key(features: dict, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in features), None)


class LeRobotSource:
    """One LeRobot (or GR00T-LeRobot) dataset, mapped onto an action space, indexed by frame."""

    def __init__(self, path_or_repo: str, space: G1ActionSpace, num_steps: int, name: str | None = None,
                 camera: str | None = None, episodes: list[int] | None = None, chunk_fps: float | None = None):
        """`chunk_fps`: the rate of the chunk's steps (default: the dataset's own fps)."""
        self.name = name or str(path_or_repo)
        self.space, self.num_steps = space, num_steps
        self.ds = LeRobotDataset(resolve_dataset_dir(path_or_repo))
        self.root, self.fps = self.ds.root, self.ds.fps
        self.chunk_fps = float(chunk_fps or self.fps)
        feats = self.ds.features
        self.state_key = _first_key(feats, STATE_KEYS)
        self.action_key = _first_key(feats, ACTION_KEYS)
        if self.action_key is None:
            raise DatasetError(f"{self.root / 'meta/info.json'}: no 'action' feature; Neon needs actions to train on")
        self.action_map = self._mapping(self.action_key, "action")
        self.state_map = self._mapping(self.state_key, "state") if self.state_key else None
        if len(self.action_map.target_index) == 0:
            raise DatasetError(
                f"{self.name}: none of the dataset's action names match the G1 {space.control_mode} action space "
                f"({self.action_map.report()}); is it a dataset for another robot?")
        if self.action_map.unmapped_source or self.action_map.missing_target:
            log.warning("%s: action %s", self.name, self.action_map.report())
        self.dim_available = np.zeros(space.dim, bool)
        self.dim_available[self.action_map.target_index] = True
        self.eef_key = _first_key(feats, EEF_KEYS)
        self.lidar_key = _first_key(feats, LIDAR_KEYS)
        self.lidar_channels = self._lidar_channels() if self.lidar_key else None
        self.audio_key = _first_key(feats, AUDIO_KEYS)
        if camera is not None and camera not in self.ds.video_keys:
            raise DatasetError(f"{self.name}: no camera {camera!r}; cameras: {', '.join(self.ds.video_keys) or 'none'}")
        self.camera = camera or _pick_camera(self.ds.video_keys)
        if self.camera is None:
            raise DatasetError(f"{self.root / 'meta/info.json'}: no video feature; Neon needs a camera stream")
        self.ds.check_videos()
        self.episodes = chosen = self.ds.episodes if episodes is None else [self.ds.episodes[i] for i in episodes]
        self.index = np.array([(k, t) for k, e in enumerate(chosen) for t in range(e.length)], dtype=np.int64)
        # Row of each chosen episode's first frame among all the dataset's frames (stable across subsets).
        starts = np.cumsum([0] + [e.length for e in self.ds.episodes])
        position = {e.index: p for p, e in enumerate(self.ds.episodes)}
        self.first_row = np.array([starts[position[e.index]] for e in chosen], dtype=np.int64)
        self.num_rows = int(starts[-1])
        self._video, self._video_pid = None, None
        # Set by a trainer with a feature cache: (row, instruction) -> True when that frame's backbone features
        # are cached, so the frame and its audio need not be decoded at all.
        self.features_cached = None

    def __getstate__(self) -> dict:  # open video files stay behind when a worker process is spawned
        return {**self.__dict__, "_video": None, "_video_pid": None}

    def _mapping(self, key: str, what: str) -> JointMapping:
        """Map a vector feature onto the action space by joint name: the feature's own names when they name G1
        joints; else GR00T's modality.json slices, by position (a documented fallback); else nothing maps."""
        names = self.ds.feature_names(key)
        width = int(np.prod(self.ds.features[key].get("shape", [1])))
        mapping = self.space.map_names(names or [f"{key}.{i}" for i in range(width)])
        if len(mapping.target_index) == 0 and self.ds.modality is not None and what in self.ds.modality:
            mapping = self.space.map_names(modality_names(self.ds.modality[what], width))
        return mapping

    def _lidar_channels(self) -> int:
        """3 (x, y, z) or 4 (with intensity), from the feature's declared shape or names."""
        feat = self.ds.features[self.lidar_key]
        shape, names = list(feat.get("shape", [])), feat.get("names")
        if isinstance(names, list) and len(names) in (3, 4) and list(names) == list(LIDAR_CHANNELS[: len(names)]):
            return len(names)
        if len(shape) == 2 and shape[1] in (3, 4):
            return shape[1]
        raise DatasetError(f"{self.root / 'meta/info.json'}: {self.lidar_key!r} must be declared as N x 3 or N x 4 "
                           f"points (shape [N, 3|4], or names {list(LIDAR_CHANNELS)}); got shape {shape}, names {names}")

    def __len__(self) -> int:
        return len(self.index)

    def chunk(self, actions: np.ndarray, t) -> tuple[np.ndarray, np.ndarray]:
        """(Float[(..., T, D)] actions for the chunk(s) starting at frame(s) t, Bool[(..., T)] inside the episode).

        Step i is the action recorded i / chunk_fps after frame t (the target for one frame later): linear
        interpolation between frames when the rates differ, the last frame repeated past the episode end.
        """
        n = len(actions)
        pos = np.asarray(t)[..., None] + np.arange(self.num_steps) * (self.fps / self.chunk_fps)
        valid = pos <= n - 1 + 1e-6
        pos = np.minimum(pos, n - 1)
        lo = np.floor(pos).astype(np.int64)
        w = (pos - lo)[..., None].astype(np.float32)
        return actions[lo] * (1 - w) + actions[np.minimum(lo + 1, n - 1)] * w, valid

    def episode_arrays(self, k: int) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
        """(actions Float[(L, D)], states Float[(L, D)] | None, raw columns) for the k-th chosen episode."""
        cols = self.ds.columns(self.episodes[k])
        actions = self._to_space(cols[self.action_key], self.action_map)
        states = self._to_space(cols[self.state_key], self.state_map) if self.state_map is not None else None
        return actions, states, cols

    def _to_space(self, raw: np.ndarray, mapping: JointMapping) -> np.ndarray:
        raw = raw.reshape(len(raw), -1).astype(np.float32)
        out = np.zeros((len(raw), self.space.dim), np.float32)
        out[:, mapping.target_index] = raw[:, mapping.source_index]
        return out

    def sample(self, i: int) -> dict:
        if self._video is None or self._video_pid != os.getpid():
            # One reader per process: a forked DataLoader worker must not share the parent's open files.
            self._video, self._video_pid = VideoReader(), os.getpid()
        k, t = (int(x) for x in self.index[i])
        ep = self.episodes[k]
        actions, states, cols = self.episode_arrays(k)
        chunk, step_valid = self.chunk(actions, t)
        row, instruction = int(self.first_row[k] + t), self.ds.task_of(ep, cols, t)
        cached = self.features_cached is not None and self.features_cached(row, instruction)
        path, start = self.ds.video_path(ep, self.camera)
        obs = make_observation(
            self.space, None, image=None if cached else self._video.frame(path, start + t / self.fps, self.fps),
            instruction=instruction, state=states[t] if states is not None else None,
            eef=cols[self.eef_key][t] if self.eef_key else None,
            lidar=cols[self.lidar_key][t].reshape(-1, self.lidar_channels) if self.lidar_key else None,
            audio=self._audio(cols[self.audio_key], t) if self.audio_key and not cached else None)
        return {"obs": obs, "actions": chunk, "action_mask": step_valid[:, None] & self.dim_available[None, :],
                "speech_target": -1, "fps": self.chunk_fps, "row": row,
                "episode": int(ep.index), "frame": t}

    @staticmethod
    def _audio(per_frame, t: int) -> np.ndarray | None:
        """The per-frame audio chunks up to frame t joined, as far back as the model's window reaches."""
        need, chunks = int(AUDIO_WINDOW_S * AUDIO_SAMPLE_RATE), []
        for c in per_frame[t::-1]:
            chunks.append(np.asarray(c, np.float32).reshape(-1))
            need -= len(chunks[-1])
            if need <= 0:
                break
        return np.concatenate(chunks[::-1]) if chunks else None


def _pick_camera(keys: list[str]) -> str | None:
    for word in _CAMERA_PREFERENCE:
        for k in keys:
            if word in k.split(".")[-1]:
                return k
    return keys[0] if keys else None


class VoiceCommandSource:
    """Utterances that train the speech head and the audio path; masked out of the action loss.

    A folder with `utterances.jsonl`, one object per line: `text` (what was said), `response`
    (what the robot should say, optional) and `audio` (a 16 kHz mono WAV path relative to the
    folder, optional).
    """

    IMAGE = np.full((224, 224, 3), 128, np.uint8)  # a neutral frame: the sample is about speech, not vision

    def __init__(self, path_or_repo: str, space: G1ActionSpace, num_steps: int, name: str | None = None):
        self.name = name or str(path_or_repo)
        self.space, self.num_steps = space, num_steps
        self.root = resolve_dataset_dir(path_or_repo)
        path = self.root / "utterances.jsonl"
        if not path.is_file():
            raise DatasetError(f"{path}: file is missing (a voice_commands source needs utterances.jsonl)")
        self.rows = read_jsonl(path, ("text",))
        for n, row in enumerate(self.rows, 1):
            if not isinstance(row["text"], str) or not row["text"].strip():
                raise DatasetError(f"{path}: utterance {n}: field 'text' must be a non-empty string")
            if row.get("audio") and not (self.root / row["audio"]).is_file():
                raise DatasetError(f"{path}: utterance {n}: audio file {self.root / row['audio']} is missing")
        if not self.rows:
            raise DatasetError(f"{path}: no utterances")
        self.responses = sorted({r.get("response", "") or "" for r in self.rows})
        self.fps = None
        self.num_rows = len(self.rows)
        self.vocabulary: list[str] | None = None  # set by the soup: the model's speech_responses

    def __len__(self) -> int:
        return len(self.rows)

    def sample(self, i: int) -> dict:
        row = self.rows[i]
        response = row.get("response", "") or ""
        target = -1
        if self.vocabulary is not None:
            target = self.vocabulary.index(response) if response in self.vocabulary else -1
        audio = read_wav(self.root / row["audio"]) if row.get("audio") else None
        obs = make_observation(self.space, None, image=self.IMAGE, instruction=row["text"], audio=audio)
        d, steps = self.space.dim, self.num_steps
        return {"obs": obs, "actions": np.zeros((steps, d), np.float32), "action_mask": np.zeros((steps, d), bool),
                "speech_target": target, "fps": 0.0, "row": i, "episode": i, "frame": 0}


def read_wav(path: Path) -> np.ndarray:
    """Float[(S,)] samples of a 16 kHz mono 16-bit WAV file."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() != AUDIO_SAMPLE_RATE:
                raise DatasetError(f"{path}: audio must be 16 kHz mono 16-bit PCM, got {w.getframerate()} Hz, "
                                   f"{w.getnchannels()} channel(s), {8 * w.getsampwidth()}-bit")
            data = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise DatasetError(f"{path}: not a readable WAV file ({e})") from None
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def write_wav(path: Path, samples: np.ndarray) -> None:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(AUDIO_SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
