"""The core's Outputs for every live driver: messages built once, published as CDR bytes.

    MessageOutputs(make_publisher, config, engine, clock, ...)
        make_publisher(topic, msgtype, reliability, depth) -> an object with publish_cdr(bytes)

The DDS driver hands DdsPublisher (publish_cdr), the rclpy driver a serialized rclpy publisher,
so embedding, chunk, action, twist and diagnostics are the same bytes on every backend (stamps
aside). One definition of each field:

    header.frame_id of chunks, actions and twists   the frame the pose (and so the action) is
        expressed in: pose_input.tf_base_frame with pose_input.source 'tf', else
        sync.pose_frame_id ('' when any frame is accepted)
    header.frame_id of the embedding                the first camera's image frame
    diagnostics status name / hardware_id           '<node name>: perception' / '<node name>'
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from vit_perception.config import NODE_NAME, NodeConfig
from vit_perception.core.types import ActionChunkResult
from vit_perception.drivers import ros_types
from vit_perception.errors import ConfigError

TWIST_NAMES = ('dx', 'dy', 'dz', 'drx', 'dry', 'drz')  # -> linear xyz, angular xyz
DIAGNOSTICS_QOS = ('reliable', 10)  # fixed, as rclpy's default profile

_LEVELS = {'info': logging.INFO, 'warn': logging.WARNING, 'error': logging.ERROR}

PublisherFactory = Callable[[str, str, str, int], object]  # topic, msgtype, reliability, depth


def action_frame_id(config: NodeConfig) -> str:
    """The frame actions are expressed in (see the module docstring)."""
    if config.pose_input.source == 'tf':
        return config.pose_input.tf_base_frame
    return config.sync.pose_frame_id


def twist_indices(names: Sequence[str]) -> list[int | None]:
    """Index in `names` of dx dy dz drx dry drz (None where the model has no such dimension)."""
    return [names.index(n) if n in names else None for n in TWIST_NAMES]


def twist_values(action: np.ndarray, indices: Sequence[int | None], dt: float,
                 kind: str = 'delta') -> list[float]:
    """Linear xyz + angular xyz: per-step deltas / dt (kind 'delta') or the values as they are
    (kind 'velocity': already m/s and rad/s); missing dimensions are 0."""
    divisor = dt if kind == 'delta' else 1.0
    return [0.0 if i is None else float(action[i]) / divisor for i in indices]


class MessageOutputs:
    """PerceptionCore Outputs on any transport's publishers; called from the core's threads."""

    def __init__(self, make_publisher: PublisherFactory, config: NodeConfig, engine,
                 clock: Callable[[], int], *, node_name: str = NODE_NAME,
                 logger: logging.Logger | None = None,
                 extra_values: Callable[[], dict[str, str]] | None = None):
        topics, qos = config.topics, config.qos
        self.model_id = str(engine.model_id)
        self.action_names = list(engine.action_names)
        self.dt = float(engine.dt)
        self.frame_id = action_frame_id(config)
        self._kind = engine.config.actions.kind if hasattr(engine, 'config') else 'delta'
        self._twist_indices = twist_indices(self.action_names)
        if topics.twist and all(i is None for i in self._twist_indices):
            raise ConfigError(f'topics.twist={topics.twist!r} but the model actions '
                              f'{self.action_names} have none of {list(TWIST_NAMES)}')
        self._clock = clock
        self._node_name = node_name
        self._logger = logger or logging.getLogger(f'vit_perception.{node_name}')
        self._extra_values = extra_values
        out = (qos.output_reliability, qos.output_depth)
        for msgtype in (ros_types.EMBEDDING, ros_types.ACTION_CHUNK, ros_types.DIAGNOSTIC_ARRAY,
                        ros_types.TWIST_STAMPED):
            ros_types.prepare(msgtype)
        self._embedding = make_publisher(topics.embedding, ros_types.EMBEDDING, *out)
        self._chunk = make_publisher(topics.action_chunk, ros_types.ACTION_CHUNK, *out)
        self._action = make_publisher(topics.action, ros_types.ACTION_CHUNK, *out)
        self._diagnostics = make_publisher(topics.diagnostics, ros_types.DIAGNOSTIC_ARRAY,
                                           *DIAGNOSTICS_QOS)
        self._twist = (make_publisher(topics.twist, ros_types.TWIST_STAMPED, *out)
                       if topics.twist else None)

    def publish_embedding(self, result: ActionChunkResult, frame_id: str) -> None:
        self._embedding.publish_cdr(ros_types.serialize(
            ros_types.embedding_msg(result, self.model_id, frame_id), ros_types.EMBEDDING))

    def publish_chunk(self, result: ActionChunkResult) -> None:
        stamp = result.observation_stamp_ns
        self._chunk.publish_cdr(ros_types.serialize(ros_types.action_chunk_msg(
            stamp, self.action_names, self.dt, result.chunk, stamp, self.frame_id),
            ros_types.ACTION_CHUNK))

    def publish_action(self, stamp_ns: int, action: np.ndarray,
                       observation_stamp_ns: int) -> None:
        self._action.publish_cdr(ros_types.serialize(ros_types.action_chunk_msg(
            stamp_ns, self.action_names, self.dt, np.reshape(action, (1, -1)),
            observation_stamp_ns, self.frame_id), ros_types.ACTION_CHUNK))
        if self._twist is not None:
            values = twist_values(action, self._twist_indices, self.dt, self._kind)
            self._twist.publish_cdr(ros_types.serialize(ros_types.twist_msg(
                stamp_ns, self.frame_id, values[:3], values[3:]), ros_types.TWIST_STAMPED))

    def publish_diagnostics(self, report) -> None:
        if self._extra_values is not None:
            report.values.update(self._extra_values())
        self._diagnostics.publish_cdr(ros_types.serialize(ros_types.diagnostics_msg(
            report, self._clock(), f'{self._node_name}: perception',
            hardware_id=self._node_name), ros_types.DIAGNOSTIC_ARRAY))

    def log(self, level: str, text: str) -> None:
        self._logger.log(_LEVELS.get(level, logging.INFO), text)
