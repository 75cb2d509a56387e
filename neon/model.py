"""NeonVLA: a frozen backbone sees, small trainable modules act.

    image + instruction --(frozen backbone)--> K feature tokens --+
    state  --ProprioEncoder--> token                               |
    EEF    --EEFEncoder------> token   (or a learned "absent")     +--> Fusion --> one head per body part
    LiDAR  --PointNetEncoder-> token   (or a learned "absent")     |              --> speech response head
    audio  --(frozen encoder)--AudioProjection--> token -----------+

Only the modules after the backbone are trained and saved. A checkpoint
folder holds config.json, action_space.json, norm_stats.json,
neon_weights.safetensors and manifest.json (sha256 of each file), written
atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from neon import __version__
from neon.action_space import ACTION_SPACE_FILE, G1ActionSpace
from neon.checkpoint import CheckpointError, atomic_directory, load_legacy_pt, load_safetensors
from neon.config import CONFIG_FILE, BackboneConfig, ConfigError, NeonConfig
from neon.encoders import AudioProjection, EEFEncoder, PointNetEncoder, ProprioEncoder, absent_eef
from neon.fusion import Fusion
from neon.heads import ParameterGolfHead, SpeechHead
from neon.inputs import InputError, Observation, make_observation
from neon.normalization import NORM_STATS_FILE, ActionTransform, NormStats

__all__ = ["BackboneConfig", "NeonConfig", "NeonVLA", "NeonInputs", "Prediction", "count_parameters"]

log = logging.getLogger(__name__)

WEIGHTS_FILE = "neon_weights.safetensors"
LEGACY_WEIGHTS_FILE = "neon_weights.pt"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_FORMAT = 1

# One action head per body part; a part's head predicts every dimension of its groups.
HEAD_PARTS: dict[str, tuple[str, ...]] = {
    "arms": ("arms", "head"),
    "hands": ("hands",),
    "lower_body": ("legs", "torso", "locomotion"),
}
SPEECH_MIN_CONFIDENCE = 0.5


@dataclass
class NeonInputs:
    """A batch as the trainable modules see it (backbone work already done)."""

    vl_tokens: torch.Tensor  # Float[(B, K, H)] backbone feature tokens
    state: torch.Tensor  # Float[(B, D)] physical joint state (zeros where absent)
    state_present: torch.Tensor  # Bool[(B,)]
    eef: torch.Tensor | None = None  # Float[(B, 14)]
    eef_present: torch.Tensor | None = None  # Bool[(B,)]
    lidar: torch.Tensor | None = None  # Float[(B, N, 4)]
    lidar_valid: torch.Tensor | None = None  # Bool[(B, N)]
    audio: torch.Tensor | None = None  # Float[(B, A)] pooled audio-encoder features
    audio_present: torch.Tensor | None = None  # Bool[(B,)]


@dataclass
class Prediction:
    actions: np.ndarray  # Float[(T, D)] physical units, inside joint limits
    joint_names: list[str]
    fps: float
    speech: str  # "" = nothing to say
    speech_confidence: float
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["actions"] = self.actions.tolist()
        return d


class NeonVLA(nn.Module):
    def __init__(self, config: NeonConfig, norm_stats: NormStats | None = None):
        super().__init__()
        self.config = config.validate()
        self.action_space: G1ActionSpace = config.action_space()
        self.norm_stats = norm_stats or NormStats.from_limits(self.action_space, config.action_scaler)
        self.transform = ActionTransform(self.action_space, self.norm_stats, config.action_scaler)
        self.backbone = None  # a neon.backbones.loader.Backbone once load_backbone() ran; never saved
        self.heads_runtime = None  # an exported runtime for everything after the backbone (e.g. ONNX), or None

        c, space = config, self.action_space
        d = c.fusion_dim
        self.modalities = ["proprio"] + [m for m, on in (("eef", c.use_eef), ("lidar", c.use_lidar),
                                                          ("audio", c.use_audio)) if on]
        self.proprio = ProprioEncoder(space.dim, c.proprioception_hidden, d)
        self.eef = EEFEncoder(c.eef_hidden, d) if c.use_eef else None
        self.lidar = PointNetEncoder(c.lidar_hidden, d) if c.use_lidar else None
        self.audio = AudioProjection(c.backbone.audio_dim, d) if c.use_audio else None
        self.fusion = Fusion(c.backbone.spec.hidden_size, d, c.fusion_heads, c.mlp_hidden, self.modalities)

        self.head_index: dict[str, torch.Tensor] = {}
        heads = {}
        for part, groups in HEAD_PARTS.items():
            idx = [i for i, j in enumerate(space.joints) if j.group in groups]
            if idx:
                self.head_index[part] = torch.tensor(idx)
                heads[part] = ParameterGolfHead(d, c.mlp_hidden, c.action_head_layers, c.num_action_steps,
                                                len(idx), c.action_softcap)
        self.heads = nn.ModuleDict(heads)
        self.speech = SpeechHead(d, c.mlp_hidden, len(c.speech_responses))

    # ------------------------------------------------------------------ forward
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, x: NeonInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (Float[(B, T, D)] normalised actions, Float[(B, R)] speech logits)."""
        if self.heads_runtime is not None:
            return self.heads_runtime(x)
        tokens = {"proprio": self.proprio(self.transform.normalize_state(x.state))}
        present = {"proprio": x.state_present}
        if self.eef is not None:
            tokens["eef"], present["eef"] = self.eef(x.eef), x.eef_present
        if self.lidar is not None:
            tokens["lidar"] = self.lidar(x.lidar, x.lidar_valid)
            present["lidar"] = x.lidar_valid.any(dim=1)
        if self.audio is not None:
            tokens["audio"], present["audio"] = self.audio(x.audio), x.audio_present
        fused = self.fusion(x.vl_tokens, tokens, present)
        b = fused.shape[0]
        actions = fused.new_zeros(b, self.config.num_action_steps, self.action_space.dim)
        for part, head in self.heads.items():
            actions[:, :, self.head_index[part].to(fused.device)] = head(fused)
        return actions, self.speech(fused)

    # ------------------------------------------------------------------ inference
    def load_backbone(self, device: str | torch.device | None = None) -> NeonVLA:
        """Load the frozen backbone named in the config and move the heads next to it."""
        from neon.backbones.loader import Backbone

        self.backbone = Backbone(self.config.backbone, device)
        self.to(self.backbone.device)
        self.eval()
        return self

    def _require_backbone(self):
        if self.backbone is None:
            raise RuntimeError("no backbone loaded: call model.load_backbone() before predict()")
        return self.backbone

    def observation(self, **kwargs) -> Observation:
        """Validate one observation (image, instruction, state, audio, lidar, eef)."""
        obs = make_observation(self.action_space, self.config.max_instruction_chars, **kwargs)
        rel = [g for g, r in self.action_space.representation.items() if r == "relative"]
        if obs.state is None and rel:
            raise InputError(f"state is required: group(s) {', '.join(rel)} are predicted relative to the current state")
        return obs

    @torch.no_grad()
    def encode_observations(self, observations: list[Observation]) -> tuple[NeonInputs, dict[str, float]]:
        """Run the frozen parts (backbone, audio encoder) for a batch; return the heads' inputs and timings."""
        bb = self._require_backbone()
        dev, timings = self.device, {}
        t0 = time.perf_counter()
        vl = bb.encode([o.image for o in observations], [o.instruction for o in observations])
        timings["backbone"] = (time.perf_counter() - t0) * 1e3
        b, dim = len(observations), self.action_space.dim
        state = torch.zeros(b, dim, device=dev)
        for i, o in enumerate(observations):
            if o.state is not None:
                state[i] = torch.from_numpy(o.state)
        inp = NeonInputs(vl.to(dev), state, torch.tensor([o.state is not None for o in observations], device=dev))
        if self.eef is not None:
            inp.eef = absent_eef(b, dev)
            for i, o in enumerate(observations):
                if o.eef is not None:
                    inp.eef[i] = torch.from_numpy(o.eef)
            inp.eef_present = torch.tensor([o.eef is not None for o in observations], device=dev)
        if self.lidar is not None:
            n = max([len(o.lidar) for o in observations if o.lidar is not None] + [1])
            inp.lidar = torch.zeros(b, n, 4, device=dev)
            inp.lidar_valid = torch.zeros(b, n, dtype=torch.bool, device=dev)
            for i, o in enumerate(observations):
                if o.lidar is not None:
                    inp.lidar[i, : len(o.lidar)] = torch.from_numpy(o.lidar)
                    inp.lidar_valid[i, : len(o.lidar)] = True
        if self.audio is not None:
            t0 = time.perf_counter()
            inp.audio, inp.audio_present = bb.encode_audio([o.audio for o in observations])
            timings["audio"] = (time.perf_counter() - t0) * 1e3
        return inp, timings

    @torch.no_grad()
    def predict_batch(self, observations: list[Observation]) -> list[Prediction]:
        """Chunks for several validated observations in one backbone forward."""
        t_start = time.perf_counter()
        inp, timings = self.encode_observations(observations)
        t0 = time.perf_counter()
        pred, speech_logits = self(inp)
        timings["heads"] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        actions = self.transform.decode(pred.float(), inp.state).cpu().numpy()
        actions = self.action_space.clip(actions)
        probs = speech_logits.float().softmax(-1).cpu().numpy()
        timings["postprocess"] = (time.perf_counter() - t0) * 1e3
        timings["total"] = (time.perf_counter() - t_start) * 1e3
        out = []
        for i in range(len(observations)):
            k = int(probs[i].argmax())
            conf = float(probs[i, k])
            speech = self.config.speech_responses[k] if conf >= SPEECH_MIN_CONFIDENCE else ""
            out.append(Prediction(actions[i].astype(np.float32), self.action_space.names, self.action_space.fps,
                                  speech, conf, {k2: round(v, 3) for k2, v in timings.items()}))
        return out

    def predict(self, image=None, instruction: str = "", state=None, audio=None, lidar=None, eef=None) -> Prediction:
        """One 16-step chunk (physical units, inside joint limits) for one observation.

        image: UInt8[(H, W, 3)]; instruction: text; state: Float[(D,)] in action-space order or
        {joint name: value}; audio: 16 kHz mono float or int16; lidar: Float[(N, 3|4)];
        eef: Float[(14,)] or {"left": 7 values, "right": 7 values}.
        """
        t0 = time.perf_counter()
        obs = self.observation(image=image, instruction=instruction, state=state, audio=audio, lidar=lidar, eef=eef)
        validate_ms = (time.perf_counter() - t0) * 1e3
        result = self.predict_batch([obs])[0]
        result.timings_ms = {"validate": round(validate_ms, 3), **result.timings_ms}
        result.timings_ms["total"] = round(result.timings_ms["total"] + validate_ms, 3)
        return result

    # ------------------------------------------------------------------ parameters
    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per module (the backbone is never part of this model)."""
        counts = {name: sum(p.numel() for p in mod.parameters()) for name, mod in self.named_children()
                  if name != "heads"}
        counts.update({f"heads.{part}": sum(p.numel() for p in h.parameters()) for part, h in self.heads.items()})
        counts = {k: v for k, v in counts.items() if v}
        counts["total"] = sum(counts.values())
        return counts

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory: str | Path, extra_files: dict[str, bytes | str] | None = None) -> Path:
        """Write config, action space, norm stats and weights into `directory`, atomically.

        `extra_files` (name -> content) land in the same atomic write, e.g. a trainer's split.json.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            (tmp / CONFIG_FILE).write_text(self.config.to_json())
            self.action_space.save(tmp)
            self.norm_stats.save(tmp)
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "neon", "neon_version": __version__})
            for name, content in (extra_files or {}).items():
                (tmp / name).write_bytes(content.encode() if isinstance(content, str) else content)
            files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            manifest = {"format": "neon-checkpoint", "format_version": CHECKPOINT_FORMAT,
                        "neon_version": __version__, "sha256": files}
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, path_or_repo: str | Path, revision: str | None = None) -> NeonVLA:
        """Load a checkpoint from a local folder or a Hub repo id (the backbone is loaded separately)."""
        directory = resolve_checkpoint(str(path_or_repo), revision)
        manifest = _read_json(directory / MANIFEST_FILE) if (directory / MANIFEST_FILE).exists() else None
        if manifest is not None:
            for name, digest in manifest.get("sha256", {}).items():
                f = directory / name
                if not f.is_file():
                    raise CheckpointError(f"checkpoint {directory} lacks {name}, listed in {MANIFEST_FILE}")
                if _sha256(f) != digest:
                    raise CheckpointError(f"{f} is corrupted or was modified: its sha256 does not match {MANIFEST_FILE}")
        try:
            config = NeonConfig.from_dict(_read_json(directory / CONFIG_FILE))
        except ConfigError as e:
            raise CheckpointError(f"{directory / CONFIG_FILE}: {e}") from None
        stats = NormStats.load(directory) if (directory / NORM_STATS_FILE).exists() else None
        model = cls(config, stats)
        if (directory / ACTION_SPACE_FILE).exists():
            stored = G1ActionSpace.load(directory)
            if stored.names != model.action_space.names:
                raise CheckpointError(f"{directory / ACTION_SPACE_FILE} does not match config.json's action space")
        if (directory / WEIGHTS_FILE).exists():
            state = load_safetensors(directory / WEIGHTS_FILE)
        elif (directory / LEGACY_WEIGHTS_FILE).exists():
            state = load_legacy_pt(directory / LEGACY_WEIGHTS_FILE)
        else:
            raise CheckpointError(f"checkpoint {directory} has neither {WEIGHTS_FILE} nor {LEGACY_WEIGHTS_FILE}")
        model._load_weights(state, directory)
        model.eval()
        return model

    def _load_weights(self, state: dict[str, torch.Tensor], where: Path) -> None:
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                 if k in state and state[k].shape != v.shape]
        if missing or unexpected or wrong:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
            if unexpected:
                parts.append(f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
            if wrong:
                parts.append(f"wrong shapes {'; '.join(wrong[:5])}")
            raise CheckpointError(f"weights in {where} do not fit its config.json: {'; '.join(parts)}")
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise CheckpointError(f"weights in {where} hold NaN or Inf in {', '.join(bad[:5])}")
        self.load_state_dict(state)


def count_parameters(config: NeonConfig) -> dict[str, int]:
    """Trainable parameters per module for a config, without downloading or allocating anything."""
    with torch.device("meta"):
        return NeonVLA(config).parameter_counts()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def resolve_checkpoint(path_or_repo: str, revision: str | None) -> Path:
    p = Path(path_or_repo).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise CheckpointError(f"{p} is a file; pass the checkpoint folder that holds {CONFIG_FILE}")
    from neon.backbones.loader import looks_like_repo_id, resolve_model_dir

    if looks_like_repo_id(path_or_repo):
        return resolve_model_dir(path_or_repo, revision, kind="checkpoint",
                                 allow_patterns=["*.json", "*.safetensors", "*.pt", "*.onnx", "*.md"])
    raise CheckpointError(f"{path_or_repo} is neither a checkpoint folder nor a Hub repo id (owner/name)")
