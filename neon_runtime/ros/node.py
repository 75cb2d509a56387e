"""`neon-ros`: the Neon policy as a ROS 2 node on the G1's robot computer.

Subscribes to the head camera (Image or CompressedImage), joint states, the
instruction and, when the model uses them, microphone PCM, LiDAR and both wrist
poses. Publishes each action chunk as a JointTrajectory (16 points,
time_from_start at the policy's fps), the locomotion command as a Twist
(whole-body), the speech response, and diagnostics. Inference runs on a worker
thread (in-process, or as a client of a running neon-serve), so callbacks never
block; it starts at `rate_hz` or when the chunk being executed runs low
(`request_ahead_steps`). A watchdog publishes nothing that moves the robot
while a required input is missing or stale, says why in diagnostics, and
resumes by itself. Every chunk passes the same safety layer as the server.
With `dry_run` (the launch file's default) trajectories go to a preview topic only.
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

PARAMETERS: dict[str, object] = {
    "model": "",  # checkpoint folder or Hub id; "" = the embedded default (or fresh heads on `backbone`)
    "backbone": "",  # with model "": fresh (untrained) heads on this backbone id
    "mode": "",  # "" = the model's; else must match it (arms_only | whole_body)
    "device": "",
    "heads": "torch",  # torch | onnx (in-process: the export beside the checkpoint, see neon-export)
    "server_url": "",  # ws://host:port/ws of a neon-serve: run as its client instead of in-process
    "token": "",
    "rate_hz": 5.0,  # inference rate; 0 = only when the current chunk runs low
    "request_ahead_steps": 4,  # start the next inference when this few steps of the chunk remain
    "dry_run": True,  # publish trajectories on the preview topic only
    "camera_topic": "/camera/color/image_raw",
    "camera_compressed_topic": "",  # set to use a CompressedImage topic instead
    "joint_states_topic": "/joint_states",
    "instruction_topic": "/neon/instruction",
    "audio_topic": "/neon/audio",  # std_msgs/Int16MultiArray, 16 kHz mono PCM
    "audio_data_topic": "",  # audio_common_msgs/AudioData (16 kHz mono s16le), when that package is installed
    "lidar_topic": "/utlidar/cloud_livox_mid360",
    "eef_left_topic": "/neon/eef/left",
    "eef_right_topic": "/neon/eef/right",
    "trajectory_topic": "/neon/joint_trajectory",
    "preview_topic": "/neon/joint_trajectory_preview",
    "cmd_vel_topic": "/neon/cmd_vel",
    "speech_topic": "/neon/speech",
    "diagnostics_topic": "/diagnostics",
    "max_image_age_s": 0.5,
    "max_joint_age_s": 0.25,
    "max_sensor_age_s": 1.0,  # older audio, LiDAR or EEF counts as absent
    "max_joint_velocity": 2.0,
}
AUDIO_SECONDS = 4.0


class _Latest:
    """The newest value of a topic and when it arrived (monotonic seconds)."""

    def __init__(self):
        self.value, self.time = None, None

    def set(self, value) -> None:
        self.value, self.time = value, time.monotonic()

    def age(self) -> float | None:
        return None if self.time is None else time.monotonic() - self.time


def make_node(node_name: str = "neon", **overrides):
    """Create the node (rclpy must be initialised). `overrides` set parameters, as a launch file would."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from geometry_msgs.msg import PoseStamped, Twist
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image, JointState, PointCloud2
    from std_msgs.msg import Int16MultiArray, String
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from neon.action_space import ActionSpaceError
    from neon_runtime.ros.convert import (
        MessageError,
        cloud_to_array,
        compressed_to_array,
        image_to_array,
        pose_to_array,
    )
    from neon_runtime.safety import SafetyConfig, SafetyLayer

    class NeonNode(Node):
        def __init__(self):
            super().__init__(node_name, parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
            for name, default in PARAMETERS.items():
                self.declare_parameter(name, default)
            p = {name: self.get_parameter(name).value for name in PARAMETERS}
            self.p = p
            self.policy = _Policy(p, self.get_logger())
            space = self.policy.space
            self.space, self.fps, self.steps = space, self.policy.fps, self.policy.steps
            self.safety = SafetyLayer(space, SafetyConfig(max_joint_velocity=p["max_joint_velocity"]))
            self.latest = {k: _Latest() for k in ("image", "joints", "instruction", "audio", "lidar", "eef_l", "eef_r")}
            self._audio = np.zeros(0, np.float32)
            sensor = qos_profile_sensor_data
            command = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            if p["camera_compressed_topic"]:
                self.create_subscription(CompressedImage, p["camera_compressed_topic"],
                                         lambda m: self._decode("image", compressed_to_array, m), sensor)
            else:
                self.create_subscription(Image, p["camera_topic"], lambda m: self._decode("image", image_to_array, m),
                                         sensor)
            self.create_subscription(JointState, p["joint_states_topic"], self._on_joints, sensor)
            self.create_subscription(String, p["instruction_topic"], lambda m: self.latest["instruction"].set(m.data),
                                     command)
            cfg = self.policy.config
            if cfg.use_audio:
                self.create_subscription(Int16MultiArray, p["audio_topic"], lambda m: self._on_audio(m.data), sensor)
                if p["audio_data_topic"]:
                    try:
                        from audio_common_msgs.msg import AudioData
                    except ImportError:
                        raise ValueError("audio_data_topic is set but audio_common_msgs is not installed") from None
                    self.create_subscription(AudioData, p["audio_data_topic"],
                                             lambda m: self._on_audio(np.frombuffer(bytes(m.data), "<i2")), sensor)
            if cfg.use_lidar:
                self.create_subscription(PointCloud2, p["lidar_topic"], lambda m: self._decode("lidar", cloud_to_array, m),
                                         sensor)
            if cfg.use_eef:
                self.create_subscription(PoseStamped, p["eef_left_topic"],
                                         lambda m: self.latest["eef_l"].set(pose_to_array(m)), sensor)
                self.create_subscription(PoseStamped, p["eef_right_topic"],
                                         lambda m: self.latest["eef_r"].set(pose_to_array(m)), sensor)
            reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            self.pub_traj = self.create_publisher(JointTrajectory, p["trajectory_topic"], reliable)
            self.pub_preview = self.create_publisher(JointTrajectory, p["preview_topic"], reliable)
            self.pub_twist = self.create_publisher(Twist, p["cmd_vel_topic"], reliable)
            self.pub_speech = self.create_publisher(String, p["speech_topic"], reliable)
            self.pub_diag = self.create_publisher(DiagnosticArray, p["diagnostics_topic"], 10)
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neon-infer")
            self._busy = threading.Lock()
            self._last_request = 0.0
            self._chunk_started = None
            self.published = 0
            self.create_timer(0.05, self._tick)
            self.get_logger().info(f"neon-ros ready: {space.describe()}, {self.policy.describe()}, "
                                   f"dry_run={p['dry_run']}")

        # ---------------------------------------------------------- callbacks (never block)
        def _decode(self, key, fn, msg):
            try:
                self.latest[key].set(fn(msg))
            except MessageError as e:
                self.get_logger().warning(f"{key}: {e}", throttle_duration_sec=5.0)

        def _on_joints(self, msg):
            self.latest["joints"].set(dict(zip(msg.name, msg.position, strict=False)))

        def _on_audio(self, samples):
            pcm = np.asarray(samples, np.int16).astype(np.float32) / 32768.0
            self._audio = np.concatenate([self._audio, pcm])[-int(AUDIO_SECONDS * 16000):]
            self.latest["audio"].set(self._audio)

        # ---------------------------------------------------------- watchdog and scheduling
        def _problems(self) -> list[str]:
            p, out = self.p, []
            for key, limit, what in (("image", p["max_image_age_s"], "camera"),
                                     ("joints", p["max_joint_age_s"], "joint_states")):
                age = self.latest[key].age()
                if age is None:
                    out.append(f"{what}: no message yet")
                elif age > limit:
                    out.append(f"{what}: stale ({age:.2f} s old, limit {limit} s)")
            if self.latest["instruction"].value is None:
                out.append("instruction: none received")
            return out

        def _state(self) -> np.ndarray:
            joints = self.latest["joints"].value or {}
            fill = np.zeros(self.space.dim, np.float32)
            body = {k: v for k, v in joints.items()}
            try:
                mapping = self.space.map_names(list(body))
            except ActionSpaceError as e:
                raise MessageError(str(e)) from None
            missing = [n for n in mapping.missing_target if self.space.joints[self.space.index(n)].group != "locomotion"]
            if missing:
                raise MessageError(f"joint_states lacks {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
            vals = np.array(list(body.values()), np.float32)
            fill[mapping.target_index] = vals[mapping.source_index]
            return fill

        def _tick(self):
            now = time.monotonic()
            rate = float(self.p["rate_hz"])
            due = rate > 0 and now - self._last_request >= 1.0 / rate
            if self._chunk_started is not None:
                remaining = self.steps - (now - self._chunk_started) * self.fps
                due = due or remaining <= int(self.p["request_ahead_steps"])
            elif rate <= 0:
                due = True
            if not due or self._busy.locked():
                return
            problems = self._problems()
            state = None
            if not problems:
                try:
                    state = self._state()
                except MessageError as e:
                    problems.append(str(e))
            if problems:
                self._chunk_started = None  # nothing to execute: the robot holds its own last command
                self._diagnose(2, "; ".join(problems), {})
                self._last_request = now
                return
            self._busy.acquire()
            self._last_request = now
            obs = {"image": self.latest["image"].value, "instruction": self.latest["instruction"].value,
                   "state": state, "stamp": time.time()}
            limit = self.p["max_sensor_age_s"]
            fresh = lambda k: self.latest[k].age() is not None and self.latest[k].age() <= limit
            if self.policy.config.use_audio and fresh("audio"):
                obs["audio"] = self.latest["audio"].value
            if self.policy.config.use_lidar and fresh("lidar"):
                obs["lidar"] = self.latest["lidar"].value
            if self.policy.config.use_eef and fresh("eef_l") and fresh("eef_r"):
                obs["eef"] = np.concatenate([self.latest["eef_l"].value, self.latest["eef_r"].value])
            sensed = now
            self._worker.submit(self._infer, obs, sensed)

        # ---------------------------------------------------------- inference thread
        def _infer(self, obs: dict, sensed: float):
            try:
                out = self.policy.infer(obs)
                actions, report = self.safety.apply(out["actions"], obs["state"], self.fps)
                if not self._problems():  # inputs still fine when the answer came back
                    self._publish(actions, out)
                    latency = (time.monotonic() - sensed) * 1e3
                    self._diagnose(0, "ok" + (" (dry run: preview only)" if self.p["dry_run"] else ""),
                                   {"latency_ms": f"{latency:.1f}", "rate_limited": str(report.rate_limited),
                                    **{f"{k}_age_s": f"{self.latest[k].age():.3f}" for k in ("image", "joints")}})
            except Exception as e:
                self._diagnose(2, f"inference failed: {type(e).__name__}: {e}", {})
            finally:
                self._busy.release()

        def _publish(self, actions: np.ndarray, out: dict):
            joint_idx = [i for i, j in enumerate(self.space.joints) if j.group != "locomotion"]
            msg = JointTrajectory()
            msg.header.stamp = self.get_clock().now().to_msg()
            msg.joint_names = [self.space.names[i] for i in joint_idx]
            for t, row in enumerate(actions):
                pt = JointTrajectoryPoint()
                pt.positions = [float(row[i]) for i in joint_idx]
                secs = (t + 1) / self.fps
                pt.time_from_start.sec = int(secs)
                pt.time_from_start.nanosec = int(round((secs - int(secs)) * 1e9))
                msg.points.append(pt)
            if self.p["dry_run"]:
                self.pub_preview.publish(msg)
            else:
                self.pub_traj.publish(msg)
                if "locomotion" in self.space.groups:
                    loco = self.space.group_slice("locomotion")
                    tw = Twist()
                    tw.linear.x, tw.linear.y, tw.angular.z = (float(v) for v in actions[0, loco])
                    self.pub_twist.publish(tw)
            if out.get("speech"):
                self.pub_speech.publish(String(data=out["speech"]))
            self._chunk_started = time.monotonic()
            self.published += 1

        def _diagnose(self, level: int, message: str, values: dict):
            arr = DiagnosticArray()
            arr.header.stamp = self.get_clock().now().to_msg()
            st = DiagnosticStatus(level=bytes([level]), name="neon: policy", message=message, hardware_id="g1")
            st.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
            arr.status = [st]
            self.pub_diag.publish(arr)

        def destroy_node(self):
            self._worker.shutdown(wait=True)
            self.policy.close()
            super().destroy_node()

    return NeonNode()


class _Policy:
    """In-process model, or a client of a running neon-serve (WebSocket, openpi protocol)."""

    def __init__(self, p: dict, logger):
        from neon.model import NeonVLA

        self.remote = bool(p["server_url"])
        if self.remote:
            import websockets.sync.client as ws_client

            from neon.config import NeonConfig
            from neon_runtime import wire

            import warnings

            headers = {"Authorization": f"Bearer {p['token']}"} if p["token"] else None
            with warnings.catch_warnings():  # held open for the node's life, closed in close()
                warnings.simplefilter("ignore", DeprecationWarning)
                self.ws = ws_client.connect(p["server_url"], compression=None, max_size=None,
                                            additional_headers=headers)
            meta = wire.unpackb(self.ws.recv())
            from neon.action_space import G1ActionSpace

            self.space = G1ActionSpace.from_dict(meta["action_space"])
            self.config = NeonConfig(control_mode=self.space.control_mode, hand_type=self.space.hand_type,
                                     neck=self.space.neck, use_audio=meta["modalities"]["audio"],
                                     use_lidar=meta["modalities"]["lidar"], use_eef=meta["modalities"]["eef"])
            self.steps, self.fps = meta["num_action_steps"], self.space.fps
            self.source = p["server_url"]
        else:
            if p["model"]:
                model = NeonVLA.from_pretrained(p["model"])
                self.source = p["model"]
            elif p["backbone"]:
                from neon.presets import model_config

                model = NeonVLA(model_config(p["backbone"], p["mode"] or "arms_only"))
                self.source = f"{p['backbone']} with untrained heads"
                logger.warning("no model given: heads are freshly initialised (every chunk is the mean action)")
            else:
                from neon_runtime.cli import default_checkpoint

                folder, note = default_checkpoint(progress=False)
                model = NeonVLA.from_pretrained(folder)
                self.source = note
            model.load_backbone(p["device"] or None)
            if p["heads"] == "onnx":
                if not p["model"]:
                    raise ValueError("heads=onnx needs a model checkpoint with an ONNX export (neon-export)")
                from neon.model import resolve_checkpoint
                from neon_runtime.onnx_heads import use_onnx_heads

                use_onnx_heads(model, resolve_checkpoint(p["model"], None))
                self.source += " (ONNX heads)"
            elif p["heads"] != "torch":
                raise ValueError(f"heads must be 'torch' or 'onnx', got {p['heads']!r}")
            self.model, self.config, self.space = model, model.config, model.action_space
            self.steps, self.fps = model.config.num_action_steps, model.action_space.fps
        if p["mode"] and p["mode"] != self.space.control_mode:
            raise ValueError(f"mode parameter is {p['mode']!r} but the policy is {self.space.control_mode!r}")

    def describe(self) -> str:
        return f"{'remote ' if self.remote else 'in-process '}{self.source}"

    def infer(self, obs: dict) -> dict:
        if self.remote:
            from neon_runtime import wire

            msg = {k: v for k, v in obs.items() if k != "stamp" and v is not None}
            msg["timestamp"] = obs["stamp"]
            self.ws.send(wire.packb(msg))
            out = wire.unpackb(self.ws.recv())
            if "error" in out:
                raise RuntimeError(f"server: {out['error']}: {out['detail']}")
            return out
        kwargs = {k: v for k, v in obs.items() if k != "stamp"}
        pred = self.model.predict(**kwargs)
        return {"actions": pred.actions, "speech": pred.speech}

    def close(self) -> None:
        if self.remote:
            self.ws.close()


def main(argv: list[str] | None = None) -> int:
    """Console script `neon-ros`: parameters come from ROS arguments (--ros-args -p name:=value)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init(args=argv if argv is not None else sys.argv)
    node = make_node()
    # Callbacks only store messages; inference has its own thread. A single-threaded executor keeps
    # rclpy's Python scheduling off the GIL (the multi-threaded one cost ~1 s of latency in bench/bench_ros.py).
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
