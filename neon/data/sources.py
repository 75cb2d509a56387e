"""Data sources as Neon sees them: every sample mapped onto the G1 action space by joint name.

A sample (`dict`) holds:
    image        UInt8[(H, W, 3)]         head camera frame at t
    instruction  str
    state        Float[(D,)]              physical, action-space order (0 where the source has no such joint)
    state_present bool
    actions      Float[(T, D)]            absolute, physical; frames t..t+T-1 at the source's own fps,
                                          the last frame repeated past the episode end
    action_mask  Bool[(T, D)]             False past the episode end and on joints the source lacks
    eef          Float[(14,)] | None      left/right wrist pose
    lidar        Float[(N, 4)] | None
    audio        Float[(S,)] | None       16 kHz, from the episode start up to t (at most AUDIO_WINDOW_S)
    speech_target int                     index into the response vocabulary, -1 = no target
    fps          float                    the source's frame rate: chunk step i is i / fps after t
    row          int                      the frame's index among all the dataset's frames (feature cache key)
    source       int                      index of the source in its soup
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

log = logging.getLogger(__name__)

AUDIO_RATE = 16000
AUDIO_WINDOW_S = 4.0
STATE_KEYS = ("observation.state",)
ACTION_KEYS = ("action",)
EEF_KEYS = ("observation.eef", "observation.ee_pose")
LIDAR_KEYS = ("observation.lidar", "observation.pointcloud")
AUDIO_KEYS = ("observation.audio",)
_CAMERA_PREFERENCE = ("head", "ego", "high", "front", "main")


def resolve_dataset_dir(path_or_repo: str, revision: str | None = None) -> Path:
    """A local dataset folder, or a Hub dataset repo fetched with huggingface_hub (when a network exists)."""
    p = Path(path_or_repo).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise DatasetError(f"{p} is a file; pass the dataset folder (the one holding meta/info.json)")
    from neon.backbones.loader import _env_true, hub_reachable, looks_like_repo_id

    if looks_like_repo_id(path_or_repo):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        offline = _env_true("HF_HUB_OFFLINE") or not hub_reachable()
        try:
            return Path(snapshot_download(path_or_repo, repo_type="dataset", revision=revision,
                                          local_files_only=offline))
        except LocalEntryNotFoundError:
            raise DatasetError(f"dataset {path_or_repo!r} is not in the local Hugging Face cache and the Hub is "
                               "unreachable; download it where there is network (`hf download --repo-type dataset "
                               f"{path_or_repo}`) or pass a local folder") from None
    raise DatasetError(f"{path_or_repo} is neither a dataset folder nor a Hub dataset id (owner/name)")


def _first_key(features: dict, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in features), None)


class LeRobotSource:
    """One LeRobot (or GR00T-LeRobot) dataset, mapped onto an action space, indexed by frame."""

    def __init__(self, path_or_repo: str, space: G1ActionSpace, num_steps: int, name: str | None = None,
                 camera: str | None = None, episodes: list[int] | None = None):
        self.name = name or str(path_or_repo)
        self.space, self.num_steps = space, num_steps
        self.ds = LeRobotDataset(resolve_dataset_dir(path_or_repo))
        self.root, self.fps = self.ds.root, self.ds.fps
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
        report = self.action_map.report()
        if self.action_map.unmapped_source or self.action_map.missing_target:
            log.warning("%s: action %s", self.name, report)
        self.dim_available = np.zeros(space.dim, bool)
        self.dim_available[self.action_map.target_index] = True
        self.eef_key = _first_key(feats, EEF_KEYS)
        self.lidar_key = _first_key(feats, LIDAR_KEYS)
        self.audio_key = _first_key(feats, AUDIO_KEYS)
        if camera is not None and camera not in self.ds.video_keys:
            raise DatasetError(f"{self.name}: no camera {camera!r}; cameras: {', '.join(self.ds.video_keys) or 'none'}")
        self.camera = camera or _pick_camera(self.ds.video_keys)
        if self.camera is None:
            raise DatasetError(f"{self.root / 'meta/info.json'}: no video feature; Neon needs a camera stream")
        self.ds.check_videos()
        chosen = self.ds.episodes if episodes is None else [self.ds.episodes[i] for i in episodes]
        self.episodes = chosen
        self.index = np.array([(k, t) for k, e in enumerate(chosen) for t in range(e.length)], dtype=np.int64)
        # Row of each chosen episode's first frame among all the dataset's frames (stable across subsets).
        starts = np.cumsum([0] + [e.length for e in self.ds.episodes])
        position = {e.index: p for p, e in enumerate(self.ds.episodes)}
        self.first_row = np.array([starts[position[e.index]] for e in chosen], dtype=np.int64)
        self.num_rows = int(starts[-1])
        self._video, self._video_pid = None, None

    def __getstate__(self) -> dict:  # open video files stay behind when a worker process is spawned
        return {**self.__dict__, "_video": None, "_video_pid": None}

    def _mapping(self, key: str, what: str) -> JointMapping:
        if self.ds.modality is not None and what in self.ds.modality:
            names = modality_names(self.ds.modality[what], int(np.prod(self.ds.features[key]["shape"])))
        else:
            names = self.ds.feature_names(key)
        return self.space.map_names(names)

    def __len__(self) -> int:
        return len(self.index)

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
        n, steps = ep.length, self.num_steps
        idx = np.minimum(np.arange(t, t + steps), n - 1)
        step_valid = np.arange(t, t + steps) < n
        path, start = self.ds.video_path(ep, self.camera)
        out = {
            "image": self._video.frame(path, start + t / self.fps, self.fps),
            "instruction": self.ds.task_of(ep, cols, t),
            "state": states[t] if states is not None else np.zeros(self.space.dim, np.float32),
            "state_present": states is not None,
            "actions": actions[idx],
            "action_mask": step_valid[:, None] & self.dim_available[None, :],
            "eef": cols[self.eef_key][t].reshape(-1).astype(np.float32) if self.eef_key else None,
            "lidar": cols[self.lidar_key][t].reshape(-1, 4).astype(np.float32) if self.lidar_key else None,
            "audio": self._audio(cols, t) if self.audio_key else None,
            "speech_target": -1,
            "fps": self.fps,
            "row": int(self.first_row[k] + t),
            "episode": int(ep.index),
            "frame": t,
        }
        return out

    def _audio(self, cols: dict, t: int) -> np.ndarray:
        chunks = [np.asarray(c, np.float32).reshape(-1) for c in cols[self.audio_key][: t + 1]]
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        return audio[-int(AUDIO_WINDOW_S * AUDIO_RATE):]


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
        d, steps = self.space.dim, self.num_steps
        return {
            "image": self.IMAGE,
            "instruction": row["text"],
            "state": np.zeros(d, np.float32),
            "state_present": False,
            "actions": np.zeros((steps, d), np.float32),
            "action_mask": np.zeros((steps, d), bool),
            "eef": None,
            "lidar": None,
            "audio": read_wav(self.root / row["audio"]) if row.get("audio") else None,
            "speech_target": target,
            "fps": 0.0,
            "row": i,
            "episode": i,
            "frame": 0,
        }


def read_wav(path: Path) -> np.ndarray:
    """Float[(S,)] samples of a 16 kHz mono 16-bit WAV file."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() != AUDIO_RATE:
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
        w.setframerate(AUDIO_RATE)
        w.writeframes(pcm.tobytes())
