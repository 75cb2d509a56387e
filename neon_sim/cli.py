"""`neon-sim`: the simulated G1 tabletop.

    neon-sim collect --out data/sim --episodes 200 --seed 0      # expert episodes as a LeRobot v3.0 dataset
    neon-sim collect --out data/moving --episodes 150 --seed 300 --moving-block   # ... reacting to a moved block
    neon-sim eval --policy oracle|hold|ws://127.0.0.1:8000/ws --episodes 50 --seed 10000 --out eval_sim/
    neon-sim eval --policy oracle --episodes 20 --latency-ms 0,100,200,300 --out eval_lat/   # success vs latency
    neon-sim eval --policy oracle --latency-ms 300 --executor blend --blend-s 0.2   # request-ahead, skip, blend
    neon-sim eval --policy oracle --moving-block --executor blend --control two-rate --latency-ms 200
        # the named block moves once; features every 1 / --feature-hz s, heads at --heads-hz on the fresh state
    neon-sim pretrain-backbone                                    # build neon-tiny/qwen2.5-vl-scenes (cached)
    neon-sim g1 --interface lo --domain 1 --seed 10000 --episodes 10 --out eval_g1/   # the G1 on its DDS topics:
        # rt/lowstate out, rt/arm_sdk in, head camera and instruction on ROS 2; driven by a bridge (neon-g1)

The G1 model: --mjcf PATH or $NEON_G1_MJCF, else Unitree's scene_29dof.xml in ../shared/robots/unitree_g1/
beside the checkout, else MuJoCo Menagerie's unitree_g1 through the mujoco-menagerie package (downloaded and
cached on first use). Rendering is offscreen: MUJOCO_GL=egl (set here when unset).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from neon_sim.scene import IMAGE_SIZE


MJCF_HELP = ("the G1 scene MJCF (default: $NEON_G1_MJCF, else ../shared/robots/unitree_g1/scene_29dof.xml, "
             "else Menagerie's unitree_g1 through the mujoco-menagerie package)")


G1_DESCRIPTION = """\
The simulated G1 tabletop in (soft) real time on the robot's own wire, as Unitree's unitree_mujoco does:
rt/lowstate (LowState_, crc filled) out, rt/arm_sdk (LowCmd_) in, the head camera on /camera/color/image_raw and
the instruction on /neon/instruction (ROS 2). A bridge (neon-g1) drives it as it drives the robot.

  weight w = motor_cmd[29].q in [0, 1]; each waist and arm joint tracks w * command + (1 - w) * the start pose
  (gains, dq and tau blended alike), with gravity compensation; a wrong crc is ignored; a command older than
  --stale-after-s is not applied. Each episode's clock starts when w reaches 1 and ends at success or EPISODE_S;
  the next seed starts once w is back at 0. Details: neon_sim/dds_g1.py.
"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="neon-sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    _add_collect(sub)
    _add_eval(sub)
    _add_g1(sub)
    _add_pretrain_backbone(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    args = build_parser().parse_args(argv)
    from neon.data.lerobot import DatasetError
    from neon_sim.scene import SimError

    try:
        return args.func(args)
    except (SimError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _add_collect(sub) -> None:
    """The `collect` subcommand's arguments."""
    p = sub.add_parser("collect", help="write the scripted expert's episodes as a LeRobot v3.0 dataset")
    p.add_argument("--out", required=True, help="dataset folder (written atomically)")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="episode k uses seed + k")
    p.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="head camera frames, pixels (AV1 needs >= 64)")
    p.add_argument("--mjcf", help=MJCF_HELP)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--moving-block", action="store_true",
                   help="the moving-block variant: the named block jumps once mid-episode and the expert re-plans "
                        "to it (demonstrations of reacting; use seeds apart from the static ones')")
    p.add_argument("--noise-rad", type=float, default=0.0,
                   help="noise-injected demonstrations (DART): drive the arm to the expert's target plus Gaussian "
                        "noise of this std (rad) per joint per frame; the recorded action stays the clean target")
    p.set_defaults(func=_collect)


def _add_eval(sub) -> None:
    """The `eval` subcommand's arguments."""
    p = sub.add_parser("eval", help="closed-loop success rate of a policy over fixed seeds")
    p.add_argument("--policy", required=True, help="oracle | hold | ws://host:port/ws of a running neon-serve")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=10_000, help="episode k uses seed + k (collect's seeds start at 0)")
    p.add_argument("--execute-steps", type=int, default=8, help="chunk steps executed before the next request")
    p.add_argument("--latency-ms", type=latencies, default=[0.0], metavar="L[,L...]",
                   help="sim time from observation to usable reply, during which the previous chunk goes on (with "
                        "--control two-rate: from a feature refresh's observation to its features being usable); "
                        "a list (0,100,200) runs each over the same seeds and plots success against it (needs --out)")
    p.add_argument("--executor", choices=["plain", "blend"], default="plain",
                   help="plain: synchronous chunking (each reply runs from its first step); blend: the ChunkExecutor "
                        "at the control rate (request-ahead, steps past on arrival skipped, blended hand-overs, "
                        "velocity limits per tick)")
    p.add_argument("--blend-s", type=float, default=None,
                   help="with --executor blend: seconds over which a new chunk takes over (default 0.2; 0: at once)")
    p.add_argument("--ensemble-s", type=float, default=None,
                   help="with --executor blend, instead of blending: average the chunks that arrived in the last this "
                        "many seconds (ACT's temporal ensembling, equal weights; for heads re-run every tick)")
    p.add_argument("--moving-block", action="store_true",
                   help="the task variant in which the named block jumps once, 1-2 s in, to a spot on the same side "
                        ">= 10 cm away (in about 1%% of tasks none is clear of the other blocks: the farthest clear "
                        "one, 8.8-10 cm); drawn per seed, the static task otherwise the same")
    p.add_argument("--control", choices=["chunk", "two-rate"], default="chunk",
                   help="chunk: a full request (image, instruction, state) per chunk, run open loop for "
                        "--execute-steps; two-rate (needs --executor blend): backbone features refreshed at "
                        "--feature-hz from a full observation usable --latency-ms later, the heads at --heads-hz on "
                        "the fresh joint state (a light reuse_features request to a server), each reply blended in")
    p.add_argument("--feature-hz", type=float, default=None, help="with --control two-rate: feature refreshes a "
                                                                   "second of sim time (default 5)")
    p.add_argument("--heads-hz", type=float, default=None, help="with --control two-rate: heads ticks a second of "
                                                                 "sim time, at most the 50 Hz control rate (default 30)")
    p.add_argument("--heads-latency-ms", type=float, default=None,
                   help="with --control two-rate: sim time from a heads tick to its reply being usable (default 5, "
                        "a small figure for the heads alone on a GPU; on a 2-core CPU with neon-tiny bench_two_rate "
                        "measured 23-24 ms p50 from a state step to the first command reflecting it)")
    p.add_argument("--no-prefix", action="store_true",
                   help="with --executor blend: do not send a prefix-conditioned model (prefix_max_steps > 0) the "
                        "steps committed while its request is under way (by default they are sent)")
    p.add_argument("--mjcf", help=MJCF_HELP)
    p.add_argument("--token", default=os.environ.get("NEON_TOKEN"))
    p.add_argument("--out", help="folder for sim_report.json/.md and episodes.mp4 (head | third-person view)")
    p.add_argument("--video-episodes", type=int, default=1, help="episodes recorded in episodes.mp4 (0: no video)")
    p.add_argument("--ablation", default="none", choices=["none", "blank-image", "other-block"],
                   help="send a grey frame, or an instruction naming another block (served policies only)")
    p.set_defaults(func=_eval)


def _add_g1(sub) -> None:
    """The `g1` subcommand's arguments."""
    p = sub.add_parser("g1", help="the simulated G1 in real time on Unitree's DDS topics (rt/lowstate out, rt/arm_sdk in) "
                                  "with the head camera and instruction on ROS 2, for a bridge to drive",
                       description=G1_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--interface", default="lo", help="network interface for DDS (lo: multicast off, peers on 127.0.0.1)")
    p.add_argument("--domain", type=int, default=1, help="DDS domain id (0 is the real G1's: refused unless --allow-domain-0)")
    p.add_argument("--allow-domain-0", action="store_true", help="join domain 0, the robot's own (an isolated network only)")
    p.add_argument("--seed", type=int, default=10_000, help="episode k uses seed + k (neon-sim eval's seeds)")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--mjcf", help=MJCF_HELP)
    p.add_argument("--state-hz", type=float, default=250.0, help="rt/lowstate rate; must divide the 500 Hz physics rate")
    p.add_argument("--camera-hz", type=float, default=10.0, help="head camera frames a second of sim time (0: none)")
    p.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="head camera frames, pixels")
    p.add_argument("--stale-after-s", type=float, default=0.2,
                   help="an rt/arm_sdk command older than this is not applied: the own hold takes over (0: never stale)")
    p.add_argument("--engage-timeout-s", type=float, default=0.0,
                   help="end an episode whose weight never reaches 1 after this long (0: wait for ever)")
    p.add_argument("--release-timeout-s", type=float, default=10.0,
                   help="after an episode, wait at most this long for the weight to return to 0")
    p.add_argument("--no-ros", action="store_true", help="no camera or instruction (DDS only)")
    p.add_argument("--out", help="folder for sim_report.json/.md")
    p.set_defaults(func=_g1)


def _add_pretrain_backbone(sub) -> None:
    """The `pretrain-backbone` subcommand's arguments."""
    p = sub.add_parser("pretrain-backbone", help="build neon-tiny/qwen2.5-vl-scenes: a tiny Qwen2.5-VL pretrained on "
                                                 "perception of rendered scenes (neon_sim/pretrain.py), cached")
    p.add_argument("--out", help="folder to write (default: Neon's cache, where the backbone id resolves)")
    p.add_argument("--scenes", type=int, default=3000, help="rendered scenes (each also used mirrored)")
    p.add_argument("--val-scenes", type=int, default=200, help="held-out scenes for the per-epoch errors")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="rendering processes")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads while training (default 1, safe "
                   "when other jobs run; the 735 s build figure is with 2 on a mostly idle 2-core machine)")
    p.add_argument("--mjcf", help=MJCF_HELP)
    p.set_defaults(func=_pretrain)


def latencies(text: str) -> list[float]:
    """--latency-ms: one value or a comma list of milliseconds, each finite and >= 0, none twice."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds like 200 or 0,100,200, got {text!r}") from None
    bad = [x for x in values if not math.isfinite(x) or x < 0]
    if bad:
        raise argparse.ArgumentTypeError(f"latencies must be finite and >= 0 ms, got {', '.join(map(str, bad))}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"a latency is listed twice in {text!r}")
    return values


def _eval(args) -> int:
    from neon_sim.evaluate import HEADS_LATENCY_MS, describe_control, describe_executor, evaluate, evaluate_latencies

    if args.blend_s is not None and (args.executor != "blend" or not (math.isfinite(args.blend_s) and args.blend_s >= 0)):
        print(f"error: --blend-s needs --executor blend and a finite value >= 0, got {args.blend_s:g} with "
              f"--executor {args.executor}", file=sys.stderr)
        return 2
    if args.ensemble_s is not None and (args.executor != "blend" or args.blend_s is not None
                                        or not (math.isfinite(args.ensemble_s) and args.ensemble_s > 0)):
        print(f"error: --ensemble-s needs --executor blend without --blend-s and a finite value > 0, got "
              f"{args.ensemble_s:g} with --executor {args.executor}"
              f"{'' if args.blend_s is None else f' --blend-s {args.blend_s:g}'}", file=sys.stderr)
        return 2
    two_rate = {"feature_hz": args.feature_hz, "heads_hz": args.heads_hz, "heads_latency_ms": args.heads_latency_ms}
    given = [f"--{k.replace('_', '-')}" for k, v in two_rate.items() if v is not None]
    if given and args.control != "two-rate":
        print(f"error: {', '.join(given)} {'needs' if len(given) == 1 else 'need'} --control two-rate", file=sys.stderr)
        return 2
    ensemble_s = args.ensemble_s or 0.0
    blend_s = (0.2 if args.blend_s is None else args.blend_s) if args.executor == "blend" and not ensemble_s else 0.0
    kwargs = {"episodes": args.episodes, "seed": args.seed, "execute_steps": args.execute_steps, "token": args.token,
              "progress": True, "ablation": args.ablation, "mjcf": args.mjcf, "video_episodes": args.video_episodes,
              "executor": "plain" if args.executor == "plain" else "executor", "blend_s": blend_s,
              "moving_block": args.moving_block, "control": args.control,
              "feature_hz": 5.0 if args.feature_hz is None else args.feature_hz,
              "heads_hz": 30.0 if args.heads_hz is None else args.heads_hz,
              "heads_latency_ms": HEADS_LATENCY_MS if args.heads_latency_ms is None else args.heads_latency_ms,
              "prefix": not args.no_prefix, "ensemble_s": ensemble_s}
    if len(args.latency_ms) > 1:
        if not args.out:
            print("error: a --latency-ms list writes a report per latency and a plot: give --out", file=sys.stderr)
            return 2
        report = evaluate_latencies(args.policy, args.latency_ms, args.out, **kwargs)
        print(f"{args.policy} over {args.episodes} episodes, {args.execute_steps} steps a chunk, "
              f"{describe_executor(report['executor'], report['blend_s'], report['ensemble_s'])}, "
              f"{describe_control(report)}"
              f"{', moving block' if args.moving_block else ''}:")
        print(f"{'latency ms':>10}  {'success':>7}  {'95% CI':>9}  {'median s to success':>19}  {'jerk ratio':>10}")
        for row in report["rows"]:
            lo, hi = row["success_ci95"]
            t = "-" if row["time_to_success_s"] is None else f"{row['time_to_success_s']:.2f}"
            ratio = row["control_jerk"]["ratio_max"]
            ratio = "-" if ratio is None else f"{ratio:.2f}"
            print(f"{row['latency_ms']:>10g}  {row['success_rate']:>7.2f}  {lo:.2f}-{hi:.2f}  {t:>19}  {ratio:>10}")
        print(f"plot: {report['plot']}")
        return 0
    report = evaluate(args.policy, out=args.out, latency_ms=args.latency_ms[0], **kwargs)
    lo, hi = report["success_ci95"]
    cj = report["control_jerk"]
    ratio = "-" if cj["ratio_max"] is None else f"{cj['ratio_max']:.2f}"
    print(f"{args.policy}: success {report['success_rate']:.2f} (95% CI {lo:.2f}-{hi:.2f}) over {args.episodes} "
          f"episodes{' of the moving-block task' if args.moving_block else ''} at {args.latency_ms[0]:g} ms latency; "
          f"{report['seconds_per_episode']} s per episode; {describe_control(report)}")
    print(f"{describe_executor(report['executor'], report['blend_s'], report['ensemble_s'])}: "
          f"{report['requests']} requests; jerk at "
          f"{report['control_hz']:g} Hz (median of each episode's largest) within chunks {cj['within_max']:.0f}, "
          f"at hand-overs {cj['boundary_max']:.0f} rad/s^3, ratio {ratio}")
    if report["prefix"] and report["prefix"]["model_takes"]:
        pre = report["prefix"]
        sent = f"sent, {pre['mean_committed_steps']:.2f} committed steps a reply on average" if pre["sent"] else "not sent"
        print(f"prefix-conditioned model (up to {pre['model_takes']} steps): prefix {sent}")
    return 0


def _g1(args) -> int:
    from neon_sim.dds_g1 import DdsG1, DdsG1Config, write_report

    if args.interface == "lo":  # the ROS 2 side stays on this machine too, unless the environment says otherwise
        os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    config = DdsG1Config(interface=args.interface, domain=args.domain, seed=args.seed, episodes=args.episodes,
                         mjcf=args.mjcf, state_hz=args.state_hz, camera_hz=args.camera_hz, image_size=args.image_size,
                         stale_after_s=args.stale_after_s, engage_timeout_s=args.engage_timeout_s,
                         release_timeout_s=args.release_timeout_s, ros=not args.no_ros,
                         allow_robot_domain=args.allow_domain_0)

    def say(event) -> None:
        where = f"episode {event.episode + 1}/{args.episodes} (seed {event.seed})"
        if event.kind == "ready":
            print(f"{where}: {event.instruction!r}; holding, waiting for the rt/arm_sdk weight to reach 1", flush=True)
        elif event.kind == "finished":
            r = event.result
            if not r["engaged"]:
                print(f"{where}: the weight never reached 1 within --engage-timeout-s; next", flush=True)
                return
            outcome = f"success after {r['time_to_success_s']} s" if r["success"] else "no success"
            print(f"{where}: {outcome}, palm {r['final_distance_m']} m from the block; waiting for the weight to "
                  "return to 0", flush=True)

    sim = DdsG1(config, on_event=say).start()
    print(f"neon-sim g1: rt/lowstate at {config.state_hz:g} Hz, rt/arm_sdk in, on {config.interface} in DDS domain "
          f"{config.domain}" + ("" if args.no_ros else f"; ROS 2 domain {os.environ.get('ROS_DOMAIN_ID', '0')}"), flush=True)
    report = sim.run()
    if args.out:
        write_report(report, args.out)
    lo, hi = report["success_ci95"]
    cmds = report["commands"]
    print(f"rt/arm_sdk: success {report['success_rate']:.2f} (95% CI {lo:.2f}-{hi:.2f}) over {report['episodes']} "
          f"episodes; rt/lowstate {report['lowstate_hz']} Hz, real-time factor {report['real_time_factor']}; commands "
          f"accepted {cmds['accepted']}, rejected (crc) {cmds['rejected_crc']}, stale {cmds['stale']}")
    return 0


def _pretrain(args) -> int:
    from neon_sim.pretrain import pretrain

    for name in ("scenes", "val_scenes", "epochs", "batch_size", "workers", "threads"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    summary = pretrain(args.out, args.scenes, args.val_scenes, args.epochs, args.batch_size, workers=args.workers,
                       threads=args.threads, mjcf=args.mjcf, progress=True)
    summary.pop("history")
    print(json.dumps(summary, indent=2))
    return 0


def _collect(args) -> int:
    from neon_sim.collect import collect

    if args.episodes < 1 or args.image_size < 64 or not (math.isfinite(args.noise_rad) and args.noise_rad >= 0):
        print("error: --episodes must be >= 1, --image-size >= 64 and --noise-rad finite and >= 0", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    summary = collect(args.out, args.episodes, args.seed, args.image_size, args.mjcf, progress=True,
                      overwrite=args.overwrite, moving_block=args.moving_block, noise_rad=args.noise_rad)
    summary["seconds_per_episode"] = round((time.perf_counter() - t0) / args.episodes, 2)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
