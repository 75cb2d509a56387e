"""NeonPolicy: observations in, action chunks in physical units out.

    policy = NeonPolicy.from_pretrained("you/neon-g1-v1")          # checkpoint + its backbone
    chunk = policy.predict(image=frame, instruction="pick up the red block", state=joints)
    chunk = policy.predict(image=frame, instruction="...", state=joints, prefix=committed)  # real-time chunking

It owns what turns the model into a policy: validation against the
observation spec, the heads backend (the model's PyTorch modules, or any
callable with the same signature such as `neon_runtime.onnx_heads.OnnxHeads`),
decoding through the checkpoint's paired transform, clamping to the joint
limits, the speech choice and per-stage timings. The evaluator, the server and
the ROS node all predict through it; the runtime adds the safety layer on top
(`neon_runtime.policy.LocalPolicy`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from neon.model import NeonInputs, NeonVLA
from neon.observation import AUDIO_SAMPLE_RATE, InputError, Observation, collate, make_observation

SPEECH_MIN_CONFIDENCE = 0.5


@dataclass
class Prediction:
    actions: np.ndarray  # Float[(T, D)] physical units, inside joint limits
    joint_names: list[str]
    fps: float  # chunk step i is meant for i / fps seconds after the observation
    speech: str  # "" = nothing to say
    speech_confidence: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    committed_steps: int = 0  # d: actions[:d] are the prefix that was given, actions[d:] the prediction

    def to_dict(self) -> dict:
        return {**asdict(self), "actions": self.actions.tolist()}


class NeonPolicy:
    def __init__(self, model: NeonVLA, heads=None):
        """`heads`: None for the model's own modules, else a callable NeonInputs -> (actions, speech logits)."""
        self.model, self.heads = model, heads
        self.space, self.config = model.action_space, model.config

    @classmethod
    def from_pretrained(cls, path_or_repo: str, device: str | None = None) -> NeonPolicy:
        return cls(NeonVLA.from_pretrained(path_or_repo).load_backbone(device))

    def example(self, instruction: str = "pick up the red block") -> dict:
        """A deterministic observation with every input this model uses (a red block on a table, the mid-range
        pose, a 1 s tone, a LiDAR scan, both wrists): for warm-ups and demos."""
        c, space, rng = self.config, self.space, np.random.default_rng(0)
        yy, xx = np.mgrid[:224, :224]
        image = np.full((224, 224, 3), 128, np.uint8)
        image[112:] = (96, 72, 48)
        image[(yy - 134) ** 2 + (xx - 90) ** 2 < 18 ** 2] = (200, 30, 30)
        tone = 0.1 * np.sin(np.arange(AUDIO_SAMPLE_RATE) / AUDIO_SAMPLE_RATE * 2 * np.pi * 440)
        lidar = np.c_[rng.uniform(-5, 5, (2048, 3)), rng.uniform(0, 255, 2048)]
        eef = {"left": [0.3, 0.2, 0.9, 1, 0, 0, 0], "right": [0.3, -0.2, 0.9, 1, 0, 0, 0]}
        return {"image": image, "instruction": instruction, "state": (space.lower + space.upper) / 2,
                "audio": tone.astype(np.float32) if c.use_audio else None,
                "lidar": lidar.astype(np.float32) if c.use_lidar else None, "eef": eef if c.use_eef else None}

    def observation(self, **fields) -> Observation:
        """Validate one observation (image, instruction, state, audio, lidar, eef, prefix) against the spec and
        this model (a prefix only for a model trained with one, at most `prefix_max_steps` long)."""
        obs = make_observation(self.space, self.config.max_instruction_chars, **fields)
        relative = [g for g, r in self.space.representation.items() if r == "relative"]
        if obs.state is None and relative:
            raise InputError(f"state is required: group(s) {', '.join(relative)} are predicted relative to the "
                             "current state")
        most = self.config.prefix_max_steps
        if obs.prefix is not None and most == 0:
            raise InputError(f"prefix: this model was not trained with committed steps (prefix_max_steps=0), so it "
                             f"cannot continue from {len(obs.prefix)} of them; send no prefix (or an empty one)")
        if obs.prefix is not None and len(obs.prefix) > most:
            raise InputError(f"prefix has {len(obs.prefix)} steps; this model was trained with at most "
                             f"prefix_max_steps={most}")
        return obs

    @torch.no_grad()
    def run_heads(self, inputs: NeonInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(Float[(B, T, D)] normalised actions, Float[(B, R)] speech logits) from the heads backend."""
        return (self.heads or self.model)(inputs)

    @torch.no_grad()
    def predict_batch(self, observations: list[Observation], features=None, keys=None) -> list[Prediction]:
        """Chunks for validated observations in one backbone forward (features: see `NeonVLA.inputs`)."""
        t_start = time.perf_counter()
        features = features or self.model.features()
        batch = collate(observations, self.space.dim)
        inputs = self.model.inputs(batch, features, keys)
        timings = dict(getattr(features, "timings_ms", {}))
        t0 = time.perf_counter()
        pred, speech_logits = self.run_heads(inputs)
        timings["heads"] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        actions = self.model.transform.decode(pred.float(), inputs.state).cpu().numpy()
        committed = batch.prefix_len.tolist()
        for i, d in enumerate(committed):  # the committed steps are the robot's, not the model's: returned as given
            actions[i, :d] = batch.prefix[i, :d].numpy()
        actions = self.space.clip(actions)
        probs = speech_logits.float().softmax(-1).cpu().numpy()
        timings["postprocess"] = (time.perf_counter() - t0) * 1e3
        timings["total"] = (time.perf_counter() - t_start) * 1e3
        timings = {k: round(v, 3) for k, v in timings.items()}
        out = []
        for row, p, d in zip(actions, probs, committed, strict=True):
            k = int(p.argmax())
            speech = self.config.speech_responses[k] if p[k] >= SPEECH_MIN_CONFIDENCE else ""
            out.append(Prediction(row.astype(np.float32), self.space.names, self.space.fps, speech, float(p[k]),
                                  dict(timings), d))
        return out

    def predict(self, image=None, instruction: str = "", state=None, audio=None, lidar=None, eef=None,
                prefix=None) -> Prediction:
        """One chunk (physical units, inside joint limits) for one observation.

        image: UInt8[(H, W, 3)]; instruction: text; state: Float[(D,)] in action-space order or
        {joint name: value}; audio: 16 kHz mono float or int16; lidar: Float[(N, 3|4)];
        eef: Float[(14,)] or {"left": 7 values, "right": 7 values} (see `neon.observation`).

        prefix: Float[(d, D)] physical joint targets in action-space order, the steps 0..d-1 of this chunk that
        the robot has already committed to (from the chunk it is executing, while this request was in flight);
        d <= config.prefix_max_steps, and only for a model trained with it (d = 0 / None: no prefix). The chunk
        returned is still the whole T steps on the same clock: `actions[:d]` are the prefix as given (clipped to
        the joint limits like every step), `actions[d:]` the model's continuation; `committed_steps` is d.
        """
        t0 = time.perf_counter()
        obs = self.observation(image=image, instruction=instruction, state=state, audio=audio, lidar=lidar, eef=eef,
                               prefix=prefix)
        validate_ms = round((time.perf_counter() - t0) * 1e3, 3)
        result = self.predict_batch([obs])[0]
        result.timings_ms = {"validate": validate_ms, **result.timings_ms,
                             "total": round(result.timings_ms["total"] + validate_ms, 3)}
        return result
