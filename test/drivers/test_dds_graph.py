"""ros_discovery_info (rmw_dds_common/msg/ParticipantEntitiesInfo) for Humble and Jazzy, byte for
byte: against the upstream .msg definitions and against a hand-written XCDR1 encoding.

The rclpy (Jazzy) serialization of the same message is compared in test_dds_rclpy.py, which runs
under scripts/check_ros_jazzy.sh. Humble's is not available here (no Humble wheels).
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from vit_perception.drivers import ros_graph
from vit_perception.errors import ConfigError

# rmw_dds_common/msg/*.msg on its `humble` (e26ba10) and `jazzy` (973ad5c) branches, verbatim.
UPSTREAM = {
    'humble': {'Gid': 'char[24] data\n'},
    'jazzy': {'Gid': 'char[16] data\n'},
}
for _files in UPSTREAM.values():
    _files['NodeEntitiesInfo'] = ('string<=256 node_namespace\nstring<=256 node_name\n'
                                  'Gid[] reader_gid_seq\nGid[] writer_gid_seq\n')
    _files['ParticipantEntitiesInfo'] = 'Gid gid\nNodeEntitiesInfo[] node_entities_info_seq\n'

PARTICIPANT = bytes(range(1, 17))  # GUIDs: 16 bytes
READERS = [bytes([0xA0 + i] * 16) for i in range(2)]
WRITERS = [bytes([0xB0 + i] * 16) for i in range(3)]


def hand_encoded(size: int, namespace: str, name: str) -> bytes:
    """XCDR1 little endian, written out by hand: encapsulation header, then the fields with
    4-byte alignment for lengths (relative to the end of the header) and none for char arrays."""
    out = bytearray(b'\x00\x01\x00\x00')

    def align4():
        out.extend(bytes(-(len(out) - 4) % 4))

    def gid(guid: bytes):
        out.extend(guid + bytes(size - len(guid)))

    def string(text: str):
        align4()
        data = text.encode() + b'\0'
        out.extend(struct.pack('<I', len(data)) + data)

    def gids(guids):
        align4()
        out.extend(struct.pack('<I', len(guids)))
        for g in guids:
            gid(g)

    gid(PARTICIPANT)
    align4()
    out.extend(struct.pack('<I', 1))  # one node
    string(namespace)
    string(name)
    gids(READERS)
    gids(WRITERS)
    return bytes(out)


@pytest.mark.parametrize('distro, size', [('humble', 24), ('jazzy', 16)])
@pytest.mark.parametrize('namespace, name', [('/', 'vit_perception'), ('/arm_2', 'n')])
def test_discovery_info_matches_the_upstream_layout_byte_for_byte(distro, size, namespace,
                                                                  name):
    ours = ros_graph.participant_entities_info_cdr(PARTICIPANT, namespace, name, READERS,
                                                   WRITERS, ros_graph.gid_size(distro))
    assert ours == hand_encoded(size, namespace, name)

    # the same message through a typestore built from the upstream .msg files
    store = get_typestore(Stores.EMPTY)
    types = {}
    for msg, text in UPSTREAM[distro].items():
        types.update(get_types_from_msg(text, f'rmw_dds_common/msg/{msg}'))
    store.register(types)
    gid = store.types['rmw_dds_common/msg/Gid']
    msgtype = 'rmw_dds_common/msg/ParticipantEntitiesInfo'
    def g(guid):
        return gid(data=np.frombuffer(guid + bytes(size - 16), np.uint8))

    node = store.types['rmw_dds_common/msg/NodeEntitiesInfo'](
        node_namespace=namespace, node_name=name, reader_gid_seq=[g(r) for r in READERS],
        writer_gid_seq=[g(w) for w in WRITERS])
    upstream = store.serialize_cdr(store.types[msgtype](gid=g(PARTICIPANT),
                                                        node_entities_info_seq=[node]), msgtype)
    assert ours == bytes(upstream)
    decoded = ros_graph.decode(ours, size)
    assert bytes(decoded.node_entities_info_seq[0].writer_gid_seq[2].data)[:16] == WRITERS[2]


def test_gid_size_follows_the_distribution(monkeypatch):
    assert [ros_graph.gid_size(d) for d in ('foxy', 'galactic', 'humble', 'Humble')] == [24] * 4
    assert [ros_graph.gid_size(d) for d in ('iron', 'jazzy', 'kilted', 'rolling', '')] == [16] * 5
    monkeypatch.setenv('ROS_DISTRO', 'humble')
    assert ros_graph.gid_size() == 24
    assert ros_graph.gid_size('jazzy') == 16  # the parameter wins over the environment
    monkeypatch.delenv('ROS_DISTRO')
    assert ros_graph.gid_size() == 16
    with pytest.raises(ConfigError, match='humble or jazzy'):
        ros_graph.gid_size('humble;rm')
    with pytest.raises(ConfigError, match='a Gid holds 16'):
        ros_graph.participant_entities_info_cdr(bytes(24), '/', 'n', [], [], 16)
