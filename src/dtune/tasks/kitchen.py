"""Franka Kitchen, the D4RL manipulation benchmark of LaMo's sparse-reward experiments, with
Gymnasium-Robotics' `FrankaKitchen-v1` as the environment (`pip install 'dtune[kitchen]'`, i.e.
gymnasium-robotics; imported only when a kitchen environment is made).

Two tasks: `kitchen-complete`, the 4 subtasks of D4RL's kitchen-complete and kitchen-partial
(microwave, kettle, light switch, slide cabinet), on which LaMo evaluates models trained on either
the `complete` or the `partial` data; and `kitchen-mixed`, D4RL's kitchen-mixed subtasks (microwave,
kettle, bottom burner, light switch), the task of the `mixed` data. An imported dataset whose goals
name other subtasks than its task's is refused (:meth:`KitchenSuite.check_import`): its rewards
count other subtasks than the evaluation does. Observations are the 59-dim `observation` entry of the env's dict observation
(robot joint positions and velocities, object positions and velocities); 9 actions in [-1, 1];
280 steps. The reward is Gymnasium-Robotics': the number of subtasks completed at that step (each
counts once), so an episode's return is the number of subtasks it completed, 0 to 4; the episode
terminates once all 4 are done (`success`). Scored like LaMo: normalised return with references
0 and 4; returns enter a model unscaled; target returns 5, 4, 3, 2, 1 (4 the standard one).

Kitchen data is not collected here: D4RL's `complete`/`partial`/`mixed` datasets (Minari's
`D4RL/kitchen/*`), once on disk, are imported with :func:`dtune.data.importer.import_minari`.
"""

from __future__ import annotations

import numpy as np

from dtune.tasks.base import Suite, TaskSpec

HORIZON = 280
OBS_DIM = 59
ACT_DIM = 9
ENV_ID = "FrankaKitchen-v1"
TASKS: dict[str, tuple[str, ...]] = {
    "kitchen-complete": ("microwave", "kettle", "light switch", "slide cabinet"),
    "kitchen-mixed": ("microwave", "kettle", "bottom burner", "light switch"),
}
"""Task -> the subtasks it is scored on (Gymnasium-Robotics' `tasks_to_complete`)."""


def _gym_robotics():
    import contextlib
    import io

    try:
        # gymnasium-robotics prints a notice about its Adroit environments to stderr on import
        with contextlib.redirect_stderr(io.StringIO()):
            import gymnasium_robotics
    except ImportError as e:
        raise ImportError(
            "the kitchen suite's environment is Gymnasium-Robotics' FrankaKitchen-v1: install the "
            "`gymnasium-robotics` package (`pip install gymnasium-robotics`, or dtune's extra `dtune[kitchen]`)"
        ) from e
    return gymnasium_robotics


class KitchenEnv:
    """FrankaKitchen-v1 behind dtune's env interface: flat 59-dim observations, `reset(seed)` seeds it."""

    def __init__(self, subtasks: tuple[str, ...], horizon: int = HORIZON):
        import gymnasium as gym

        gym.register_envs(_gym_robotics())
        if horizon <= 0:
            raise ValueError(f"horizon must be positive, got {horizon}")
        self.subtasks = tuple(subtasks)
        self.env = gym.make(ENV_ID, tasks_to_complete=list(self.subtasks), max_episode_steps=int(horizon),
                            disable_env_checker=True)

    def reset(self, seed: int) -> np.ndarray:
        obs, _ = self.env.reset(seed=int(seed))
        return np.array(obs["observation"], dtype=np.float64)  # a copy: the env reuses its arrays

    def step(self, action: np.ndarray):
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(action, dtype=np.float64))
        done = len(info.get("episode_task_completions", ())) >= len(self.subtasks)
        return np.array(obs["observation"], dtype=np.float64), float(reward), bool(terminated), bool(truncated), done


class KitchenSuite(Suite):
    """Franka Kitchen (Gymnasium-Robotics FrankaKitchen-v1), D4RL/LaMo's kitchen-complete task."""

    name = "kitchen"
    slots = (("kitchen/state", OBS_DIM),)
    sources = ("random", "complete", "partial", "mixed")

    def tasks(self) -> list[TaskSpec]:
        return [TaskSpec(name=n, suite=self.name, obs_dim=OBS_DIM, act_dim=ACT_DIM, horizon=HORIZON,
                         reward_scale=1.0, target_return=4.0, score="normalized", slots=("kitchen/state",),
                         ref_min_score=0.0, ref_max_score=float(len(sub)),
                         target_returns=(4.0, 5.0, 3.0, 2.0, 1.0)) for n, sub in TASKS.items()]

    def make_env(self, task: TaskSpec, seed: int):
        return KitchenEnv(TASKS[task.name], task.horizon)

    def check_import(self, task: TaskSpec, observation_space) -> None:
        """The dataset's goals (the keys of a dict `desired_goal`, as Gymnasium-Robotics and Minari's
        D4RL/kitchen datasets store them) must be the task's subtasks."""
        goal = getattr(observation_space, "spaces", {}).get("desired_goal")
        if goal is None or not hasattr(goal, "spaces"):
            return
        have, want = set(goal.spaces), set(TASKS[task.name])
        if have != want:
            fits = [n for n, sub in TASKS.items() if set(sub) == have]
            tasks = "; ".join(f"{n}: {', '.join(sub)}" for n, sub in TASKS.items())
            hint = f"import it as task {fits[0]}" if fits else f"no kitchen task has those subtasks ({tasks})"
            raise ValueError(f"its goals are {', '.join(sorted(have))}, but task {task.name} is scored on "
                             f"{', '.join(sorted(want))}: its rewards count other subtasks; {hint}")
