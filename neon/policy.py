"""NeonPolicy: observations in, action chunks in physical units out.

    policy = NeonPolicy.from_pretrained("you/neon-g1-v1")          # checkpoint + its backbone
    chunk = policy.predict(image=frame, instruction="pick up the red block", state=joints)
    chunk = policy.predict(image=frame, instruction="...", state=joints, prefix=committed)  # real-time chunking

    features = policy.encode(image=frame, instruction="pick up the red block")   # the slow part, once (5-10 Hz)
    chunk = policy.predict(state=joints_now, features=features)                   # only the heads (>= 30 Hz)

It owns what turns the model into a policy: validation against the
observation spec, the heads backend (the model's PyTorch modules, or any
callable with the same signature such as `neon_runtime.onnx_heads.OnnxHeads`),
decoding through the checkpoint's paired transform, clamping to the joint
limits, the speech choice and per-stage timings. The evaluator, the server and
the ROS node all predict through it; the runtime adds the safety layer on top
(`neon_runtime.policy.LocalPolicy`).
"""

from __future__ import annotations

from neon.model import NeonVLA
from neon.predictor import SPEECH_MIN_CONFIDENCE, Features, Prediction, Predictor, ReusedFeatures  # noqa: F401


class NeonPolicy(Predictor):
    """A NeonVLA as a policy (see the module docstring and `neon.predictor.Predictor`)."""

    @classmethod
    def from_pretrained(cls, path_or_repo: str, device: str | None = None) -> NeonPolicy:
        return cls(NeonVLA.from_pretrained(path_or_repo).load_backbone(device))
