"""Scripted expert for transfer-cube: ACT's pick-and-transfer waypoints, planned in the mocap
(end-effector) variant of the scene, executed as a joint trajectory in the joint-space task.

Planning (once per episode, from the privileged cube position): the two grippers are welded to
mocap bodies that follow linearly interpolated waypoints (ACT's `PickAndTransferPolicy`: the
right arm approaches the cube from above, grasps it, brings it to the meeting point; the left arm
comes, grasps, the right opens, the left pulls away) for 400 steps of 20 ms; the arms' joint
positions and the gripper commands are recorded at every step. On MuJoCo >= 3 the welds need
their torquescale raised (`eq_data[:, 10] = 5`), otherwise the grippers lag in orientation and
every grasp fails (measured in issue 16). The joint trajectory is then the expert's action:
at control step k (every 0.1 s) the target is the recorded joint state 0.1 s later.
"""

from __future__ import annotations

import numpy as np

from vit_perception.tools.aloha.scene import (
    MOCAP_XML,
    AlohaState,
    Robot,
    TransferCubeTask,
    gripper_finger,
    load_model,
    mujoco,
)

PLAN_DT = 0.02  # waypoint time unit: one mocap step (ACT's 50 Hz)
PLAN_STEPS = 400
WELD_TORQUESCALE = 5.0
# Where the mocap bodies start: the grippers' poses at START_ARM_POSE (ACT's constants)
INIT_LEFT = np.array([-0.31718881, 0.5, 0.29525084])
INIT_RIGHT = np.array([0.31718881, 0.49999888, 0.29525084])
IDENTITY = np.array([1.0, 0.0, 0.0, 0.0])  # w x y z
MEET = np.array([0.0, 0.5, 0.25])


def _axis_angle(axis, degrees: float) -> np.ndarray:
    half = np.deg2rad(degrees) / 2
    return np.array([np.cos(half), *(np.sin(half) * np.asarray(axis, float))])


PICK_QUAT = _axis_angle([0, 1, 0], -60)  # right gripper pitched down 60 degrees
MEET_LEFT_QUAT = _axis_angle([1, 0, 0], 90)  # left gripper rolled 90 degrees


def waypoints(cube: np.ndarray) -> tuple[list[tuple], list[tuple]]:
    """ACT's waypoints (step, xyz, quat wxyz, gripper 0 closed .. 1 open) for each arm."""
    left = [(0, INIT_LEFT, IDENTITY, 0),
            (100, MEET + [-0.1, 0, -0.02], MEET_LEFT_QUAT, 1),  # approach the meeting point
            (260, MEET + [0.02, 0, -0.02], MEET_LEFT_QUAT, 1),  # reach it
            (310, MEET + [0.02, 0, -0.02], MEET_LEFT_QUAT, 0),  # close
            (360, MEET + [-0.1, 0, -0.02], IDENTITY, 0),  # pull away
            (400, MEET + [-0.1, 0, -0.02], IDENTITY, 0)]
    right = [(0, INIT_RIGHT, IDENTITY, 0),
             (90, cube + [0, 0, 0.08], PICK_QUAT, 1),  # above the cube
             (130, cube + [0, 0, -0.015], PICK_QUAT, 1),  # down
             (170, cube + [0, 0, -0.015], PICK_QUAT, 0),  # close
             (200, MEET + [0.05, 0, 0], PICK_QUAT, 0),  # towards the meeting point
             (220, MEET, PICK_QUAT, 0),
             (310, MEET, PICK_QUAT, 1),  # open: hand over
             (360, MEET + [0.1, 0, 0], PICK_QUAT, 1),  # move right
             (400, MEET + [0.1, 0, 0], PICK_QUAT, 1)]
    return left, right


def interpolate(points: list[tuple], step: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Linear interpolation between the waypoints around `step` (quaternion normalized)."""
    for (t0, xyz0, q0, g0), (t1, xyz1, q1, g1) in zip(points, points[1:]):
        if step < t1:
            frac = max(step - t0, 0) / (t1 - t0)
            quat = np.asarray(q0) + (np.asarray(q1) - np.asarray(q0)) * frac
            return (np.asarray(xyz0) + (np.asarray(xyz1) - np.asarray(xyz0)) * frac,
                    quat / np.linalg.norm(quat), g0 + (g1 - g0) * frac)
    _, xyz, quat, grip = points[-1]
    return np.asarray(xyz), np.asarray(quat), grip


class TransferCubeExpert:
    """Plans the joint trajectory for a cube position; `act` returns the target for a state."""

    def __init__(self, task: TransferCubeTask = TransferCubeTask(), control_dt: float = 0.1):
        self.task = task
        self.model = load_model(MOCAP_XML)
        self.model.eq_data[:, 10] = WELD_TORQUESCALE
        self.data = mujoco.MjData(self.model)
        self.robot = Robot(self.model)
        self.substeps = int(round(PLAN_DT / self.model.opt.timestep))
        self.every = int(round(control_dt / PLAN_DT))
        if self.every < 1 or abs(self.every * PLAN_DT - control_dt) > 1e-9:
            raise ValueError(f'control_dt {control_dt}: expected a multiple of {PLAN_DT} s')
        self._cube: tuple | None = None
        self.trajectory = np.zeros((0, 14))

    def plan(self, cube: np.ndarray) -> np.ndarray:
        """(PLAN_STEPS + 1, 14) joint positions + gripper commands every PLAN_DT (row 0: the
        start), for the cube at `cube` (3,)."""
        m, d, robot = self.model, self.data, self.robot
        cube = np.asarray(cube, dtype=np.float64)
        robot.reset(m, d, cube)
        d.mocap_pos[:] = [INIT_LEFT, INIT_RIGHT]
        d.mocap_quat[:] = [IDENTITY, IDENTITY]
        d.ctrl[:] = np.tile([gripper_finger(0.0), -gripper_finger(0.0)], 2)
        mujoco.mj_forward(m, d)
        left, right = waypoints(cube)
        rows = [self._row(0.0, 0.0)]
        for step in range(PLAN_STEPS):
            grips = []
            for arm, points in enumerate((left, right)):
                xyz, quat, grip = interpolate(points, step)
                d.mocap_pos[arm], d.mocap_quat[arm] = xyz, quat
                grips.append(grip)
            finger = gripper_finger(np.array(grips))
            d.ctrl[:] = [finger[0], -finger[0], finger[1], -finger[1]]
            mujoco.mj_step(m, d, self.substeps)
            rows.append(self._row(*grips))
        self._cube = tuple(cube)
        self.trajectory = np.array(rows)
        return self.trajectory

    def _row(self, left_grip: float, right_grip: float) -> np.ndarray:
        q = self.robot.joints(self.data)
        q[6], q[13] = left_grip, right_grip  # the command, not the measured opening (as ACT)
        return q

    def target(self, step: int) -> np.ndarray:
        """The joint targets for control step `step` (where the plan is one step later)."""
        index = min((step + 1) * self.every, len(self.trajectory) - 1)
        return self.trajectory[index].copy()

    def act(self, state: AlohaState, initial_cube: np.ndarray) -> np.ndarray:
        """(14,) targets for `state`; plans when the episode's cube changes."""
        if self._cube != tuple(np.asarray(initial_cube, dtype=np.float64)):
            self.plan(initial_cube)
        return self.target(state.step)
