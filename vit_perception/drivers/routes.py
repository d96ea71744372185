"""The node's inputs as one table, built from the config, that every live driver iterates.

    InputRoute   topic, ROS type, QoS, converter (message -> core value), core input kind
    input_routes(config, proprio_names) -> [InputRoute]   cameras in checkpoint order, one
                 pose topic per arm, the joint states when the checkpoint reads joints
    RouteInput   a route bound to a core: counts what arrives (`rx.<topic>`), decodes the CDR
                 bytes (drivers/ros_types: the same zero-copy code on every backend), converts,
                 and delivers; anything undecodable or unconvertible is dropped, counted by
                 reason and logged (throttled) by the core, never acted on

The same rows feed the rclpy node, the DDS node, the bag reader (replay) and the training
dataset. Adding an input type is one row here plus its converter in ros_types (and, for a new
kind of value, its core/ObservationBuilder callback).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vit_perception.config import NodeConfig
from vit_perception.core.node import PerceptionCore
from vit_perception.drivers import ros_types
from vit_perception.errors import ConfigError

DECODE_ERROR = 'decode_error'  # drop reason: the bytes are not a CDR message of the route's type


@dataclass(frozen=True)
class InputRoute:
    """One subscription: where from, what type and QoS, how to convert, which core input."""

    topic: str
    msgtype: str  # 'pkg/msg/Type'
    reliability: str  # 'reliable' | 'best_effort' (keep-last, volatile)
    depth: int
    convert: Callable[[object], object]  # rosbags message -> ImageFrame / PoseSample / ...
    kind: str  # one of CORE_INPUTS: which core callback takes the converted value
    bad_reason: str  # drop reason when `convert` fails


# kind -> the PerceptionCore callback (the ObservationBuilder method is `add_<kind>`).
CORE_INPUTS = {'image': 'on_image', 'pose': 'on_pose', 'joints': 'on_joints'}


def deliver(core: PerceptionCore, kind: str, value) -> None:
    """Hand a converted value to the core callback of `kind`."""
    getattr(core, CORE_INPUTS[kind])(value)


def input_routes(config: NodeConfig, proprio_names: Sequence[str] = ()) -> list[InputRoute]:
    """The rows: cameras (checkpoint order); with pose_input.source 'topic' one pose per arm
    (checkpoint order); the joint states when the checkpoint reads `proprio_names`."""
    topics, qos = config.topics, config.qos
    routes = []
    for camera, (topic, transport) in enumerate(zip(topics.cameras, topics.camera_transports)):
        if transport == 'compressed':
            msgtype, convert = ros_types.COMPRESSED_IMAGE, ros_types.compressed_from_msg
        else:
            msgtype, convert = ros_types.IMAGE, ros_types.image_from_msg
        routes.append(InputRoute(
            topic, msgtype, qos.image_reliability, qos.image_depth,
            functools.partial(convert, camera=camera), 'image', 'bad_image'))
    if config.pose_input.source == 'topic':
        for arm, topic in enumerate(topics.poses):
            routes.append(InputRoute(
                topic, ros_types.POSE_STAMPED, qos.pose_reliability, qos.pose_depth,
                functools.partial(ros_types.pose_from_msg, arm=arm), 'pose', 'bad_pose'))
    if proprio_names:
        routes.append(InputRoute(
            topics.joint_states, ros_types.JOINT_STATE, qos.pose_reliability, qos.pose_depth,
            functools.partial(ros_types.joint_state_from_msg, names=list(proprio_names)),
            'joints', 'bad_joint_state'))
    topics_used = [route.topic for route in routes]
    for topic in topics_used:
        if topics_used.count(topic) > 1:
            raise ConfigError(f'topic {topic} is used twice; expected one topic per '
                              'camera, per arm pose and for the joint states')
    return routes


class RouteInput:
    """A route bound to a core. `on_cdr(bytes)` is the subscription callback of every driver."""

    def __init__(self, route: InputRoute, core: PerceptionCore):
        ros_types.prepare(route.msgtype)
        self.route = route
        self.core = core
        self.received = 0  # messages that arrived (rx.<topic> in /diagnostics)

    def on_cdr(self, cdr) -> None:
        """CDR bytes (encapsulation header included) -> core, or a counted drop."""
        self.received += 1
        route = self.route
        try:
            msg = ros_types.deserialize(cdr, route.msgtype)
        except Exception as err:  # rosbags SerdeError and friends
            self.core.on_bad_message(route.topic, DECODE_ERROR, f'cannot decode {route.msgtype} '
                                     f'({len(cdr)} bytes): {type(err).__name__}: {err}')
            return
        self.on_msg(msg)

    def on_msg(self, msg) -> None:
        """A decoded message (bag replay) -> core, or a counted drop."""
        route = self.route
        try:
            value = route.convert(msg)
        except Exception as err:
            self.core.on_bad_message(route.topic, route.bad_reason, f'{type(err).__name__}: {err}')
            return
        deliver(self.core, route.kind, value)


def received_values(inputs: list[RouteInput]) -> dict[str, str]:
    """`rx.<topic>`: messages received per input, for /diagnostics (transport loss shows)."""
    return {f'rx.{i.route.topic}': str(i.received) for i in inputs}
