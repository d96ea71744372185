"""Expert demonstrations as ROS 2 bags: one bag per episode, the topics the robot would publish.

Each bag holds, with sim-time stamps (integer ns, the episode starts at 1 s):

| topic | type | rate |
|---|---|---|
| /clock | rosgraph_msgs/Clock | pose rate |
| /ee_pose | geometry_msgs/PoseStamped (frame 'base') | pose rate (50 Hz) |
| /camera/image_raw | sensor_msgs/Image rgb8 (scene camera) | control rate (10 Hz) |
| /wrist_camera/image_raw | sensor_msgs/Image rgb8 (wrist camera) | control rate |
| /expert/action | vit_perception/ActionChunk, horizon 1 | control rate |
| /sim/episode | std_msgs/String (JSON: start / end, seed, target, success) | 2 per episode |

The same message building (`EpisodeStream`) feeds the live sim process, so bags and topics match.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vit_perception.errors import ConfigError
from vit_perception.tools.sim.expert import ReachExpert
from vit_perception.tools.sim.scene import ACTION_NAMES, BASE_FRAME, ReachEnv, SimState

START_NS = 1_000_000_000  # sim time of an episode's first observation (0 is 'unset' in ROS)
BAG_VERSION = 8  # rosbag2 metadata version 8 (Iron); Jazzy writes 9, both read 8
STORAGES = ('mcap', 'sqlite3')

IMAGE = 'sensor_msgs/msg/Image'
POSE = 'geometry_msgs/msg/PoseStamped'
CLOCK = 'rosgraph_msgs/msg/Clock'
STRING = 'std_msgs/msg/String'
ACTION_CHUNK = 'vit_perception/msg/ActionChunk'


@dataclass(frozen=True)
class SimTopics:
    """Topic names the simulator publishes (and the action topic it listens to)."""

    image: str = '/camera/image_raw'
    wrist_image: str = '/wrist_camera/image_raw'
    pose: str = '/ee_pose'
    clock: str = '/clock'
    episode: str = '/sim/episode'
    expert_action: str = '/expert/action'
    action: str = '/vit_perception/action'
    action_chunk: str = '/vit_perception/action_chunk'  # only watched: 'inferred' for lock-step
    image_frame: str = 'camera'
    wrist_frame: str = 'wrist_camera'


# emit(topic, msgtype, stamp_ns, msg): a bag writer, a DDS publisher, or both.
Emit = Callable[[str, str, int, object], None]


class EpisodeStream:
    """Turns simulator states into the messages a robot would publish, in time order."""

    names = ACTION_NAMES  # of the ActionChunk messages

    def __init__(self, env: ReachEnv, emit: Emit, topics: SimTopics = SimTopics()):
        from vit_perception.drivers import ros_types

        self.env, self.emit, self.topics, self._rt = env, emit, topics, ros_types

    def clock_msg(self, stamp_ns: int) -> object:
        return self._rt.clock_msg(stamp_ns)

    def pose(self, stamp_ns: int, position: np.ndarray, orientation: np.ndarray) -> None:
        """/clock then /ee_pose at `stamp_ns`."""
        self.emit(self.topics.clock, CLOCK, stamp_ns, self._rt.clock_msg(stamp_ns))
        self.emit(self.topics.pose, POSE, stamp_ns,
                  self._rt.pose_msg(stamp_ns, BASE_FRAME, position, orientation))

    def observation(self, state: SimState, poses: bool = True) -> None:
        """Poses sampled since the last control step (or the reset pose), then both images."""
        t = state.stamp_ns
        if poses:
            trace = self.env.pose_trace or [(t, state.ee_position, state.ee_orientation)]
            for stamp, position, orientation in trace:
                self.pose(stamp, position, orientation)
        for topic, frame, camera in ((self.topics.image, self.topics.image_frame, 'scene'),
                                     (self.topics.wrist_image, self.topics.wrist_frame, 'wrist')):
            self.emit(topic, IMAGE, t,
                      self._rt.image_msg(t, frame, self.env.render(camera), 'rgb8'))

    def resend(self, state: SimState) -> None:
        """The newest pose and both images again (lock-step: an answer did not come)."""
        self.pose(state.stamp_ns, state.ee_position, state.ee_orientation)
        self.observation(state, poses=False)

    def action(self, topic: str, stamp_ns: int, action: np.ndarray,
               observation_stamp_ns: int | None = None) -> None:
        """An ActionChunk with horizon 1 (names = self.names, dt = control period)."""
        obs = stamp_ns if observation_stamp_ns is None else observation_stamp_ns
        self.emit(topic, ACTION_CHUNK, stamp_ns, self._rt.action_chunk_msg(
            stamp_ns, self.names, self.env.control_dt, np.asarray(action).reshape(1, -1), obs))

    def event(self, stamp_ns: int, info: dict) -> None:
        """/sim/episode: one JSON object (event 'start' or 'end', seed, outcome...)."""
        text = json.dumps(info, sort_keys=True)
        self.emit(self.topics.episode, STRING, stamp_ns,
                  self._rt.msg_class(STRING)(data=text))


class BagWriter:
    """One ROS 2 bag (directory) written with rosbags; topics are added on first use."""

    def __init__(self, path: str | Path, storage: str = 'mcap'):
        from rosbags.rosbag2 import StoragePlugin, Writer

        from vit_perception.drivers import ros_types

        if storage not in STORAGES:
            raise ConfigError(f'bag storage {storage!r}: expected one of {STORAGES}')
        self.path = Path(path)
        if self.path.exists():
            raise ConfigError(f'{self.path} exists: expected a new bag path (rosbags never '
                              'overwrites a bag)')
        plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
        self._rt = ros_types
        self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=plugin)
        self._writer.open()
        self._connections: dict[str, object] = {}
        self.counts: dict[str, int] = {}

    def __call__(self, topic: str, msgtype: str, stamp_ns: int, msg: object) -> None:
        self.write_cdr(topic, msgtype, stamp_ns, self._rt.serialize(msg, msgtype))

    def write_cdr(self, topic: str, msgtype: str, stamp_ns: int, cdr: bytes | memoryview) -> None:
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._writer.add_connection(topic, msgtype,
                                                     typestore=self._rt.typestore())
            self._connections[topic] = connection
        self._writer.write(connection, int(stamp_ns), bytes(cdr))
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def set_info(self, key: str, value: str) -> None:
        """A key/value in the bag's metadata.yaml custom_data."""
        self._writer.set_custom_data(key, value)

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class EpisodeSummary:
    """One recorded (or simulated) episode."""

    index: int
    seed: int
    success: bool
    steps: int
    target: tuple[float, float, float]
    final_error_m: float  # distance from the TCP to the hover goal at the end
    path: str = ''  # bag directory ('' when not recorded)
    missed_actions: int = 0  # sim process: control steps with no fresh policy action
    resent_observations: int = 0  # sim process: observations published a second time

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def episode_info(env: ReachEnv, index: int, event: str, **extra) -> dict:
    """The JSON body of a /sim/episode message."""
    state = env.state()
    error = float(np.linalg.norm(state.ee_position - env.goal_position()))
    info = {'event': event, 'episode': index, 'seed': env.seed,
            'target': [round(float(v), 6) for v in state.target_position],
            'step': state.step, 'success': state.success,
            'error_m': round(error, 6), 'control_dt': env.control_dt}
    info.update(extra)
    return info


def record_episodes(out_dir: str | Path, episodes: int, seed: int = 0, *,
                    image_size: int = 96, wrist_image_size: int | None = None,
                    max_steps: int = 60, action_noise: float = 0.05, storage: str = 'mcap',
                    progress: Callable[[EpisodeSummary], None] | None = None,
                    ) -> list[EpisodeSummary]:
    """Run the scripted expert for `episodes` episodes, one bag each: out_dir/episode_NNNN.

    Episode i uses seed `seed + i` (puck, start pose, colours, light, noise), so each bag depends
    only on its own seed. `action_noise` (m/s, std) perturbs the *executed* command while
    /expert/action keeps the clean label (DART-style), so demonstrations also show recoveries.
    """
    if episodes < 0:
        raise ConfigError(f'episodes={episodes}: expected >= 0')
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = []
    with ReachEnv(seed, image_size=image_size, wrist_image_size=wrist_image_size,
                  max_steps=max_steps) as env:
        expert = ReachExpert(env.task)
        for index in range(episodes):
            episode_seed = seed + index
            path = out_dir / f'episode_{index:04d}'
            with BagWriter(path, storage) as bag:
                summary = _record_one(env, expert, bag, index, episode_seed, action_noise)
                bag.set_info('vit_perception.sim', json.dumps(summary.to_dict() | {
                    'path': path.name, 'action_noise': action_noise}, sort_keys=True))
            summary = EpisodeSummary(**(summary.to_dict() | {'path': str(path)}))
            summaries.append(summary)
            if progress is not None:
                progress(summary)
    return summaries


def _record_one(env: ReachEnv, expert: ReachExpert, bag: BagWriter, index: int,
                episode_seed: int, action_noise: float) -> EpisodeSummary:
    noise_rng = np.random.default_rng([episode_seed, 1])  # independent of the scene's stream
    state = env.reset(episode_seed, start_ns=START_NS)
    stream = EpisodeStream(env, bag)
    stream.event(state.stamp_ns, episode_info(env, index, 'start', action_noise=action_noise))
    stream.observation(state)
    while not state.done:
        label = expert.act(state)
        stream.action(stream.topics.expert_action, state.stamp_ns, label)
        executed = label.astype(np.float64)
        if action_noise > 0:
            executed[:3] += noise_rng.normal(0.0, action_noise, 3)
        state = env.step(executed)
        stream.observation(state)
    info = episode_info(env, index, 'end', action_noise=action_noise)
    stream.event(state.stamp_ns, info)
    return EpisodeSummary(index=index, seed=episode_seed, success=state.success,
                          steps=state.step, target=tuple(info['target']),
                          final_error_m=info['error_m'])
