"""The DDS driver against real ROS 2 Jazzy (rclpy, Fast DDS): runs under
scripts/check_ros_jazzy.sh, skipped where rclpy is not importable."""

from __future__ import annotations

import pytest

from vit_perception.drivers import ros_graph

pytestmark = pytest.mark.requires_rclpy


def test_ros_discovery_info_is_byte_identical_to_rclpy_serialization():
    """Jazzy's rmw_dds_common message (16-byte Gid), serialized by rclpy's typesupport."""
    pytest.importorskip('rclpy')
    from rclpy.serialization import serialize_message
    from rmw_dds_common.msg import Gid, NodeEntitiesInfo, ParticipantEntitiesInfo

    participant, readers = bytes(range(1, 17)), [bytes([0xA0 + i] * 16) for i in range(2)]
    writers = [bytes([0xB0 + i] * 16) for i in range(3)]
    msg = ParticipantEntitiesInfo(
        gid=Gid(data=list(participant)),
        node_entities_info_seq=[NodeEntitiesInfo(
            node_namespace='/arm', node_name='vit_perception',
            reader_gid_seq=[Gid(data=list(g)) for g in readers],
            writer_gid_seq=[Gid(data=list(g)) for g in writers])])
    assert len(Gid().data) == ros_graph.gid_size('jazzy') == 16
    assert ros_graph.participant_entities_info_cdr(
        participant, '/arm', 'vit_perception', readers, writers,
        ros_graph.gid_size('jazzy')) == bytes(serialize_message(msg))
