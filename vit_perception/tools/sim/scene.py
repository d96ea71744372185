"""Table-top reach task in MuJoCo: a Cartesian gantry gripper must hover above a coloured puck.

The puck's position is drawn at random per episode and is visible only in the cameras; the
end-effector pose alone says nothing about it. World frame = the robot's `base` frame: x away
from the robot, z up, table top at z = 0.

Rendering is headless: `MUJOCO_GL` is chosen before mujoco is imported (EGL, else OSMesa).
"""

from __future__ import annotations

import colorsys
import ctypes.util
import os
import sys
from dataclasses import dataclass

import numpy as np

from vit_perception.errors import ConfigError, SimError


def _choose_gl_backend() -> str:
    """Pick a headless OpenGL backend unless the user set MUJOCO_GL (must run before import)."""
    if 'mujoco' in sys.modules:  # too late: mujoco picked its backend when it was imported
        return os.environ.get('MUJOCO_GL', '') + ' (mujoco was imported before this module)'
    if 'MUJOCO_GL' not in os.environ:
        if ctypes.util.find_library('EGL') is None and ctypes.util.find_library('OSMesa'):
            os.environ['MUJOCO_GL'] = 'osmesa'
        else:
            os.environ['MUJOCO_GL'] = 'egl'
    return os.environ['MUJOCO_GL']


GL_BACKEND = _choose_gl_backend()

import mujoco  # noqa: E402  (MUJOCO_GL must be set first)

NS_PER_S = 1_000_000_000
ACTION_NAMES = ('dx', 'dy', 'dz', 'drx', 'dry', 'drz', 'gripper')
CAMERAS = ('scene', 'wrist')
BASE_FRAME = 'base'


@dataclass(frozen=True)
class ReachTask:
    """Task geometry, limits and randomization ranges (metres, seconds, radians)."""

    # Puck centre is drawn uniformly in this table region.
    target_x: tuple[float, float] = (0.30, 0.60)
    target_y: tuple[float, float] = (-0.20, 0.20)
    target_radius: float = 0.035
    target_height: float = 0.04
    # Tool centre point (between the fingertips) goal: this far above the puck centre.
    hover_height: float = 0.08
    # Success: TCP within success_radius (xy) and height_tolerance (z) of the goal for
    # hold_steps consecutive control steps.
    success_radius: float = 0.03
    height_tolerance: float = 0.03
    hold_steps: int = 3
    # Start pose of the TCP, drawn uniformly per episode.
    start_x: tuple[float, float] = (0.35, 0.55)
    start_y: tuple[float, float] = (-0.12, 0.12)
    start_z: tuple[float, float] = (0.22, 0.28)
    # The commanded TCP position is kept inside this box.
    workspace_min: tuple[float, float, float] = (0.22, -0.28, 0.05)
    workspace_max: tuple[float, float, float] = (0.68, 0.28, 0.32)
    # Action clipping: |dx|, |dy|, |dz| <= max_speed (m/s); |drz| <= max_yaw_rate (rad/s).
    max_speed: float = 0.2
    max_yaw_rate: float = 1.0
    # Randomization of appearance (HSV of the puck; hue wraps around red).
    target_hue: tuple[float, float] = (-0.06, 0.10)
    target_saturation: tuple[float, float] = (0.75, 1.0)
    target_value: tuple[float, float] = (0.75, 1.0)
    light_diffuse: tuple[float, float] = (0.35, 0.65)
    ambient: tuple[float, float] = (0.15, 0.30)


@dataclass(frozen=True)
class SimState:
    """What the simulator knows after a reset or a control step (privileged: includes target)."""

    stamp_ns: int  # sim time
    step: int  # control steps since reset
    ee_position: np.ndarray  # (3,) TCP position in the base frame
    ee_orientation: np.ndarray  # (4,) TCP orientation, quaternion x y z w (z axis points down)
    gripper: float  # 0 open .. 1 closed (measured)
    target_position: np.ndarray  # (3,) puck centre
    success: bool
    done: bool


def build_mjcf(image_size: int, wrist_image_size: int, task: ReachTask = ReachTask()) -> str:
    """The scene as an MJCF string. Contacts are off: the task is free-space motion."""
    off = max(image_size, wrist_image_size)
    lo, hi = task.workspace_min, task.workspace_max
    r, h = task.target_radius, task.target_height
    cam_pos, cam_xyaxes = _look_at((0.80, 0.0, 1.20), (0.45, 0.0, 0.05))
    return f"""
<mujoco model="vit_perception_reach">
  <compiler angle="radian"/>
  <option timestep="0.005" integrator="implicitfast" gravity="0 0 -9.81">
    <flag contact="disable"/>
  </option>
  <visual>
    <global offwidth="{off}" offheight="{off}"/>
    <quality shadowsize="0" offsamples="4"/>
    <headlight ambient="0.25 0.25 0.25" diffuse="0.35 0.35 0.35" specular="0 0 0"/>
    <map znear="0.01" zfar="10"/>
  </visual>
  <asset>
    <texture name="sky" type="skybox" builtin="flat" rgb1="0.55 0.6 0.65" rgb2="0.55 0.6 0.65"
             width="8" height="8"/>
    <material name="table" rgba="0.72 0.70 0.66 1" specular="0.1"/>
    <material name="robot" rgba="0.18 0.20 0.24 1" specular="0.3"/>
    <material name="accent" rgba="0.15 0.35 0.85 1" specular="0.3"/>
  </asset>
  <worldbody>
    <light name="sun" directional="true" pos="0.4 0 2" dir="0 0 -1" diffuse="0.65 0.65 0.65"
           specular="0.1 0.1 0.1" castshadow="false"/>
    <geom name="floor" type="plane" pos="0 0 -0.75" size="3 3 0.1" rgba="0.3 0.3 0.32 1"/>
    <geom name="table" type="box" pos="0.45 0 -0.02" size="0.45 0.5 0.02" material="table"/>
    <geom name="robot_base" type="cylinder" pos="0 0 0.05" size="0.07 0.05" material="robot"/>
    <camera name="scene" pos="{cam_pos}" xyaxes="{cam_xyaxes}" fovy="38"/>
    <body name="target" mocap="true" pos="0.45 0 {h / 2}">
      <geom name="target" type="cylinder" size="{r} {h / 2}" rgba="0.9 0.1 0.1 1"/>
    </body>
    <body name="ee" gravcomp="1">
      <inertial pos="0 0 0.1" mass="1.0" diaginertia="0.01 0.01 0.005"/>
      <joint name="x" type="slide" axis="1 0 0" range="{lo[0] - 0.05} {hi[0] + 0.05}"/>
      <joint name="y" type="slide" axis="0 1 0" range="{lo[1] - 0.05} {hi[1] + 0.05}"/>
      <joint name="z" type="slide" axis="0 0 1" range="{lo[2] - 0.05} {hi[2] + 0.05}"/>
      <joint name="yaw" type="hinge" axis="0 0 1" range="-3.1 3.1"/>
      <site name="tcp" quat="0 1 0 0" size="0.005" group="4"/>
      <geom name="palm" type="box" pos="0 0 0.062" size="0.018 0.042 0.012" material="robot"/>
      <geom name="wrist" type="cylinder" pos="0 0 0.1" size="0.022 0.026" material="accent"/>
      <geom name="stem" type="cylinder" fromto="0 0 0.12 0 0 0.30" size="0.013" material="robot"/>
      <camera name="wrist" pos="0 0 0.045" xyaxes="0 -1 0 1 0 0" fovy="75"/>
      <body name="finger_left" pos="0 0.03 0" gravcomp="1">
        <joint name="finger_left" type="slide" axis="0 -1 0" range="0 0.022"/>
        <geom type="box" pos="0 0 0.025" size="0.012 0.005 0.025" mass="0.05" material="accent"/>
      </body>
      <body name="finger_right" pos="0 -0.03 0" gravcomp="1">
        <joint name="finger_right" type="slide" axis="0 1 0" range="0 0.022"/>
        <geom type="box" pos="0 0 0.025" size="0.012 0.005 0.025" mass="0.05" material="accent"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <position name="x" joint="x" kp="1600" kv="80"/>
    <position name="y" joint="y" kp="1600" kv="80"/>
    <position name="z" joint="z" kp="1600" kv="80"/>
    <position name="yaw" joint="yaw" kp="8" kv="0.4"/>
    <position name="finger_left" joint="finger_left" kp="100" kv="4"/>
    <position name="finger_right" joint="finger_right" kp="100" kv="4"/>
  </actuator>
</mujoco>
"""


def _look_at(eye, at) -> tuple[str, str]:
    """MJCF `pos` and `xyaxes` of a camera at `eye` looking at `at` with world z up."""
    eye, at = np.asarray(eye, float), np.asarray(at, float)
    forward = (at - eye) / np.linalg.norm(at - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    fmt = ' '.join
    return fmt(f'{v:.5f}' for v in eye), fmt(f'{v:.5f}' for v in (*right, *up))


class ReachEnv:
    """The reach task: reset, step with a 7-dim Cartesian velocity command, render, check success.

    Action (ACTION_NAMES): dx dy dz in m/s, drx dry drz in rad/s (only drz acts: the gantry
    has one wrist joint, yaw), gripper in [0, 1] (0 open, 1 closed). Velocities are clipped to
    the task limits and integrated into a setpoint that the joint servos track, ramped over the
    physics substeps of one control step. Deterministic for a seed.
    """

    def __init__(self, seed: int = 0, image_size: int = 96, wrist_image_size: int | None = None,
                 control_dt: float = 0.1, max_steps: int = 60, pose_rate_hz: float = 50.0,
                 task: ReachTask = ReachTask()):
        wrist_image_size = image_size if wrist_image_size is None else wrist_image_size
        for name, value in (('image_size', image_size), ('wrist_image_size', wrist_image_size),
                            ('max_steps', max_steps)):
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f'sim {name}={value!r}: expected a positive integer')
        self.task = task
        self.model = mujoco.MjModel.from_xml_string(
            build_mjcf(image_size, wrist_image_size, task))
        self.data = mujoco.MjData(self.model)
        physics_dt_ns = round(self.model.opt.timestep * NS_PER_S)
        self.control_dt_ns = round(control_dt * NS_PER_S)
        if self.control_dt_ns <= 0 or self.control_dt_ns % physics_dt_ns:
            raise ConfigError(f'sim control_dt={control_dt}: expected a positive multiple of the '
                              f'physics step {self.model.opt.timestep} s')
        self.substeps = self.control_dt_ns // physics_dt_ns
        pose_every = round(NS_PER_S / (pose_rate_hz * physics_dt_ns)) if pose_rate_hz > 0 else 0
        if pose_every <= 0 or self.substeps % pose_every:
            raise ConfigError(f'sim pose_rate_hz={pose_rate_hz}: expected a rate that divides '
                              f'the control rate {1 / control_dt:g} Hz into whole physics steps')
        self.physics_dt_ns = physics_dt_ns
        self.pose_every = pose_every
        self.control_dt = self.control_dt_ns / NS_PER_S
        self.max_steps = max_steps
        self.image_sizes = {'scene': image_size, 'wrist': wrist_image_size}
        self._renderers: dict[int, mujoco.Renderer] = {}
        self._ids()
        self._action_limit = np.array([task.max_speed] * 3 + [task.max_yaw_rate] * 3 + [1.0])
        self._rng = np.random.default_rng(seed)
        self.seed = seed
        self.reset(seed)

    def _ids(self) -> None:
        m = self.model

        def ident(kind, name: str) -> int:
            return mujoco.mj_name2id(m, kind, name)

        joint = mujoco.mjtObj.mjOBJ_JOINT
        self._qpos_arm = np.array([m.jnt_qposadr[ident(joint, n)] for n in ('x', 'y', 'z', 'yaw')])
        self._qpos_fingers = np.array([m.jnt_qposadr[ident(joint, n)]
                                       for n in ('finger_left', 'finger_right')])
        self._finger_travel = float(m.jnt_range[ident(joint, 'finger_left'), 1])
        self._site_tcp = ident(mujoco.mjtObj.mjOBJ_SITE, 'tcp')
        self._geom_target = ident(mujoco.mjtObj.mjOBJ_GEOM, 'target')
        self._light = ident(mujoco.mjtObj.mjOBJ_LIGHT, 'sun')
        self._mat_table = ident(mujoco.mjtObj.mjOBJ_MATERIAL, 'table')
        self._table_mat_rgba = m.mat_rgba[self._mat_table].copy()

    # ---------------------------------------------------------------------------- episode --

    def reset(self, seed: int | None = None, start_ns: int = 0) -> SimState:
        """Start an episode: random puck, start pose, colour and light. Time starts at start_ns."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
            self.seed = seed
        rng, task, m, d = self._rng, self.task, self.model, self.data
        target = np.array([rng.uniform(*task.target_x), rng.uniform(*task.target_y),
                           task.target_height / 2])
        start = np.array([rng.uniform(*task.start_x), rng.uniform(*task.start_y),
                          rng.uniform(*task.start_z), 0.0])  # x y z yaw
        hsv = (rng.uniform(*task.target_hue) % 1.0, rng.uniform(*task.target_saturation),
               rng.uniform(*task.target_value))
        m.geom_rgba[self._geom_target, :3] = colorsys.hsv_to_rgb(*hsv)
        m.mat_rgba[self._mat_table, :3] = np.clip(
            self._table_mat_rgba[:3] + rng.uniform(-0.04, 0.04), 0.0, 1.0)
        diffuse = rng.uniform(*task.light_diffuse)
        m.light_diffuse[self._light] = diffuse
        m.light_dir[self._light] = _unit([rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), -1.0])
        m.vis.headlight.ambient[:] = rng.uniform(*task.ambient)

        mujoco.mj_resetData(m, d)
        d.mocap_pos[0] = target
        d.qpos[self._qpos_arm] = start
        d.ctrl[:4] = start
        mujoco.mj_forward(m, d)
        self._target = target
        self._goal = start.copy()  # commanded x y z yaw
        self._gripper_cmd = 0.0
        self._start_ns = int(start_ns)
        self._step = 0
        self._hold = 0
        self._success = False
        self.pose_trace: list[tuple[int, np.ndarray, np.ndarray]] = []
        return self.state()

    def step(self, action: np.ndarray) -> SimState:
        """Apply one control step of `action` (7,), return the new state.

        `pose_trace` then holds the TCP poses (stamp_ns, position, quaternion xyzw) sampled at
        pose_rate_hz during the step; its last entry is the pose of the returned state.
        """
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (len(ACTION_NAMES),) or not np.all(np.isfinite(action)):
            raise ValueError(f'action {action!r}: expected {len(ACTION_NAMES)} finite values '
                             f'({" ".join(ACTION_NAMES)})')
        action = np.clip(action, -self._action_limit, self._action_limit)
        velocity = np.array([action[0], action[1], action[2], action[5]])  # x y z yaw
        lo = np.array([*self.task.workspace_min, -np.pi])
        hi = np.array([*self.task.workspace_max, np.pi])
        start = self._goal
        end = np.clip(start + velocity * self.control_dt, lo, hi)
        self._gripper_cmd = float(np.clip(action[6], 0.0, 1.0))
        m, d = self.model, self.data
        d.ctrl[4:6] = self._gripper_cmd * self._finger_travel
        t0 = self.stamp_ns
        self.pose_trace = []
        for k in range(1, self.substeps + 1):
            d.ctrl[:4] = start + (end - start) * (k / self.substeps)
            mujoco.mj_step(m, d)
            if k % self.pose_every == 0:
                self.pose_trace.append((t0 + k * self.physics_dt_ns, *self.ee_pose()))
        self._goal = end
        self._step += 1
        self._hold = self._hold + 1 if self.in_tolerance() else 0
        self._success = self._success or self._hold >= self.task.hold_steps
        return self.state()

    # ------------------------------------------------------------------------------ query --

    @property
    def stamp_ns(self) -> int:
        """Sim time of the current state (integer ns)."""
        return self._start_ns + self._step * self.control_dt_ns

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """TCP position (3,) and orientation quaternion x y z w (4,) in the base frame."""
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, self.data.site_xmat[self._site_tcp])
        if quat[0] < 0:  # one sign for a rotation: w >= 0
            quat = -quat
        return self.data.site_xpos[self._site_tcp].copy(), quat[[1, 2, 3, 0]]

    def gripper(self) -> float:
        """Measured finger closure, 0 open .. 1 closed."""
        return float(np.mean(self.data.qpos[self._qpos_fingers]) / self._finger_travel)

    def target_position(self) -> np.ndarray:
        """Puck centre (3,) in the base frame (privileged: never published as an input)."""
        return self._target.copy()

    def goal_position(self) -> np.ndarray:
        """Where the TCP must hover: above the puck centre by hover_height."""
        return self._target + np.array([0.0, 0.0, self.task.hover_height])

    def in_tolerance(self) -> bool:
        """TCP is within the success tolerance of the hover goal right now."""
        error = self.ee_pose()[0] - self.goal_position()
        return bool(np.hypot(error[0], error[1]) < self.task.success_radius
                    and abs(error[2]) < self.task.height_tolerance)

    def success(self) -> bool:
        """Held within tolerance for hold_steps consecutive control steps (latched)."""
        return self._success

    def done(self) -> bool:
        """Episode over: success, or the step budget is spent."""
        return self._success or self._step >= self.max_steps

    def state(self) -> SimState:
        position, orientation = self.ee_pose()
        return SimState(stamp_ns=self.stamp_ns, step=self._step, ee_position=position,
                        ee_orientation=orientation, gripper=self.gripper(),
                        target_position=self.target_position(), success=self.success(),
                        done=self.done())

    # ---------------------------------------------------------------------------- render --

    def render(self, camera: str = 'scene') -> np.ndarray:
        """(H, W, 3) uint8 RGB image of `camera` ('scene' or 'wrist') at the current state."""
        if camera not in self.image_sizes:
            raise ConfigError(f'sim camera {camera!r}: expected one of {CAMERAS}')
        size = self.image_sizes[camera]
        renderer = self._renderers.get(size)
        if renderer is None:
            try:
                renderer = mujoco.Renderer(self.model, size, size)
            except Exception as err:  # GL backend missing: say how to fix it
                raise SimError(
                    f'MuJoCo cannot render headless with MUJOCO_GL={GL_BACKEND} '
                    f'({type(err).__name__}: {err}); expected EGL or OSMesa '
                    '(MUJOCO_GL=egl or osmesa; .ci/install_sim_deps.sh installs both)') from None
            self._renderers[size] = renderer
        renderer.update_scene(self.data, camera=camera)
        return renderer.render()

    def close(self) -> None:
        """Free the GL contexts."""
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()

    def __enter__(self) -> ReachEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)
