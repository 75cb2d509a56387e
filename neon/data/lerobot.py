"""Read and write LeRobot datasets (codebase v2.1 and v3.0) with pyarrow and PyAV.

The LeRobot library itself needs torchvision, which has no CPU build here, so
Neon implements the on-disk format directly:

v2.1: `data/chunk-XXX/episode_XXXXXX.parquet` and
`videos/chunk-XXX/<camera>/episode_XXXXXX.mp4` per episode, plus
`meta/info.json`, `meta/episodes.jsonl`, `meta/tasks.jsonl`.

v3.0: episodes packed into `data/chunk-XXX/file-XXX.parquet` and
`videos/<camera>/chunk-XXX/file-XXX.mp4`; `meta/episodes/chunk-XXX/file-XXX.parquet`
rows hold each episode's `dataset_from_index`/`dataset_to_index` and
`videos/<camera>/from_timestamp`; `meta/tasks.parquet`, `meta/stats.json`.

GR00T-flavoured datasets add `meta/modality.json` (see `neon.data.modality`).
Writing goes to a temporary sibling folder that is renamed into place only when
complete, so a crash never leaves a dataset that loads as valid.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable

import numpy as np

from neon.files import atomic_directory, read_json
from neon.data.video import VideoError, VideoWriter, encode_video

log = logging.getLogger(__name__)

V21, V30 = "v2.1", "v3.0"
SUPPORTED_VERSIONS = ("v2.0", V21, V30)
V21_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V30_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V30_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V30_EPISODES = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
CHUNK_SIZE = 1000
INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


class DatasetError(ValueError):
    """A dataset is malformed; the message names the file and the field."""


# ---------------------------------------------------------------------------------------------- reading


@dataclass
class EpisodeMeta:
    index: int
    length: int
    tasks: list[str]
    data_file: str  # relative to the dataset root
    from_index: int  # first row of this episode in data_file
    videos: dict[str, tuple[str, float]] = field(default_factory=dict)  # camera -> (relative path, start time)


class LeRobotDataset:
    """A LeRobot dataset on disk: metadata, per-episode numeric columns, and video frame access.

    Numeric columns are read once per data file (memory-mapped) and kept as numpy arrays.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        self.info = read_json(info_path, DatasetError, f"is missing; is {root} a LeRobot dataset?")
        self.version = self.info.get("codebase_version")
        if self.version not in SUPPORTED_VERSIONS:
            raise DatasetError(f"{info_path}: codebase_version {self.version!r} is not supported "
                               f"(supported: {', '.join(SUPPORTED_VERSIONS)})")
        for key in ("fps", "features"):
            if key not in self.info:
                raise DatasetError(f"{info_path}: missing field {key!r}")
        self.fps = float(self.info["fps"])
        self.features: dict = self.info["features"]
        self.video_keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        self._file_start: dict[str, int] = {}  # v3.0 data file -> global index of its first row
        self.episodes = self._read_episodes_v30() if self.version == V30 else self._read_episodes_v21()
        if not self.episodes:
            raise DatasetError(f"{self.root}: the dataset has no episodes")
        self._columns: dict[str, dict[str, np.ndarray]] = {}
        modality = self.root / "meta" / "modality.json"
        self.modality = read_json(modality, DatasetError) if modality.exists() else None

    # -- metadata
    def _read_episodes_v21(self) -> list[EpisodeMeta]:
        tasks_path = self.root / "meta" / "tasks.jsonl"
        tasks = {int(r["task_index"]): r["task"] for r in read_jsonl(tasks_path, ("task_index", "task"))}
        chunks = int(self.info.get("chunks_size", CHUNK_SIZE))
        data_t = self.info.get("data_path", V21_DATA)
        video_t = self.info.get("video_path", V21_VIDEO)
        out = []
        for r in read_jsonl(self.root / "meta" / "episodes.jsonl", ("episode_index", "length")):
            i = int(r["episode_index"])
            fmt = dict(episode_chunk=i // chunks, episode_index=i)
            videos = {k: (video_t.format(video_key=k, **fmt), 0.0) for k in self.video_keys}
            out.append(EpisodeMeta(i, int(r["length"]), list(r.get("tasks", [])), data_t.format(**fmt), 0, videos))
        self._task_names = tasks
        return out

    def _read_episodes_v30(self) -> list[EpisodeMeta]:
        tasks_path = self.root / "meta" / "tasks.parquet"
        table = _read_parquet(tasks_path)
        names = _task_name_column(table, tasks_path)
        self._task_names = dict(zip(table.column("task_index").to_pylist(), names, strict=True))
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetError(f"{self.root / 'meta' / 'episodes'}: no episode metadata files")
        data_t = self.info.get("data_path", V30_DATA)
        video_t = self.info.get("video_path", V30_VIDEO)
        out = []
        for f in files:
            for r in _read_parquet(f).to_pylist():
                try:
                    data = data_t.format(chunk_index=r["data/chunk_index"], file_index=r["data/file_index"])
                    videos = {k: (video_t.format(video_key=k, chunk_index=r[f"videos/{k}/chunk_index"],
                                                 file_index=r[f"videos/{k}/file_index"]),
                                  float(r[f"videos/{k}/from_timestamp"])) for k in self.video_keys}
                    out.append(EpisodeMeta(int(r["episode_index"]), int(r["length"]), list(r.get("tasks") or []),
                                           data, int(r["dataset_from_index"]), videos))
                except KeyError as e:
                    raise DatasetError(f"{f}: episode row lacks field {e.args[0]!r}") from None
        out.sort(key=lambda e: e.index)
        for e in out:  # where each data file starts among all frames, when its own `index` column cannot tell
            self._file_start[e.data_file] = min(e.from_index, self._file_start.get(e.data_file, e.from_index))
        return out

    @property
    def num_frames(self) -> int:
        return sum(e.length for e in self.episodes)

    def feature_names(self, key: str) -> list[str] | None:
        """Per-dimension names of a vector feature, or None when it declares none (or not one per dimension).

        Every layout LeRobot and its users write: a flat list, a list holding one list (Unitree's
        converters: `[["kLeftShoulderPitch", ...]]`), a dict of lists under any keys (`{"motors": [...]}`,
        or one list per body part, in order), or null.
        """
        feat = self.features.get(key)
        if feat is None:
            raise DatasetError(f"{self.root / 'meta' / 'info.json'}: no feature {key!r}")
        names = feat.get("names")
        parts = list(names.values()) if isinstance(names, dict) else [names]
        flat = [n for p in parts for n in (p if isinstance(p, list) else [p])]
        flat = [n for p in flat for n in (p if isinstance(p, list) else [p])]  # a list holding lists
        size = int(np.prod(feat.get("shape", [1])))
        return [str(n) for n in flat] if len(flat) == size and all(isinstance(n, str) for n in flat) else None

    # -- numeric columns
    def columns(self, episode: EpisodeMeta) -> dict[str, np.ndarray]:
        """All numeric features of one episode: name -> array of shape (length, *feature shape).

        v3.0 episodes are located by their global frame index (`dataset_from_index`) minus the first
        global index of their data file, which may hold many episodes (and roll over by size).
        """
        table = self._data_file(episode.data_file)
        lo = episode.from_index - (self._file_start.get(episode.data_file, 0) if self.version == V30 else 0)
        hi = lo + episode.length
        n = len(next(iter(table.values())))
        if hi > n:
            raise DatasetError(f"{self.root / episode.data_file}: episode {episode.index} needs rows {lo}..{hi - 1}, "
                               f"the file has {n}")
        return {k: v[lo:hi] for k, v in table.items()}

    def _data_file(self, rel: str) -> dict[str, np.ndarray]:
        if rel in self._columns:
            return self._columns[rel]
        path = self.root / rel
        table = _read_parquet(path)
        out = {}
        for key, feat in self.features.items():
            if feat.get("dtype") in ("video", "image", "string"):
                continue
            if key not in table.column_names:
                if key in INDEX_COLUMNS:
                    continue
                raise DatasetError(f"{path}: column {key!r} declared in info.json is missing")
            out[key] = _column_to_numpy(table.column(key), feat, path, key)
        if self.version == V30 and "index" in table.column_names and len(table):
            self._file_start[rel] = int(table.column("index")[0].as_py())
        # Keep a few files resident: packed v3.0 files are large, v2.1 files are one episode each.
        while len(self._columns) >= (4 if self.version == V30 else 64):
            self._columns.pop(next(iter(self._columns)))
        self._columns[rel] = out
        return out

    def video_path(self, episode: EpisodeMeta, camera: str) -> tuple[Path, float]:
        rel, start = episode.videos[camera]
        return self.root / rel, start

    def task_of(self, episode: EpisodeMeta, cols: dict[str, np.ndarray], t: int) -> str:
        if "task_index" in cols:
            return self._task_names.get(int(np.asarray(cols["task_index"][t]).reshape(-1)[0]), "")
        return episode.tasks[0] if episode.tasks else ""

    def check_videos(self) -> None:
        """Fail early, naming the file, when a referenced video is missing."""
        for ep in self.episodes:
            for cam in self.video_keys:
                path, _ = self.video_path(ep, cam)
                if not path.is_file():
                    raise DatasetError(f"{path}: video file for episode {ep.index}, camera {cam!r} is missing")


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    """Rows of a JSON-lines file; errors name the file, the line and the missing field."""
    if not path.is_file():
        raise DatasetError(f"{path}: file is missing")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{n}: not valid JSON ({e})") from None
        missing = [k for k in required if k not in row]
        if missing:
            raise DatasetError(f"{path}:{n}: missing field {missing[0]!r}")
        rows.append(row)
    return rows


def _read_parquet(path: Path):
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DatasetError(f"{path}: file is missing")
    try:
        return pq.read_table(path, memory_map=True)
    except Exception as e:
        raise DatasetError(f"{path}: cannot be read as parquet (truncated or corrupted?): {e}") from None


def _task_name_column(table, path: Path) -> list[str]:
    for name in ("task", "__index_level_0__"):
        if name in table.column_names:
            return [str(x) for x in table.column(name).to_pylist()]
    raise DatasetError(f"{path}: no task text column ('task' or the pandas index)")


def _column_to_numpy(column, feat: dict, path: Path, key: str) -> np.ndarray:
    import pyarrow as pa

    shape = [int(s) for s in feat.get("shape", [1])]
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    variable = -1 in shape
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        if variable:  # e.g. audio samples per frame: keep ragged rows
            return np.array([np.asarray(x, dtype=np.float32) for x in arr.to_pylist()], dtype=object)
        while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
            arr = arr.flatten()
        flat = arr.to_numpy(zero_copy_only=False)
        per_row = int(np.prod(shape))
        if flat.size != per_row * len(column):
            raise DatasetError(f"{path}: feature {key!r} has {flat.size} values in {len(column)} rows, "
                               f"info.json declares shape {shape}")
        return flat.reshape(len(column), *shape)
    values = arr.to_numpy(zero_copy_only=False)
    if int(np.prod(shape)) != 1:
        raise DatasetError(f"{path}: feature {key!r} is a scalar column, info.json declares shape {shape}")
    return values.reshape(len(values), *shape) if shape != [1] else values.reshape(len(values), 1)


# ---------------------------------------------------------------------------------------------- writing


@dataclass
class EpisodeData:
    """One episode to write: per-frame arrays, camera frames and its task text."""

    task: str
    frames: dict[str, np.ndarray]  # feature -> (T, *shape); ragged features as lists of 1-D arrays
    videos: dict[str, np.ndarray] = field(default_factory=dict)  # camera key -> UInt8[(T, H, W, 3)]

    @property
    def length(self) -> int:
        lengths = {len(v) for v in self.frames.values()} | {len(v) for v in self.videos.values()}
        if len(lengths) != 1:
            raise DatasetError(f"episode {self.task!r}: features have different lengths {sorted(lengths)}")
        return lengths.pop()


def write_dataset(
    root: str | Path,
    episodes: Iterable[EpisodeData],
    *,
    fps: float,
    features: dict[str, dict],
    version: str = V30,
    codec: str = "av1",
    robot_type: str = "unitree_g1",
    extra_meta: dict[str, dict] | None = None,
    overwrite: bool = False,
    data_file_mb: float = 100.0,
    video_file_mb: float = 500.0,
) -> Path:
    """Write a LeRobot dataset atomically and return its root.

    `features` declares the per-frame numeric features (dtype, shape, names) and the
    cameras (dtype "video", shape [H, W, 3]); index columns are added here. v3.0 packs
    episodes into data and video files that roll over to the next file once they reach
    `data_file_mb` / `video_file_mb` (LeRobot's defaults), so an episode may start in the
    middle of any file.
    """
    if version not in (V21, V30):
        raise DatasetError(f"can write LeRobot {V21} or {V30}, not {version!r}")
    root = Path(root).absolute()
    if root.exists() and not overwrite:
        raise DatasetError(f"{root} already exists (pass overwrite=True to replace it)")
    import pyarrow as pa

    cams = [k for k, f in features.items() if f.get("dtype") == "video"]
    numeric = [k for k in features if k not in cams]
    with atomic_directory(root) as tmp:
        tasks: dict[str, int] = {}
        rows, stats, total = [], _StatsAccumulator(), 0
        packed = _V30Files(tmp, cams, fps, codec, data_file_mb, video_file_mb) if version == V30 else None
        for i, ep in enumerate(episodes):
            n = ep.length
            table = _episode_table(ep, numeric, features, fps, i, total, tasks.setdefault(ep.task, len(tasks)))
            stats.add({k: ep.frames[k] for k in numeric if features[k].get("shape") != [-1]})
            for cam in cams:
                stats.add_video(cam, ep.videos[cam])
            row = {"episode_index": i, "tasks": [ep.task], "length": n}
            if version == V21:  # one data file and one video per camera for each episode
                fmt = dict(episode_chunk=i // CHUNK_SIZE, episode_index=i)
                _write_parquet(table, tmp / V21_DATA.format(**fmt))
                video_info = {c: encode_video(tmp / V21_VIDEO.format(video_key=c, **fmt), ep.videos[c], fps, codec)
                              for c in cams}
            else:  # packed: the episode's rows and frames go into the current files, which roll over by size
                row.update({"dataset_from_index": total, "dataset_to_index": total + n, "meta/episodes/chunk_index": 0,
                            "meta/episodes/file_index": 0, **packed.add(table, ep.videos)})
            rows.append(row)
            total += n
        if not rows:
            raise DatasetError("no episodes to write")
        meta = tmp / "meta"
        if version == V30:
            video_info = packed.close()
            _write_parquet(pa.Table.from_pylist(rows), tmp / V30_EPISODES.format(chunk_index=0, file_index=0))
            _write_tasks_parquet(meta / "tasks.parquet", tasks)
        else:
            meta.mkdir(parents=True, exist_ok=True)
            (meta / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (meta / "tasks.jsonl").write_text("".join(json.dumps({"task_index": v, "task": k}) + "\n"
                                                      for k, v in tasks.items()))
        (meta / "stats.json").write_text(json.dumps(stats.result(), indent=2) + "\n")
        info = _info(version, robot_type, fps, features, video_info, len(rows), total, len(tasks))
        if version == V30:
            info.update(data_files_size_in_mb=data_file_mb, video_files_size_in_mb=video_file_mb)
        (meta / "info.json").write_text(json.dumps(info, indent=2) + "\n")
        for name, content in (extra_meta or {}).items():
            (meta / name).write_text(json.dumps(content, indent=2) + "\n")
    return root


def _episode_table(ep: EpisodeData, numeric: list[str], features: dict, fps: float, index: int, first: int,
                   task_index: int):
    """One episode's rows: its numeric features plus LeRobot's index columns."""
    import pyarrow as pa

    n = ep.length
    cols = {k: _to_arrow(ep.frames[k], features[k], k) for k in numeric}
    cols["timestamp"] = pa.array(np.arange(n, dtype=np.float32) / np.float32(fps))
    cols["frame_index"] = pa.array(np.arange(n, dtype=np.int64))
    cols["episode_index"] = pa.array(np.full(n, index, np.int64))
    cols["index"] = pa.array(np.arange(first, first + n, dtype=np.int64))
    cols["task_index"] = pa.array(np.full(n, task_index, np.int64))
    return pa.table(cols)


def _write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


class _V30Files:
    """v3.0's rolling files: rows go into data/chunk-C/file-F.parquet and each camera's frames into
    videos/<camera>/chunk-C/file-F.mp4 until that file reaches its size, then into the next one."""

    def __init__(self, root: Path, cams: list[str], fps: float, codec: str, data_mb: float, video_mb: float):
        if not (data_mb > 0 and video_mb > 0):
            raise DatasetError(f"data_file_mb and video_file_mb must be positive, got {data_mb}, {video_mb}")
        self.root, self.fps, self.codec = root, fps, codec
        self.data_limit, self.video_limit = data_mb * 2**20, video_mb * 2**20
        self.tables, self.data_bytes, self.data_file = [], 0, 0
        self.videos: dict[str, VideoWriter] = {}
        self.video_file = dict.fromkeys(cams, 0)
        self.info: dict[str, dict] = {}

    @staticmethod
    def _where(prefix: str, file: int) -> dict:
        return {f"{prefix}/chunk_index": file // CHUNK_SIZE, f"{prefix}/file_index": file % CHUNK_SIZE}

    def add(self, table, videos: dict[str, np.ndarray]) -> dict:
        """Append one episode; -> its row's file columns (and each camera's from/to timestamps)."""
        row = self._where("data", self.data_file)
        self.tables.append(table)
        self.data_bytes += table.nbytes
        if self.data_bytes >= self.data_limit:
            self._flush_data()
        for cam, frames in videos.items():
            if cam not in self.videos:
                fmt = self._where("", self.video_file[cam])
                path = self.root / V30_VIDEO.format(video_key=cam, chunk_index=fmt["/chunk_index"],
                                                    file_index=fmt["/file_index"])
                self.videos[cam] = VideoWriter(path, self.fps, self.codec)
            writer = self.videos[cam]
            start = writer.frames / self.fps
            row.update({**self._where(f"videos/{cam}", self.video_file[cam]), f"videos/{cam}/from_timestamp": start,
                        f"videos/{cam}/to_timestamp": start + len(frames) / self.fps})
            writer.write(frames)
            if writer.bytes >= self.video_limit:
                self.info[cam] = self.videos.pop(cam).close()
                self.video_file[cam] += 1
        return row

    def _flush_data(self) -> None:
        import pyarrow as pa

        fmt = self._where("", self.data_file)
        path = self.root / V30_DATA.format(chunk_index=fmt["/chunk_index"], file_index=fmt["/file_index"])
        _write_parquet(pa.concat_tables(self.tables), path)
        self.tables, self.data_bytes, self.data_file = [], 0, self.data_file + 1

    def close(self) -> dict[str, dict]:
        """Write what is still open; -> each camera's video info."""
        if self.tables:
            self._flush_data()
        for cam in list(self.videos):
            self.info[cam] = self.videos.pop(cam).close()
        return self.info


def _info(version: str, robot_type: str, fps: float, features: dict, video_info: dict, episodes: int, frames: int,
          tasks: int) -> dict:
    """meta/info.json: the declared features (cameras with their codec info) plus the index columns."""
    all_features = {}
    for k, f in features.items():
        f = dict(f)
        if k in video_info:
            f.setdefault("names", ["height", "width", "channels"])
            f["info"] = video_info[k]
        all_features[k] = f
    for k, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                     ("index", "int64"), ("task_index", "int64")):
        all_features[k] = {"dtype": dtype, "shape": [1], "names": None}
    info = {"codebase_version": version, "robot_type": robot_type, "total_episodes": episodes, "total_frames": frames,
            "total_tasks": tasks, "chunks_size": CHUNK_SIZE, "fps": fps, "splits": {"train": f"0:{episodes}"},
            "data_path": V30_DATA if version == V30 else V21_DATA,
            "video_path": (V30_VIDEO if version == V30 else V21_VIDEO) if video_info else None,
            "features": all_features}
    if version == V21:
        info.update(total_videos=episodes * len(video_info), total_chunks=(episodes - 1) // CHUNK_SIZE + 1)
    return info


def _to_arrow(values, feat: dict, key: str):
    import pyarrow as pa

    shape = feat.get("shape", [1])
    if shape == [-1]:  # ragged: one 1-D float array per frame
        return pa.array([np.asarray(v, np.float32) for v in values], type=pa.list_(pa.float32()))
    arr = np.asarray(values)
    if arr.shape[1:] != tuple(shape) and not (shape == [1] and arr.ndim == 1):
        raise DatasetError(f"feature {key!r}: values have shape {arr.shape[1:]}, declared {shape}")
    dtype = np.dtype(feat.get("dtype", "float32"))
    if shape == [1]:
        return pa.array(arr.reshape(-1).astype(dtype))
    flat = arr.reshape(len(arr), -1).astype(dtype)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1]).cast(
        pa.list_(pa.from_numpy_dtype(dtype)))


def _write_tasks_parquet(path: Path, tasks: dict[str, int]) -> None:
    """tasks.parquet as pandas writes it (task text as the index), without needing pandas."""
    import pyarrow as pa

    pandas_meta = {
        "index_columns": ["__index_level_0__"], "column_indexes": [],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                     "numpy_type": "int64", "metadata": None},
                    {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
                     "numpy_type": "object", "metadata": None}],
        "creator": {"library": "neon"}, "pandas_version": "2.2.0",
    }
    table = pa.table({"task_index": pa.array(list(tasks.values()), pa.int64()),
                      "__index_level_0__": pa.array(list(tasks), pa.string())})
    _write_parquet(table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()}), path)


class _StatsAccumulator:
    """LeRobot-style stats.json: mean, std, min, max, count per feature (video: per channel, 0..1)."""

    def __init__(self):
        self.sums: dict[str, list] = {}

    def add(self, frames: dict[str, np.ndarray]) -> None:
        for k, v in frames.items():
            a = np.asarray(v, np.float64).reshape(len(v), -1)
            s = self.sums.setdefault(k, [0, 0.0, 0.0, np.inf, -np.inf])
            s[0] += len(a)
            s[1] = s[1] + a.sum(0)
            s[2] = s[2] + (a ** 2).sum(0)
            s[3] = np.minimum(s[3], a.min(0))
            s[4] = np.maximum(s[4], a.max(0))

    def add_video(self, key: str, frames: np.ndarray) -> None:
        px = frames[:, ::4, ::4].reshape(-1, 3).astype(np.float64) / 255.0  # subsampled pixels
        self.add({key: px})

    def result(self) -> dict:
        out = {}
        for k, (n, s, ss, lo, hi) in self.sums.items():
            mean = s / n
            std = np.sqrt(np.maximum(ss / n - mean ** 2, 0.0))
            out[k] = {"mean": mean.tolist(), "std": std.tolist(), "min": np.asarray(lo).tolist(),
                      "max": np.asarray(hi).tolist(), "count": [int(n)]}
        return out


__all__ = ["LeRobotDataset", "EpisodeMeta", "EpisodeData", "write_dataset", "DatasetError", "VideoError"]
