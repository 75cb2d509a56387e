"""Where neon-g1's chunks come from, and its ROS side.

- Server mode: `ServerSource` asks a running neon-serve (`RemotePolicy`) for chunks at `request_hz`, or sooner when
  what is left of the chunk in force covers only the measured latency (request-ahead, `ChunkExecutor.should_request`),
  with the head camera image from ROS, the instruction from --instruction or /neon/instruction, and the joint state
  from rt/lowstate.
  With `heads_hz` (two-rate control, `TwoRateRunner`): features are refreshed at `request_hz` from the newest camera
  frame + instruction, and at `heads_hz` a light request (heads only) on the newest rt/lowstate becomes the chunk.
- ROS mode: neon-ros's /neon/joint_trajectory (`trajectory_to_chunk`), while rt/lowstate goes back out on
  /joint_states so neon-ros has its state.

Chunk times are on the control loop's monotonic clock: a served chunk from the monotonic time its observation was
taken (the wall-clock stamp goes to the server only for its age check), a ROS trajectory from its header stamp
turned to monotonic once, on arrival (`wall_to_mono`).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from neon.action_space import G1ActionSpace
from neon_runtime.executor import Chunk, ChunkExecutor, ChunkRefused, RequestScheduler, wall_to_mono
from neon_runtime.g1.bridge import DEX3_MOTORS, BridgeError, RobotLink, require_arms

MAX_IMAGE_AGE_S = 0.5  # an older camera frame counts as none (neon-ros's max_image_age_s)
MAX_TRAJECTORY_AGE_S = 0.5  # a trajectory whose header stamp is older on arrival is refused (stale)
MAX_TRAJECTORY_LEAD_S = 0.1  # ... or further in the future (clocks skewed: never more than the age allowed)


# ------------------------------------------------------------------------------------------------------- server mode
def connect_server(url: str, token: str | None, open_timeout_s: float = 10.0):
    """-> (RemotePolicy, its action space), or BridgeError: unreachable, no arm joints, or dry run."""
    from neon_runtime.client import RemoteError, RemotePolicy, executable_action_space

    try:
        policy = RemotePolicy(url, token, open_timeout_s)
    except RemoteError as e:
        raise BridgeError(str(e)) from None
    try:
        space = executable_action_space(policy.metadata(), url)
    except RemoteError as e:
        policy.close()
        raise BridgeError(str(e)) from None
    return policy, space


def reply_to_chunk(reply: dict, space: G1ActionSpace, source: str = "neon-serve",
                   observed_mono: float | None = None) -> Chunk:
    """A neon-serve reply as a chunk: step k due (k + 1) / fps after its observation (as neon-ros times it).
    `observed_mono`: the observation's time on the monotonic clock, as the caller took it (then the reply's wall-clock
    observation_timestamp is not turned back, so a wall-clock step between request and reply cannot shift it)."""
    if list(reply.get("joint_names", space.names)) != space.names:
        raise ChunkRefused("the reply's joint_names differ from the server's action space")
    fps, observed = float(reply["fps"]), reply.get("observation_timestamp")
    if observed is None:
        raise ChunkRefused("the reply has no observation_timestamp, so its steps cannot be placed in time")
    notes = "; ".join(n for n in reply.get("safety", {}).get("notes", []) if n.startswith("not executable"))
    start = (observed_mono if observed_mono is not None else wall_to_mono(float(observed))) + 1.0 / fps
    return Chunk.at_fps(np.asarray(reply["actions"], np.float32), fps, start, time.monotonic(),
                        executable=not reply.get("dry_run", True), why_not=notes, source=source)


def state_vector(space: G1ActionSpace, link: RobotLink) -> np.ndarray:
    """Float[(D,)] the policy's `state` in action-space order: body joints from rt/lowstate (motor_state[sdk_index].q),
    Dex3 hands from rt/dex3/*/state (0 where they never arrived), anything else (locomotion, neck) 0."""
    out = np.zeros(space.dim, np.float32)
    motors = link.state.motor_state
    for i, j in enumerate(space.joints):
        if j.sdk_index is not None:
            out[i] = motors[j.sdk_index].q
        elif space.hand_type == "dex3" and j.group == "hands":
            side, finger = j.name.split("_hand_")
            q = link.hand_q.get(side)
            out[i] = 0.0 if q is None else q[DEX3_MOTORS[side].index(finger)]
    return out


class ServerSource:
    """A thread feeding the executor from neon-serve once camera, instruction and state are there, when its
    `RequestScheduler` says: a full request every 1 / request_hz s, or sooner once the chunk in force covers only the
    measured latency (observation to reply, the `LatencyEstimator`'s 90th percentile) plus `margin_steps`
    (request-ahead); or (heads_hz > 0) a light request every 1 / heads_hz s on features a `TwoRateRunner` refreshes
    every 1 / request_hz s. Requests carry the executor's committed steps as `prefix` when the server's model takes
    one (its metadata's prefix_max_steps > 0)."""

    margin_steps = 2  # request-ahead: a reply should arrive with this many steps of the chunk in force still ahead
    poll_s = 0.005  # how often request-ahead is checked between requests

    def __init__(self, policy, space: G1ActionSpace, link: RobotLink, ros: RosIO, executor: ChunkExecutor,
                 request_hz: float, instruction: str | None, heads_hz: float = 0.0):
        self.policy, self.space, self.link, self.ros, self.executor = policy, space, link, ros, executor
        self.period, self.instruction = 1.0 / (heads_hz or request_hz), instruction
        self.status = "starting"
        self.failed: Exception | None = None  # what ended the request thread, if anything did
        self.runner = None
        if heads_hz:
            from neon_runtime.client import RemoteError
            from neon_runtime.two_rate import TwoRateRunner

            try:  # opens the refresh connection (same client_id) and starts its thread
                self.runner = TwoRateRunner(policy, feature_hz=request_hz)
            except RemoteError as e:
                raise BridgeError(f"two-rate control needs a second connection to the server: {e}") from None
        self.scheduler = RequestScheduler(executor, self.period, two_rate=bool(heads_hz),
                                          margin_steps=self.margin_steps,
                                          prefix_max_steps=int(policy.metadata().get("prefix_max_steps") or 0))
        self.latency, self._frame = self.scheduler.latency, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="neon-g1-infer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self.policy.close()  # first: a request still waiting on the server ends with the connection
        if self.runner is not None:
            self.runner.close()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _missing(self) -> str:
        image_age = self.ros.image_age()
        if image_age is None or image_age > MAX_IMAGE_AGE_S:
            return (f"waiting for a camera image on {self.ros.camera_topic}" if image_age is None
                    else f"camera image is {image_age:.2f} s old (limit {MAX_IMAGE_AGE_S} s)")
        if not (self.ros.instruction or self.instruction):
            return f"waiting for an instruction (--instruction or {self.ros.instruction_topic})"
        return ""

    def _full_request(self) -> tuple[dict, float]:
        """One full request: the newest camera image, instruction and state. -> (the reply, when the observation was
        taken on the monotonic clock)."""
        image, image_age = self.ros.image, self.ros.image_age()
        age = max(image_age, time.monotonic() - self.link.state_at)  # the older of the two
        observed = time.monotonic() - age
        request = {"image": image, "instruction": self.ros.instruction or self.instruction,
                   "state": state_vector(self.space, self.link), "timestamp": time.time() - age,
                   "prefix": self.scheduler.prefix(observed)}
        reply = self.policy.infer({k: v for k, v in request.items() if v is not None})
        self.scheduler.replied(observed, time.monotonic(), reply["fps"])  # observation -> chunk usable
        return reply, observed

    def _heads_request(self) -> tuple[dict, float]:
        """Hand the runner a new camera frame (if one came), then one light request on the newest rt/lowstate."""
        image, image_age = self.ros.image, self.ros.image_age()
        instruction = self.ros.instruction or self.instruction
        if self._frame is None or image is not self._frame[0] or instruction != self._frame[1]:
            self.runner.observe(image, instruction, timestamp=time.time() - image_age,  # encoded once, at its turn
                                state=state_vector(self.space, self.link))
            self._frame = (image, instruction)
        state, state_age = state_vector(self.space, self.link), time.monotonic() - self.link.state_at
        observed = time.monotonic() - state_age
        reply = self.runner.heads(state, time.time() - state_age, prefix=self.scheduler.prefix(observed))
        self.scheduler.replied(observed, time.monotonic(), reply["fps"])
        return reply, observed

    def _run(self) -> None:
        """The request thread: `_serve`, and if that ever raises, say so (`failed`, `status`: neon-g1 then releases)
        instead of dying silently while the watchdog waits."""
        try:
            self._serve()
        except Exception as e:
            self.status = f"the request thread failed: {type(e).__name__}: {e}"
            self.failed = e

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self.scheduler.due(time.monotonic()):
                self._stop.wait(self.poll_s)
                continue
            t0 = time.monotonic()
            self.scheduler.sent(t0)
            self.status = self._missing()
            if not self.status:
                try:
                    reply, observed = self._heads_request() if self.runner else self._full_request()
                    self.executor.accept(reply_to_chunk(reply, self.space, observed_mono=observed))
                    self.status = "ok"
                except ChunkRefused as e:
                    self.status = f"refused: {e}"
                except Exception as e:  # the server refused the request, or the connection dropped: the watchdog acts
                    self.status = f"inference failed: {type(e).__name__}: {e}"
                    refresh = self.runner.last_error if self.runner is not None else None
                    if refresh is not None:  # e.g. no_features: say why there are none
                        self.status += f" (feature refresh: {type(refresh).__name__}: {refresh})"
            if self.scheduler.in_flight:  # it failed, or never left: no latency measured
                self.scheduler.replied(t0, None)
            if self.status != "ok":  # nothing in force to plan ahead from: wait out the period
                self._stop.wait(max(0.0, self.period - (time.monotonic() - t0)))


# ---------------------------------------------------------------------------------------------------------- ROS mode
def trajectory_to_chunk(msg, space: G1ActionSpace, now_wall: float | None = None) -> Chunk:
    """trajectory_msgs/JointTrajectory (joint names as in the action space, any common spelling) -> a chunk in
    action-space order; joints it leaves out are NaN (held). Point times count from the header stamp (from arrival
    when the stamp is zero). Raises BridgeError when it lacks arm joints; ChunkRefused when the stamp is more than
    MAX_TRAJECTORY_AGE_S old or MAX_TRAJECTORY_LEAD_S ahead of `now_wall` (time.time() by default), or not finite."""
    mapping = space.map_names(list(msg.joint_names))
    require_arms([space.names[t] for t in mapping.target_index], "the trajectory on the ROS topic")
    if not msg.points:
        raise ChunkRefused("the trajectory has no points")
    n = len(msg.joint_names)
    if any(len(p.positions) != n for p in msg.points):
        raise ChunkRefused(f"every trajectory point needs {n} positions, one per joint name")
    targets = np.full((len(msg.points), space.dim), np.nan, np.float32)
    positions = np.array([p.positions for p in msg.points], np.float32)
    targets[:, mapping.target_index] = positions[:, mapping.source_index]
    stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
    if stamp > 0:
        age = (time.time() if now_wall is None else now_wall) - stamp
        if not np.isfinite(age) or age > MAX_TRAJECTORY_AGE_S or age < -MAX_TRAJECTORY_LEAD_S:
            raise ChunkRefused(f"the trajectory's header stamp is {abs(age):.3f} s "
                               f"{'old' if age > 0 else 'in the future'} (allowed: {MAX_TRAJECTORY_AGE_S} s old, "
                               f"{MAX_TRAJECTORY_LEAD_S} s ahead): stale, or the clocks are skewed")
    start = wall_to_mono(stamp) if stamp > 0 else time.monotonic()
    times = start + np.array([p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points])
    return Chunk(targets, times, time.monotonic(), source="ROS trajectory")


class RosIO:
    """neon-g1's ROS 2 node on its own thread: camera and instruction (server mode), the trajectory topic (ROS mode),
    and rt/lowstate republished as sensor_msgs/JointState: every joint of the action space, the same `state_vector`
    a server gets (so Dex3 hands with no rt/dex3 state read 0, as in training data without hands)."""

    def __init__(self, link: RobotLink, space: G1ActionSpace, *, camera_topic: str | None, instruction_topic: str | None,
                 trajectory_topic: str | None, on_trajectory=None, joint_states_topic: str | None,
                 joint_states_hz: float = 50.0):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String
        from trajectory_msgs.msg import JointTrajectory

        from neon_runtime.ros.convert import MessageError, image_to_array

        self.link, self.space = link, space
        self._joints = [i for i, j in enumerate(space.joints) if j.group != "locomotion"]  # a command, not a joint
        self.camera_topic, self.instruction_topic = camera_topic, instruction_topic
        self.image, self._image_at, self.instruction = None, None, None
        self._rclpy, self._JointState = rclpy, JointState
        rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)  # neon-g1 handles SIGINT/SIGTERM itself
        self.node = node = rclpy.create_node("neon_g1")
        self.log = node.get_logger()

        def on_image(msg):
            try:
                self.image, self._image_at = image_to_array(msg), time.monotonic()
            except MessageError as e:
                self.log.warning(f"camera: {e}", throttle_duration_sec=5.0)

        if camera_topic:
            node.create_subscription(Image, camera_topic, on_image, qos_profile_sensor_data)
        if instruction_topic:
            command = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)  # as neon-ros subscribes to it
            node.create_subscription(String, instruction_topic, lambda m: setattr(self, "instruction", m.data), command)
        if trajectory_topic:
            reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)  # as neon-ros publishes it
            node.create_subscription(JointTrajectory, trajectory_topic, on_trajectory, reliable)
        self._pub = None
        if joint_states_topic:
            self._pub = node.create_publisher(JointState, joint_states_topic, qos_profile_sensor_data)
            node.create_timer(1.0 / joint_states_hz, self._publish_joint_states)
        self.failed: Exception | None = None  # what ended the ROS thread before shutdown, if anything did
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(node)
        self._thread = threading.Thread(target=self._spin, name="neon-g1-ros", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except Exception as e:
            if self._rclpy.ok():
                self.failed = e
                self.log.error(f"the ROS 2 thread failed: {type(e).__name__}: {e}")

    def image_age(self) -> float | None:
        return None if self._image_at is None else time.monotonic() - self._image_at

    def _publish_joint_states(self) -> None:
        if self.link.state is None:
            return
        q = state_vector(self.space, self.link)
        msg = self._JointState()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.name = [self.space.names[i] for i in self._joints]
        msg.position = [float(q[i]) for i in self._joints]
        self._pub.publish(msg)

    def close(self) -> None:
        self._executor.shutdown(timeout_sec=5)
        self._thread.join(timeout=5)
        self.node.destroy_node()
        self._rclpy.try_shutdown()
