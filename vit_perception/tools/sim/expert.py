"""Scripted expert for the reach task: a saturated proportional controller on privileged state."""

from __future__ import annotations

import numpy as np

from vit_perception.tools.sim.scene import ACTION_NAMES, ReachTask, SimState


class ReachExpert:
    """Cartesian P-controller towards the hover point above the puck (it knows the puck).

    action = clip(gain * (goal - tcp), +-max_speed) for dx dy dz; rotations 0; gripper constant.
    The speed limit keeps the action inside what the simulator executes, so labels are exact.
    """

    names = ACTION_NAMES

    def __init__(self, task: ReachTask = ReachTask(), gain: float = 2.0,
                 max_speed: float | None = None, gripper: float = 0.0):
        self.task = task
        self.gain = gain
        self.max_speed = task.max_speed if max_speed is None else max_speed
        self.gripper = gripper

    def act(self, state: SimState) -> np.ndarray:
        """The (7,) float32 command for `state`."""
        goal = state.target_position + np.array([0.0, 0.0, self.task.hover_height])
        velocity = np.clip(self.gain * (goal - state.ee_position), -self.max_speed,
                           self.max_speed)
        action = np.zeros(len(ACTION_NAMES), dtype=np.float32)
        action[:3] = velocity
        action[6] = self.gripper
        return action
