"""`neon-ros`: the Neon policy as a ROS 2 node on the G1's robot computer.

Subscribes to the head camera (Image or CompressedImage), joint states, the
instruction and, when the model uses them, microphone PCM, LiDAR and both wrist
poses. Publishes each action chunk as a JointTrajectory (16 points,
time_from_start at the policy's fps), the locomotion command as a Twist
(whole-body), the speech response, and diagnostics. Inference runs on a worker
thread (in-process, or as a client of a running neon-serve), so callbacks never
block; it starts at `rate_hz`, or earlier when what is left of the chunk in
force covers only the measured latency plus `request_ahead_steps` (request-ahead).

Every chunk goes through one `ChunkExecutor` (neon_runtime.executor), as in
neon-g1 and neon-sim: steps already past on arrival are dropped, a new chunk
takes over from the one in force over `blend_s` (min-jerk), and the trajectory
published is the executor's plan from now on, re-anchored on the freshest joint
state. With `control_hz` > 0 the executor's target is also streamed as a
JointState position command at that rate, each one inside the joint limits and
the speed limit from the last. With `heads_hz` > 0, two-rate control: the
backbone's features are refreshed `rate_hz` times a second in the background
(`TwoRateRunner`) and the heads re-run `heads_hz` times a second on the newest
features and the fresh joint state.

A watchdog publishes nothing that moves the robot while a required input is
missing or stale, says why in diagnostics, and resumes by itself (from the
robot's measured pose). Every chunk passes the same safety layer as the server.
With `dry_run` (the launch file's default) trajectories and commands go to
preview topics only.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, Twist, Vector3
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState, PointCloud2
from std_msgs.msg import Int16MultiArray, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from neon.action_space import ActionSpaceError, G1ActionSpace
from neon.observation import AUDIO_SAMPLE_RATE, AUDIO_WINDOW_S, EEF_SIDES
from neon.threads import set_threads
from neon_runtime.executor import (Chunk, ChunkExecutor, ChunkRefused, RequestScheduler, check_blend_s,
                                   safety_hook, wall_to_mono)
from neon_runtime.ros.convert import MessageError, cloud_to_array, compressed_to_array, image_to_array, pose_to_array
from neon_runtime.safety import DRY_RUN_REFUSAL, SafetyConfig, SafetyLayer

PARAMETERS: dict[str, object] = {
    "model": "",  # checkpoint folder or Hub id; "" = the embedded default (or fresh heads on `backbone`)
    "backbone": "",  # with model "": fresh (untrained) heads on this backbone id
    "mode": "",  # "" = the model's; else must match it (arms_only | whole_body)
    "device": "",
    "heads": "torch",  # torch | onnx (in-process: the export beside the checkpoint, see neon-export)
    "allow_unverified": False,  # load a checkpoint without manifest.json (one Neon did not write)
    "server_url": "",  # ws://host:port/ws of a neon-serve: run as its client instead of in-process
    "token_file": "",  # a file holding the server's token (`NEON_TOKEN=...` lines, as neon-serve's, work too)
    "rate_hz": 5.0,  # full requests per second (with heads_hz: feature refreshes); 0 = only request-ahead
    "request_ahead_steps": 2,  # request-ahead margin: the next request leaves when the chunk covers latency + this
    "heads_hz": 0.0,  # two-rate control: heads-only passes per second on fresh joint state (>= 10); 0 = off
    "blend_s": 0.2,  # seconds over which a new chunk takes over from the one in force (min-jerk); 0 = at once
    "control_hz": 0.0,  # stream the executor's target as a JointState command at this rate (>= 10); 0 = off
    "max_chunk_age_s": 1.0,  # the command stream stops when the newest chunk is older than this
    "threads": 1,  # torch intra-op CPU threads (in-process model; see neon.threads)
    "dry_run": True,  # publish trajectories and commands on the preview topics only
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
    "command_topic": "/neon/joint_command",  # sensor_msgs/JointState positions at control_hz
    "command_preview_topic": "/neon/joint_command_preview",
    "cmd_vel_topic": "/neon/cmd_vel",
    "speech_topic": "/neon/speech",
    "diagnostics_topic": "/diagnostics",
    "max_image_age_s": 0.5,
    "max_joint_age_s": 0.25,
    "max_sensor_age_s": 1.0,  # older audio, LiDAR or EEF counts as absent
    "max_joint_velocity": 2.0,  # in-process only: a remote server applies its own
}



class _Latest:
    """The newest value of a topic and when it arrived (monotonic seconds)."""

    def __init__(self):
        self.value, self.time = None, None

    def set(self, value) -> None:
        self.value, self.time = value, time.monotonic()

    def age(self) -> float | None:
        return None if self.time is None else time.monotonic() - self.time


def make_policy(p: dict, logger):
    """-> (policy, a description): a RemotePolicy on `server_url`, else a LocalPolicy on the model parameters."""
    if p["server_url"]:
        from neon_runtime.client import RemotePolicy, read_token

        # The token comes from a file or the environment, never a parameter: any node can read parameters.
        token = read_token(p["token_file"]) if p["token_file"] else os.environ.get("NEON_TOKEN") or None
        reply_timeout_s = max(2.0, 2.0 * p["max_chunk_age_s"])  # the watchdog halts sooner; this frees the worker
        return RemotePolicy(p["server_url"], token, reply_timeout_s=reply_timeout_s), f"remote {p['server_url']}"
    from neon.model import NeonVLA
    from neon.policy import NeonPolicy
    from neon_runtime.policy import LocalPolicy

    if p["heads"] not in ("torch", "onnx"):
        raise ValueError(f"heads must be 'torch' or 'onnx', got {p['heads']!r}")
    if p["heads"] == "onnx" and not p["model"]:
        raise ValueError("heads=onnx needs a model checkpoint with an ONNX export (neon-export)")
    if p["model"]:
        model, source = NeonVLA.from_pretrained(p["model"], allow_unverified=p["allow_unverified"]), p["model"]
    elif p["backbone"]:
        from neon.presets import model_config

        model, source = NeonVLA(model_config(p["backbone"], p["mode"] or "arms_only")), f"{p['backbone']} with untrained heads"
        logger.warning("no model given: heads are freshly initialised (every chunk is the mean action)")
    else:
        from neon_runtime.default_model import default_checkpoint

        folder, source = default_checkpoint()
        model = NeonVLA.from_pretrained(folder)
    policy = NeonPolicy(model.load_backbone(p["device"] or None))
    if p["heads"] == "onnx":
        from neon_runtime.onnx_heads import OnnxHeads

        policy.heads, source = OnnxHeads.beside(p["model"], p["allow_unverified"]), source + " (ONNX heads)"
    safety = SafetyConfig(max_joint_velocity=p["max_joint_velocity"], dry_run=p["dry_run"])
    return LocalPolicy(policy, safety, source), f"in-process {source}"


class NeonNode(Node):
    def __init__(self, node_name: str = "neon", **overrides):
        super().__init__(node_name, parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        for name, default in PARAMETERS.items():
            self.declare_parameter(name, default)
        self.p = p = {name: self.get_parameter(name).value for name in PARAMETERS}
        check_rates(p)
        set_threads(p["threads"])
        self.policy, self.source = make_policy(p, self.get_logger())
        meta = self.policy.metadata()
        self.space = space = G1ActionSpace.from_dict(meta["action_space"])
        if p["mode"] and p["mode"] != space.control_mode:
            raise ValueError(f"mode parameter is {p['mode']!r} but the policy is {space.control_mode!r}")
        self.fps, self.steps, self.uses = space.fps, meta["num_action_steps"], meta["modalities"]
        # The policy's own safety settings, to re-anchor each chunk on the freshest joint state when it is published.
        self.safety = SafetyLayer(space, SafetyConfig(**meta["safety"]))
        self.loco = space.group_slice("locomotion") if "locomotion" in space.groups else None
        self.command = np.zeros(3, np.float32)  # the locomotion command in force: part of the state, as in training
        self.latest = {k: _Latest() for k in ("image", "joints", "instruction", "audio", "lidar", "eef_l", "eef_r")}
        self._audio = np.zeros(0, np.float32)
        self._subscribe()
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_traj = self.create_publisher(JointTrajectory, p["trajectory_topic"], reliable)
        self.pub_preview = self.create_publisher(JointTrajectory, p["preview_topic"], reliable)
        self.pub_twist = self.create_publisher(Twist, p["cmd_vel_topic"], reliable) if self.loco else None
        self.pub_speech = self.create_publisher(String, p["speech_topic"], reliable)
        self.pub_diag = self.create_publisher(DiagnosticArray, p["diagnostics_topic"], 10)
        self.pub_command = self.create_publisher(
            JointState, p["command_preview_topic" if p["dry_run"] else "command_topic"], reliable)
        self._joint_idx = [i for i, j in enumerate(space.joints) if j.group != "locomotion"]
        # One executor for every chunk: request-ahead, stale steps skipped, blended hand-over, limits at control rate.
        self.chunk_executor = ChunkExecutor(space.dim, p["blend_s"], safety_hook(self.safety))
        self._exec_lock = threading.Lock()  # accept / hold (inference thread) vs execute (control timer)
        self._restart = True  # nothing in force: the next chunk starts from the measured pose (executor.hold)
        # Two-rate: a heads request every 1 / heads_hz s; else at rate_hz (0: request-ahead only), or earlier when
        # the chunk in force no longer covers the latency plus request_ahead_steps.
        two_rate = p["heads_hz"] > 0
        period = 1.0 / p["heads_hz"] if two_rate else (1.0 / p["rate_hz"] if p["rate_hz"] > 0 else None)
        self.scheduler = RequestScheduler(self.chunk_executor, period, two_rate=two_rate,
                                          margin_steps=p["request_ahead_steps"], fps=self.fps,
                                          prefix_max_steps=int(meta.get("prefix_max_steps") or 0))
        self.latency = self.scheduler.latency  # observation -> chunk usable, seconds: what request-ahead plans for
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neon-infer")
        self._busy = threading.Lock()
        self._in_flight_since: float | None = None  # when the request in flight left (None: none)
        self._stalled = False  # the request in flight has outlived max_chunk_age_s (halted once for it)
        self._frame = None  # (image, instruction) last handed to the two-rate runner
        self.published = self.commanded = 0
        self.policy.warm_up()  # the first forward is the slow one: never on a chunk meant for the robot
        self.runner = None
        if p["heads_hz"] > 0:  # two-rate control: the backbone in the background, the heads on the worker
            from neon_runtime.two_rate import TwoRateRunner

            self.runner = TwoRateRunner(self.policy, feature_hz=p["rate_hz"])
        self.create_timer(min(0.05, 1.0 / p["heads_hz"]) if p["heads_hz"] > 0 else 0.05, self._schedule)
        if p["control_hz"] > 0:
            self.create_timer(1.0 / p["control_hz"], self._control)
        optional = ("audio", "lidar", "eef")
        self.get_logger().info(
            f"neon-ros ready: {space.describe()}, {self.source}, dry_run={p['dry_run']} (policy: dry_run="
            f"{meta['dry_run']}, safety {meta['safety']}); inputs used: camera, joint_states, instruction"
            + "".join(f", {m}" for m in optional if self.uses[m])
            + "".join(f"; {m} topic unused (the model has no {m} input)" for m in optional if not self.uses[m])
            + (f"; two-rate control: features at {p['rate_hz']:g} Hz, heads at {p['heads_hz']:g} Hz" if self.runner
               else "") + f"; blend {p['blend_s']:g} s"
            + (f"; commands at {p['control_hz']:g} Hz on {self.pub_command.topic_name}" if p["control_hz"] > 0 else ""))
        if meta["dry_run"]:
            self.get_logger().warning("the policy is dry-run only (see its log or /metadata): previews only")

    def _subscribe(self) -> None:
        p, sensor = self.p, qos_profile_sensor_data
        command = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        if p["camera_compressed_topic"]:
            self.create_subscription(CompressedImage, p["camera_compressed_topic"],
                                     lambda m: self._decode("image", compressed_to_array, m), sensor)
        else:
            self.create_subscription(Image, p["camera_topic"], lambda m: self._decode("image", image_to_array, m), sensor)
        self.create_subscription(JointState, p["joint_states_topic"], self._on_joints, sensor)
        self.create_subscription(String, p["instruction_topic"], lambda m: self.latest["instruction"].set(m.data),
                                 command)
        if self.uses["audio"]:
            self.create_subscription(Int16MultiArray, p["audio_topic"], lambda m: self._on_audio(m.data), sensor)
            if p["audio_data_topic"]:
                try:
                    from audio_common_msgs.msg import AudioData
                except ImportError:
                    raise ValueError("audio_data_topic is set but audio_common_msgs is not installed") from None
                self.create_subscription(AudioData, p["audio_data_topic"],
                                         lambda m: self._on_audio(np.frombuffer(bytes(m.data), "<i2")), sensor)
        if self.uses["lidar"]:
            self.create_subscription(PointCloud2, p["lidar_topic"], lambda m: self._decode("lidar", cloud_to_array, m),
                                     sensor)
        if self.uses["eef"]:
            for side, key in zip(EEF_SIDES, ("eef_l", "eef_r"), strict=True):
                self.create_subscription(PoseStamped, p[f"eef_{side}_topic"],
                                         lambda m, k=key: self.latest[k].set(pose_to_array(m)), sensor)

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
        self._audio = np.concatenate([self._audio, pcm])[-int(AUDIO_WINDOW_S * AUDIO_SAMPLE_RATE):]
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
        try:
            mapping = self.space.map_names(list(joints))
        except ActionSpaceError as e:
            raise MessageError(str(e)) from None
        missing = [n for n in mapping.missing_target if self.space.joints[self.space.index(n)].group != "locomotion"]
        if missing:
            raise MessageError(f"joint_states lacks {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
        state = np.zeros(self.space.dim, np.float32)
        state[mapping.target_index] = np.array(list(joints.values()), np.float32)[mapping.source_index]
        if self.loco is not None:
            state[self.loco] = self.command
        return state

    def _request(self) -> dict:
        """The newest inputs as a policy request; audio, LiDAR and EEF older than max_sensor_age_s count as absent."""
        fresh = lambda k: self.latest[k].age() is not None and self.latest[k].age() <= self.p["max_sensor_age_s"]
        sensed = time.time() - max(self.latest["image"].age(), self.latest["joints"].age())  # the older of the two
        request = {"image": self.latest["image"].value, "instruction": self.latest["instruction"].value,
                   "state": self._state(), "timestamp": sensed}
        if self.uses["audio"] and fresh("audio"):
            request["audio"] = self.latest["audio"].value
        if self.uses["lidar"] and fresh("lidar"):
            request["lidar"] = self.latest["lidar"].value
        if self.uses["eef"] and fresh("eef_l") and fresh("eef_r"):
            request["eef"] = np.concatenate([self.latest["eef_l"].value, self.latest["eef_r"].value])
        return request

    def _schedule(self):
        """The timer: the watchdog on a request in flight, else a request when the scheduler says one is due."""
        now = time.monotonic()
        p = self.p
        sent = self._in_flight_since
        if sent is not None:  # a request in flight: the watchdog still runs
            if now - sent > p["max_chunk_age_s"] and not self._stalled:
                self._stalled = True  # once per stalled request: halt, and say why
                self._halt(f"no reply from the policy for {now - sent:.2f} s (max_chunk_age_s "
                           f"{p['max_chunk_age_s']:g})")
            return
        # _restart: nothing executable in force to plan ahead from
        if not self.scheduler.due(now, in_force=not self._restart) or self._busy.locked():
            return
        problems, request = self._problems(), None
        if not problems:
            try:
                request = self._request()
            except MessageError as e:
                problems.append(str(e))
        self.scheduler.sent(now)
        if problems:
            self.scheduler.replied(now, None)
            self._halt("; ".join(problems))
            return
        self._busy.acquire()
        self._stalled, self._in_flight_since = False, now
        self._worker.submit(self._infer, request)

    def _halt(self, why: str, level: int = 2) -> None:
        """Nothing to execute: the command stream stops (the robot holds its own last command), walking stops, and
        the next chunk starts again from the measured pose; diagnostics say why (ERROR, or `level`)."""
        self._restart = True
        self._stop_walking()
        self._diagnose(level, why, {})

    # ---------------------------------------------------------- inference thread
    def _infer(self, request: dict):
        try:
            if self.runner is None:
                reply = self.policy.infer(self._with_prefix(request))
            else:
                reply = self._heads(request)
            self._publish(reply, request["timestamp"])
        except Exception as e:
            starting = self.runner is not None and self.runner.refreshes == 0
            if starting:  # (two_rate has imported the policy module already)
                from neon_runtime.policy import FeaturesUnavailable

                starting = isinstance(e, FeaturesUnavailable) or getattr(e, "reason", "") == "no_features"
            if starting:  # two-rate start-up: the first backbone pass has not landed yet (a warning, not an error)
                self._halt("two-rate control: waiting for the first backbone features", level=1)
            else:
                self._halt(f"inference failed: {type(e).__name__}: {e}")
        finally:
            if self.scheduler.in_flight:  # it failed, or was not published: no latency measured
                self.scheduler.replied(0.0, None)
            self._in_flight_since = None
            self._busy.release()

    def _heads(self, request: dict) -> dict:
        """Two-rate control: hand the runner the newest camera frame (encoded once, in the background), then run
        the heads on the newest features and this request's fresh joint state."""
        image, instruction = request.pop("image"), request.pop("instruction")
        audio = request.pop("audio", None)
        if self._frame is None or self._frame[0] is not image or self._frame[1] != instruction:
            self.runner.observe(image, instruction, audio, timestamp=time.time() - self.latest["image"].age(),
                                state=request["state"])
            self._frame = (image, instruction)
        request["timestamp"] = time.time() - self.latest["joints"].age()  # the state's time: the chunk starts there
        return self.runner.heads(**self._with_prefix(request))

    def _with_prefix(self, request: dict) -> dict:
        """For a prefix-conditioned model: the steps the executor will run from the request's observation until its
        chunk can arrive (the latency estimate), on the grid of the chunk it asks for."""
        committed = None if self._restart else self.scheduler.prefix(wall_to_mono(request["timestamp"]))
        if committed is not None:
            request["prefix"] = committed
        return request

    def _publish(self, reply: dict, sensed: float):
        """Publish a chunk against the world as it is now: through the executor (steps already past dropped, the
        hand-over blended), re-anchored on the freshest joint state, nothing from an observation older than the
        policy's max_observation_age_s."""
        age, limit = time.time() - sensed, self.safety.config.max_observation_age_s
        problems = self._problems() + ([f"the chunk's observation is {age:.3f} s old at publish time (limit {limit} s)"]
                                       if age > limit else [])
        times = (np.arange(len(reply["actions"])) + 1) / self.fps - age  # seconds from now to each step
        if not problems and not (times > 0).any():
            problems.append("every step of the chunk lies in the past")
        if not problems:
            try:
                state = self._state()
            except MessageError as e:
                problems.append(str(e))
        if problems:
            self._halt("not published: " + "; ".join(problems))
            return
        keep, now = times > 0, time.monotonic()
        self.scheduler.replied(now - age, now)  # observation -> chunk usable: what request-ahead plans for
        raw = np.asarray(reply["actions"], np.float32)
        refusals = [n for n in reply["safety"]["notes"] if n.startswith("not executable")]
        why = "; ".join(refusals)
        # In dry run the executor still runs (to preview topics) a chunk refused for that reason alone.
        previewable = self.p["dry_run"] and refusals == [f"not executable: {DRY_RUN_REFUSAL}"]
        chunk = Chunk(raw, now + times, received_s=now, executable=not reply["dry_run"] or previewable, why_not=why,
                      source=self.source)
        with self._exec_lock:
            try:
                if self._restart:  # start from where the robot is, not from a chunk of before the watchdog tripped
                    self.chunk_executor.hold(state, now)
                self.chunk_executor.accept(chunk)
                self._restart = False
                planned = np.stack([self.chunk_executor.target(now + t) for t in times[keep]])
            except ChunkRefused:  # not executable (dry-run policy): previewed as it came, never executed
                self._restart, planned = True, raw[keep]
        actions, _ = self.safety.apply(planned, state, self.fps, first_dt=float(times[keep][0]))
        preview = self.p["dry_run"] or bool(reply["dry_run"])
        msg = JointTrajectory()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.joint_names = [self.space.names[i] for i in self._joint_idx]
        for row, secs in zip(actions, times[keep], strict=True):
            pt = JointTrajectoryPoint(positions=[float(row[i]) for i in self._joint_idx])
            pt.time_from_start.sec, pt.time_from_start.nanosec = int(secs), int(round((secs - int(secs)) * 1e9))
            msg.points.append(pt)
        (self.pub_preview if preview else self.pub_traj).publish(msg)
        if self.pub_twist is not None and not preview:
            self.command = actions[0, self.loco].astype(np.float32)
            self.pub_twist.publish(Twist(linear=Vector3(x=float(self.command[0]), y=float(self.command[1])),
                                         angular=Vector3(z=float(self.command[2]))))
        if reply.get("speech"):
            self.pub_speech.publish(String(data=reply["speech"]))
        self.published += 1
        why = why or "dry_run parameter"
        self._diagnose(0, "ok" + (f" (dry run, preview only: {why})" if preview else ""),
                       {"observation_age_ms": f"{age * 1e3:.1f}", "steps_dropped": str(int((~keep).sum())),
                        "rate_limited": str(reply["safety"]["rate_limited"]),
                        "latency_estimate_ms": f"{self.latency.estimate() * 1e3:.1f}",
                        "committed_steps": str(reply.get("committed_steps", 0)),
                        "features": "reused" if (reply.get("features") or {}).get("reused") else "fresh",
                        **{f"{k}_age_s": f"{self.latest[k].age():.3f}" for k in ("image", "joints")}})

    # ---------------------------------------------------------- control timer (control_hz > 0)
    def _control(self):
        """Stream the executor's target now, inside the limits and the speed limit from the last command; nothing
        while an input is stale, before the first executable chunk, or once the newest is max_chunk_age_s old."""
        now, stamp = time.monotonic(), self.get_clock().now()  # the command is for this instant: stamped with it
        age = self.chunk_executor.age(now)
        if self._restart or age is None or age > self.p["max_chunk_age_s"]:
            return
        if self._problems():  # the next chunk starts again from the measured pose (`_schedule` says why)
            self._restart = True
            return
        with self._exec_lock:
            q = self.chunk_executor.command(now, max_dt_s=2.0 / self.p["control_hz"])  # a stall: one bounded step
        msg = JointState(name=[self.space.names[i] for i in self._joint_idx],
                         position=[float(q[i]) for i in self._joint_idx])
        msg.header.stamp = stamp.to_msg()
        self.pub_command.publish(msg)
        self.commanded += 1

    def _stop_walking(self) -> None:
        """A zero Twist (whole body): on every watchdog trip, refused chunk and shutdown."""
        self.command[:] = 0.0
        if self.pub_twist is not None:
            self.pub_twist.publish(Twist())

    def _diagnose(self, level: int, message: str, values: dict):
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        st = DiagnosticStatus(level=bytes([level]), name="neon: policy", message=message, hardware_id="g1")
        st.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr.status = [st]
        self.pub_diag.publish(arr)

    def destroy_node(self):
        if hasattr(self, "_worker"):  # it started: stop walking and say so before the graph goes away
            self._worker.shutdown(wait=True)
            self._stop_walking()
            self._diagnose(1, "stopped: neon-ros is shutting down", {})
        if getattr(self, "runner", None) is not None:
            self.runner.close()
        if hasattr(getattr(self, "policy", None), "close"):
            self.policy.close()
        super().destroy_node()


def check_rates(p: dict) -> None:
    """The scheduling parameters, or ValueError naming the bad one."""
    for name in ("rate_hz", "heads_hz", "control_hz", "max_chunk_age_s"):
        if not (np.isfinite(p[name]) and p[name] >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {p[name]}")
    for name in ("heads_hz", "control_hz"):
        if p[name] and not 10 <= p[name] <= 1000:
            raise ValueError(f"{name} must be 0 (off) or 10..1000 Hz, got {p[name]:g}")
    if p["heads_hz"] and not p["rate_hz"]:
        raise ValueError("heads_hz (two-rate control) refreshes the backbone's features at rate_hz: rate_hz must be > 0")
    if p["control_hz"] and not p["max_chunk_age_s"]:
        raise ValueError("control_hz streams commands only from a chunk younger than max_chunk_age_s: it must be > 0")
    if p["request_ahead_steps"] < 0:
        raise ValueError(f"request_ahead_steps must be >= 0, got {p['request_ahead_steps']}")
    check_blend_s(p["blend_s"], "blend_s")


make_node = NeonNode  # make_node(name, **parameters), rclpy initialised: parameters as a launch file sets them


def main(argv: list[str] | None = None) -> int:
    """Console script `neon-ros`: parameters come from ROS arguments (--ros-args -p name:=value).

    SIGINT and SIGTERM (how launch and systemd stop it) end it cleanly: a zero Twist, a last diagnostics
    message, exit 0. A node that cannot start (bad parameters, a missing model) exits 2 with the reason.
    """
    import signal

    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    def stop(signum, frame):
        raise KeyboardInterrupt

    rclpy.init(args=argv if argv is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        node = make_node()
    except Exception as e:
        print(f"neon-ros: cannot start: {type(e).__name__}: {e}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    # Callbacks only store messages; inference has its own thread. A single-threaded executor keeps
    # rclpy's Python scheduling off the GIL (the multi-threaded one cost ~1 s of latency in bench/bench_ros.py).
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
