"""Transfer-cube episodes as ROS 2 messages: one bag per expert episode, same as the live topics.

| topic | type | rate |
|---|---|---|
| /clock | rosgraph_msgs/Clock | 50 Hz (every state sample) |
| /left/ee_pose, /right/ee_pose | geometry_msgs/PoseStamped (frame 'world', xyzw) | 50 Hz |
| /joint_states | sensor_msgs/JointState (14 names: JOINT_NAMES) | 50 Hz |
| /camera/image_raw | sensor_msgs/Image rgb8, top camera (frame 'top') | control rate (10 Hz) |
| /expert/action | vit_perception/ActionChunk, horizon 1, JOINT_NAMES | control rate |
| /sim/episode | std_msgs/String (JSON: start / end, seed, cube, rewards) | 2 per episode |

Sim time starts at 1 s; stamps are integer nanoseconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vit_perception.errors import ConfigError
from vit_perception.tools.aloha.expert import TransferCubeExpert
from vit_perception.tools.aloha.scene import (
    CAMERA,
    JOINT_NAMES,
    WORLD_FRAME,
    AlohaEnv,
    AlohaState,
    Sample,
)
from vit_perception.tools.sim.record import (
    CLOCK,
    IMAGE,
    POSE,
    START_NS,
    BagWriter,
    Emit,
    EpisodeStream,
)

JOINT_STATE = 'sensor_msgs/msg/JointState'


@dataclass(frozen=True)
class AlohaTopics:
    """Topic names of the ALOHA sim (and the node's action topics it listens to)."""

    image: str = '/camera/image_raw'
    poses: tuple[str, str] = ('/left/ee_pose', '/right/ee_pose')
    joint_states: str = '/joint_states'
    clock: str = '/clock'
    episode: str = '/sim/episode'
    expert_action: str = '/expert/action'
    action: str = '/vit_perception/action'
    action_chunk: str = '/vit_perception/action_chunk'  # only watched: 'inferred' for lock-step
    image_frame: str = CAMERA


def joint_state_msg(stamp_ns: int, names, positions: np.ndarray):
    """sensor_msgs/msg/JointState with positions only."""
    from vit_perception.drivers import ros_types

    return ros_types.msg_class(JOINT_STATE)(
        header=ros_types.header_msg(stamp_ns, ''), name=list(names),
        position=np.asarray(positions, dtype=np.float64),
        velocity=np.zeros(0, dtype=np.float64), effort=np.zeros(0, dtype=np.float64))


class AlohaStream(EpisodeStream):
    """Turns simulator states into the messages the robot would publish, in time order
    (clock_msg, action and event as the reach sim's)."""

    names = JOINT_NAMES

    def __init__(self, env: AlohaEnv, emit: Emit, topics: AlohaTopics = AlohaTopics()):
        super().__init__(env, emit, topics)

    def sample(self, sample: Sample) -> None:
        """/clock, both gripper poses and the joint states at the sample's stamp."""
        t = sample.stamp_ns
        self.emit(self.topics.clock, CLOCK, t, self._rt.clock_msg(t))
        for topic, pose in zip(self.topics.poses, sample.poses):
            self.emit(topic, POSE, t,
                      self._rt.pose_msg(t, WORLD_FRAME, pose.position, pose.orientation))
        self.emit(self.topics.joint_states, JOINT_STATE, t,
                  joint_state_msg(t, JOINT_NAMES, sample.joints))

    def observation(self, state: AlohaState, samples: bool = True) -> None:
        """The state samples of the last control step (or the reset), then the top image."""
        if samples:
            for sample in self.env.trace:
                self.sample(sample)
        t = state.stamp_ns
        self.emit(self.topics.image, IMAGE, t,
                  self._rt.image_msg(t, self.topics.image_frame, self.env.render(), 'rgb8'))

    def resend(self, state: AlohaState) -> None:
        """The newest sample and the image again (lock-step: an answer did not come)."""
        self.sample(state.sample)
        self.observation(state, samples=False)


@dataclass(frozen=True)
class AlohaEpisode:
    """One episode's outcome. success = transfer (ACT's reward 4 reached)."""

    index: int
    seed: int
    success: bool
    lift: bool  # reward >= 2 reached: the right gripper held the cube off the table
    touch: bool  # reward >= 1 reached
    max_reward: int
    steps: int
    cube: tuple[float, float, float]  # the cube's start position
    cube_final: tuple[float, float, float]
    path: str = ''  # bag directory ('' when not recorded)
    missed_actions: int = 0  # sim process: control steps with no fresh policy action
    resent_observations: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def episode_info(env: AlohaEnv, state: AlohaState, index: int, event: str,
                 cube: np.ndarray, **extra) -> dict:
    """The JSON body of a /sim/episode message."""
    info = {'event': event, 'episode': index, 'seed': env.seed, 'task': 'aloha-transfer-cube',
            'cube': [round(float(v), 6) for v in cube],
            'cube_now': [round(float(v), 6) for v in state.cube_position],
            'step': state.step, 'reward': state.reward, 'max_reward': state.max_reward,
            'success': state.success, 'control_dt': env.control_dt}
    info.update(extra)
    return info


def summarize(index: int, state: AlohaState, cube: np.ndarray, **extra) -> AlohaEpisode:
    return AlohaEpisode(index=index, seed=extra.pop('seed'), success=state.success,
                        lift=state.max_reward >= 2, touch=state.max_reward >= 1,
                        max_reward=state.max_reward, steps=state.step,
                        cube=tuple(round(float(v), 6) for v in cube),
                        cube_final=tuple(round(float(v), 6) for v in state.cube_position),
                        **extra)


# DART-style noise (Laskey et al. 2017) on the right arm's executed targets during the approach:
# rad per joint (waist, shoulder, elbow, forearm roll, wrist angle, wrist rotate), the scale of
# the cube-dependent spread of the approach. Without it the arm's own position in the image
# tells where the expert is heading, and the policy copies that cue instead of finding the cube
# (measured in issue 16: from the first frames it predicted the approach worse than a blind guess).
APPROACH_NOISE = np.array([0.36, 0.24, 0.24, 0.0, 0.3, 0.0])
NOISE_FADE = (9, 13)  # control steps: full noise until the first, none from the second (grasp)


def approach_noise(seed: int, steps: int, scale: float = 1.0) -> np.ndarray:
    """(steps, 14) offsets to the executed targets of episode `seed`: per right-arm joint a
    constant plus a slow sine (random amplitudes and phases), faded out before the grasp so the
    expert still grasps; zeros when scale is 0. The recorded action stays the expert's."""
    noise = np.zeros((steps, len(JOINT_NAMES)))
    if scale == 0:
        return noise
    rng = np.random.default_rng([seed, 16])  # independent of the cube's draw
    k = np.arange(steps)[:, None]  # (steps, 1)
    offset = rng.uniform(-1, 1, 6)
    amplitude, phase = rng.uniform(0, 0.5, 6), rng.uniform(0, 2 * np.pi, 6)
    wave = offset + amplitude * np.sin(2 * np.pi * k / 8 + phase)  # (steps, 6)
    fade = np.clip((NOISE_FADE[1] - k) / (NOISE_FADE[1] - NOISE_FADE[0]), 0, 1)  # (steps, 1)
    noise[:, 7:13] = scale * APPROACH_NOISE * wave * fade
    return noise


def run_expert_episode(env: AlohaEnv, expert: TransferCubeExpert, stream: AlohaStream | None,
                       index: int, seed: int, noise_scale: float = 0.0) -> AlohaEpisode:
    """One episode driven by the expert; `stream` (optional) gets every message. With
    noise_scale > 0 the executed targets carry approach_noise; the stream gets the expert's."""
    state = env.reset(seed, start_ns=START_NS)
    cube = state.cube_position
    expert.plan(cube)
    noise = approach_noise(seed, env.max_steps, noise_scale)
    if stream is not None:
        stream.event(state.stamp_ns, episode_info(env, state, index, 'start', cube))
        stream.observation(state)
    while not state.done:
        targets = expert.target(state.step)
        if stream is not None:
            stream.action(stream.topics.expert_action, state.stamp_ns, targets)
        state = env.step(targets + noise[state.step])
        if stream is not None:
            stream.observation(state)
    if stream is not None:
        stream.event(state.stamp_ns, episode_info(env, state, index, 'end', cube))
    return summarize(index, state, cube, seed=seed)


def record_episodes(out_dir: str | Path, episodes: int, seed: int = 0, *,
                    image_size: tuple[int, int] = (96, 128), storage: str = 'mcap',
                    progress: Callable[[AlohaEpisode], None] | None = None,
                    noise_scale: float = 0.0) -> list[AlohaEpisode]:
    """The expert for `episodes` episodes (episode i: seed + i), one bag each:
    out_dir/episode_NNNN. Each bag depends only on its own seed (and noise_scale: see
    run_expert_episode)."""
    if episodes < 0:
        raise ConfigError(f'episodes={episodes}: expected >= 0')
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = []
    with AlohaEnv(image_size) as env:
        expert = TransferCubeExpert(env.task, env.control_dt)
        for index in range(episodes):
            path = out_dir / f'episode_{index:04d}'
            with BagWriter(path, storage) as bag:
                summary = run_expert_episode(env, expert, AlohaStream(env, bag), index,
                                             seed + index, noise_scale)
                bag.set_info('vit_perception.aloha', json.dumps(
                    summary.to_dict() | {'path': path.name}, sort_keys=True))
            summary = replace(summary, path=str(path))
            summaries.append(summary)
            if progress is not None:
                progress(summary)
    return summaries
