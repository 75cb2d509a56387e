"""On-disk cache of frozen-backbone features, so each (frame, instruction) is encoded once.

The backbone never trains, so its features for a dataset frame only change
when something that shapes them changes. The cache folder is keyed by all of
it: backbone id and revision, 4-bit or not, dtype, hidden layer, pooling,
token budget, grid size and text bins, image size, audio encoder, Neon's
preprocessing version; inside,
one folder per source (keyed by the dataset's path and metadata, and the
camera). Each row (a frame of the source) also records a hash of its
instruction, so a row whose text changed is a miss, never a stale hit.

Layout of a source folder: memory-mapped `.npy` arrays
    vl.npy       Float16[(N, K, H)]   pooled backbone tokens
    audio.npy    Float16[(N, A)]      pooled audio features (zeros when absent)
    has_audio.npy Bool[(N,)]
    text.npy     UInt64[(N,)]         instruction hash
    filled.npy   Bool[(N,)]           written last, so a crash never marks half a row valid
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neon.backbones.tiny import tiny_build
from neon.config import BackboneConfig
from neon.observation import ObservationBatch

PREPROCESSING_VERSION = 2  # 2: the instruction before the image. Bump when image/prompt preprocessing changes


def backbone_key(cfg: BackboneConfig) -> dict:
    if cfg.load_in_4bit == "auto":  # nf4 and dense features differ: the key needs the precision the backbone loaded at
        raise ValueError("backbone.load_in_4bit is still \"auto\": load the backbone first (it settles the precision) "
                         "or set it to true or false before keying the feature cache")
    return {
        "model_id": cfg.model_id, "revision": cfg.revision, "load_in_4bit": cfg.load_in_4bit, "dtype": cfg.dtype,
        "hidden_layer": cfg.hidden_layer, "pooling": cfg.pooling, "token_budget": cfg.token_budget,
        "grid_size": cfg.grid_size, "text_tokens": cfg.text_tokens, "image_size": cfg.image_size,
        "audio_encoder": cfg.resolved_audio_encoder,
        "preprocessing": PREPROCESSING_VERSION, "tiny_build": tiny_build(cfg.model_id) if cfg.spec.tiny else None,
    }


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:24]


def text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class SourceFeatureCache:
    """Feature rows for one source of one backbone configuration."""

    def __init__(self, directory: Path, rows: int, tokens: int, hidden: int, audio_dim: int, key: dict):
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        meta_path = directory / "key.json"
        meta = {"key": key, "rows": rows, "tokens": tokens, "hidden": hidden, "audio_dim": audio_dim}
        if meta_path.is_file() and json.loads(meta_path.read_text()) != meta:
            for f in directory.glob("*.npy"):  # same digest, different shape: never reuse
                f.unlink()
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        self.vl = self._array("vl", np.float16, (rows, tokens, hidden))
        self.audio = self._array("audio", np.float16, (rows, audio_dim))
        self.has_audio = self._array("has_audio", np.bool_, (rows,))
        self.text = self._array("text", np.uint64, (rows,))
        self.filled = self._array("filled", np.bool_, (rows,))
        self.stats = CacheStats()

    def _array(self, name: str, dtype, shape) -> np.memmap:
        path = self.dir / f"{name}.npy"
        if path.is_file():
            arr = np.load(path, mmap_mode="r+")
            if arr.shape == shape and arr.dtype == dtype:
                return arr
            path.unlink()
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)

    def lookup(self, rows: np.ndarray, texts: list[str]) -> np.ndarray:
        """Bool[(B,)] which rows hold valid features for these instructions."""
        hashes = np.array([text_hash(t) for t in texts], dtype=np.uint64)
        hit = self.filled[rows] & (self.text[rows] == hashes)
        self.stats.hits += int(hit.sum())
        self.stats.misses += int((~hit).sum())
        return hit

    def hit(self, row: int, text: str) -> bool:
        """Whether one row holds valid features for this instruction (no statistics; for the data loader)."""
        return bool(self.filled[row]) and int(self.text[row]) == text_hash(text)

    def read(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(np.asarray(self.vl[rows], np.float32)),
                torch.from_numpy(np.asarray(self.audio[rows], np.float32)),
                torch.from_numpy(np.asarray(self.has_audio[rows])))

    def write(self, rows: np.ndarray, texts: list[str], vl: torch.Tensor, audio: torch.Tensor,
              has_audio: torch.Tensor) -> None:
        self.vl[rows] = vl.detach().cpu().numpy().astype(np.float16)
        self.audio[rows] = audio.detach().cpu().numpy().astype(np.float16)
        self.has_audio[rows] = has_audio.cpu().numpy()
        self.text[rows] = np.array([text_hash(t) for t in texts], dtype=np.uint64)
        for arr in (self.vl, self.audio, self.has_audio, self.text):
            arr.flush()
        self.filled[rows] = True
        self.filled.flush()


class FeatureCache:
    """All sources' caches for one backbone configuration under `root`."""

    def __init__(self, root: str | Path, backbone: BackboneConfig, with_audio: bool):
        self.key = {**backbone_key(backbone), "with_audio": with_audio}
        self.root = Path(root) / _digest(self.key)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "backbone.json").write_text(json.dumps(self.key, indent=2) + "\n")
        self.hidden = backbone.spec.hidden_size
        self.tokens = backbone.num_tokens
        self.audio_dim = backbone.audio_dim
        self._sources: dict[str, SourceFeatureCache] = {}

    def source(self, source) -> SourceFeatureCache:
        """The cache of a `LeRobotSource` or `VoiceCommandSource` (keyed by its data and camera)."""
        ident = source_identity(source)
        name = _digest(ident)
        if name not in self._sources:
            self._sources[name] = SourceFeatureCache(self.root / name, source.num_rows, self.tokens, self.hidden,
                                                     self.audio_dim, ident)
        return self._sources[name]

    @property
    def stats(self) -> CacheStats:
        return CacheStats(sum(s.stats.hits for s in self._sources.values()),
                          sum(s.stats.misses for s in self._sources.values()))


class CachedFeatures:
    """A feature provider (see `NeonVLA.inputs`) that reads the cache and runs the live backbone only on misses.

    `keys` = (source index, row) per sample, as the soup's `collate` gives them; a row < 0 is never cached.
    """

    def __init__(self, cache: FeatureCache, sources: list, live):
        self.cache, self.sources, self.live = cache, sources, live

    def __call__(self, batch: ObservationBatch, keys) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        source_idx, rows = (np.asarray(k) for k in keys)
        b, c = len(batch), self.cache
        vl, audio, has_audio = torch.zeros(b, c.tokens, c.hidden), torch.zeros(b, c.audio_dim), torch.zeros(b, dtype=torch.bool)
        miss = np.ones(b, bool)
        for k in np.unique(source_idx):
            pos = np.flatnonzero(source_idx == k)
            if (rows[pos] < 0).any():
                continue
            sc = c.source(self.sources[k])
            hit = sc.lookup(rows[pos], [batch.instructions[i] for i in pos])
            if hit.any():
                vl[pos[hit]], audio[pos[hit]], has_audio[pos[hit]] = sc.read(rows[pos][hit])
            miss[pos[hit]] = False
        idx = np.flatnonzero(miss)
        if any(batch.images[i] is None for i in idx):
            raise RuntimeError("a frame was not decoded because its features were cached, but they are not: was "
                               "the cache cleared while training?")
        if len(idx):
            v, a, h = self.live.encode([batch.images[i] for i in idx], [batch.instructions[i] for i in idx],
                                       [batch.audio[i] for i in idx])
            # Use what the cache stores (float16) on misses too, so a run gives the same numbers whether a
            # frame was computed now or read back (resumed runs match uninterrupted ones).
            vl[idx], audio[idx], has_audio[idx] = v.cpu().half().float(), a.cpu().half().float(), h.cpu()
            for k in np.unique(source_idx[idx]):
                sel = idx[source_idx[idx] == k]
                if (rows[sel] >= 0).all():
                    c.source(self.sources[k]).write(rows[sel], [batch.instructions[i] for i in sel], vl[sel],
                                                    audio[sel], has_audio[sel])
        return vl, audio, has_audio


def source_identity(source) -> dict:
    """What makes a source's features what they are: its files (size and mtime) and camera."""
    root = Path(source.root).resolve()
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts):
        st = f.stat()
        h.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return {"root": str(root), "content": h.hexdigest(), "camera": getattr(source, "camera", None),
            "rows": source.num_rows}
