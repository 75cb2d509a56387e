"""The prediction machinery behind `neon.policy.NeonPolicy` and `NeonVLA.predict`: validation against the
observation spec, the heads backend, decoding, clamping, speech, timings, reusable backbone features.

A module of its own so that `neon.model` (whose `predict` uses it) and `neon.policy` (which loads checkpoints into
models) import it without importing each other.
"""

from __future__ import annotations

import itertools
import time
import weakref
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from neon.observation import AUDIO_SAMPLE_RATE, InputError, Observation, collate, make_observation

SPEECH_MIN_CONFIDENCE = 0.5
_FEATURE_IDS = itertools.count(1)


@dataclass(frozen=True, eq=False)
class Features:
    """The backbone's output for one observation (image + instruction, audio), for the heads to read any number
    of times with fresh proprioception. Tied to the model that computed it (`belongs_to`)."""

    vl_tokens: torch.Tensor  # Float[(K, H)] backbone feature tokens, on the model's device
    audio: torch.Tensor  # Float[(A,)] pooled audio-encoder features (zeros when absent)
    audio_present: torch.Tensor  # Bool[()]
    instruction: str
    encoded_at: float  # Unix s when the backbone finished
    observation_timestamp: float | None = None  # Unix s of the image, when the caller stamped it
    backbone_ms: float = 0.0
    id: int = field(default_factory=lambda: next(_FEATURE_IDS))  # unique in this process
    model: weakref.ref | None = None  # the NeonVLA whose backbone made it

    def stamped(self, timestamp: float | None) -> Features:
        """The same features (same id) with the image's observation time."""
        return replace(self, observation_timestamp=timestamp)

    def age_s(self, now: float | None = None) -> float:
        """Seconds since the image was taken (since it was encoded, when the caller gave no timestamp)."""
        seen = self.encoded_at if self.observation_timestamp is None else self.observation_timestamp
        return (time.time() if now is None else now) - seen

    def belongs_to(self, policy: Predictor) -> bool:
        return self.model is not None and self.model() is policy.model

    def describe(self, now: float | None = None) -> dict:
        """What a reply says about the features its chunk was computed from."""
        return {"id": self.id, "age_s": round(self.age_s(now), 4), "observation_timestamp": self.observation_timestamp,
                "instruction": self.instruction}


class ReusedFeatures:
    """A feature provider (see `NeonVLA.inputs`) handing back features computed earlier, one per observation."""

    def __init__(self, features: list[Features]):
        self.features = list(features)
        self.timings_ms: dict[str, float] = {}

    def __call__(self, batch, keys=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if len(batch) != len(self.features):
            raise ValueError(f"{len(batch)} observations but {len(self.features)} features")
        f = self.features
        return (torch.stack([x.vl_tokens for x in f]), torch.stack([x.audio for x in f]),
                torch.stack([x.audio_present for x in f]))


@dataclass
class Prediction:
    actions: np.ndarray  # Float[(T, D)] physical units, inside joint limits
    joint_names: list[str]
    fps: float  # chunk step i is the joint target for (i + 1) / fps seconds after the observation
    speech: str  # "" = nothing to say
    speech_confidence: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    committed_steps: int = 0  # d: actions[:d] are the prefix that was given, actions[d:] the prediction
    features: Features | None = None  # the backbone features the chunk was computed from (reusable)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "features"}
        return {**out, "timings_ms": dict(self.timings_ms), "actions": self.actions.tolist(),
                "joint_names": list(self.joint_names)}


class Predictor:
    """A model as a policy: everything `neon.policy.NeonPolicy` does but load a checkpoint."""

    def __init__(self, model, heads=None):
        """`model`: a NeonVLA. `heads`: None for the model's own modules, else a callable NeonInputs -> (actions,
        speech logits)."""
        self.model, self.heads = model, heads
        self.space, self.config = model.action_space, model.config

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

    def observation(self, features: Features | None = None, **fields) -> Observation:
        """Validate one observation (image, instruction, state, audio, lidar, eef, prefix) against the spec and
        this model (a prefix only for a model trained with one, at most `prefix_max_steps` long).

        With `features`, the image, instruction and audio are theirs: the observation carries no image (a
        request's own image or audio is refused, an instruction must be the features' or empty)."""
        if features is not None:
            given = [k for k in ("image", "audio") if fields.get(k) is not None]
            if given:
                raise InputError(f"{' and '.join(given)} given with reused features: the features already hold "
                                 "the backbone's view of them (send a full observation to refresh them)")
            said = (fields.pop("instruction", "") or "").strip()
            if said and said != features.instruction:
                raise InputError(f"instruction {said!r} differs from the reused features' {features.instruction!r}: "
                                 "send a full observation to change the instruction")
            fields.pop("image", None), fields.pop("audio", None)
            # max_instruction_chars=None: the instruction was checked when the features were encoded, and no image
            # is expected (the features stand for it).
            obs = make_observation(self.space, None, image=None, instruction=features.instruction, **fields)
        else:
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
    def run_heads(self, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(Float[(B, T, D)] normalised actions, Float[(B, R)] speech logits) from the heads backend."""
        return (self.model if self.heads is None else self.heads)(inputs)

    @torch.no_grad()
    def encode_batch(self, observations: list[Observation],
                     timestamps: list[float | None] | None = None) -> list[Features]:
        """The backbone's part of validated observations, in one forward (their state etc. are not read)."""
        provider = self.model.features()
        vl, audio, present = provider.encode([o.image for o in observations], [o.instruction for o in observations],
                                             [o.audio for o in observations])
        ms = round(sum(provider.timings_ms.values()), 3)
        return self._features(observations, vl.to(self.model.device), audio.to(self.model.device),
                              present.to(self.model.device), ms, timestamps)

    def encode(self, image=None, instruction: str = "", audio=None, timestamp: float | None = None) -> Features:
        """The backbone's features for one image + instruction (+ audio), for `predict(..., features=)`.
        `timestamp`: the image's observation time (Unix s), from which their age is counted."""
        obs = make_observation(self.space, self.config.max_instruction_chars, image=image, instruction=instruction,
                               audio=audio)
        return self.encode_batch([obs], [timestamp])[0]

    def _features(self, observations, vl, audio, present, backbone_ms, timestamps=None) -> list[Features]:
        now, ref = time.time(), weakref.ref(self.model)
        timestamps = timestamps or [None] * len(observations)
        return [Features(vl[i], audio[i], present[i], o.instruction, now, t, backbone_ms, model=ref)
                for i, (o, t) in enumerate(zip(observations, timestamps, strict=True))]

    @torch.no_grad()
    def predict_batch(self, observations: list[Observation], features=None, keys=None) -> list[Prediction]:
        """Chunks for validated observations in one backbone forward (features: a provider, see
        `NeonVLA.inputs`, or one reused `Features` per observation: then only the heads run)."""
        t_start = time.perf_counter()
        if isinstance(features, list):
            if not all(f.belongs_to(self) for f in features):
                raise ValueError("features computed by another model (reloaded since?): encode them again")
            features = ReusedFeatures(features)
        features = features or self.model.features()
        batch = collate(observations, self.space.dim)
        inputs = self.model.inputs(batch, features, keys)
        timings = dict(getattr(features, "timings_ms", {}))
        if isinstance(features, ReusedFeatures):
            used = features.features
        else:
            used = self._features(observations, inputs.vl_tokens, inputs.audio, inputs.audio_present,
                                  round(sum(timings.values()), 3))
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
        for row, p, d, f in zip(actions, probs, committed, used, strict=True):
            k = int(p.argmax())
            speech = self.config.speech_responses[k] if p[k] >= SPEECH_MIN_CONFIDENCE else ""
            out.append(Prediction(row.astype(np.float32), self.space.names, self.space.fps, speech, float(p[k]),
                                  dict(timings), d, f))
        return out

    def predict(self, image=None, instruction: str = "", state=None, audio=None, lidar=None, eef=None,
                prefix=None, features: Features | None = None) -> Prediction:
        """One chunk (physical units, inside joint limits) for one observation.

        image: UInt8[(H, W, 3)]; instruction: text; state: Float[(D,)] in action-space order or
        {joint name: value}; audio: 16 kHz mono float or int16; lidar: Float[(N, 3|4)];
        eef: Float[(14,)] or {"left": 7 values, "right": 7 values} (see `neon.observation`).

        prefix: Float[(d, D)] physical joint targets in action-space order, the steps 0..d-1 of this chunk that
        the robot has already committed to (from the chunk it is executing, while this request was in flight);
        d <= config.prefix_max_steps, and only for a model trained with it (d = 0 / None: no prefix). The chunk
        returned is still the whole T steps on the same clock: `actions[:d]` are the prefix as given (clipped to
        the joint limits like every step), `actions[d:]` the model's continuation; `committed_steps` is d.

        features: the backbone's features from `encode` (or an earlier prediction's `.features`), for this model;
        then no image or audio is given and only the heads run (two-rate control: the robot's state refreshed at
        the control rate, the camera at the backbone's).
        """
        t0 = time.perf_counter()
        obs = self.observation(features, image=image, instruction=instruction, state=state, audio=audio, lidar=lidar,
                               eef=eef, prefix=prefix)
        validate_ms = round((time.perf_counter() - t0) * 1e3, 3)
        result = self.predict_batch([obs], None if features is None else [features])[0]
        result.timings_ms = {"validate": validate_ms, **result.timings_ms,
                             "total": round(result.timings_ms["total"] + validate_ms, 3)}
        return result


def compiled_heads(model, mode: str = "reduce-overhead"):
    """The model's heads (fusion, action and speech heads: `NeonVLA.forward`) as one `torch.compile`d callable,
    for `NeonPolicy(model, heads=compiled_heads(model))`: the chunk's heads pass and the two-rate tick then replay
    one captured graph ("reduce-overhead" records CUDA graphs on a GPU, one per batch size; on CPU any mode runs
    through inductor). The forward traces as one graph with no breaks (tests/test_static_encode.py)."""
    return torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)
