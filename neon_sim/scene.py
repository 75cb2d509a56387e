"""The G1 tabletop scene in MuJoCo: Unitree's G1 with its pelvis fixed, a table, three coloured blocks.

    sim = G1Tabletop(task=sample_task(np.random.default_rng(0)))
    sim.run(targets, seconds=0.1)        # joint targets (action-space order, rad), PD-tracked at the model's timestep
    sim.success()                        # the task's geometric check
    sim.render("head")                   # UInt8[(224, 224, 3)] from the head camera

Robot: Unitree's G1 MJCF (BSD-3), from `--mjcf` / `$NEON_G1_MJCF`, else `../shared/robots/unitree_g1/`
(offline: tests, CI), else MuJoCo Menagerie's `unitree_g1` (derived from the same Unitree model, through
the `mujoco-menagerie` package); joints matched to Neon's action space by name. Position control is a PD
loop with gravity compensation run at every physics step (2 ms), torques clipped to each joint's motor
range (Menagerie's position servos are turned into such torque motors). Head camera: on the torso link,
0.43 m above it and 6 cm forward (about where the G1's head RealSense D435 sits), pitched 45 degrees
down, 60 degree vertical field of view, IMAGE_SIZE (224) pixels square. The arms start in START_POSE
("ready": forearms raised, hands over the table's near corners), from which the head camera sees every block
whole (`visibility`, bench/bench_visibility.py). A third-person camera looks at the table from the front-left.
Rendering runs offscreen (`MUJOCO_GL=egl`) with shadows, reflections and skybox off (per-frame cost at 64 and
224 px: bench/bench_visibility.py).

Task ("touch"): the instruction names a block by colour (and sometimes the hand). Success: the named
hand's palm (10 cm beyond the wrist) within SUCCESS_RADIUS_M of the top centre of the named block within
EPISODE_S of sim time, with no joint outside its limits and no robot contact with the table (a palm below
the table top, over the table, counts: the model's hands have no collision geometry).

Moving-block variant (`moving_task`, `neon-sim eval --moving-block`): the same task, and at sim time `Move.at_s`
(uniform in MOVE_AT_S) the named block jumps to a spot on the same side of BLOCK_AREA (so the hand named stays
right), at least MOVE_MIN_M from where it was and MOVE_CLEAR_M from the other blocks, drawn uniformly from a 5 mm
grid. About 1% of tasks (a block near the middle of its side, the other block close by) have no such spot: the
block then goes to the clear spot farthest from where it was (8.8-10 cm over seeds 0-1999). The move is drawn from
its own random stream (seed, MOVE_STREAM), so a seed's static task is the same with or without it. The moving
block is a mocap body; success and distance use its new position from the move on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neon.action_space import G1ActionSpace

COLORS = {"red": (0.85, 0.15, 0.15, 1.0), "green": (0.15, 0.7, 0.25, 1.0), "blue": (0.15, 0.3, 0.85, 1.0)}
TABLE_POS, TABLE_HALF = (0.36, 0.0, 0.76), (0.20, 0.35, 0.02)  # m; the top is at z = 0.78
BLOCK_HALF = 0.02  # m
BLOCK_AREA = ((0.22, 0.34), (0.06, 0.20))  # x and |y| ranges of block centres (m, pelvis frame), each side of the middle
SUCCESS_RADIUS_M = 0.03
EPISODE_S = 6.0
MOVE_AT_S = (1.0, 2.0)  # s: when the named block moves (the oracle's static median time to success is about 3 s)
MOVE_MIN_M = 0.10  # how far it moves at least
MOVE_CLEAR_M = 0.06  # centre to centre from the other blocks: 2 cm between the 4 cm blocks (10 cm leaves no spot in 16%)
MOVE_STREAM = 1  # the move's random stream is default_rng((seed, MOVE_STREAM)); the task's is default_rng(seed)
KP, KD = 120.0, 6.0  # N m / rad, N m s / rad: every joint's PD loop
ARM_JOINTS = ("shoulder_pitch", "shoulder_roll", "shoulder_yaw", "elbow", "wrist_roll", "wrist_pitch", "wrist_yaw")
# The start pose ("ready"): forearms raised, hands 20 cm over the table's near corners, at the head camera's edges.
# At the model's zero pose the palms hover 11 cm over the block area and hide 37% of named blocks by more than
# half from the head camera (500 seeds); from this pose none (bench/bench_visibility.py). Left arm's values; the right arm
# mirrors them (roll and yaw axes change sign).
START_POSE = {"shoulder_pitch": 0.2, "shoulder_roll": 0.25, "elbow": -0.5}
MIRRORED = ("shoulder_roll", "shoulder_yaw", "wrist_roll", "wrist_yaw")
IMAGE_SIZE = 224  # px, square head-camera frames in collection, evaluation and the DDS sim


class SimError(RuntimeError):
    """The simulation cannot start or run; the message says why."""


SHARED_MJCF = Path(__file__).resolve().parents[2] / "shared" / "robots" / "unitree_g1" / "scene_29dof.xml"
MENAGERIE_ROBOT, MENAGERIE_SCENE = "unitree_g1", "scene"  # Menagerie's name and entry point for the G1 on a floor
MJCF_WAYS = ("pass --mjcf PATH or set NEON_G1_MJCF (Unitree's scene_29dof.xml or Menagerie's unitree_g1/scene.xml), "
             f"put Unitree's model in {SHARED_MJCF.parent}/, or `pip install mujoco-menagerie` on a machine with "
             "internet (it downloads unitree_g1 once, then works offline)")


def default_mjcf(mjcf: str | Path | None = None) -> Path:
    """The G1 scene from the first source that has one: `mjcf` (--mjcf), `$NEON_G1_MJCF`, Unitree's copy
    in ../shared/robots/unitree_g1/ beside the checkout, MuJoCo Menagerie's unitree_g1 through the
    `mujoco-menagerie` package (downloaded and cached on first use, so not offline)."""
    for given, name in ((mjcf, "--mjcf"), (os.environ.get("NEON_G1_MJCF"), "NEON_G1_MJCF")):
        if given:
            if not Path(given).is_file():
                raise SimError(f"G1 MJCF {given} ({name}) not found: {MJCF_WAYS}")
            return Path(given)
    if SHARED_MJCF.is_file():
        return SHARED_MJCF
    try:
        import mujoco_menagerie
    except ImportError:
        raise SimError(f"no G1 model: {SHARED_MJCF} is absent and mujoco-menagerie is not installed: {MJCF_WAYS}") from None
    try:
        return Path(mujoco_menagerie.get(MENAGERIE_ROBOT).xml(MENAGERIE_SCENE))
    except mujoco_menagerie.MenagerieError as e:
        raise SimError(f"no G1 model: {SHARED_MJCF} is absent and Menagerie's {MENAGERIE_ROBOT} is neither cached "
                       f"nor downloadable ({e}): {MJCF_WAYS}") from None


def _as_torque_motors(spec) -> None:
    """Make every actuator a torque motor limited to its joint's torque range, as in Unitree's MJCF: the PD
    loop in `G1Tabletop.run` writes torques. Menagerie's G1 has position servos on the same joints."""
    import mujoco

    for act in spec.actuators:
        if (act.gaintype == mujoco.mjtGain.mjGAIN_FIXED and act.gainprm[0] == 1
                and act.biastype == mujoco.mjtBias.mjBIAS_NONE and act.dyntype == mujoco.mjtDyn.mjDYN_NONE):
            continue
        joint = spec.joint(act.target)
        if joint is None or not joint.actfrcrange[1] > joint.actfrcrange[0]:
            raise SimError(f"actuator {act.name!r} is not a torque motor and joint {act.target!r} states no torque "
                           "range (actuatorfrcrange) to make it one")
        act.gaintype, act.biastype = mujoco.mjtGain.mjGAIN_FIXED, mujoco.mjtBias.mjBIAS_NONE
        act.dyntype = mujoco.mjtDyn.mjDYN_NONE
        act.gainprm = [1.0] + [0.0] * (len(act.gainprm) - 1)
        act.biasprm = [0.0] * len(act.biasprm)
        act.inheritrange = 0.0
        act.ctrlrange, act.ctrllimited = joint.actfrcrange, mujoco.mjtLimited.mjLIMITED_TRUE


def start_pose() -> dict[str, float]:
    """START_POSE for both arms: MuJoCo joint name (without `_joint`) -> rad."""
    return {f"{side}_{name}": (-q if side == "right" and name in MIRRORED else q)
            for side in ("left", "right") for name, q in START_POSE.items()}


@dataclass(frozen=True)
class Move:
    """The named block jumps to `position` (Float[(2,)] x, y, m) when sim time reaches `at_s`."""

    at_s: float
    position: np.ndarray


@dataclass
class Task:
    """Three blocks on the table and which one to touch, with which hand (and, perhaps, when it moves)."""

    colors: tuple[str, ...]  # block i's colour
    positions: np.ndarray  # Float[(3, 2)] block centres x, y (m) at the start
    target: int  # index of the named block
    arm: str  # "left" | "right": the hand that must touch it
    instruction: str
    move: Move | None = None


def sample_task(rng: np.random.Generator) -> Task:
    """Blocks at least 10 cm apart in BLOCK_AREA; the hand named in half of the instructions, else the block's side."""
    (x0, x1), (y0, y1) = BLOCK_AREA
    while True:
        pos = np.c_[rng.uniform(x0, x1, 3), rng.choice([-1.0, 1.0], 3) * rng.uniform(y0, y1, 3)]
        if min(np.linalg.norm(pos[i] - pos[j]) for i in range(3) for j in range(i)) >= 0.10:
            break
    colors = tuple(rng.permutation(list(COLORS)))
    target = int(rng.integers(3))
    arm = "left" if pos[target, 1] >= 0 else "right"
    if rng.random() < 0.5:
        instruction = f"touch the {colors[target]} block"
    else:
        instruction = f"reach for the {colors[target]} block with your {arm} hand"
    return Task(colors, pos, target, arm, instruction)


def sample_move(task: Task, rng: np.random.Generator) -> Move:
    """When and where the named block moves (module docstring): same side, MOVE_MIN_M away, clear of the others."""
    (x0, x1), (y0, y1) = BLOCK_AREA
    old = task.positions[task.target]
    xs, ys = np.meshgrid(np.linspace(x0, x1, round((x1 - x0) / 0.005) + 1), np.linspace(y0, y1, round((y1 - y0) / 0.005) + 1))
    spots = np.c_[xs.ravel(), np.sign(old[1]) * ys.ravel()]
    others = np.delete(task.positions, task.target, axis=0)
    clear = (np.linalg.norm(spots[:, None] - others[None], axis=2) >= MOVE_CLEAR_M).all(axis=1)
    away = np.linalg.norm(spots - old, axis=1)
    at_s = float(rng.uniform(*MOVE_AT_S))
    good = np.flatnonzero(clear & (away >= MOVE_MIN_M))
    if len(good):
        return Move(at_s, spots[rng.choice(good)].copy())
    return Move(at_s, spots[np.flatnonzero(clear)[np.argmax(away[clear])]].copy())


def episode_task(seed: int, moving_block: bool = False) -> Task:
    """Seed `seed`'s task (sample_task(default_rng(seed))), with its move when `moving_block`."""
    task = sample_task(np.random.default_rng(seed))
    if moving_block:
        task.move = sample_move(task, np.random.default_rng((seed, MOVE_STREAM)))
    return task


class G1Tabletop:
    def __init__(self, task: Task, mjcf: str | Path | None = None, image_size: int = IMAGE_SIZE):
        import mujoco

        self.mj, self.task = mujoco, task
        spec = mujoco.MjSpec.from_file(str(default_mjcf(mjcf)))
        _as_torque_motors(spec)
        try:
            pelvis = spec.body("pelvis")
        except Exception:
            pelvis = None
        if pelvis is None:
            raise SimError("the MJCF has no 'pelvis' body: is it Unitree's G1?")
        for joint in list(pelvis.joints):  # the pelvis is fixed: an arms task
            spec.delete(joint)
        world = spec.worldbody
        table = world.add_body(name="table", pos=list(TABLE_POS))
        table.add_geom(name="table", type=mujoco.mjtGeom.mjGEOM_BOX, size=list(TABLE_HALF), rgba=[0.45, 0.33, 0.22, 1])
        top = TABLE_POS[2] + TABLE_HALF[2]
        for i, (color, (x, y)) in enumerate(zip(task.colors, task.positions, strict=True)):
            moves = task.move is not None and i == task.target  # a mocap body: its pose is set while it runs
            block = world.add_body(name=f"block{i}", pos=[x, y, top + BLOCK_HALF], mocap=moves)
            block.add_geom(name=f"block{i}", type=mujoco.mjtGeom.mjGEOM_BOX, size=[BLOCK_HALF] * 3, rgba=list(COLORS[color]))
        for side in ("left", "right"):
            spec.body(f"{side}_wrist_yaw_link").add_site(name=f"{side}_palm", pos=[0.10, 0, 0], size=[0.01] * 3)
        spec.body("torso_link").add_camera(name="head", pos=[0.06, 0, 0.43], xyaxes=[0, -1, 0, 0.7071, 0, 0.7071],
                                           fovy=60)
        world.add_camera(name="third_person", pos=[1.3, 0.9, 1.4], xyaxes=[-0.57, 0.82, 0, -0.35, -0.24, 0.9], fovy=45)
        self.model = spec.compile()
        self.data = mujoco.MjData(self.model)
        m = self.model
        self.space = G1ActionSpace("arms_only", "dex3")
        # Neon's action dimensions -> MuJoCo joints, by name (the model has no hands: those dims stay 0).
        names = [m.joint(i).name for i in range(m.njnt)]
        mapping = self.space.map_names(names)
        self.dims, self.joints = mapping.target_index, mapping.source_index
        self.qadr, self.dadr = m.jnt_qposadr[self.joints], m.jnt_dofadr[self.joints]
        self.actuated = np.array([m.actuator_trnid[a, 0] for a in range(m.nu)])
        self.act_q, self.act_d = m.jnt_qposadr[self.actuated], m.jnt_dofadr[self.actuated]
        for name, q in start_pose().items():
            self.data.qpos[m.jnt_qposadr[m.joint(f"{name}_joint").id]] = q
        self.hold = self.data.qpos[self.act_q].copy()  # everything not commanded holds its start
        self.q_lo, self.q_hi = m.jnt_range[self.actuated, 0], m.jnt_range[self.actuated, 1]
        self.table_geom = m.geom("table").id
        scenery = {m.body("world").id, m.body("table").id} | {m.body(f"block{i}").id for i in range(3)}
        self.robot_geoms = np.array([g for g in range(m.ngeom) if m.geom_bodyid[g] not in scenery])
        self.palm_sites = [m.site(f"{side}_palm").id for side in ("left", "right")]
        self.limit_violation = 0.0
        self.table_contact = False
        self.image_size = image_size
        self._renderer = self._segmenter = None
        self.moved_at_s: float | None = None  # when the named block moved (None: not yet, or a static task)
        mujoco.mj_forward(m, self.data)

    # ------------------------------------------------------------------ state and targets
    def state(self) -> np.ndarray:
        """Float32[(D,)] joint positions in action-space order (hand dims 0: the model has no hands)."""
        out = np.zeros(self.space.dim, np.float32)
        out[self.dims] = self.data.qpos[self.qadr]
        return out

    def run(self, targets: np.ndarray, seconds: float) -> None:
        """Track Float[(D,)] joint targets for `seconds` of sim time: PD + gravity compensation each physics step."""
        m, d = self.model, self.data
        goal = self.hold.copy()
        for k, j in enumerate(self.actuated):
            hit = np.flatnonzero(self.joints == j)
            if len(hit):
                goal[k] = float(np.clip(targets[self.dims[hit[0]]], *m.jnt_range[j]))
        lo, hi = m.actuator_ctrlrange[:, 0], m.actuator_ctrlrange[:, 1]
        move = self.task.move if self.moved_at_s is None else None
        for k in range(max(1, round(seconds / m.opt.timestep))):
            d.ctrl[:] = np.clip(KP * (goal - d.qpos[self.act_q]) - KD * d.qvel[self.act_d] + d.qfrc_bias[self.act_d], lo, hi)
            self.mj.mj_step(m, d)
            if move is not None and d.time >= move.at_s - m.opt.timestep / 2:
                self._move_block(move)
                move = None
            if k % 5 == 4:  # every 10 ms
                self._check()
        self._check()

    def _move_block(self, move) -> None:
        m, d = self.model, self.data
        d.mocap_pos[m.body_mocapid[m.body(f"block{self.task.target}").id], :2] = move.position
        self.mj.mj_forward(m, d)
        self.moved_at_s = float(d.time)

    def _check(self) -> None:
        d = self.data
        q = d.qpos[self.act_q]
        self.limit_violation = max(self.limit_violation, float(np.max(np.maximum(self.q_lo - q, q - self.q_hi))))
        pairs = np.stack([d.contact.geom1[: d.ncon], d.contact.geom2[: d.ncon]], axis=1)
        if len(pairs) and np.any((pairs == self.table_geom).any(1) & np.isin(pairs, self.robot_geoms).any(1)):
            self.table_contact = True
        # The G1 model's hands have no collision geometry: a palm below the table top, over it, is penetration too.
        x, y, z = d.site_xpos[self.palm_sites].T
        over = (np.abs(x - TABLE_POS[0]) <= TABLE_HALF[0]) & (np.abs(y - TABLE_POS[1]) <= TABLE_HALF[1])
        if np.any(over & (z < TABLE_POS[2] + TABLE_HALF[2])):
            self.table_contact = True

    # ------------------------------------------------------------------ task
    def palm(self, side: str) -> np.ndarray:
        return self.data.site(f"{side}_palm").xpos.copy()

    def block_top(self, i: int | None = None) -> np.ndarray:
        i = self.task.target if i is None else i
        return self.data.body(f"block{i}").xpos + np.array([0.0, 0.0, BLOCK_HALF])

    def distance(self) -> float:
        """Metres from the named hand's palm to the named block's top centre."""
        return float(np.linalg.norm(self.palm(self.task.arm) - self.block_top()))

    def success(self) -> bool:
        return self.distance() <= SUCCESS_RADIUS_M and self.limit_violation <= 1e-3 and not self.table_contact

    @property
    def time(self) -> float:
        return float(self.data.time)

    # ------------------------------------------------------------------ cameras
    def render(self, camera: str = "head", data=None) -> np.ndarray:
        """UInt8[(S, S, 3)] offscreen frame (shadows, reflections and skybox off) of the sim's state, or of `data`
        (another MjData of this model: a render thread's copy, so rendering never touches the stepping data)."""
        mj = self.mj
        if self._renderer is None:
            self._renderer = mj.Renderer(self.model, self.image_size, self.image_size)
        self._renderer.update_scene(self.data if data is None else data, camera=camera)
        for flag in (mj.mjtRndFlag.mjRND_SHADOW, mj.mjtRndFlag.mjRND_REFLECTION, mj.mjtRndFlag.mjRND_SKYBOX):
            self._renderer.scene.flags[flag] = 0
        return self._renderer.render().copy()

    def visibility(self, camera: str = "head") -> np.ndarray:
        """Float[(3,)] each block's visible fraction from `camera`: its pixels in a segmentation render of the
        scene over its pixels in one with the robot hidden (every geom of the robot's body tree moved to a geom group
        the renderer does not draw, for that render only: the G1's visual meshes are in group 0 with the table and
        blocks). Pixels outside the image count in neither. 0 for a block out of view."""
        mj, m = self.mj, self.model
        if self._segmenter is None:
            self._segmenter = mj.Renderer(m, self.image_size, self.image_size)
            self._segmenter.enable_segmentation_rendering()
        robot = np.flatnonzero(m.body_rootid[m.geom_bodyid] == m.body("pelvis").id)
        groups = m.geom_group[robot].copy()
        option = mj.MjvOption()
        option.geomgroup[:] = 0
        option.geomgroup[:3] = 1  # what the camera renders (MuJoCo's default groups 0-2)
        counts = []
        try:
            for hide_robot in (False, True):
                if hide_robot:
                    m.geom_group[robot] = 5
                self._segmenter.update_scene(self.data, camera=camera, scene_option=option)
                ids = self._segmenter.render()
                ids = ids[..., 0][ids[..., 1] == mj.mjtObj.mjOBJ_GEOM]
                counts.append(np.array([(ids == m.geom(f"block{i}").id).sum() for i in range(3)], float))
        finally:
            m.geom_group[robot] = groups
        seen, alone = counts
        return np.where(alone > 0, seen / np.maximum(alone, 1), 0.0)

    def close(self) -> None:
        for r in (self._renderer, self._segmenter):
            if r is not None:
                r.close()
        self._renderer = self._segmenter = None
