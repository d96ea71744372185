"""The I/O layer every live driver shares: input routes (CDR in) and MessageOutputs (CDR out).

Runs anywhere (no transport): the bytes checked here are what the DDS node and the rclpy node
both put on the wire.
"""

from __future__ import annotations

import numpy as np
import pytest

from vit_perception.config import NodeConfig
from vit_perception.core.node import DiagnosticsReport
from vit_perception.core.types import ActionChunkResult
from vit_perception.drivers import ros_types as rt
from vit_perception.drivers.outputs import MessageOutputs, action_frame_id
from vit_perception.drivers.routes import (
    CORE_INPUTS,
    RouteInput,
    input_routes,
    received_values,
)
from vit_perception.errors import ConfigError


def config(**data) -> NodeConfig:
    return NodeConfig.from_dict(data)


# ------------------------------------------------------------------------------------------
# Input routes
# ------------------------------------------------------------------------------------------

def test_routes_follow_the_config_cameras_in_order_then_the_pose():
    cfg = config(topics={'cameras': ['/a/image_raw', '/b/image_raw/compressed'],
                         'camera_transports': ['raw', 'compressed'], 'pose': '/arm/pose'},
                 qos={'image_reliability': 'reliable', 'image_depth': 2, 'pose_depth': 7})
    routes = input_routes(cfg)
    assert [(r.topic, r.msgtype, r.reliability, r.depth, r.kind, r.bad_reason)
            for r in routes] == [
        ('/a/image_raw', rt.IMAGE, 'reliable', 2, 'image', 'bad_image'),
        ('/b/image_raw/compressed', rt.COMPRESSED_IMAGE, 'reliable', 2, 'image', 'bad_image'),
        ('/arm/pose', rt.POSE_STAMPED, 'reliable', 7, 'pose', 'bad_pose')]
    assert {kind: CORE_INPUTS[kind] for kind in ('image', 'pose')} == {'image': 'on_image',
                                                                       'pose': 'on_pose'}
    tf = config(pose_input={'source': 'tf'})
    assert [r.topic for r in input_routes(tf)] == ['/camera/image_raw']  # no pose topic


def test_one_pose_route_per_arm_and_joint_states_only_with_proprio_names():
    cfg = config(topics={'poses': ['/left/pose', '/right/pose'], 'joint_states': '/js'},
                 qos={'pose_reliability': 'best_effort', 'pose_depth': 3})
    assert [r.topic for r in input_routes(cfg)] == ['/camera/image_raw', '/left/pose',
                                                    '/right/pose']
    routes = input_routes(cfg, ['waist', 'gripper'])
    assert [(r.topic, r.msgtype, r.reliability, r.depth, r.kind, r.bad_reason)
            for r in routes[1:]] == [
        ('/left/pose', rt.POSE_STAMPED, 'best_effort', 3, 'pose', 'bad_pose'),
        ('/right/pose', rt.POSE_STAMPED, 'best_effort', 3, 'pose', 'bad_pose'),
        ('/js', rt.JOINT_STATE, 'best_effort', 3, 'joints', 'bad_joint_state')]
    with pytest.raises(ConfigError, match='topic /left/pose is used twice'):
        input_routes(config(topics={'poses': ['/left/pose', '/left/pose']}))
    with pytest.raises(ConfigError, match='topics.pose=.* and topics.poses'):
        config(topics={'pose': '/a', 'poses': ['/b']})
    assert config(topics={'pose': '/a'}).topics.poses == ['/a']  # the one-arm shorthand
    with pytest.raises(ConfigError, match='pose_input.source tf reads one arm'):
        config(topics={'poses': ['/l', '/r']}, pose_input={'source': 'tf'})


def test_pose_routes_tag_the_arm_and_joint_states_are_read_by_name(recording_core):
    cfg = config(topics={'poses': ['/left/pose', '/right/pose']})
    inputs = [RouteInput(route, recording_core)
              for route in input_routes(cfg, ['right_grip', 'left_waist'])]
    inputs[2].on_cdr(rt.serialize(rt.pose_msg(5_000_000_000, 'world', [1.0, 2.0, 3.0],
                                              [0.0, 0.0, 0.0, 1.0])))
    assert [(p.arm, p.stamp_ns, p.frame_id) for p in recording_core.poses] == [
        (1, 5_000_000_000, 'world')]
    inputs[3].on_cdr(rt.serialize(rt.joint_state_msg(
        6_000_000_001, ['left_waist', 'left_grip', 'right_grip'], [0.25, -1.0, 0.75])))
    (joints,) = recording_core.joints
    assert joints.stamp_ns == 6_000_000_001 and joints.positions.tolist() == [0.75, 0.25]
    assert received_values(inputs)['rx./joint_states'] == '1' and recording_core.bad == []


def test_malformed_joint_states_are_dropped_counted_and_never_delivered(recording_core):
    route = RouteInput(input_routes(config(), ['a', 'b'])[-1], recording_core)
    route.on_cdr(rt.serialize(rt.joint_state_msg(1, ['a'], [0.5])))  # 'b' missing
    msg = rt.joint_state_msg(2, ['a', 'b'], [0.5])  # two names, one position
    route.on_cdr(rt.serialize(msg))
    route.on_cdr(b'\x00\x01\x00\x00\x07\x00')  # truncated CDR
    assert recording_core.joints == [] and route.received == 3
    assert [r for _, r, _ in recording_core.bad] == ['bad_joint_state', 'bad_joint_state',
                                                     'decode_error']
    assert "lacks the joints ['b']" in recording_core.bad[0][2]
    assert '2 names and 1 positions' in recording_core.bad[1][2]


def test_route_input_decodes_cdr_to_a_zero_copy_frame_and_counts(recording_core):
    cfg = config(topics={'cameras': ['/a', '/b'], 'camera_transports': ['raw', 'raw']})
    second = RouteInput(input_routes(cfg)[1], recording_core)
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    cdr = bytearray(rt.serialize(rt.image_msg(12_000_000_345, 'wrist', pixels, 'rgb8')))
    second.on_cdr(cdr)
    frame = recording_core.images[0]
    assert (frame.stamp_ns, frame.frame_id, frame.camera) == (12_000_000_345, 'wrist', 1)
    assert (frame.height, frame.width, frame.step, frame.encoding) == (4, 5, 15, 'rgb8')
    assert np.shares_memory(np.asarray(frame.data), np.frombuffer(cdr, np.uint8))  # a view
    np.testing.assert_array_equal(np.asarray(frame.data), pixels.reshape(-1))
    assert second.received == 1 and recording_core.bad == []
    assert received_values([second]) == {'rx./b': '1'}


def test_route_input_pose(recording_core):
    pose_route = RouteInput(input_routes(config())[-1], recording_core)
    pose_route.on_cdr(rt.serialize(rt.pose_msg(7_500_000_000, 'base', [0.1, 0.2, 0.3],
                                               [0.0, 0.0, 0.6, 0.8])))
    sample = recording_core.poses[0]
    assert (sample.stamp_ns, sample.frame_id) == (7_500_000_000, 'base')
    np.testing.assert_array_equal(sample.position, [0.1, 0.2, 0.3])
    np.testing.assert_array_equal(sample.orientation, [0.0, 0.0, 0.6, 0.8])  # x y z w


def test_route_input_drops_undecodable_and_unconvertible_messages(recording_core):
    cfg = config(topics={'cameras': ['/c/compressed'], 'camera_transports': ['compressed']})
    route = RouteInput(input_routes(cfg)[0], recording_core)
    route.on_cdr(b'\x00\x01\x00\x00\x05')  # truncated CDR
    route.on_cdr(rt.serialize(rt.compressed_image_msg(5, 'cam', b'\xff\xd8', '')))  # no format
    assert recording_core.images == [] and route.received == 2
    assert [(s, r) for s, r, _ in recording_core.bad] == [('/c/compressed', 'decode_error'),
                                                           ('/c/compressed', 'bad_image')]
    assert 'cannot decode sensor_msgs/msg/CompressedImage (5 bytes)' in recording_core.bad[0][2]
    assert 'format is empty' in recording_core.bad[1][2]


# ------------------------------------------------------------------------------------------
# MessageOutputs
# ------------------------------------------------------------------------------------------

class Engine:
    model_id = 'tiny-v1'
    action_names = ['dx', 'dz', 'drz', 'gripper']
    dt = 0.1

    def __init__(self, kind='delta'):
        from types import SimpleNamespace

        self.config = SimpleNamespace(actions=SimpleNamespace(kind=kind))


def outputs(transport, cfg=None, kind='delta', **kwargs) -> MessageOutputs:
    return MessageOutputs(transport.make_publisher, cfg or config(), Engine(kind),
                          clock=lambda: 4_000_000_000, **kwargs)


def test_outputs_publish_the_bytes_ros_types_builds(capturing_transport):
    cfg = config(sync={'pose_frame_id': 'base'})
    out = outputs(capturing_transport, cfg)
    result = ActionChunkResult(3_000_000_007, np.array([0.5, -1.25], np.float32),
                               np.arange(8, dtype=np.float32).reshape(2, 4))  # (H=2, A=4)
    out.publish_embedding(result, 'wrist')
    out.publish_chunk(result)
    out.publish_action(3_100_000_000, np.array([0.01, -0.02, 0.05, 1.0]), 3_000_000_007)
    topics = cfg.topics
    assert capturing_transport.sent(topics.embedding) == [bytes(rt.serialize(
        rt.embedding_msg(result, 'tiny-v1', 'wrist')))]
    assert capturing_transport.sent(topics.action_chunk) == [bytes(rt.serialize(
        rt.action_chunk_msg(3_000_000_007, Engine.action_names, 0.1, result.chunk,
                            3_000_000_007, 'base')))]
    action = rt.deserialize(capturing_transport.sent(topics.action)[0], rt.ACTION_CHUNK)
    assert (action.horizon, action.header.frame_id, rt.stamp_ns(action.header.stamp),
            rt.stamp_ns(action.observation_stamp)) == (1, 'base', 3_100_000_000, 3_000_000_007)
    np.testing.assert_array_equal(action.data, np.float32([0.01, -0.02, 0.05, 1.0]))
    qos = {p.topic: (p.msgtype, p.qos) for p in capturing_transport.publishers.values()}
    assert qos[topics.action] == (rt.ACTION_CHUNK, ('reliable', 10))
    assert qos[topics.diagnostics] == (rt.DIAGNOSTIC_ARRAY, ('reliable', 10))
    assert topics.twist not in qos  # off by default


@pytest.mark.parametrize('kind, expected', [('delta', [0.1, 0.0, -0.2, 0.0, 0.0, 0.5]),
                                            ('velocity', [0.01, 0.0, -0.02, 0.0, 0.0, 0.05])])
def test_twist_output_on_every_backend(capturing_transport, kind, expected):
    cfg = config(topics={'twist': '/ee/cmd_vel'}, pose_input={'source': 'tf',
                                                              'tf_base_frame': 'world'})
    out = outputs(capturing_transport, cfg, kind=kind)
    out.publish_action(1_000_000_000, np.array([0.01, -0.02, 0.05, 1.0]), 900_000_000)
    twist = rt.deserialize(capturing_transport.sent('/ee/cmd_vel')[0], rt.TWIST_STAMPED)
    assert twist.header.frame_id == 'world' and rt.stamp_ns(twist.header.stamp) == 10**9
    got = [twist.twist.linear.x, twist.twist.linear.y, twist.twist.linear.z,
           twist.twist.angular.x, twist.twist.angular.y, twist.twist.angular.z]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_twist_output_refused_for_a_model_without_twist_dimensions(capturing_transport):
    engine = Engine()
    engine.action_names = ['gripper']
    with pytest.raises(ConfigError, match='topics.twist'):
        MessageOutputs(capturing_transport.make_publisher, config(topics={'twist': '/t'}),
                       engine, clock=lambda: 0)


def test_diagnostics_name_and_hardware_id_are_the_node_name(capturing_transport):
    out = outputs(capturing_transport, node_name='arm_left_perception',
                  extra_values=lambda: {'rx./camera/image_raw': '12'})
    out.publish_diagnostics(DiagnosticsReport(1, 'no action: no pose received yet',
                                              {'model_id': 'tiny-v1'}))
    msg = rt.deserialize(capturing_transport.sent('/diagnostics')[0], rt.DIAGNOSTIC_ARRAY)
    status = msg.status[0]
    assert rt.stamp_ns(msg.header.stamp) == 4_000_000_000 and status.level == 1
    assert (status.name, status.hardware_id) == ('arm_left_perception: perception',
                                                 'arm_left_perception')
    assert [(kv.key, kv.value) for kv in status.values] == [
        ('model_id', 'tiny-v1'), ('rx./camera/image_raw', '12')]


def test_action_frame_is_the_pose_frame():
    assert action_frame_id(config()) == ''
    assert action_frame_id(config(sync={'pose_frame_id': 'base'})) == 'base'
    assert action_frame_id(config(pose_input={'source': 'tf', 'tf_base_frame': 'world'},
                                  sync={'pose_frame_id': 'base'})) == 'world'
