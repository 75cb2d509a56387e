"""The scripted expert: damped least-squares IK on MuJoCo's site Jacobian, then a minimum-jerk reach.

The expert solves, on a copy of the model's kinematics, the named arm's seven joints that put the palm
3 cm above a point 8 cm over the block (the approach) and then on the block's top centre, and moves
there along minimum-jerk profiles: a chunk of joint targets at any rate the caller asks for.
"""

from __future__ import annotations

import numpy as np

from neon_sim.scene import ARM_JOINTS, G1Tabletop

DAMPING = 0.05
ROLL_CLEAR = 0.15  # rad: the shoulder roll the expert keeps away from the torso
APPROACH_M = 0.08  # first over the block, then down onto it
REACH_S, DESCEND_S = 2.0, 1.2


def solve_ik(sim: G1Tabletop, side: str, target: np.ndarray, q0: np.ndarray, iters: int = 300) -> np.ndarray:
    """Float[(D,)] action-space joint targets that put `side`'s palm at `target` (only that arm moves)."""
    mj, m = sim.mj, sim.model
    d = mj.MjData(m)
    d.qpos[:] = sim.data.qpos
    arm = [m.joint(f"{side}_{n}_joint").id for n in ARM_JOINTS]
    qadr, dadr = m.jnt_qposadr[arm], m.jnt_dofadr[arm]
    lo, hi = m.jnt_range[arm, 0].copy(), m.jnt_range[arm, 1].copy()
    if side == "left":  # keep the upper arm clear of the torso (shoulder roll outwards)
        lo[1] = max(lo[1], ROLL_CLEAR)
    else:
        hi[1] = min(hi[1], -ROLL_CLEAR)
    names = [f"{side}_{n}" for n in ARM_JOINTS]
    idx = [sim.space.index(n) for n in names]
    d.qpos[qadr] = q0[idx]
    jac, site = np.zeros((3, m.nv)), m.site(f"{side}_palm").id
    for _ in range(iters):
        mj.mj_kinematics(m, d)
        mj.mj_comPos(m, d)
        err = target - d.site_xpos[site]
        if np.linalg.norm(err) < 5e-4:
            break
        mj.mj_jacSite(m, d, jac, None, site)
        J = jac[:, dadr]
        dq = J.T @ np.linalg.solve(J @ J.T + DAMPING**2 * np.eye(3), err)
        d.qpos[qadr] = np.clip(d.qpos[qadr] + dq, lo + 0.02, hi - 0.02)  # stay clear of the limits
    out = q0.copy()
    out[idx] = d.qpos[qadr]
    return out


def min_jerk(a: np.ndarray, b: np.ndarray, s: float) -> np.ndarray:
    s = float(np.clip(s, 0.0, 1.0))
    return a + (b - a) * (10 * s**3 - 15 * s**4 + 6 * s**5)


class Expert:
    """Joint targets over time for the sim's task: plan once, then `targets(t)` for any time t (seconds)."""

    def __init__(self, sim: G1Tabletop):
        side, top = sim.task.arm, sim.block_top()
        self.start = sim.state()
        self.above = solve_ik(sim, side, top + np.array([0.0, 0.0, APPROACH_M]), self.start)
        self.touch = solve_ik(sim, side, top, self.above)

    def targets(self, t: float) -> np.ndarray:
        if t <= REACH_S:
            return min_jerk(self.start, self.above, t / REACH_S)
        return min_jerk(self.above, self.touch, (t - REACH_S) / DESCEND_S)
