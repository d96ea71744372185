"""The node's inputs as one table, built from the config, that every live driver iterates.

    InputRoute   topic, ROS type, QoS, converter (message -> core value), core method
    input_routes(config) -> [InputRoute]   cameras in checkpoint order, then the pose topic
    RouteInput   a route bound to a core: counts what arrives (`rx.<topic>`), decodes the CDR
                 bytes (drivers/ros_types: the same zero-copy code on every backend), converts,
                 and delivers; anything undecodable or unconvertible is dropped, counted by
                 reason and logged (throttled) by the core, never acted on

Adding an input type is one row here plus its converter in ros_types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vit_perception.config import NodeConfig
from vit_perception.core.node import PerceptionCore
from vit_perception.drivers import ros_types

DECODE_ERROR = 'decode_error'  # drop reason: the bytes are not a CDR message of the route's type


@dataclass(frozen=True)
class InputRoute:
    """One subscription: where from, what type and QoS, how to convert, which core method."""

    topic: str
    msgtype: str  # 'pkg/msg/Type'
    reliability: str  # 'reliable' | 'best_effort' (keep-last, volatile)
    depth: int
    convert: Callable[[object], object]  # rosbags message -> ImageFrame / PoseSample
    deliver: Callable[[PerceptionCore, object], None]  # to_image or to_pose
    bad_reason: str  # drop reason when `convert` fails


def to_image(core: PerceptionCore, frame) -> None:
    core.on_image(frame)


def to_pose(core: PerceptionCore, pose) -> None:
    core.on_pose(pose)


def input_routes(config: NodeConfig) -> list[InputRoute]:
    """The camera routes (checkpoint order) and, with pose_input.source 'topic', the pose."""
    topics, qos = config.topics, config.qos
    routes = []
    for camera, (topic, transport) in enumerate(zip(topics.cameras, topics.camera_transports)):
        if transport == 'compressed':
            msgtype, convert = ros_types.COMPRESSED_IMAGE, ros_types.compressed_from_msg
        else:
            msgtype, convert = ros_types.IMAGE, ros_types.image_from_msg
        routes.append(InputRoute(
            topic, msgtype, qos.image_reliability, qos.image_depth,
            lambda msg, convert=convert, camera=camera: convert(msg, camera),
            to_image, 'bad_image'))
    if config.pose_input.source == 'topic':
        routes.append(InputRoute(topics.pose, ros_types.POSE_STAMPED, qos.pose_reliability,
                                 qos.pose_depth, ros_types.pose_from_msg,
                                 to_pose, 'bad_pose'))
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
        route.deliver(self.core, value)


def received_values(inputs: list[RouteInput]) -> dict[str, str]:
    """`rx.<topic>`: messages received per input, for /diagnostics (transport loss shows)."""
    return {f'rx.{i.route.topic}': str(i.received) for i in inputs}
