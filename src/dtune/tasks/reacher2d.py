"""Reacher2d, LaMo's sparse-reward reaching task: a 2-link planar arm brings its fingertip to a goal.

Written from the task's description in the LaMo paper and its reference code's facts (see
`shared/reference/papers.md`, section 2), with MuJoCo's Python bindings directly:

* arm: two hinge joints about z in the xy plane, links 0.6 and 0.4 long, the fingertip a site
  0.45 along the second link (past its end); shoulder unlimited, elbow limited to [-2, 3.5] rad;
  joint damping 1, armature 0.05; no gravity, no contacts; motors with gear 1, controls in [-1, 1];
* physics: timestep 0.01 with RK4, 15 physics steps per environment step;
* reset(seed): `numpy.random.default_rng(seed)` draws both joint angles from U(-2, 2) (velocities
  0), then the goal's radius from U(0.5, 1.0) and its angle from U(-pi, pi);
* observation (12): sin of both joint angles, cos of both joint angles, 0.15 x both joint
  velocities, fingertip xy, goal xy, fingertip - goal xy;
* reward: 1 at every step after which the L1 distance fingertip-goal is below 0.1, else 0
  (`success` says the same); episodes are cut after 100 steps (a truncation, never a termination).

Scored as LaMo does: normalised return with random 0 and expert 100 (so 76 steps at the goal is
0.76). Returns are divided by 10 before they enter a model; target returns 76 and 40.

The suite has a scripted expert (analytic inverse kinematics + a PD law on the joint angles) for
`dtune data collect --source expert-noise`.
"""

from __future__ import annotations

import numpy as np

from dtune.tasks.base import Suite, TaskSpec

HORIZON = 100
FRAME_SKIP = 15
LINK1, LINK2, TIP = 0.6, 0.4, 0.45
ELBOW_RANGE = (-2.0, 3.5)
GOAL_RADIUS = (0.5, 1.0)
REACH_L1 = 0.1
VEL_SCALE = 0.15

XML = f"""
<mujoco model="reacher2d">
  <compiler angle="radian"/>
  <option timestep="0.01" integrator="RK4" gravity="0 0 0"/>
  <default>
    <joint type="hinge" axis="0 0 1" damping="1" armature="0.05"/>
    <geom type="capsule" size="0.02" contype="0" conaffinity="0" rgba="0.3 0.5 0.8 1"/>
    <motor gear="1" ctrllimited="true" ctrlrange="-1 1"/>
  </default>
  <worldbody>
    <geom name="base" type="cylinder" fromto="0 0 -0.01 0 0 0.01" size="0.05" rgba="0.4 0.4 0.4 1"/>
    <body name="link1" pos="0 0 0">
      <joint name="shoulder" limited="false"/>
      <geom name="link1" fromto="0 0 0 {LINK1} 0 0"/>
      <body name="link2" pos="{LINK1} 0 0">
        <joint name="elbow" limited="true" range="{ELBOW_RANGE[0]} {ELBOW_RANGE[1]}"/>
        <geom name="link2" fromto="0 0 0 {LINK2} 0 0"/>
        <site name="fingertip" pos="{TIP} 0 0" size="0.02" rgba="0.9 0.3 0.3 1"/>
      </body>
    </body>
    <site name="goal" pos="0.5 0 0" size="0.03" rgba="0.2 0.9 0.2 1"/>
  </worldbody>
  <actuator>
    <motor name="shoulder" joint="shoulder"/>
    <motor name="elbow" joint="elbow"/>
  </actuator>
</mujoco>
"""


class Reacher2dEnv:
    """The Reacher2d arm behind dtune's env interface; `reset(seed)` fixes the episode."""

    def __init__(self, horizon: int = HORIZON):
        import mujoco

        if horizon <= 0:
            raise ValueError(f"horizon must be positive, got {horizon}")
        self._mj = mujoco
        self.model = mujoco.MjModel.from_xml_string(XML)
        self.data = mujoco.MjData(self.model)
        self.tip = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, "fingertip")
        self.goal_site = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, "goal")
        self.horizon = int(horizon)
        self.goal = np.zeros(2)
        self.t = 0

    @property
    def fingertip(self) -> np.ndarray:
        return self.data.site_xpos[self.tip, :2].copy()

    def _obs(self) -> np.ndarray:
        q, qd = self.data.qpos[:2], self.data.qvel[:2]
        tip = self.fingertip
        return np.concatenate([np.sin(q), np.cos(q), VEL_SCALE * qd, tip, self.goal, tip - self.goal])

    def reset(self, seed: int) -> np.ndarray:
        rng = np.random.default_rng(int(seed))
        self._mj.mj_resetData(self.model, self.data)
        self.data.qpos[:2] = rng.uniform(-2.0, 2.0, 2)
        self.data.qvel[:2] = 0.0
        radius, angle = rng.uniform(*GOAL_RADIUS), rng.uniform(-np.pi, np.pi)
        self.goal = radius * np.array([np.cos(angle), np.sin(angle)])
        self.model.site_pos[self.goal_site, :2] = self.goal  # for rendering only
        self._mj.mj_forward(self.model, self.data)
        self.t = 0
        return self._obs()

    def step(self, action: np.ndarray):
        self.data.ctrl[:] = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        self._mj.mj_step(self.model, self.data, nstep=FRAME_SKIP)
        self._mj.mj_kinematics(self.model, self.data)  # the site where the joints are now, not one substep ago
        self.t += 1
        obs = self._obs()
        reached = bool(np.abs(obs[10:12]).sum() < REACH_L1)
        return obs, float(reached), False, self.t >= self.horizon, reached


def joint_angles(obs: np.ndarray) -> tuple[float, float]:
    """Shoulder and elbow angles from an observation (the elbow unwrapped into its range)."""
    q1 = float(np.arctan2(obs[0], obs[2]))
    q2 = float(np.arctan2(obs[1], obs[3]))
    if q2 < ELBOW_RANGE[0]:  # beyond pi: the elbow's range reaches 3.5
        q2 += 2 * np.pi
    return q1, q2


def inverse_kinematics(goal: np.ndarray) -> tuple[float, float]:
    """Joint angles that put the fingertip on `goal` (the elbow-positive solution, inside the
    elbow's range for every goal radius in [0.15, 1.05])."""
    d2 = float(np.dot(goal, goal))
    c2 = np.clip((d2 - LINK1**2 - TIP**2) / (2 * LINK1 * TIP), -1.0, 1.0)
    q2 = float(np.arccos(c2))
    q1 = float(np.arctan2(goal[1], goal[0]) - np.arctan2(TIP * np.sin(q2), LINK1 + TIP * np.cos(q2)))
    return q1, q2


def scripted_expert(obs: np.ndarray, kp: float = 10.0, kd: float = 1.0) -> np.ndarray:
    """A PD law towards the inverse-kinematics angles of the goal: `obs -> action` in [-1, 1]."""
    obs = np.asarray(obs, dtype=np.float64)
    q1, q2 = joint_angles(obs)
    t1, t2 = inverse_kinematics(obs[8:10])
    e1 = (t1 - q1 + np.pi) % (2 * np.pi) - np.pi  # the shoulder is unlimited: the short way round
    e2 = t2 - q2  # the elbow is limited: never through its limits
    qd = obs[4:6] / VEL_SCALE
    return np.clip(kp * np.array([e1, e2]) - kd * qd, -1.0, 1.0)


class Reacher2dSuite(Suite):
    """LaMo's Reacher2d (sparse reward, normalised return with references 0 and 100)."""

    name = "reacher2d"
    slots = (("reacher2d/state", 12),)
    sources = ("expert-noise", "random", "sac-replay", "medium", "medium-replay")

    def tasks(self) -> list[TaskSpec]:
        return [TaskSpec(name="reacher2d", suite=self.name, obs_dim=12, act_dim=2, horizon=HORIZON,
                         reward_scale=10.0, target_return=76.0, score="normalized", slots=("reacher2d/state",),
                         ref_min_score=0.0, ref_max_score=100.0, scale_target_with_horizon=True,
                         target_returns=(76.0, 40.0))]

    def make_env(self, task: TaskSpec, seed: int):
        return Reacher2dEnv(task.horizon)

    def expert(self, task: TaskSpec):
        return scripted_expert

    def quality_returns(self, task: TaskSpec) -> dict[str, float]:
        # LaMo's data: a "medium" PPO agent's stochastic rollouts, about 36 normalised (= return 36)
        return {"medium": 36.0}
