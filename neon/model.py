"""NeonVLA: the trainable modules on a frozen backbone, their forward pass and the paired action transform.

    image + instruction --(frozen backbone)--> K feature tokens --+
    state  --ProprioEncoder--> token                               |
    EEF    --EEFEncoder------> token   (or a learned "absent")     +--> Fusion --> one head per body part
    LiDAR  --PointNetEncoder-> token   (or a learned "absent")     |              --> speech response head
    audio  --(frozen encoder)--AudioProjection--> token -----------+
    committed steps --PrefixEncoder--> + token on the fused features the action heads read, + last step on
                                       their output (only with `prefix_max_steps` > 0)

The K feature tokens are read from a middle layer of the backbone's language
model: by default its image tokens pooled on their 2-D grid, then a few text
bins (`BackboneConfig`), which the fusion gives learned positions.

One road to the heads: observations -> `neon.observation.collate` -> an
`ObservationBatch` -> `NeonVLA.inputs(batch, features)` -> `NeonInputs` ->
`forward`. `features` provides the backbone's part: `BackboneFeatures` (the
live backbone) or the trainer's feature cache. Turning chunks into actions for
a robot is `neon.policy.NeonPolicy`'s job; saving and loading is
`neon.checkpoint`'s (only the modules after the backbone are saved).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from neon.action_space import ACTION_SPACE_FILE, G1ActionSpace
from neon.config import BackboneConfig, NeonConfig
from neon.encoders import AudioProjection, EEFEncoder, PointNetEncoder, PrefixEncoder, ProprioEncoder
from neon.fusion import Fusion
from neon.heads import ParameterGolfHead, SpeechHead
from neon.normalization import ActionTransform, NormStats
from neon.observation import ObservationBatch

__all__ = ["BackboneConfig", "NeonConfig", "NeonVLA", "NeonInputs", "BackboneFeatures", "count_parameters"]

# One action head per body part; a part's head predicts every dimension of its groups.
HEAD_PARTS: dict[str, tuple[str, ...]] = {
    "arms": ("arms", "head"),
    "hands": ("hands",),
    "lower_body": ("legs", "torso", "locomotion"),
}


@dataclass
class NeonInputs:
    """A batch as the trainable modules see it (backbone work already done).

    `NeonVLA.inputs` fills every field; `prefix`/`prefix_len` may be left None by other callers (no prefix).
    """

    vl_tokens: torch.Tensor  # Float[(B, K, H)] backbone feature tokens, K = config.backbone.num_tokens
    state: torch.Tensor  # Float[(B, D)] physical joint state (zeros where absent)
    state_present: torch.Tensor  # Bool[(B,)]
    eef: torch.Tensor  # Float[(B, 14)]
    eef_present: torch.Tensor  # Bool[(B,)]
    lidar: torch.Tensor  # Float[(B, N, 4)]
    lidar_valid: torch.Tensor  # Bool[(B, N)]
    audio: torch.Tensor  # Float[(B, A)] pooled audio-encoder features
    audio_present: torch.Tensor  # Bool[(B,)]
    # The committed steps of the chunk being executed, in the heads' normalised target representation (what
    # `transform.encode` makes of physical targets), zeros past each sample's d; P = config.prefix_max_steps.
    prefix: torch.Tensor | None = None  # Float[(B, P, D)]
    prefix_len: torch.Tensor | None = None  # Long[(B,)] d per sample, 0 = no prefix

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


class BackboneFeatures:
    """The live frozen backbone as a feature provider: batch -> (vl tokens, audio features, audio present)."""

    def __init__(self, backbone, with_audio: bool):
        self.backbone, self.with_audio = backbone, with_audio
        self.timings_ms: dict[str, float] = {}

    def __call__(self, batch: ObservationBatch, keys=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode(batch.images, batch.instructions, batch.audio)

    @torch.no_grad()
    def encode(self, images: list, instructions: list[str], audio: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t0 = time.perf_counter()
        vl = self.backbone.encode(images, instructions)
        self.timings_ms = {"backbone": (time.perf_counter() - t0) * 1e3}
        if not self.with_audio:
            return vl, torch.zeros(len(images), self.backbone.audio_dim), torch.zeros(len(images), dtype=torch.bool)
        t0 = time.perf_counter()
        feats, present = self.backbone.encode_audio(audio)
        self.timings_ms["audio"] = (time.perf_counter() - t0) * 1e3
        return vl, feats, present


class NeonVLA(nn.Module):
    def __init__(self, config: NeonConfig, norm_stats: NormStats | None = None):
        super().__init__()
        self.config = config.validate()
        self.action_space: G1ActionSpace = config.action_space()
        self.norm_stats = norm_stats or NormStats.from_limits(self.action_space, config.action_scaler)
        self.transform = ActionTransform(self.action_space, self.norm_stats, config.action_scaler)
        self.backbone = None  # a neon.backbones.loader.Backbone once load_backbone() ran; never saved
        self.trained_steps = 0  # optimizer steps behind these weights (the trainer sets it; 0 = untrained heads)
        self.backbone_build: str | None = None  # a tiny backbone's build (tiny_build) the heads were trained on

        c, space = config, self.action_space
        d = c.fusion_dim
        self.modalities = ["proprio"] + [m for m, on in (("eef", c.use_eef), ("lidar", c.use_lidar),
                                                          ("audio", c.use_audio)) if on]
        self.proprio = ProprioEncoder(space.dim, c.proprioception_hidden, d)
        self.eef = EEFEncoder(c.eef_hidden, d) if c.use_eef else None
        self.lidar = PointNetEncoder(c.lidar_hidden, d) if c.use_lidar else None
        self.audio = AudioProjection(c.backbone.audio_dim, d) if c.use_audio else None
        bb = c.backbone
        grid = (bb.grid_size, bb.text_tokens) if bb.pooling == "grid" else (0, 0)  # positions for grid tokens only
        self.fusion = Fusion(bb.spec.hidden_size, d, c.fusion_heads, c.mlp_hidden, self.modalities, *grid)

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
        # Registered last and only when on: a model without it has exactly the parameters it always had.
        self.prefix = PrefixEncoder(c.prefix_max_steps, space.dim, d) if c.prefix_max_steps > 0 else None

    # ------------------------------------------------------------------ forward
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, x: NeonInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (Float[(B, T, D)] normalised actions, Float[(B, R)] speech logits).

        With a prefix of d steps, steps d.. continue from it; steps 0..d-1 are not trained (the loss skips them)
        and `NeonPolicy` returns the committed steps there.
        """
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
        speech = self.speech(fused)
        b = fused.shape[0]
        last = None
        if self.prefix is not None:
            prefix, length = x.prefix, x.prefix_len
            if prefix is None or length is None:
                prefix = fused.new_zeros(b, self.config.prefix_max_steps, self.action_space.dim)
                length = torch.zeros(b, dtype=torch.long, device=fused.device)
            token, last = self.prefix(prefix.to(fused.dtype), length)
            fused = fused + token
        actions = fused.new_zeros(b, self.config.num_action_steps, self.action_space.dim)
        for part, head in self.heads.items():
            actions[:, :, self.head_index[part].to(fused.device)] = head(fused)
        if last is not None:
            actions = actions + last[:, None, :]
        return actions, speech

    # ------------------------------------------------------------------ inference
    def load_backbone(self, device: str | torch.device | None = None) -> NeonVLA:
        """Load the frozen backbone named in the config and move the heads next to it. A tiny backbone (built on this
        machine) must be the build the heads were trained on when the checkpoint records one: a rebuilt or
        re-pretrained one gives other features, and the heads would act on them without a sign of it."""
        from neon.backbones.loader import Backbone
        from neon.backbones.tiny import tiny_build
        from neon.checkpoint import CheckpointError

        cfg = self.config.backbone
        if cfg.spec.tiny:
            build = tiny_build(cfg.model_id)
            if self.backbone_build and self.backbone_build != build:
                raise CheckpointError(
                    f"these heads were trained on build {self.backbone_build} of {cfg.model_id}, but this machine "
                    f"has build {build} (rebuilt or re-pretrained since): its features differ, so the heads would "
                    "act on features they never saw; retrain them on this build")
            self.backbone_build = build
        self.backbone = Backbone(cfg, device)
        self.to(self.backbone.device)
        self.eval()
        return self

    def record_backbone_precision(self) -> None:
        """A backbone given to these heads directly (not through `load_backbone`, which settles the config itself)
        settles an "auto" precision too: what is saved and cached then says which features the heads saw."""
        cfg = self.config.backbone
        if cfg.load_in_4bit == "auto" and self.backbone is not None:
            cfg.load_in_4bit = self.backbone.info.quantized_4bit

    def features(self) -> BackboneFeatures:
        """The loaded backbone as a feature provider for `inputs`."""
        if self.backbone is None:
            raise RuntimeError("no backbone loaded: call model.load_backbone() first")
        return BackboneFeatures(self.backbone, self.audio is not None)

    def inputs(self, batch: ObservationBatch, features=None, keys=None) -> NeonInputs:
        """The heads' inputs for a collated batch; backbone features from `features(batch, keys)`."""
        vl, audio, audio_present = (features or self.features())(batch, keys)
        dev = self.device
        state = batch.state.to(dev)
        prefix, prefix_len = self.encode_prefix(batch.prefix.to(dev), batch.prefix_len.to(dev), state)
        return NeonInputs(vl.to(dev), state, batch.state_present.to(dev), batch.eef.to(dev),
                          batch.eef_present.to(dev), batch.lidar.to(dev), batch.lidar_valid.to(dev), audio.to(dev),
                          audio_present.to(dev), prefix, prefix_len)

    def encode_prefix(self, prefix: torch.Tensor, length: torch.Tensor,
                      state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Physical committed steps Float[(B, d, D)] with Long[(B,)] d -> the heads' prefix Float[(B, P, D)] and d.

        Through the same `transform.encode` as the training targets (relative to the same state), zero-padded or
        cut to P = config.prefix_max_steps, zeros past each sample's d.
        """
        p = self.config.prefix_max_steps
        longest = int(length.max()) if length.numel() else 0
        if longest > p:
            raise ValueError(f"a prefix of {longest} steps for a model trained with prefix_max_steps={p}")
        out = state.new_zeros(len(state), p, self.action_space.dim)
        k = min(p, prefix.shape[1])
        if k:
            keep = (torch.arange(k, device=state.device)[None, :] < length[:, None])[..., None]
            out[:, :k] = torch.where(keep, self.transform.encode(prefix[:, :k].to(state.dtype), state), 0.0)
        return out, length.long()

    def predict(self, **observation):
        """One chunk for one observation (see `neon.predictor.Predictor.predict`)."""
        from neon.predictor import Predictor

        return Predictor(self).predict(**observation)

    # ------------------------------------------------------------------ parameters
    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per module (the backbone is never part of this model)."""
        counts = {name: sum(p.numel() for p in mod.parameters()) for name, mod in self.named_children()
                  if name != "heads"}
        counts.update({f"heads.{part}": sum(p.numel() for p in h.parameters()) for part, h in self.heads.items()})
        counts = {k: v for k, v in counts.items() if v}
        counts["total"] = sum(counts.values())
        return counts

    # ------------------------------------------------------------------ checkpoints (see neon.checkpoint)
    def save_pretrained(self, directory: str | Path, extra_files: dict[str, bytes | str] | None = None) -> Path:
        from neon.checkpoint import save_checkpoint

        return save_checkpoint(self, directory, extra_files)

    @classmethod
    def from_pretrained(cls, path_or_repo: str | Path, revision: str | None = None,
                        allow_unverified: bool = False) -> NeonVLA:
        """A model from a checkpoint folder or Hub repo id, every file checked (the backbone is loaded separately,
        `load_backbone`); `trained_steps` from the manifest (0: untrained heads)."""
        from neon.checkpoint import CheckpointError, check_weights, read_checkpoint
        from neon.config import CONFIG_FILE, ConfigError
        from neon.normalization import NORM_STATS_FILE

        ck = read_checkpoint(path_or_repo, revision, allow_unverified)
        try:
            config = NeonConfig.from_dict(ck.config)
        except ConfigError as e:
            raise CheckpointError(f"{ck.directory / CONFIG_FILE}: {e}") from None
        model = cls(config, NormStats.load(ck.directory) if (ck.directory / NORM_STATS_FILE).exists() else None)
        saved = ck.directory / ACTION_SPACE_FILE
        if saved.exists() and G1ActionSpace.load(ck.directory).names != model.action_space.names:
            raise CheckpointError(f"{saved} does not match config.json's action space")
        check_weights(model.state_dict(), ck.state, ck.directory)
        model.load_state_dict(ck.state)
        model.trained_steps = ck.trained_steps
        model.backbone_build = ck.backbone_build
        return model.eval()


def count_parameters(config: NeonConfig) -> dict[str, int]:
    """Trainable parameters per module for a config, without downloading or allocating anything."""
    with torch.device("meta"):
        return NeonVLA(config).parameter_counts()
