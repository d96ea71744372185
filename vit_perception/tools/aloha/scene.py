"""The ALOHA transfer-cube task (ACT paper) in plain MuJoCo, from gym-aloha's MJCF assets.

Two ViperX 300s arms face each other across a table; a 4 cm red cube is dropped at a random
place in front of the right arm. The right arm must pick it up and hand it to the left arm.
Joint-space control, as gym-aloha's `AlohaTransferCube-v0`: an action is 14 absolute joint
targets (6 joints + a normalized gripper per arm, 0 closed .. 1 open). Rewards as in ACT:
1 the right gripper touches the cube, 2 it lifted it, 3 the left gripper touches it, 4 the left
gripper holds it off the table (a transfer).

Differences from gym-aloha (kept on purpose): no dm_control (it crashes on MuJoCo 4), the cube
position comes from the episode seed (upstream draws it unseeded), the policy acts every
`control_dt` (0.1 s) and the joint servos' setpoints are ramped linearly from the previous target
to the new one over that step (gym-aloha holds each target for 20 ms); only the top camera is
rendered, at the size asked, without shadows or multisampling (measured 31 ms instead of
80 ms per 240x320 frame with software GL), and only when an observation is published.

Assets: vit_perception/data/aloha (MJCF + gzipped STL meshes, 470 KB) from gym-aloha
(Apache-2.0, see LICENSE there), loaded from memory.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from vit_perception.errors import ConfigError, SimError

# mujoco as sim.scene imported it: after choosing the headless GL backend (MUJOCO_GL)
from vit_perception.tools.sim.scene import GL_BACKEND, NS_PER_S, mujoco

ASSETS = Path(__file__).resolve().parents[2] / 'data' / 'aloha'
JOINT_XML = 'bimanual_viperx_transfer_cube.xml'
MOCAP_XML = 'bimanual_viperx_end_effector_transfer_cube.xml'

ARMS = ('left', 'right')
ARM_JOINTS = ('waist', 'shoulder', 'elbow', 'forearm_roll', 'wrist_angle', 'wrist_rotate')
# Action and JointState names: per arm 6 joints (rad) + gripper (normalized, 0 closed, 1 open).
JOINT_NAMES = tuple(f'{arm}_{joint}' for arm in ARMS for joint in (*ARM_JOINTS, 'gripper'))
# qpos of the 16 arm joints (6 + 2 fingers per arm) at the start of every episode
START_ARM_POSE = np.array([0, -0.96, 1.16, 0, -0.3, 0, 0.02239, -0.02239,
                           0, -0.96, 1.16, 0, -0.3, 0, 0.02239, -0.02239])
# Finger travel (m) that the normalized gripper value 0 .. 1 maps to (gym-aloha's constants)
GRIPPER_CLOSED, GRIPPER_OPEN = 0.01844, 0.05800
WORLD_FRAME = 'world'
CAMERA = 'top'


def gripper_normalized(finger: np.ndarray | float) -> np.ndarray | float:
    """Finger position (m) -> normalized gripper value (0 closed .. 1 open)."""
    return (finger - GRIPPER_CLOSED) / (GRIPPER_OPEN - GRIPPER_CLOSED)


def gripper_finger(normalized: np.ndarray | float) -> np.ndarray | float:
    """Normalized gripper value -> finger position (m)."""
    return GRIPPER_CLOSED + normalized * (GRIPPER_OPEN - GRIPPER_CLOSED)


@dataclass(frozen=True)
class TransferCubeTask:
    """Randomization and timing of the task (metres, seconds)."""

    cube_x: tuple[float, float] = (0.0, 0.2)  # ACT's sample_box_pose ranges
    cube_y: tuple[float, float] = (0.4, 0.6)
    cube_z: float = 0.05
    episode_seconds: float = 8.0  # ACT's 400 steps at 50 Hz


@dataclass(frozen=True)
class ArmPose:
    """An end effector (vx300s_<arm>/gripper_link) in the world frame."""

    position: np.ndarray  # (3,)
    orientation: np.ndarray  # (4,) quaternion x y z w, w >= 0


@dataclass(frozen=True)
class Sample:
    """What the robot's state publishers report at one instant (50 Hz)."""

    stamp_ns: int
    poses: tuple[ArmPose, ArmPose]  # left, right
    joints: np.ndarray  # (14,) JOINT_NAMES order: joint angles (rad), normalized grippers


@dataclass(frozen=True)
class AlohaState:
    """After a reset or a control step (privileged: includes the cube)."""

    stamp_ns: int
    step: int  # control steps since reset
    sample: Sample  # the robot state now
    cube_position: np.ndarray  # (3,)
    reward: int  # now, 0 .. 4
    max_reward: int  # the best so far this episode
    done: bool

    @property
    def success(self) -> bool:
        return self.max_reward == 4


@cache
def asset_bytes() -> dict[str, bytes]:
    """Every asset file by the name the MJCF uses (meshes decompressed)."""
    if not (ASSETS / JOINT_XML).is_file():
        raise SimError(f'{ASSETS}: the ALOHA assets are missing; expected the vit_perception '
                       'package data (reinstall the package)')
    files = {}
    for path in sorted(ASSETS.iterdir()):
        if path.name.endswith('.stl.gz'):
            files[path.name[:-3]] = gzip.decompress(path.read_bytes())
        elif path.suffix == '.xml':
            files[path.name] = path.read_bytes()
    return files


def load_model(xml: str = JOINT_XML, image_size: tuple[int, int] = (480, 640)) -> mujoco.MjModel:
    """The MjModel of one of the task's MJCF files, with an offscreen buffer for image_size
    (height, width) and shadows off."""
    files = asset_bytes()
    model = mujoco.MjModel.from_xml_string(files[xml].decode(), files)
    model.vis.global_.offheight = max(model.vis.global_.offheight, image_size[0])
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, image_size[1])
    model.light_castshadow[:] = 0
    model.vis.quality.offsamples = 0  # no multisampling: 2.6x faster software rendering
    return model


class Robot:
    """Names -> indices of the two arms in a model of the task (joint or mocap variant)."""

    def __init__(self, model: mujoco.MjModel):
        def ident(kind, name: str) -> int:
            index = mujoco.mj_name2id(model, kind, name)
            if index < 0:
                raise SimError(f'ALOHA model has no {kind.name} {name!r}')
            return index

        joint = mujoco.mjtObj.mjOBJ_JOINT
        self.arm_qpos = np.array([model.jnt_qposadr[ident(joint, f'vx300s_{arm}/{name}')]
                                  for arm in ARMS for name in ARM_JOINTS])  # (12,)
        self.finger_qpos = np.array([model.jnt_qposadr[ident(joint, f'vx300s_{arm}/{finger}')]
                                     for arm in ARMS for finger in ('left_finger',
                                                                    'right_finger')])  # (4,)
        self.robot_qpos = np.array([*self.arm_qpos[:6], *self.finger_qpos[:2],
                                    *self.arm_qpos[6:], *self.finger_qpos[2:]])  # START order
        self.cube_qpos = model.jnt_qposadr[ident(joint, 'red_box_joint')]
        self.gripper_bodies = [ident(mujoco.mjtObj.mjOBJ_BODY, f'vx300s_{arm}/gripper_link')
                               for arm in ARMS]
        geom = mujoco.mjtObj.mjOBJ_GEOM
        self.cube_geom = ident(geom, 'red_box')
        self.table_geom = ident(geom, 'table')
        self.left_finger_geom = ident(geom, 'vx300s_left/10_left_gripper_finger')
        self.right_finger_geom = ident(geom, 'vx300s_right/10_right_gripper_finger')

    def reset(self, model, data, cube_position: np.ndarray) -> None:
        """Start pose, cube at cube_position (axis-aligned), forward kinematics."""
        mujoco.mj_resetData(model, data)
        data.qpos[self.robot_qpos] = START_ARM_POSE
        data.qpos[self.cube_qpos:self.cube_qpos + 7] = [*cube_position, 1.0, 0.0, 0.0, 0.0]
        mujoco.mj_forward(model, data)

    def joints(self, data) -> np.ndarray:
        """(14,) joint angles and normalized gripper positions, JOINT_NAMES order."""
        q = data.qpos
        grip = gripper_normalized(q[self.finger_qpos[[0, 2]]])  # left finger joint of each arm
        return np.concatenate([q[self.arm_qpos[:6]], grip[:1], q[self.arm_qpos[6:]], grip[1:]])

    def poses(self, data) -> tuple[ArmPose, ArmPose]:
        """Both grippers' poses from the physics (xyzw, w >= 0)."""
        poses = []
        for body in self.gripper_bodies:
            wxyz = data.xquat[body].copy()
            if wxyz[0] < 0:
                wxyz = -wxyz
            poses.append(ArmPose(data.xpos[body].copy(), wxyz[[1, 2, 3, 0]]))
        return tuple(poses)

    def cube_position(self, data) -> np.ndarray:
        return data.qpos[self.cube_qpos:self.cube_qpos + 3].copy()

    def reward(self, data) -> int:
        """ACT's transfer-cube reward from the contacts now (0 .. 4)."""
        pairs = set()
        for g1, g2 in zip(data.contact.geom1, data.contact.geom2):
            pairs.add((int(g1), int(g2)))
            pairs.add((int(g2), int(g1)))
        cube = self.cube_geom
        right = (cube, self.right_finger_geom) in pairs
        left = (cube, self.left_finger_geom) in pairs
        table = (cube, self.table_geom) in pairs
        if left:
            return 3 if table else 4
        if right:
            return 1 if table else 2
        return 0


def targets_to_ctrl(targets: np.ndarray) -> np.ndarray:
    """(14,) joint targets (normalized grippers) -> the joint model's (16,) actuator controls."""
    left, right = targets[:7], targets[7:]
    fl, fr = gripper_finger(left[6]), gripper_finger(right[6])
    return np.concatenate([left[:6], [fl, -fl], right[:6], [fr, -fr]])


class AlohaEnv:
    """The joint-space task: reset(seed), step(14 joint targets) every control_dt, render.

    Each step ramps the servo setpoints from the previous targets to the new ones over the
    physics steps of one control step and samples the robot state at `state_rate_hz`
    (`trace`); the reward is checked at every sample. Deterministic for a seed.
    """

    def __init__(self, image_size: tuple[int, int] = (96, 128), control_dt: float = 0.1,
                 state_rate_hz: float = 50.0, task: TransferCubeTask = TransferCubeTask()):
        height, width = image_size
        if not all(isinstance(v, int) and 16 <= v <= 2048 for v in (height, width)):
            raise ConfigError(f'ALOHA image size {image_size!r}: expected (height, width) '
                              'integers in 16..2048')
        self.task = task
        self.image_size = (height, width)
        self.model = load_model(JOINT_XML, self.image_size)
        self.data = mujoco.MjData(self.model)
        self.robot = Robot(self.model)
        physics_ns = round(self.model.opt.timestep * NS_PER_S)
        self.control_dt_ns = round(control_dt * NS_PER_S)
        sample_ns = round(NS_PER_S / state_rate_hz) if state_rate_hz > 0 else 0
        if (self.control_dt_ns <= 0 or sample_ns <= 0 or sample_ns % physics_ns
                or self.control_dt_ns % sample_ns):
            raise ConfigError(f'ALOHA control_dt={control_dt}, state_rate_hz={state_rate_hz}: '
                              f'expected a control step that is a whole number of state samples,'
                              f' each a whole number of physics steps ({physics_ns} ns)')
        self.control_dt = self.control_dt_ns / NS_PER_S
        self.physics_ns = physics_ns
        self.substeps = self.control_dt_ns // physics_ns
        self.sample_every = sample_ns // physics_ns
        self.max_steps = int(round(task.episode_seconds / self.control_dt))
        self._renderer: mujoco.Renderer | None = None
        self._scene_option = mujoco.MjvOption()
        self._scene_option.sitegroup[:] = 0  # no sites (markers) in the image
        self.seed = 0
        self.reset(0)

    # ---------------------------------------------------------------------------- episode --

    def reset(self, seed: int, start_ns: int = 0) -> AlohaState:
        """Start pose, cube drawn from `seed` (uniform in the task's ranges)."""
        rng = np.random.default_rng(seed)
        task = self.task
        cube = np.array([rng.uniform(*task.cube_x), rng.uniform(*task.cube_y), task.cube_z])
        self.seed = seed
        self.robot.reset(self.model, self.data, cube)
        self.data.ctrl[:] = START_ARM_POSE
        self._start_ns = int(start_ns)
        self._step = 0
        self._reward = self._max_reward = 0
        self.targets = self.robot.joints(self.data)  # (14,) the setpoints being held
        self.trace = [self._sample(self._start_ns)]
        return self.state()

    def step(self, targets: np.ndarray) -> AlohaState:
        """One control step towards `targets` (14,); `trace` then holds its state samples."""
        targets = np.asarray(targets, dtype=np.float64)
        if targets.shape != (len(JOINT_NAMES),) or not np.all(np.isfinite(targets)):
            raise ValueError(f'ALOHA action {targets!r}: expected {len(JOINT_NAMES)} finite '
                             f'joint targets ({" ".join(JOINT_NAMES)})')
        m, d = self.model, self.data
        start, end = targets_to_ctrl(self.targets), targets_to_ctrl(targets)
        t0 = self.stamp_ns
        self.trace = []
        for k in range(1, self.substeps + 1):
            d.ctrl[:] = start + (end - start) * (k / self.substeps)  # clamped to ctrlrange
            mujoco.mj_step(m, d)
            if k % self.sample_every == 0:
                self._reward = self.robot.reward(d)
                self._max_reward = max(self._max_reward, self._reward)
                self.trace.append(self._sample(t0 + k * self.physics_ns))
        self.targets = targets.copy()
        self._step += 1
        return self.state()

    def _sample(self, stamp_ns: int) -> Sample:
        return Sample(stamp_ns, self.robot.poses(self.data), self.robot.joints(self.data))

    # ------------------------------------------------------------------------------ query --

    @property
    def stamp_ns(self) -> int:
        return self._start_ns + self._step * self.control_dt_ns

    def done(self) -> bool:
        return self._step >= self.max_steps

    def state(self) -> AlohaState:
        return AlohaState(stamp_ns=self.stamp_ns, step=self._step, sample=self.trace[-1],
                          cube_position=self.robot.cube_position(self.data),
                          reward=self._reward, max_reward=self._max_reward, done=self.done())

    # ---------------------------------------------------------------------------- render --

    def render(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB image of the top camera now (no sites drawn)."""
        if self._renderer is None:
            try:
                self._renderer = mujoco.Renderer(self.model, *self.image_size)
            except Exception as err:  # GL backend missing: say how to fix it
                raise SimError(
                    f'MuJoCo cannot render headless with MUJOCO_GL={GL_BACKEND} '
                    f'({type(err).__name__}: {err}); expected EGL or OSMesa '
                    '(MUJOCO_GL=egl or osmesa; .ci/install_sim_deps.sh installs both)') from None
        self._renderer.update_scene(self.data, camera=CAMERA, scene_option=self._scene_option)
        return self._renderer.render()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> AlohaEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
