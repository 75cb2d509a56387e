"""The scripted expert: damped least-squares IK on MuJoCo's site Jacobian, then a minimum-jerk reach.

The expert solves, on a copy of the model's kinematics, the named arm's seven joints that put the palm
3 cm above a point 8 cm over the block (the approach) and then on the block's top centre, and moves
there along minimum-jerk profiles: a chunk of joint targets at any rate the caller asks for.

It plans from the block as seen: `Expert(sim, top=...)` (default: where the block is now), then `see(top, t)`
with the block as an observation at time t showed it. A block seen more than REPLAN_M from the one planned for is a
new plan from t: from its plan's position, velocity and acceleration at t (what the arm is tracking, so the
targets stay smooth) to above the new block over REACH_S on a quintic (the minimum-jerk profile with those start
conditions), then down onto it over DESCEND_S. A block seen where it was planned for changes nothing.
"""

from __future__ import annotations

import numpy as np

from neon_sim.scene import ARM_JOINTS, G1Tabletop

DAMPING = 0.05
ROLL_CLEAR = 0.15  # rad: the shoulder roll the expert keeps away from the torso
APPROACH_M = 0.08  # first over the block, then down onto it
REACH_S, DESCEND_S = 2.0, 1.2
REPLAN_M = 0.005  # a block seen this far from the one planned for is a new plan


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


def quintic(q0: np.ndarray, v0: np.ndarray, a0: np.ndarray, q1: np.ndarray, duration_s: float,
            tau: float) -> np.ndarray:
    """The quintic from q0 (velocity v0, acceleration a0) to q1 at rest over `duration_s`, at `tau` s in (clamped):
    the minimum-jerk path with those end conditions (min_jerk when v0 = a0 = 0)."""
    T, tau = duration_s, float(np.clip(tau, 0.0, duration_s))
    h = q1 - q0
    c3 = (20 * h - 12 * v0 * T - 3 * a0 * T**2) / (2 * T**3)
    c4 = (-30 * h + 16 * v0 * T + 3 * a0 * T**2) / (2 * T**4)
    c5 = (12 * h - 6 * v0 * T - a0 * T**2) / (2 * T**5)
    return q0 + v0 * tau + a0 / 2 * tau**2 + c3 * tau**3 + c4 * tau**4 + c5 * tau**5


class Expert:
    """Joint targets over time for the sim's task: `targets(t)` for any time t (seconds); `see` re-plans."""

    def __init__(self, sim: G1Tabletop, top: np.ndarray | None = None):
        self.sim, self.side = sim, sim.task.arm
        self.start = sim.state()
        self.top = sim.block_top() if top is None else np.asarray(top, np.float64).copy()  # the block planned for
        self.above, self.touch = self._solve(self.top, self.start)
        self.replans: list[tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        # each re-plan: (t0, q0, v0, a0 at t0, above, touch), oldest first

    def _solve(self, top: np.ndarray, guess: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        above = solve_ik(self.sim, self.side, top + np.array([0.0, 0.0, APPROACH_M]), guess)
        return above, solve_ik(self.sim, self.side, top, above)

    def see(self, top: np.ndarray, t: float) -> bool:
        """The block's top centre as an observation at sim time `t` showed it: a new plan from t when it is more
        than REPLAN_M from the one planned for (-> True)."""
        top = np.asarray(top, np.float64)
        if np.linalg.norm(top - self.top) <= REPLAN_M:
            return False
        h = 1e-3  # s: the plan's velocity and acceleration at t, by central differences (exact to ~1e-6 here)
        q_minus, q0, q_plus = (self.targets(t + dt).astype(np.float64) for dt in (-h, 0.0, h))
        v0, a0 = (q_plus - q_minus) / (2 * h), (q_plus - 2 * q0 + q_minus) / h**2
        above, touch = self._solve(top, (self.replans[-1][4] if self.replans else self.above))
        self.replans.append((float(t), q0, v0, a0, above, touch))
        self.top = top.copy()
        return True

    def targets(self, t: float) -> np.ndarray:
        plan = next((p for p in reversed(self.replans) if p[0] <= t), None)
        if plan is None:  # the first plan, from rest at the start pose at t = 0
            if t <= REACH_S:
                return min_jerk(self.start, self.above, t / REACH_S)
            return min_jerk(self.above, self.touch, (t - REACH_S) / DESCEND_S)
        t0, q0, v0, a0, above, touch = plan
        if t - t0 <= REACH_S:
            return quintic(q0, v0, a0, above, REACH_S, t - t0).astype(np.float32)
        return min_jerk(above, touch, (t - t0 - REACH_S) / DESCEND_S)
