"""`neon-g1`: action chunks -> the G1's arms on Unitree's rt/arm_sdk (and Dex3 hands), with the safety on the robot side.

    neon-g1 --server ws://127.0.0.1:8000/ws --interface eth0 --instruction "wave"   # dry run: computes, logs, sends nothing
    neon-g1 --server ws://127.0.0.1:8000/ws --interface eth0 --instruction "wave" --engage
    neon-g1 --ros --interface eth0 --engage     # runs neon-ros's /neon/joint_trajectory, republishes /joint_states

Chunks come from a running neon-serve (camera from ROS, state from rt/lowstate) or from neon-ros's trajectory topic.
At --rate-hz the arms get the chunk's targets interpolated in time, inside the joint limits and --max-vel of the last
command. --engage ramps the arm_sdk weight 0 -> 1 over --ramp-in-s holding the measured pose, once rt/lowstate and a
first executable chunk are there; chunks run from then on. No fresh executable chunk for --max-chunk-age-s: hold the last
command; --hold-s later: release. Release (SIGINT/SIGTERM/SIGHUP/SIGQUIT, --run-seconds, watchdog, rt/lowstate
silent for --state-stale-s, an error anywhere in the loop, its logging included): weight -> 0 over --ramp-out-s from
where it is, holding the last command; each tick moves the weight by at most two periods' share of the ramp, so a
stalled loop never jumps it. Logs go through a queue: a blocked or closed stdout neither stalls nor ends the loop.

--heads-hz H (server mode): two-rate control: backbone features refreshed at --request-hz, and H times a second a
heads-only request on them with the fresh rt/lowstate, its reply the new chunk (so a chunk starts where the arms are).

Exit codes: 0 released on a signal or --run-seconds; 1 released after a fault (watchdog, stale rt/lowstate, an
error; also when the loop itself failed, after ramping out); 2 refused to start (the reason is printed; nothing was
sent on rt/arm_sdk).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from neon.action_space import CONTROL_MODES, HAND_TYPES
from neon_runtime.g1.bridge import BridgeError, ControlConfig, Gains
from neon_runtime.safety import SafetyConfig

CONTROL, GAINS, SAFE = ControlConfig(), Gains(), SafetyConfig()  # their defaults are neon-g1's


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neon-g1", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--server", metavar="URL", help="a running neon-serve, e.g. ws://127.0.0.1:8000/ws")
    source.add_argument("--ros", action="store_true", help="execute neon-ros's trajectories (--trajectory-topic)")
    p.add_argument("--engage", action="store_true", help="move the robot (default: dry run, nothing is published)")
    p.add_argument("--interface", required=True, help="network interface wired to the robot (e.g. eth0, enp3s0); "
                   "'lo' for a simulator or test on this machine (then --domain must not be 0)")
    p.add_argument("--domain", type=int, default=0, help="DDS domain (default: 0, the robot's)")
    ctl = p.add_argument_group("control and safety")
    ctl.add_argument("--rate-hz", type=float, default=CONTROL.rate_hz, help="rt/arm_sdk rate, 50-500 (default: %(default)s)")
    ctl.add_argument("--kp", type=float, default=GAINS.kp, help="shoulders and elbows (default: %(default)s)")
    ctl.add_argument("--kd", type=float, default=GAINS.kd, help="(default: %(default)s)")
    ctl.add_argument("--wrist-kp", type=float, default=GAINS.wrist_kp, help="(default: %(default)s)")
    ctl.add_argument("--wrist-kd", type=float, default=GAINS.wrist_kd, help="(default: %(default)s)")
    ctl.add_argument("--waist-kp", type=float, default=GAINS.waist_kp, help="waist, held at its engage pose unless "
                     "the action space drives it (default: %(default)s)")
    ctl.add_argument("--waist-kd", type=float, default=GAINS.waist_kd, help="(default: %(default)s)")
    ctl.add_argument("--hand-kp", type=float, default=GAINS.hand_kp, help="Dex3 (default: %(default)s)")
    ctl.add_argument("--hand-kd", type=float, default=GAINS.hand_kd, help="Dex3 (default: %(default)s)")
    ctl.add_argument("--max-vel", type=float, default=SAFE.max_joint_velocity,
                     help="rad/s, arms and waist (default: %(default)s)")
    ctl.add_argument("--max-hand-vel", type=float, default=SAFE.max_hand_velocity,
                     help="rad/s, Dex3 fingers (default: %(default)s)")
    ctl.add_argument("--ramp-in-s", type=float, default=CONTROL.ramp_in_s, help="weight 0 -> 1, 1-30 (default: %(default)s)")
    ctl.add_argument("--ramp-out-s", type=float, default=CONTROL.ramp_out_s, help="weight 1 -> 0, 2-10 (default: %(default)s)")
    ctl.add_argument("--blend-s", type=float, default=0.2, help="blend each new chunk into the one in force over this "
                     "long, min-jerk (0: switch at once; default: %(default)s)")
    ctl.add_argument("--max-chunk-age-s", "--watchdog-s", type=float, default=CONTROL.max_chunk_age_s,
                     help="the watchdog: no fresh executable chunk for this long: hold, at most 2 (neon-ros's "
                          "max_chunk_age_s; --watchdog-s is its old name) (default: %(default)s)")
    ctl.add_argument("--hold-s", type=float, default=CONTROL.hold_s, help="then release after holding this long, "
                     "at most 5 (default: %(default)s)")
    ctl.add_argument("--state-stale-s", type=float, default=CONTROL.state_stale_s,
                     help="rt/lowstate (or a commanded Dex3 hand's state) silent this long while engaged: "
                     "release, at most 2 (default: %(default)s)")
    ctl.add_argument("--state-timeout", type=float, default=3.0,
                     help="refuse to start without rt/lowstate within this long (default: %(default)s)")
    ctl.add_argument("--no-hands", action="store_true", help="leave Dex3 hands alone even when the action space has them")
    ctl.add_argument("--run-seconds", type=float, help="release and exit after this long (default: run until a signal)")
    ctl.add_argument("--log-every-s", type=float, default=1.0, help="summary line period (default: %(default)s)")
    srv = p.add_argument_group("server mode")
    srv.add_argument("--token", default=os.environ.get("NEON_TOKEN"), help="the server's token (default: $NEON_TOKEN)")
    srv.add_argument("--token-file", help="read the token from this file (a bare line or NEON_TOKEN=...)")
    srv.add_argument("--instruction", help="what to do (a message on --instruction-topic replaces it)")
    srv.add_argument("--instruction-topic", default="/neon/instruction", help="std_msgs/String (default: %(default)s)")
    srv.add_argument("--camera-topic", default="/camera/color/image_raw", help="sensor_msgs/Image (default: %(default)s)")
    srv.add_argument("--request-hz", type=float, default=5.0, help="chunk requests per second, or sooner when the "
                     "chunk in force covers only the measured latency (request-ahead); with --heads-hz, feature "
                     "refreshes (camera + instruction) per second (default: %(default)s)")
    srv.add_argument("--heads-hz", type=float, default=0.0, help="two-rate control: a heads-only request on the newest "
                     "features and the fresh rt/lowstate this many times a second, >= 10, each reply the new chunk "
                     "(default: 0, off: one full request per chunk at --request-hz)")
    ros = p.add_argument_group("ROS mode")
    ros.add_argument("--trajectory-topic", default="/neon/joint_trajectory",
                     help="trajectory_msgs/JointTrajectory, action-space joint names (default: %(default)s)")
    ros.add_argument("--mode", choices=CONTROL_MODES, default="arms_only",
                     help="the action space the trajectories come from (default: %(default)s)")
    ros.add_argument("--hand", choices=HAND_TYPES, default="dex3", help="(default: %(default)s)")
    ros.add_argument("--joint-states-topic", default="/joint_states", help="rt/lowstate republished as "
                     "sensor_msgs/JointState, action-space names (default: %(default)s)")
    ros.add_argument("--no-joint-states", action="store_true", help="do not republish rt/lowstate")
    return p


def _check(args) -> None:
    for name in ("max_vel", "max_hand_vel", "request_hz", "state_timeout", "log_every_s"):
        if not getattr(args, name) > 0:
            raise BridgeError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    from neon_runtime.executor import check_blend_s

    try:
        check_blend_s(args.blend_s, "--blend-s")
    except ValueError as e:
        raise BridgeError(str(e)) from None
    if args.heads_hz != 0 and not (10 <= args.heads_hz < float("inf")):
        raise BridgeError(f"--heads-hz must be >= 10 (the heads re-run at the control rate), or 0 for one full request "
                          f"per chunk at --request-hz; got {args.heads_hz:g}")
    if args.heads_hz and not args.server:
        raise BridgeError("--heads-hz is two-rate control against a neon-serve: it needs --server")
    if args.run_seconds is not None and not args.run_seconds > 0:
        raise BridgeError(f"--run-seconds must be positive, got {args.run_seconds}")
    if args.interface == "lo" and args.domain == 0:
        raise BridgeError("--interface lo is a simulator or test on this machine: give it a --domain other than 0 "
                          "(domain 0 is the robot's)")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)  # SIGHUP: the SSH session dropped


def _print(message: str) -> None:
    print(f"neon-g1: {message}", flush=True)


log = _print  # replaced by a QueuedLog while `run` runs


def run(args) -> int:
    """`_run` with neon-g1's log lines queued (`QueuedLog`) while it runs."""
    global log
    from neon_runtime.g1.bridge import QueuedLog

    _check(args)
    log = QueuedLog(_print)
    try:
        return _run(args)
    finally:
        log.close()
        log = _print


def _run(args) -> int:
    from neon_runtime.executor import ChunkExecutor
    from neon_runtime.g1.bridge import Controller, RobotLink, make_layout, run_loop
    from neon_runtime.g1.inputs import ServerSource

    stop = _catch_stop_signals()
    config = ControlConfig(args.rate_hz, args.ramp_in_s, args.ramp_out_s, args.max_chunk_age_s, args.hold_s,
                           args.state_stale_s).validate()
    gains = Gains(args.kp, args.kd, args.wrist_kp, args.wrist_kd, args.waist_kp, args.waist_kd, args.hand_kp,
                  args.hand_kd).validate()
    try:
        link = RobotLink(args.interface, args.domain)
    except ValueError as e:  # an unknown interface, a domain out of range: the factory names it
        raise BridgeError(str(e)) from None
    policy, space = _policy_and_space(args)
    want_hands = not args.no_hands and space.hand_type == "dex3"
    if not link.wait_for_state(args.state_timeout, want_hands, cancelled=lambda: bool(stop["reason"])):
        if policy is not None:
            policy.close()
        if stop["reason"]:
            log(f"{stop['reason']} before rt/lowstate arrived; nothing was sent")
            return 0
        raise BridgeError(f"no rt/lowstate on {link.where} within {args.state_timeout:g} s (--state-timeout): is the "
                          "robot on, and is this the interface wired to it? Nothing was sent")
    hands = want_hands and all(q is not None for q in link.hand_q.values())
    if want_hands and not hands:
        log(f"no rt/dex3/left/state and rt/dex3/right/state within {args.state_timeout:g} s: the hands are not commanded")
    layout = make_layout(space, gains, hands=hands, max_vel_rad_s=args.max_vel, max_hand_vel_rad_s=args.max_hand_vel)
    executor = ChunkExecutor(space.dim, blend_s=args.blend_s)
    controller = Controller(layout, config, executor)
    inputs = {"status": "", "error": ""}
    ros = _ros_io(args, link, space, executor, controller, inputs)
    source = None
    if args.server:
        try:
            source = ServerSource(policy, space, link, ros, executor, args.request_hz, args.instruction, args.heads_hz)
        except BridgeError:
            policy.close()
            ros.close()
            raise
        source.start()
    link.prepare(layout, writers=args.engage)
    _log_start(args, space, link, layout, config, source)
    try:
        stats = run_loop(controller, link, dry_run=not args.engage, run_seconds=args.run_seconds,
                         log_every_s=args.log_every_s, log=log,
                         stop_reason=lambda: stop["reason"] or _input_failure(inputs, source, ros),
                         status=lambda: source.status if source else inputs["status"])
    except Exception as e:  # run_loop ramped out before raising
        log(f"the control loop failed ({type(e).__name__}: {e}); released, weight {controller.weight:.2f}")
        return 1
    finally:
        if source is not None:
            source.close()
        ros.close()
    log(stats.summary())
    if inputs["error"] and not controller.engaged_once:
        raise BridgeError(f"{inputs['error']}. Nothing was sent")
    if controller.fault:
        log(f"released after a fault: {controller.reason}")
        return 1
    log(f"released ({controller.reason}){'' if controller.engaged_once else '; it never engaged'}"
        f"{'' if args.engage else '; dry run, nothing was sent'}")
    return 0


def _catch_stop_signals() -> dict:
    """From here on SIGINT, SIGTERM, SIGHUP and SIGQUIT set the returned {"reason"}: the loop then releases (or, before
    anything was sent, the start ends)."""
    stop = {"reason": ""}

    def on_signal(signum, frame) -> None:
        name = signal.Signals(signum).name
        if stop["reason"]:
            log(f"{name}: already releasing ({stop['reason']})")
        stop["reason"] = stop["reason"] or name

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    return stop


def _policy_and_space(args):
    """(a RemotePolicy or None, the action space): the server's (refused without arms or in dry run), or --mode's."""
    from neon.action_space import G1ActionSpace
    from neon_runtime.g1.inputs import connect_server

    if not args.server:
        return None, G1ActionSpace(args.mode, args.hand)
    token = args.token
    if args.token_file:
        from neon_runtime.client import RemoteError, read_token

        try:
            token = read_token(args.token_file)
        except RemoteError as e:
            raise BridgeError(str(e)) from None
    return connect_server(args.server, token)


def _ros_io(args, link, space, executor, controller, inputs: dict):
    """neon-g1's ROS side: camera and instruction (server mode), or the trajectory topic feeding `executor` (ROS
    mode; `inputs` gets its status, or the error that refuses the start), and /joint_states republished."""
    from neon_runtime.executor import ChunkRefused
    from neon_runtime.g1.inputs import RosIO, trajectory_to_chunk

    def on_trajectory(msg) -> None:
        try:
            executor.accept(trajectory_to_chunk(msg, space))
            inputs["status"] = f"trajectory on {args.trajectory_topic}"
        except BridgeError as e:
            if controller.engaged_once:
                inputs["status"] = f"refused: {e}"
            else:
                inputs["error"] = str(e)
        except (ChunkRefused, ValueError) as e:
            inputs["status"] = f"refused: {e}"

    try:
        return RosIO(link, space, camera_topic=args.camera_topic if args.server else None,
                     instruction_topic=args.instruction_topic if args.server else None,
                     trajectory_topic=None if args.server else args.trajectory_topic, on_trajectory=on_trajectory,
                     joint_states_topic=None if args.server or args.no_joint_states else args.joint_states_topic)
    except ImportError as e:
        raise BridgeError(f"neon-g1 needs ROS 2 (rclpy) for the camera, instruction and trajectory topics: {e} "
                          "(scripts/setup.sh installs the ros extra)") from None


def _log_start(args, space, link, layout, config, source) -> None:
    """What is about to run, and whether it moves the robot."""
    if args.heads_hz:
        log(f"two-rate control: features refreshed at {args.request_hz:g} Hz, heads at {args.heads_hz:g} Hz on the "
            f"fresh rt/lowstate{' with the committed steps as prefix' if source.scheduler.prefix_max_steps else ''}")
    log(f"{space.describe()} from {args.server or args.trajectory_topic}; robot on {link.where}; writing "
        f"{', '.join(layout.names[:2])}, ... ({layout.n} joints{', Dex3 hands' if layout.has_hands else ''}) at "
        f"{config.rate_hz:g} Hz; " + ("ENGAGE: the arms will move once a first executable chunk arrives" if args.engage
                                      else "DRY RUN (default): computing and logging only, nothing is published on "
                                           "rt/arm_sdk; pass --engage to move the robot"))


def _input_failure(inputs: dict, source, ros) -> str:
    """A reason to release ("" while there is none): bad input (a stop); a dead request or ROS thread raises, so the
    loop releases it as a fault (exit code 1)."""
    for name, part in (("request thread", source), ("ROS 2 thread", ros)):
        failed = getattr(part, "failed", None)
        if failed is not None:
            raise RuntimeError(f"the {name} failed: {type(failed).__name__}: {failed}")
    return f"bad input: {inputs['error']}" if inputs["error"] else ""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sys.setswitchinterval(0.001)  # the control thread waits at most ~1 ms for the GIL (Python's default is 5 ms)
    try:
        return run(args)
    except BridgeError as e:
        print(f"neon-g1: error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        _mute_if_closed(sys.stdout)


def _mute_if_closed(stream) -> None:
    """A stdout whose reader went away (BrokenPipeError on flush) is pointed at /dev/null, so the exit code stays the
    one documented instead of Python's 120 for a failed flush at exit."""
    try:
        stream.flush()
    except (BrokenPipeError, ValueError):
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        except (OSError, ValueError):
            pass


if __name__ == "__main__":
    sys.exit(main())
