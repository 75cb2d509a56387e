"""Turn a collated batch into the heads' inputs, running the frozen backbone only for cache misses."""

from __future__ import annotations

import numpy as np
import torch

from neon.encoders import absent_eef
from neon.model import NeonInputs, NeonVLA
from neon_train.feature_cache import FeatureCache


def model_inputs(model: NeonVLA, batch: dict, sources: list, cache: FeatureCache | None = None) -> NeonInputs:
    """NeonInputs for a batch from `neon.data.soup.collate` (features from the cache where valid)."""
    bb = model.backbone
    if bb is None:
        raise RuntimeError("no backbone loaded: call model.load_backbone() first")
    b, dev = len(batch["images"]), model.device
    tokens = bb.cfg.token_budget if bb.cfg.pooling == "tokens" else 1
    vl = torch.zeros(b, tokens, bb.hidden_size)
    audio = torch.zeros(b, bb.audio_dim)
    has_audio = torch.zeros(b, dtype=torch.bool)
    with_audio = model.audio is not None
    miss = np.ones(b, bool)
    texts = batch["instructions"]
    if cache is not None:
        for k in torch.unique(batch["source"]).tolist():
            pos = np.flatnonzero(batch["source"].numpy() == k)
            rows = batch["row"].numpy()[pos]
            if (rows < 0).any():
                continue
            sc = cache.source(sources[k])
            hit = sc.lookup(rows, [texts[i] for i in pos])
            if hit.any():
                v, a, h = sc.read(rows[hit])
                vl[pos[hit]], audio[pos[hit]], has_audio[pos[hit]] = v, a, h
            miss[pos[hit]] = False
    idx = np.flatnonzero(miss)
    if len(idx):
        v = bb.encode([batch["images"][i] for i in idx], [texts[i] for i in idx]).cpu()
        vl[idx] = v
        if with_audio:
            a, h = bb.encode_audio([batch["audio"][i] for i in idx])
            audio[idx], has_audio[idx] = a.cpu(), h.cpu()
        if cache is not None:
            # Use what the cache stores (float16) on misses too, so a run gives the same numbers
            # whether a frame was computed now or read back (resumed runs match uninterrupted ones).
            vl[idx] = vl[idx].half().float()
            audio[idx] = audio[idx].half().float()
            for k in torch.unique(batch["source"][idx]).tolist():
                sel = idx[batch["source"].numpy()[idx] == k]
                rows = batch["row"].numpy()[sel]
                if (rows >= 0).all():
                    cache.source(sources[k]).write(rows, [texts[i] for i in sel], vl[sel], audio[sel], has_audio[sel])
    inp = NeonInputs(vl.to(dev), batch["state"].to(dev), batch["state_present"].to(dev))
    if model.eef is not None:
        if "eef" in batch:
            inp.eef, inp.eef_present = batch["eef"].to(dev), batch["eef_present"].to(dev)
        else:
            inp.eef = absent_eef(b, dev)
            inp.eef_present = torch.zeros(b, dtype=torch.bool, device=dev)
    if model.lidar is not None:
        if "lidar" in batch:
            inp.lidar, inp.lidar_valid = batch["lidar"].to(dev), batch["lidar_valid"].to(dev)
        else:
            inp.lidar = torch.zeros(b, 1, 4, device=dev)
            inp.lidar_valid = torch.zeros(b, 1, dtype=torch.bool, device=dev)
    if with_audio:
        inp.audio, inp.audio_present = audio.to(dev), has_audio.to(dev)
    return inp
