"""The data soup: several sources mixed by weight, deterministic, DataLoader-ready.

    soup = DataSoup(DataSoupConfig(sources=[DataSourceConfig("g1", path="data/g1", weight=2.0), ...]),
                    space, num_steps=16)
    loader = DataLoader(soup, batch_size=8, sampler=soup.sampler(num_samples=10_000), num_workers=4,
                        collate_fn=collate)

Each source is sampled with probability proportional to its weight (or to
weight x number of frames with `balance_by_size`); a frame within a source is
drawn uniformly. The sampler draws from a generator seeded by (seed, epoch), so
a run is reproducible whatever the number of workers (the sampler runs in the
main process; workers only load the indices they are handed).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from neon.action_space import G1ActionSpace
from neon.data.lerobot import DatasetError
from neon.data.sources import LeRobotSource, VoiceCommandSource
from neon.observation import collate as collate_observations

SOURCE_TYPES = ("lerobot", "cosmos_dreamgen", "voice_commands")


@dataclass
class DataSourceConfig:
    name: str
    path: str  # local folder or Hub dataset id
    type: str = "lerobot"
    weight: float = 1.0
    use_relative_actions: bool = False  # train on action[t+i] - state[t] (x action_scaler)
    action_scaler: float = 1.0
    camera: str | None = None  # video feature to use; default: the head/ego camera

    def validate(self) -> None:
        where = f"source {self.name!r}"
        if self.type not in SOURCE_TYPES:
            raise DatasetError(f"{where}: type must be one of {', '.join(SOURCE_TYPES)}, got {self.type!r}")
        if not self.weight > 0:
            raise DatasetError(f"{where}: weight must be positive, got {self.weight}")
        if not self.action_scaler > 0:
            raise DatasetError(f"{where}: action_scaler must be positive, got {self.action_scaler}")


@dataclass
class DataSoupConfig:
    sources: list[DataSourceConfig] = field(default_factory=list)
    balance_by_size: bool = False
    seed: int = 0
    fps: float | None = None  # resample every source's action chunks to this rate (needed when sources differ)

    def validate(self) -> DataSoupConfig:
        self.sources = [s if isinstance(s, DataSourceConfig) else DataSourceConfig(**s) for s in self.sources]
        if not self.sources:
            raise DatasetError("data soup has no sources")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise DatasetError(f"data soup source names must be unique, got {names}")
        for s in self.sources:
            s.validate()
        if self.fps is not None and not self.fps > 0:
            raise DatasetError(f"data soup fps must be positive, got {self.fps}")
        return self

    def action_representation(self) -> tuple[bool, float]:
        """(relative?, scaler) the model must use. Any relative source makes the model relative; scalers must agree."""
        rel = [s for s in self.sources if s.use_relative_actions and s.type != "voice_commands"]
        scalers = {s.action_scaler for s in rel}
        if len(scalers) > 1:
            raise DatasetError(f"relative sources disagree on action_scaler ({sorted(scalers)}); one model has one "
                               "paired transform, so give them the same scaler")
        return bool(rel), (scalers.pop() if scalers else 1.0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_file(cls, path: str | Path) -> DataSoupConfig:
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise DatasetError(f"soup file {path} not found") from None
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as e:
            raise DatasetError(f"soup file {path} cannot be parsed: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("sources"), list):
            raise DatasetError(f"soup file {path} must hold a mapping with a 'sources' list")
        try:
            return cls(**data).validate()
        except TypeError as e:
            raise DatasetError(f"soup file {path}: {e}") from None

    def save(self, path: str | Path) -> None:
        from neon.files import atomic_write_text

        path = Path(path)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))
        else:
            atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


class DataSoup(Dataset):
    """All sources of a soup behind one index: [0, len(source 0)), then source 1, ..."""

    def __init__(self, config: DataSoupConfig, space: G1ActionSpace, num_steps: int,
                 responses: list[str] | None = None, episodes: dict[str, list[int]] | None = None,
                 only: list[str] | None = None):
        """`episodes` restricts LeRobot sources (by name) to episode positions; `only` keeps just those sources."""
        self.config = config.validate()
        self.space, self.num_steps = space, num_steps
        self.source_configs = [s for s in config.sources if only is None or s.name in only]
        self.sources = []
        for s in self.source_configs:
            if s.type == "voice_commands":
                src = VoiceCommandSource(s.path, space, num_steps, name=s.name)
                src.vocabulary = responses
            else:  # lerobot and cosmos_dreamgen (GR00T-LeRobot: modality.json is read when present)
                src = LeRobotSource(s.path, space, num_steps, name=s.name, camera=s.camera,
                                    episodes=(episodes or {}).get(s.name), chunk_fps=config.fps)
            if len(src) == 0:
                raise DatasetError(f"source {s.name!r} has no samples")
            self.sources.append(src)
        rates = {src.name: src.fps for src in self.sources if src.fps}
        if config.fps is None and len(set(rates.values())) > 1:
            listed = ", ".join(f"{n} at {r:g} fps" for n, r in rates.items())
            raise DatasetError(f"the soup's sources differ in frame rate ({listed}); one model executes its chunks "
                               "at one rate: pass --fps F (or 'fps' in the soup file) to resample every source's "
                               "action chunks to F")
        self.fps = config.fps or next(iter(rates.values()), None)  # the rate of every chunk's steps
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources]) if self.sources else np.zeros(1, np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> dict:
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        sample = self.sources[k].sample(int(i - self.offsets[k]))
        sample["source"] = k
        return sample

    def source_probabilities(self) -> np.ndarray:
        w = np.array([s.weight for s in self.source_configs], dtype=np.float64)
        if self.config.balance_by_size:
            w = w * np.array([len(s) for s in self.sources])
        return w / w.sum()

    def sampler(self, num_samples: int | None = None) -> SoupSampler:
        return SoupSampler(self, num_samples or len(self), self.config.seed)


class SoupSampler(Sampler[int]):
    """Weighted draws over a soup's sources; call `set_epoch` for a new, still reproducible, order."""

    def __init__(self, soup: DataSoup, num_samples: int, seed: int = 0):
        self.probs = soup.source_probabilities()
        self.sizes = np.diff(soup.offsets)
        self.offsets = soup.offsets[:-1]
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        src = rng.choice(len(self.probs), size=self.num_samples, p=self.probs)
        within = (rng.random(self.num_samples) * self.sizes[src]).astype(np.int64)
        return iter((self.offsets[src] + within).tolist())


def collate(samples: list[dict]) -> dict:
    """Stack samples into a batch: the observations through `neon.observation.collate`, targets as tensors."""
    return {
        "obs": collate_observations([s["obs"] for s in samples], samples[0]["actions"].shape[-1]),
        "actions": torch.from_numpy(np.stack([s["actions"] for s in samples])),
        "action_mask": torch.from_numpy(np.stack([s["action_mask"] for s in samples])),
        "speech_target": torch.tensor([s["speech_target"] for s in samples]),
        "source": torch.tensor([s.get("source", 0) for s in samples]),
        "row": torch.tensor([s.get("row", -1) for s in samples]),
        "episode": torch.tensor([s["episode"] for s in samples]),
        "frame": torch.tensor([s["frame"] for s in samples]),
    }
