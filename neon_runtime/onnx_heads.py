"""Everything after the backbone (encoders, fusion, action and speech heads) as one ONNX graph.

`export_heads` writes `neon_heads.onnx` (dynamic batch and LiDAR point count)
and `export.json` (inputs, opset, the largest difference from PyTorch measured
at export) into `<checkpoint>/onnx/`. `OnnxHeads` runs it with ONNX Runtime on
the best execution provider present (TensorRT, then CUDA, then CPU) and is a
heads backend for `neon.policy.NeonPolicy`: its inputs are the very
`NeonInputs` the PyTorch heads get. The backbone stays in PyTorch (4-bit).

A prefix-conditioned model's graph (`prefix_max_steps` > 0) also takes `prefix`
Float[(B, P, D)] and `prefix_len` Int64[(B,)]; a model without the option keeps
exactly the nine inputs it always had, so its old exports still run.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from neon.checkpoint import (
    MANIFEST_FILE,
    CheckpointError,
    atomic_directory,
    read_json,
    resolve_checkpoint,
    verified_manifest,
    write_manifest,
)
from neon.model import NeonInputs, NeonVLA
from neon.observation import EEF_FIELDS, LIDAR_CHANNELS, MAX_LIDAR_POINTS

log = logging.getLogger(__name__)

ONNX_DIR = "onnx"
ONNX_FILE = "neon_heads.onnx"
EXPORT_INFO = "export.json"
INPUTS = NeonInputs.names()
PREFIX_INPUTS = ["prefix", "prefix_len"]
OUTPUTS = ["actions", "speech_logits"]
TOLERANCE = 1e-4  # largest absolute difference from PyTorch accepted, in normalised action units
PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def graph_inputs(model: NeonVLA) -> list[str]:
    """The graph's input names: every NeonInputs field, the prefix pair only for a prefix-conditioned model."""
    return [n for n in INPUTS if model.config.prefix_max_steps > 0 or n not in PREFIX_INPUTS]


class _Heads(torch.nn.Module):
    """NeonVLA.forward with flat tensor inputs, as ONNX needs them."""

    def __init__(self, model: NeonVLA):
        super().__init__()
        self.model = model

    def forward(self, vl_tokens, state, state_present, eef, eef_present, lidar, lidar_valid, audio, audio_present,
                prefix=None, prefix_len=None):
        return self.model(NeonInputs(vl_tokens, state, state_present, eef, eef_present, lidar, lidar_valid, audio,
                                     audio_present, prefix, prefix_len))


def example_inputs(model: NeonVLA, batch: int = 2, points: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of the right shapes for every NeonInputs field (unused modalities included; vl_tokens
    Float[(B, K, H)] with K = config.backbone.num_tokens; the prefix is Float[(B, P, D)] normalised steps with d
    random in 0..P, P = 0 for a model without prefix conditioning)."""
    g = torch.Generator().manual_seed(seed)
    c = model.config
    k = c.backbone.num_tokens
    d = model.action_space.dim
    p = c.prefix_max_steps
    prefix_len = torch.randint(0, p + 1, (batch,), generator=g)
    prefix = torch.randn(batch, p, d, generator=g) * (torch.arange(p)[None, :] < prefix_len[:, None])[..., None]
    present = lambda: torch.rand(batch, generator=g) > 0.3
    eef = torch.randn(batch, 2, len(EEF_FIELDS), generator=g)
    eef[..., 3:] /= eef[..., 3:].norm(dim=-1, keepdim=True)
    eef = eef.reshape(batch, -1)
    return {
        "vl_tokens": torch.randn(batch, k, c.backbone.spec.hidden_size, generator=g),
        "state": torch.from_numpy(np.random.default_rng(seed).uniform(model.action_space.lower, model.action_space.upper,
                                                                      (batch, d)).astype(np.float32)),
        "state_present": present(), "eef": eef, "eef_present": present(),
        "lidar": torch.randn(batch, points, len(LIDAR_CHANNELS), generator=g) * 3,
        "lidar_valid": torch.rand(batch, points, generator=g) > 0.2,
        "audio": torch.randn(batch, c.backbone.audio_dim, generator=g), "audio_present": present(),
        "prefix": prefix, "prefix_len": prefix_len,
    }


def inputs_from(x: NeonInputs) -> dict[str, np.ndarray]:
    """The graph's inputs: every NeonInputs field as a NumPy array (floats as float32)."""
    return {n: (t.float() if t.is_floating_point() else t).cpu().numpy() for n, t in vars(x).items()
            if t is not None}


def export_heads(model: NeonVLA, out_dir: str | Path) -> dict:
    """Export `model`'s trainable part to `out_dir` (atomically) and check it against PyTorch."""
    import onnxruntime as ort

    model = model.eval()
    heads = _Heads(model).eval()
    names = graph_inputs(model)
    batch = torch.export.Dim("batch", min=1, max=4096)
    points = torch.export.Dim("points", min=1, max=MAX_LIDAR_POINTS)
    dynamic = {n: {0: batch} for n in names}
    dynamic["lidar"] = {0: batch, 1: points}
    dynamic["lidar_valid"] = {0: batch, 1: points}
    example = example_inputs(model)
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        torch.onnx.export(heads, tuple(example[n] for n in names), str(tmp / ONNX_FILE), input_names=names,
                          output_names=OUTPUTS, dynamic_shapes=dynamic, dynamo=True, external_data=False)
        session = ort.InferenceSession(str(tmp / ONNX_FILE), providers=["CPUExecutionProvider"])
        diffs = {}
        for b, n in ((1, 7), (8, 300)):
            x = example_inputs(model, b, n, seed=b)
            with torch.no_grad():
                ref = heads(*(x[k] for k in names))
            got = session.run(None, {k: x[k].numpy() for k in names})
            diffs[f"batch{b}"] = max(float(np.abs(got[i] - ref[i].numpy()).max()) for i in range(2))
        worst = max(diffs.values())
        if worst > TOLERANCE:
            raise RuntimeError(f"ONNX heads differ from PyTorch by {worst:.2e} (tolerance {TOLERANCE:.0e}); not written")
        info = {"inputs": names, "outputs": OUTPUTS, "vl_tokens": list(example["vl_tokens"].shape[1:]),
                "prefix_max_steps": model.config.prefix_max_steps,
                "max_abs_diff": diffs, "tolerance": TOLERANCE, "torch": torch.__version__,
                "onnxruntime": ort.__version__, "seconds": round(time.perf_counter() - t0, 2),
                "control_mode": model.config.control_mode, "trainable_parameters": model.parameter_counts()["total"]}
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    checkpoint = out_dir.absolute().parent
    if out_dir.name == ONNX_DIR and (checkpoint / MANIFEST_FILE).is_file():  # beside a checkpoint: cover it too
        write_manifest(checkpoint, **{k: v for k, v in read_json(checkpoint / MANIFEST_FILE).items() if k != "sha256"})
    return info


class OnnxHeads:
    """Runs an exported graph: a heads backend for `NeonPolicy` (NeonInputs -> actions, speech logits)."""

    def __init__(self, directory: str | Path, providers: list[str] | None = None):
        import onnxruntime as ort

        path = Path(directory) / ONNX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `neon-export --model <checkpoint>` first")
        available = ort.get_available_providers()
        chosen = [p for p in (providers or PROVIDERS) if p in available] or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), providers=chosen)
        self.provider = self.session.get_providers()[0]
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.takes_prefix = set(PREFIX_INPUTS) <= set(self.input_names)
        log.info("ONNX heads %s on %s", path, self.provider)

    def __call__(self, x: NeonInputs) -> tuple[torch.Tensor, torch.Tensor]:
        feeds = inputs_from(x)
        if not self.takes_prefix and "prefix_len" in feeds and feeds["prefix_len"].any():
            raise ValueError("these ONNX heads were exported without prefix inputs: export the checkpoint again "
                             "with `neon-export`")
        actions, speech = self.session.run(None, {n: feeds[n] for n in self.input_names})
        dev = x.vl_tokens.device
        return torch.from_numpy(actions).to(dev), torch.from_numpy(speech).to(dev)

    @classmethod
    def beside(cls, checkpoint: str | Path, allow_unverified: bool = False) -> OnnxHeads:
        """The export saved beside a checkpoint (folder or Hub id) by `neon-export`, checked against the
        checkpoint's manifest."""
        directory = resolve_checkpoint(checkpoint)
        listed = verified_manifest(directory, allow_unverified).get("sha256", {})
        if not allow_unverified and (directory / ONNX_DIR / ONNX_FILE).is_file() and f"{ONNX_DIR}/{ONNX_FILE}" not in listed:
            raise CheckpointError(f"{directory / ONNX_DIR} is not covered by {directory / MANIFEST_FILE}: "
                                  "export it again with `neon-export`")
        return cls(directory / ONNX_DIR)
