"""The MuJoCo G1 tabletop scene and its scripted expert, on Unitree's G1 model from ../shared (offline)."""

import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen rendering through Mesa on a machine without a GPU
pytest.importorskip("mujoco", reason="MuJoCo comes with the sim extra (scripts/setup.sh installs it)")

from neon_sim.expert import Expert, solve_ik
from neon_sim.scene import COLORS, EPISODE_S, IMAGE_SIZE, G1Tabletop, SimError, episode_task, sample_task, start_pose

SEEDS = [101, 102, 103, 104]


def run(sim: G1Tabletop, policy) -> bool:
    """Joint targets every 20 ms until success or the episode's end."""
    while sim.time < EPISODE_S and not sim.success():
        sim.run(policy(sim.time + 0.02), 0.02)
    return sim.success()


def test_the_g1_is_matched_by_name_and_fixed_at_the_pelvis():
    sim = G1Tabletop(sample_task(np.random.default_rng(0)))
    mapped = {sim.space.names[i] for i in sim.dims}
    assert {f"{s}_{j}" for s in ("left", "right") for j in ("shoulder_pitch", "elbow", "wrist_yaw")} <= mapped
    assert not any("hand" in n for n in mapped)  # Unitree's 29-DOF model has no Dex3: those dims stay 0
    pelvis = sim.data.body("pelvis").xpos.copy()
    sim.run(sim.state(), 0.5)
    assert np.allclose(sim.data.body("pelvis").xpos, pelvis)  # fixed: no free joint, it does not fall
    assert np.abs(sim.state() - sim.state()).max() == 0 and sim.limit_violation <= 1e-3


@pytest.mark.parametrize("seed", SEEDS)
def test_the_expert_touches_the_named_block_and_holding_still_does_not(seed):
    task = sample_task(np.random.default_rng(seed))
    assert task.colors[task.target] in task.instruction and set(task.colors) == set(COLORS)
    sim = G1Tabletop(task)
    assert run(sim, Expert(sim).targets), (task.instruction, sim.distance())
    assert sim.time < EPISODE_S and not sim.table_contact and sim.limit_violation <= 1e-3
    held = G1Tabletop(task)
    start = held.state()
    assert not run(held, lambda t: start) and held.distance() > 0.05


def test_pushing_into_the_table_is_no_success():
    sim = G1Tabletop(sample_task(np.random.default_rng(7)))
    through = solve_ik(sim, sim.task.arm, sim.block_top() + np.array([0.0, 0.0, -0.08]), sim.state())  # 4 cm into it
    for _ in range(100):
        sim.run(through, 0.02)
    assert sim.table_contact and not sim.success()


def test_cameras_see_the_scene():
    sim = G1Tabletop(sample_task(np.random.default_rng(3)))
    head, outside = sim.render("head"), sim.render("third_person")
    assert head.shape == outside.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) == (224, 224, 3) and head.dtype == np.uint8
    assert head.std() > 10 and np.abs(head.astype(int) - outside.astype(int)).mean() > 10  # two different views
    sim.close()


@pytest.mark.parametrize("seed", [10_000, 10_001, 10_002, 10_003])
def test_the_head_camera_sees_the_named_block_whole_from_the_start_pose(seed):
    sim = G1Tabletop(episode_task(seed))
    assert np.allclose([sim.data.joint(f"{n}_joint").qpos[0] for n in start_pose()], list(start_pose().values()))
    assert sim.visibility()[sim.task.target] >= 0.5
    sim.close()


def test_visibility_sees_a_hand_hide_a_block():
    sim = G1Tabletop(episode_task(10_000))
    i = sim.task.target
    assert sim.visibility()[i] > 0.95
    eye = sim.data.cam("head").xpos
    between = eye + 0.5 * (sim.block_top(i) - eye)  # halfway from the camera to the block: the palm blocks the view
    q = solve_ik(sim, sim.task.arm, between, sim.state())
    sim.data.qpos[sim.qadr] = q[sim.dims]
    sim.mj.mj_forward(sim.model, sim.data)
    assert sim.visibility()[i] < 0.5
    sim.close()


def test_a_missing_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NEON_G1_MJCF", str(tmp_path / "nowhere.xml"))
    with pytest.raises(SimError, match="NEON_G1_MJCF"):
        G1Tabletop(sample_task(np.random.default_rng(0)))


def test_collect_writes_a_dataset_that_neon_reads(tmp_path):
    """Expert episodes as LeRobot v3.0: G1 joint names, the real fps, video, palm poses; read back for training."""
    from neon.action_space import G1ActionSpace
    from neon.data.sources import LeRobotSource
    from neon_sim.cli import main as sim_main
    from neon_sim.collect import FPS

    assert sim_main(["collect", "--out", str(tmp_path / "sim"), "--episodes", "2", "--seed", "101"]) == 0
    space = G1ActionSpace("arms_only")
    src = LeRobotSource(str(tmp_path / "sim"), space, 16)
    assert src.fps == FPS and len(src.episodes) == 2 and src.action_map.unmapped_source == []
    assert set(src.action_map.missing_target) == {n for n in space.names if "_hand_" in n}  # the model has no Dex3
    sample = src.sample(0)
    task = sample_task(np.random.default_rng(101))
    assert sample["obs"].instruction == task.instruction and sample["obs"].image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert sample["obs"].eef.shape == (14,) and sample["action_mask"][:, :14].all()
    last = src.sample(src.episodes[0].length - 1)  # the episode ends with the palm on the block
    sim = G1Tabletop(task)
    side = slice(0, 3) if task.arm == "left" else slice(7, 10)
    assert np.linalg.norm(last["obs"].eef[side] - sim.block_top()) <= 0.035
    assert sim_main(["collect", "--out", str(tmp_path / "bad"), "--episodes", "0"]) == 2


def test_moving_block_demonstrations_turn_to_where_the_block_went():
    """collect --moving-block: the named block jumps mid-episode; the expert's recorded reach ends on its new spot,
    not its old one, and the frames before the jump are the static task's."""
    from neon_sim.collect import FPS, expert_episode
    from neon_sim.scene import episode_task

    seed = 303
    task = episode_task(seed, moving_block=True)
    episode, ok = expert_episode(seed, image_size=64, moving_block=True)
    static, _ = expert_episode(seed, image_size=64)
    assert ok
    eef = episode.frames["observation.eef"]
    side = slice(0, 3) if task.arm == "left" else slice(7, 10)
    old = G1Tabletop(episode_task(seed)).block_top()
    new = np.r_[task.move.position, old[2]]
    assert np.linalg.norm(eef[-1, side] - new) <= 0.035 and np.linalg.norm(eef[-1, side] - old) >= 0.07
    before = int(task.move.at_s * FPS)  # frames recorded before the jump
    np.testing.assert_allclose(episode.frames["action"][:before], static.frames["action"][:before], atol=1e-6)
    assert not np.allclose(episode.frames["action"][before + 2], static.frames["action"][before + 2], atol=1e-3)


def test_noise_injected_demonstrations_record_the_clean_target():
    """DART: the arm is driven off the expert's path by noise, but each frame records the expert's own target, so the
    data shows the way back; no camera frames when not rendering."""
    from neon_sim.collect import expert_episode

    clean, _ = expert_episode(101, render=False)
    noisy, ok = expert_episode(101, noise_rad=0.05, render=False)
    again, _ = expert_episode(101, noise_rad=0.05, render=False)
    assert clean.videos == {} and ok
    n = min(clean.length, noisy.length)
    np.testing.assert_allclose(noisy.frames["action"][:n], clean.frames["action"][:n], atol=1e-6)  # the same plan
    off = np.abs(noisy.frames["observation.state"][:n] - clean.frames["observation.state"][:n]).max(1)
    assert off[0] == 0 and off[1:].mean() > 0.01  # ... from states the clean run never visits
    np.testing.assert_array_equal(noisy.frames["observation.state"], again.frames["observation.state"])  # seeded
    with pytest.raises(ValueError, match="noise_rad"):
        expert_episode(101, noise_rad=float("nan"), render=False)


def test_eval_oracle_and_hold_report(tmp_path):
    from neon_sim.evaluate import evaluate

    report = evaluate("oracle", episodes=3, seed=101, out=tmp_path / "oracle", progress=False)
    assert report["success_rate"] == 1.0 and report["joint_limit_violations"] == 0 and report["table_contacts"] == 0
    lo, hi = report["success_ci95"]
    assert 0.4 < lo < 1.0 and hi == 1.0  # Wilson interval for 3 / 3
    assert (tmp_path / "oracle" / "sim_report.json").is_file() and (tmp_path / "oracle" / "sim_report.md").is_file()
    assert (tmp_path / "oracle" / "episodes.mp4").stat().st_size > 1000  # head | third-person video of episode 1
    hold = evaluate("hold", episodes=2, seed=101, progress=False)
    assert hold["success_rate"] == 0.0 and all(not r["success"] for r in hold["results"])


def test_eval_closes_the_loop_through_neon_serve_and_refuses_what_cannot_run(backbones):
    from conftest import as_trained, attach, tiny_config
    from serving import runner_for, serve

    from neon.model import NeonVLA
    from neon_runtime.safety import SafetyConfig
    from neon_runtime.server import ServerSettings, create_app
    from neon_sim.evaluate import evaluate

    model = as_trained(attach(NeonVLA(tiny_config("neon-tiny/qwen2.5-vl", fps=10.0)), backbones))  # as sim data is
    runner = runner_for(model, max_batch=1, max_wait_ms=0)
    with serve(create_app(runner, ServerSettings())) as addr:
        report = evaluate(f"ws://{addr}/ws", episodes=2, seed=101, execute_steps=8, progress=False)
        blended = evaluate(f"ws://{addr}/ws", episodes=1, seed=101, progress=False, video_episodes=0,
                           executor="executor", blend_s=0.2, latency_ms=200)  # the same server through the executor
    runner.close()
    assert len(report["results"]) == 2 and report["round_trip_ms"]["p50"] > 0
    assert report["joint_limit_violations"] == 0 and report["table_contacts"] == 0  # the safety layer held it back
    assert blended["requests"] >= 5 and blended["round_trip_ms"]["p50"] > 0 and blended["joint_limit_violations"] == 0
    dry = runner_for(model, SafetyConfig(dry_run=True), max_batch=1, max_wait_ms=0)
    with serve(create_app(dry, ServerSettings())) as addr:
        with pytest.raises(SimError, match="dry-run"):
            evaluate(f"ws://{addr}/ws", episodes=1, progress=False)
    dry.close()
    with pytest.raises(SimError, match="cannot connect"):
        evaluate("ws://127.0.0.1:9/ws", episodes=1, progress=False)
    with pytest.raises(SimError, match="--policy must be"):
        evaluate("expert", episodes=1, progress=False)
    with pytest.raises(SimError, match="ablation must be one of"):
        evaluate("oracle", episodes=1, progress=False, ablation="no-arms")


def test_eval_refuses_a_server_without_arm_joints_before_anything_moves():
    """A stand-in server whose action space has no arms (neon-serve cannot serve one): a clear SimError at start."""
    import threading

    from websockets.sync.server import serve

    from neon_runtime import wire
    from neon_sim.evaluate import evaluate

    hands_only = {"action_space": {"control_mode": "hands_only", "joints": [{"name": "left_hand_thumb_0"}]},
                  "dry_run": False}
    requests = []
    with serve(lambda ws: (ws.send(wire.packb(hands_only)), requests.extend(ws)), "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        with pytest.raises(SimError, match=r"lacks arm joint\(s\) left_shoulder_pitch.*right_wrist_yaw"):
            evaluate(f"ws://127.0.0.1:{port}", episodes=1, progress=False)
        server.shutdown()
    assert requests == []  # no observation was ever sent


# ---------------------------------------------------------------------- latency


def test_latency_delays_the_oracle_and_each_reply_runs_from_its_first_step():
    """The oracle plans each chunk at request time; a reply usable L later and run from its first step, with
    the previous chunk's leftovers bridging the wait, is that plan delayed by exactly L: success comes L later,
    fractions of a step included. Without leftovers (all 16 steps executed) the arm stops while it waits."""
    from neon_sim.evaluate import run_episode

    on_time = run_episode(101, "oracle")
    late = {ms: run_episode(101, "oracle", latency_ms=ms) for ms in (300, 150)}
    assert on_time["success"] and all(r["success"] for r in late.values())
    for ms, r in late.items():
        assert abs(r["time_to_success_s"] - on_time["time_to_success_s"] - ms / 1e3) < 0.011, (ms, r, on_time)
    stop_and_go = run_episode(101, "oracle", execute_steps=16, latency_ms=300)  # no leftovers: it holds, then jumps
    assert stop_and_go["jerk_boundary"] > 5 * late[300]["jerk_boundary"]


def test_a_latency_list_writes_a_report_each_a_combined_report_and_a_plot(tmp_path, capsys):
    import json

    from neon_sim.cli import main as sim_main

    argv = ["eval", "--policy", "oracle", "--episodes", "2", "--seed", "101", "--latency-ms", "250,0",
            "--video-episodes", "0", "--out", str(tmp_path)]
    assert sim_main(argv) == 0
    combined = json.loads((tmp_path / "latency_report.json").read_text())
    assert [r["latency_ms"] for r in combined["rows"]] == [0.0, 250.0] and combined["episodes"] == 2
    for row in combined["rows"]:
        report = json.loads((tmp_path / f"latency_{row['latency_ms']:g}ms" / "sim_report.json").read_text())
        assert report["latency_ms"] == row["latency_ms"] and report["seeds"] == [101, 102]
        assert report["success_rate"] == row["success_rate"] == 1.0 and row["success_ci95"][1] == 1.0
    assert combined["rows"][1]["time_to_success_s"] > combined["rows"][0]["time_to_success_s"]
    plot = (tmp_path / "success_vs_latency.png").read_bytes()
    assert plot.startswith(b"\x89PNG") and len(plot) > 5000
    table = capsys.readouterr().out
    assert "latency ms" in table and "250" in table and "success_vs_latency.png" in table


@pytest.mark.parametrize("value", ["-5", "abc", "100,", "0,nan", "inf", "100,100"])
def test_bad_latencies_are_refused_with_exit_code_2(value, capsys):
    from neon_sim.cli import main as sim_main

    with pytest.raises(SystemExit) as stop:
        sim_main(["eval", "--policy", "oracle", "--episodes", "1", f"--latency-ms={value}"])
    assert stop.value.code == 2 and "--latency-ms" in capsys.readouterr().err


def test_latency_errors_outside_argparse(tmp_path, capsys):
    from neon_sim.cli import main as sim_main
    from neon_sim.evaluate import evaluate, evaluate_latencies

    with pytest.raises(SimError, match="latency must be a finite number"):
        evaluate("oracle", episodes=1, latency_ms=-1.0, progress=False)
    with pytest.raises(SimError, match="latencies must differ"):
        evaluate_latencies("oracle", [0.0, 0.0], tmp_path, episodes=1)
    assert sim_main(["eval", "--policy", "oracle", "--episodes", "1", "--latency-ms", "0,100"]) == 2  # no --out
    assert "give --out" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------- the chunk executor


def test_the_executor_without_blending_at_zero_latency_runs_as_plain_chunking():
    """Same hand-overs, same targets: at 0 ms the executor asks after execute_steps steps and moves from the last
    target to the reply's step 0, as plain chunking does (success is checked every 20 ms tick, not every step)."""
    from neon_sim.evaluate import run_episode

    plain, ex = run_episode(101, "oracle"), run_episode(101, "oracle", executor="executor")
    assert ex["success"] and ex["requests"] == plain["requests"] and ex["skipped_steps"] == 0
    assert abs(ex["time_to_success_s"] - plain["time_to_success_s"]) < 0.1
    for key in ("within_max", "boundary_max"):
        assert ex["control_jerk"][key] == pytest.approx(plain["control_jerk"][key], rel=1e-3)


@pytest.mark.parametrize("seed", [101, 102])
def test_the_oracle_through_the_executor_succeeds_on_time_at_300_ms(seed):
    """Request-ahead and skipping the steps already past: the oracle's plan is a function of time, so with 300 ms
    of latency it runs on time (plain chunking runs 300 ms late); blending keeps the start and hand-overs smooth."""
    from neon_sim.evaluate import run_episode

    on_time = run_episode(seed, "oracle", executor="executor", blend_s=0.2)
    late = run_episode(seed, "oracle", executor="executor", blend_s=0.2, latency_ms=300)
    plain = run_episode(seed, "oracle", latency_ms=300)
    assert on_time["success"] and late["success"], (on_time, late)
    assert not late["joint_limit_violation"] and not late["table_contact"]
    assert abs(late["time_to_success_s"] - on_time["time_to_success_s"]) < 0.05
    assert plain["time_to_success_s"] > late["time_to_success_s"] + 0.2
    assert late["skipped_steps"] >= 2 * (late["requests"] - 1)  # steps 0 and 1 of each reply were due before it came
    unblended = run_episode(seed, "oracle", executor="executor", latency_ms=300)  # jumps onto the stale plan at once
    assert unblended["control_jerk"]["boundary_max"] > 3 * late["control_jerk"]["boundary_max"]
    held = run_episode(seed, "hold", executor="executor", latency_ms=300)
    assert not held["success"] and held["requests"] >= 2


def test_the_executor_report_has_mode_blend_requests_and_the_jerk_ratio(tmp_path, capsys):
    import json

    from neon_sim.cli import main as sim_main
    from neon_sim.evaluate import evaluate

    argv = ["eval", "--policy", "oracle", "--episodes", "2", "--seed", "101", "--latency-ms", "200", "--executor",
            "blend", "--video-episodes", "0", "--out", str(tmp_path)]
    assert sim_main(argv) == 0
    report = json.loads((tmp_path / "sim_report.json").read_text())
    assert report["executor"] == "executor" and report["blend_s"] == 0.2 and report["success_rate"] == 1.0
    assert report["requests"] >= 2 * 4 and report["skipped_steps"] > 0
    for r in report["results"]:
        cj = r["control_jerk"]
        assert cj["within_max"] > 0 and cj["boundary_max"] > 0 and 0 < cj["boundary_fraction"] < 1
        assert cj["ratio_max"] == pytest.approx(cj["boundary_max"] / cj["within_max"])
    assert report["control_jerk"]["ratio_max"] is not None and report["control_jerk"]["ratio_rms"] is not None
    md = (tmp_path / "sim_report.md").read_text()
    assert "blending over 0.2 s" in md and "ratio" in md and "requests" in md
    assert "ratio" in capsys.readouterr().out
    assert sim_main(["eval", "--policy", "oracle", "--episodes", "1", "--blend-s", "0.1"]) == 2  # plain does not blend
    assert "--blend-s needs --executor blend" in capsys.readouterr().err
    with pytest.raises(SimError, match="executor must be one of"):
        evaluate("oracle", episodes=1, executor="rtc", progress=False)
    with pytest.raises(SimError, match="plain chunking does not blend"):
        evaluate("oracle", episodes=1, blend_s=0.2, progress=False)
    with pytest.raises(SimError, match="blend_s must be a finite number of seconds >= 0, got -0.1"):
        evaluate("oracle", episodes=1, executor="executor", blend_s=-0.1, progress=False)


# ---------------------------------------------------------------------- where the G1 model comes from


def menagerie_like(root):
    """A stand-in for a Menagerie checkout (its archives cannot be downloaded here), made from ../shared's copy:
    unitree_g1/scene.xml with the same joint names, and Menagerie's kind of actuators: position servos (kp 500,
    critically damped, joint ranges inherited) with the torque limits on the joints."""
    import mujoco

    from neon_sim.scene import SHARED_MJCF

    spec = mujoco.MjSpec.from_file(str(SHARED_MJCF))
    spec.meshdir = str(SHARED_MJCF.parent / "meshes")
    for act in spec.actuators:
        joint = spec.joint(act.target)
        joint.actfrcrange, joint.actfrclimited = act.ctrlrange, mujoco.mjtLimited.mjLIMITED_TRUE
        act.name = act.target  # Menagerie names its actuators after their joints
        act.ctrlrange, act.ctrllimited = [0.0, 0.0], mujoco.mjtLimited.mjLIMITED_AUTO
        act.set_to_position(kp=500, dampratio=1, inheritrange=True)
    path = root / "unitree_g1" / "scene.xml"
    path.parent.mkdir(parents=True)
    path.write_text(spec.to_xml())
    return path


def test_mjcf_sources_in_order(tmp_path, monkeypatch):
    """--mjcf, then $NEON_G1_MJCF, then ../shared's copy (what tests and CI use, offline)."""
    from neon_sim import scene

    mine, env = menagerie_like(tmp_path / "a"), menagerie_like(tmp_path / "b")
    monkeypatch.delenv("NEON_G1_MJCF", raising=False)
    assert scene.default_mjcf() == scene.SHARED_MJCF and scene.SHARED_MJCF.name == "scene_29dof.xml"
    monkeypatch.setenv("NEON_G1_MJCF", str(env))
    assert scene.default_mjcf() == env and scene.default_mjcf(mine) == mine
    with pytest.raises(SimError, match="--mjcf.*not found.*pip install mujoco-menagerie"):
        scene.default_mjcf(tmp_path / "nowhere.xml")


def test_without_the_shared_copy_or_menagerie_the_error_names_the_three_ways(tmp_path, monkeypatch):
    import sys

    from neon_sim import scene

    monkeypatch.delenv("NEON_G1_MJCF", raising=False)
    monkeypatch.setattr(scene, "SHARED_MJCF", tmp_path / "shared" / "scene_29dof.xml")
    monkeypatch.setitem(sys.modules, "mujoco_menagerie", None)  # the package is not installed
    with pytest.raises(SimError, match="mujoco-menagerie is not installed") as err:
        G1Tabletop(sample_task(np.random.default_rng(0)))
    assert all(way in str(err.value) for way in ("--mjcf PATH", "NEON_G1_MJCF", "robots/unitree_g1", "pip install"))


def test_menagerie_offline_is_a_clear_error_and_a_menagerie_checkout_runs_the_task(tmp_path, monkeypatch):
    """Menagerie's archives come from GitHub: offline (here, a base URL with nothing behind it) the download fails
    with the three ways named; a checkout (MENAGERIE_ROOT) is used as it is, its servos driven as torque motors."""
    pytest.importorskip("mujoco_menagerie", reason="the Menagerie source needs the mujoco-menagerie package")
    from neon_sim import scene

    checkout = menagerie_like(tmp_path / "menagerie")
    for var in ("NEON_G1_MJCF", "MENAGERIE_ROOT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(scene, "SHARED_MJCF", tmp_path / "shared" / "scene_29dof.xml")
    monkeypatch.setenv("MENAGERIE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MENAGERIE_BASE_URL", (tmp_path / "no-release").as_uri())
    with pytest.raises(SimError, match="neither cached nor downloadable.*--mjcf PATH.*NEON_G1_MJCF"):
        scene.default_mjcf()
    monkeypatch.setenv("MENAGERIE_ROOT", str(checkout.parents[1]))
    assert scene.default_mjcf() == checkout
    sim = G1Tabletop(sample_task(np.random.default_rng(101)))
    assert (sim.model.actuator_biastype == 0).all() and (sim.model.actuator_gainprm[:, 0] == 1).all()
    assert sim.model.actuator_ctrlrange[sim.model.actuator("left_elbow_joint").id].tolist() == [-25.0, 25.0]  # N m
    assert run(sim, Expert(sim).targets) and not sim.table_contact


# ---------------------------------------------------------------------- the moving block and two-rate control


def test_the_named_block_moves_once_on_its_side_far_enough_and_the_static_task_is_unchanged():
    from neon_sim.scene import BLOCK_AREA, MOVE_AT_S, MOVE_CLEAR_M, MOVE_MIN_M, episode_task

    (x0, x1), (y0, y1) = BLOCK_AREA
    far = 0
    for seed in range(10_000, 10_200):
        static, moving = episode_task(seed), episode_task(seed, moving_block=True)
        task = sample_task(np.random.default_rng(seed))  # what the seed's static task has always been
        assert static.move is None and moving.instruction == static.instruction == task.instruction
        assert np.array_equal(moving.positions, task.positions) and moving.target == task.target
        move, old = moving.move, task.positions[task.target]
        assert MOVE_AT_S[0] <= move.at_s <= MOVE_AT_S[1]
        assert x0 <= move.position[0] <= x1 and y0 <= abs(move.position[1]) <= y1
        assert np.sign(move.position[1]) == np.sign(old[1])  # the hand named stays right
        others = np.delete(task.positions, task.target, axis=0)
        assert np.linalg.norm(others - move.position, axis=1).min() >= MOVE_CLEAR_M - 1e-9
        away = np.linalg.norm(move.position - old)
        assert away >= 0.085 and (away >= MOVE_MIN_M - 1e-9 or seed in FALLBACK_SEEDS)
        far += away >= MOVE_MIN_M - 1e-9
        again = episode_task(seed, moving_block=True).move
        assert again.at_s == move.at_s and np.array_equal(again.position, move.position)  # deterministic per seed
    assert far == 200 - len(FALLBACK_SEEDS)
    # In the sim: the block is where it was until move_at_s, then at its new place, for distance and success too.
    task = episode_task(10_000, moving_block=True)
    sim = G1Tabletop(task)
    start, old_top = sim.state(), sim.block_top().copy()
    while sim.time < task.move.at_s - 0.03:
        sim.run(start, 0.02)
    assert sim.moved_at_s is None and np.allclose(sim.block_top(), old_top)
    while sim.time < task.move.at_s + 0.03:
        sim.run(start, 0.02)
    assert abs(sim.moved_at_s - task.move.at_s) <= sim.model.opt.timestep
    assert np.allclose(sim.block_top()[:2], task.move.position) and sim.block_top()[2] == old_top[2]
    assert sim.distance() == pytest.approx(np.linalg.norm(sim.palm(task.arm) - sim.block_top()))
    fixed = G1Tabletop(episode_task(10_000))
    fixed.run(start, task.move.at_s + 0.1)
    assert fixed.moved_at_s is None and np.allclose(fixed.block_top(), old_top)


FALLBACK_SEEDS = {10008, 10146}  # no spot 10 cm away and clear of the other blocks: the farthest clear one


def test_the_oracle_replans_from_the_block_as_seen_smoothly_from_where_it_is():
    from neon_sim.expert import REACH_S, Expert

    task = episode_task_for(10_001)
    sim = G1Tabletop(task)
    expert = Expert(sim)
    first = [expert.targets(t) for t in (0.5, 1.5, 2.5)]
    assert not expert.see(sim.block_top(), 1.0)  # the block where it was planned for: the plan stands
    assert all(np.array_equal(a, expert.targets(t)) for a, t in zip(first, (0.5, 1.5, 2.5), strict=True))
    new_top = np.array([*task.move.position, sim.block_top()[2]])
    t0 = 1.3  # mid-reach, the arm moving fast
    assert expert.see(new_top, t0) and expert.replans[0][0] == t0
    assert np.array_equal(expert.targets(0.5), first[0])  # before t0: the old plan
    h = 1e-3
    q = np.stack([expert.targets(t0 + k * h) for k in range(-3, 4)]).astype(np.float64)
    v, a = np.diff(q, axis=0) / h, np.diff(q, n=2, axis=0) / h**2
    assert np.abs(np.diff(v, axis=0)).max() < 0.05 and np.abs(np.diff(a, axis=0)).max() < 0.5  # no jump in q, v, a
    assert np.abs(v).max() > 0.1  # it was moving: a plan from rest there would have jumped in velocity
    end = expert.targets(t0 + REACH_S + 2.0)
    assert np.allclose(end, expert.replans[0][5])  # ends on the new block's touch pose
    old_top = sim.block_top().copy()
    sim.run(end, 2.5)  # past the move: the block is at its new place
    assert sim.distance() <= 0.03 and np.linalg.norm(sim.palm(task.arm) - old_top) > 0.08


def episode_task_for(seed: int):
    from neon_sim.scene import episode_task

    return episode_task(seed, moving_block=True)


def test_two_rate_oracle_follows_the_moving_block_and_chunk_rate_sees_it_later():
    """Two-rate: the oracle re-plans at the first heads tick after features showing the move are usable (a refresh
    every 0.2 s, usable 0.2 s later); chunk-rate only at its next full request (every 1.3 s with 16-step chunks here:
    this seed's block moves at 1.58 s, just after one). Success comes as much later as the re-plan does."""
    from neon_sim.evaluate import run_episode

    kw = {"executor": "executor", "blend_s": 0.2, "latency_ms": 200, "moving_block": True}
    two = run_episode(10_000, "oracle", control="two-rate", **kw)
    chunk = run_episode(10_000, "oracle", execute_steps=16, **kw)
    assert two["moved"] and two["success"] and not two["table_contact"] and not two["joint_limit_violation"]
    assert len(two["replans"]) == 1 and 0 < two["replans"][0] - two["move_at_s"] <= 0.2 + 0.2 + 0.02 + 1e-6
    assert chunk["moved"] and len(chunk["replans"]) == 1 and chunk["replans"][0] - chunk["move_at_s"] > 0.8
    late = chunk["replans"][0] - two["replans"][0]
    assert chunk["success"] and abs(chunk["time_to_success_s"] - two["time_to_success_s"] - late) <= 0.1
    static = run_episode(10_000, "oracle", control="two-rate", **{**kw, "moving_block": False})
    assert static["success"] and static["replans"] == [] and not static["moved"]


def test_two_rate_ticks_the_heads_at_heads_hz_and_refreshes_features_at_feature_hz():
    from neon_sim.evaluate import run_episode

    r = run_episode(101, "hold", executor="executor", control="two-rate", latency_ms=100, feature_hz=5, heads_hz=30)
    assert not r["success"] and r["feature_refreshes"] == 30  # 6 s of sim time, one every 0.2 s
    assert np.allclose(np.diff(r["refreshes_s"]), 0.2, atol=1e-3)
    heads = np.array(r["heads_ticks_s"])  # from the first features (usable at 0.1 s), on the 50 Hz control ticks
    assert heads[0] == pytest.approx(0.1, abs=1e-3) and r["requests"] == len(heads)
    assert abs(len(heads) - 30 * (6.0 - 0.1)) <= 2 and np.diff(heads).mean() == pytest.approx(1 / 30, rel=0.02)
    assert set(np.round(np.diff(heads), 3)) <= {0.02, 0.04}
    slow = run_episode(101, "hold", executor="executor", control="two-rate", latency_ms=300, feature_hz=5, heads_hz=10)
    assert slow["feature_refreshes"] == 20 and np.allclose(np.diff(slow["refreshes_s"]), 0.3, atol=1e-3)  # back to back
    assert abs(slow["requests"] - 10 * (6.0 - 0.3)) <= 2


def test_a_prefix_conditioned_model_is_sent_the_committed_steps_end_to_end(backbones):
    """Through the executor, a served model trained with committed steps gets the ones that run while its request is
    under way (200 ms at 10 fps: 2), as the replies' committed_steps say; prefix=False (--no-prefix) sends none."""
    from conftest import as_trained, attach, random_weights, tiny_config
    from serving import runner_for, serve

    from neon.model import NeonVLA
    from neon_runtime.server import ServerSettings, create_app
    from neon_sim.evaluate import evaluate

    model = as_trained(attach(random_weights(NeonVLA(tiny_config("neon-tiny/qwen2.5-vl", fps=10.0,
                                                                    prefix_max_steps=4)), 3), backbones))
    runner = runner_for(model, max_batch=1, max_wait_ms=0)
    with serve(create_app(runner, ServerSettings())) as addr:
        kw = {"episodes": 1, "seed": 101, "progress": False, "executor": "executor", "blend_s": 0.2, "latency_ms": 200}
        sent = evaluate(f"ws://{addr}/ws", **kw)
        unsent = evaluate(f"ws://{addr}/ws", prefix=False, **kw)
    runner.close()
    assert sent["prefix"]["model_takes"] == 4 and sent["prefix"]["sent"] and not unsent["prefix"]["sent"]
    # The first request has no latency measured yet (nothing committed); every later one carries 2 steps.
    assert sent["requests"] >= 5 and sent["prefix"]["mean_committed_steps"] == pytest.approx(
        2 * (sent["requests"] - 1) / sent["requests"])
    assert unsent["prefix"]["mean_committed_steps"] == 0.0


def test_two_rate_against_neon_serve_sends_light_requests_on_the_stored_features(backbones, tmp_path):
    import json

    from conftest import as_trained, attach, tiny_config
    from serving import runner_for, serve

    from neon.model import NeonVLA
    from neon_runtime.server import ServerSettings, create_app
    from neon_sim.evaluate import evaluate

    model = as_trained(attach(NeonVLA(tiny_config("neon-tiny/qwen2.5-vl", fps=10.0)), backbones))
    runner = runner_for(model, max_batch=1, max_wait_ms=0)
    with serve(create_app(runner, ServerSettings())) as addr:
        report = evaluate(f"ws://{addr}/ws", episodes=1, seed=101, progress=False, out=tmp_path, video_episodes=0,
                          executor="executor", blend_s=0.2, latency_ms=200, moving_block=True, control="two-rate",
                          feature_hz=5, heads_hz=10)
    runner.close()
    r = report["results"][0]
    assert report["light_requests"] == report["requests"] == len(r["heads_ticks_s"]) >= 50  # one per heads tick
    assert report["light_replies_on_reused_features"] == report["light_requests"]  # the server said: reused
    assert r["feature_refreshes"] - 1 <= report["full_requests"] <= r["feature_refreshes"]  # the last may not land
    assert report["full_requests"] >= 25 and report["heads_round_trip_ms"]["p50"] > 0
    assert r["moved"] and report["joint_limit_violations"] == 0
    saved = json.loads((tmp_path / "sim_report.json").read_text())
    assert saved["control"] == "two-rate" and saved["moving_block"] is True and saved["heads_hz"] == 10
    assert "two-rate control" in (tmp_path / "sim_report.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--executor", "blend", "--control", "two-rate", "--feature-hz", "0"], r"feature_hz \(--feature-hz\) must be a rate"),
    (["--executor", "blend", "--control", "two-rate", "--heads-hz", "-30"], r"heads_hz \(--heads-hz\) must be a rate"),
    (["--executor", "blend", "--control", "two-rate", "--heads-hz", "100"], r"in \(0, 50\] Hz"),
    (["--executor", "blend", "--control", "two-rate", "--heads-latency-ms", "nan"], "heads_latency_ms"),
    (["--control", "two-rate"], "two-rate control .* needs executor 'executor' .*--executor blend"),
    (["--heads-hz", "20"], "--heads-hz needs --control two-rate"),
    (["--ensemble-s", "0.3"], "--ensemble-s needs --executor blend"),
    (["--executor", "blend", "--blend-s", "0.2", "--ensemble-s", "0.3"], "without --blend-s"),
    (["--executor", "blend", "--ensemble-s", "0"], "finite value > 0"),
])
def test_bad_two_rate_settings_exit_2_naming_what_is_wrong(argv, message, capsys):
    import re

    from neon_sim.cli import main as sim_main

    assert sim_main(["eval", "--policy", "oracle", "--episodes", "1", *argv]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_two_rate_errors_outside_the_cli():
    from neon_sim.evaluate import evaluate, run_episode

    with pytest.raises(SimError, match="control must be one of chunk, two-rate, got 'fast'"):
        evaluate("oracle", episodes=1, control="fast", progress=False)
    with pytest.raises(SimError, match="needs executor 'executor'"):
        run_episode(101, "oracle", control="two-rate")
    with pytest.raises(SimError, match="heads_latency_ms .* >= 0, got -1"):
        evaluate("oracle", episodes=1, executor="executor", control="two-rate", heads_latency_ms=-1, progress=False)


def test_the_cli_runs_two_rate_control_on_the_moving_block_and_records_both(tmp_path, capsys):
    import json

    from neon_sim.cli import main as sim_main

    argv = ["eval", "--policy", "oracle", "--episodes", "1", "--seed", "10000", "--moving-block", "--executor", "blend",
            "--control", "two-rate", "--heads-hz", "20", "--video-episodes", "0"]
    assert sim_main([*argv, "--out", str(tmp_path / "one")]) == 0
    report = json.loads((tmp_path / "one" / "sim_report.json").read_text())
    assert report["moving_block"] is True and report["control"] == "two-rate" and report["success_rate"] == 1.0
    assert (report["feature_hz"], report["heads_hz"], report["heads_latency_ms"]) == (5.0, 20.0, 5.0)
    assert report["results"][0]["moved"] and report["feature_refreshes"] >= 20
    assert "moving-block task" in capsys.readouterr().out
    assert sim_main([*argv, "--latency-ms", "0,200", "--out", str(tmp_path / "two")]) == 0  # a latency list too
    combined = json.loads((tmp_path / "two" / "latency_report.json").read_text())
    assert combined["control"] == "two-rate" and combined["moving_block"] is True and len(combined["rows"]) == 2
    assert "two-rate control" in capsys.readouterr().out
    chunk = ["eval", "--policy", "oracle", "--episodes", "1", "--seed", "10000", "--video-episodes", "0"]
    assert sim_main([*chunk, "--out", str(tmp_path / "static")]) == 0  # the default: static task, chunk-rate
    report = json.loads((tmp_path / "static" / "sim_report.json").read_text())
    assert report["moving_block"] is False and report["control"] == "chunk" and report["heads_hz"] is None


def test_two_rate_with_temporal_ensembling_runs_and_is_recorded(tmp_path, capsys):
    import json

    from neon_sim.cli import main as sim_main

    argv = ["eval", "--policy", "oracle", "--episodes", "1", "--seed", "10000", "--executor", "blend", "--control",
            "two-rate", "--heads-hz", "20", "--ensemble-s", "0.3", "--video-episodes", "0", "--out", str(tmp_path)]
    assert sim_main(argv) == 0
    report = json.loads((tmp_path / "sim_report.json").read_text())
    assert report["ensemble_s"] == 0.3 and report["blend_s"] == 0.0 and report["success_rate"] == 1.0
    assert "temporal ensembling over 0.3 s" in capsys.readouterr().out
