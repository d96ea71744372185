"""ros_discovery_info: the graph message every DDS-based rmw publishes, for Humble and Jazzy.

`ros2 node list` finds nodes through rmw_dds_common/msg/ParticipantEntitiesInfo on the DDS topic
`ros_discovery_info`: a participant's GID and, per node, its name, namespace and the GIDs of its
readers and writers. Its Gid changed size (rmw_dds_common 2.0, Iron): `char[24] data` in Foxy,
Galactic and Humble, `char[16] data` in Iron, Jazzy and later. A DDS GUID is 16 bytes; Humble's
rmws zero-pad it to 24. The message definitions below are rmw_dds_common's .msg files (humble and
jazzy branches), the Gid size filled in per distribution.

The distribution comes from a parameter or $ROS_DISTRO (set by every ROS 2 setup.bash); without
either, Iron and later (16 bytes).
"""

from __future__ import annotations

import functools
import os

import numpy as np
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from vit_perception.errors import ConfigError

PARTICIPANT_ENTITIES_INFO = 'rmw_dds_common/msg/ParticipantEntitiesInfo'
DISCOVERY_TOPIC = 'ros_discovery_info'  # a DDS topic name, without ROS's 'rt/' prefix
GID_SIZE = 16  # Iron and later
DISTROS_WITH_24_BYTE_GID = ('ardent', 'bouncy', 'crystal', 'dashing', 'eloquent', 'foxy',
                            'galactic', 'humble')

_DEFINITIONS = {
    'Gid': 'char[{gid_size}] data',
    'NodeEntitiesInfo': 'string<=256 node_namespace\nstring<=256 node_name\n'
                        'Gid[] reader_gid_seq\nGid[] writer_gid_seq',
    'ParticipantEntitiesInfo': 'Gid gid\nNodeEntitiesInfo[] node_entities_info_seq',
}


def gid_size(ros_distro: str | None = None) -> int:
    """Bytes of an rmw_dds_common/msg/Gid for `ros_distro` (None: $ROS_DISTRO): 24 up to Humble,
    16 from Iron on (and when no distribution is named). ConfigError for a malformed name."""
    name = (os.environ.get('ROS_DISTRO', '') if ros_distro is None else ros_distro)
    name = name.strip().lower()
    if name and not name.isalpha():
        raise ConfigError(f'ROS distribution {name!r}: expected a name like humble or jazzy')
    return 24 if name in DISTROS_WITH_24_BYTE_GID else GID_SIZE


@functools.cache
def typestore(size: int):
    """A rosbags typestore holding the rmw_dds_common graph messages with a `size`-byte Gid."""
    if size not in (16, 24):
        raise ConfigError(f'Gid size {size}: expected 16 (Iron and later) or 24 (Humble)')
    store = get_typestore(Stores.EMPTY)
    types = {}
    for name, text in _DEFINITIONS.items():
        types.update(get_types_from_msg(text.format(gid_size=size), f'rmw_dds_common/msg/{name}'))
    store.register(types)
    return store


def participant_entities_info_cdr(participant_guid: bytes, node_namespace: str, node_name: str,
                                  reader_guids, writer_guids, size: int = GID_SIZE) -> bytes:
    """ParticipantEntitiesInfo for one node, as CDR (little endian, with its encapsulation
    header): the GUIDs (16 bytes each) zero-padded to `size`-byte Gids, as the rmws do."""
    store = typestore(size)
    gid_class = store.types['rmw_dds_common/msg/Gid']

    def gid(guid: bytes):
        guid = bytes(guid)
        if len(guid) > size:
            raise ConfigError(f'GUID of {len(guid)} bytes: a Gid holds {size}')
        return gid_class(data=np.frombuffer(guid.ljust(size, b'\0'), np.uint8))

    node = store.types['rmw_dds_common/msg/NodeEntitiesInfo'](
        node_namespace=node_namespace, node_name=node_name,
        reader_gid_seq=[gid(g) for g in reader_guids],
        writer_gid_seq=[gid(g) for g in writer_guids])
    msg = store.types[PARTICIPANT_ENTITIES_INFO](gid=gid(participant_guid),
                                                 node_entities_info_seq=[node])
    return bytes(store.serialize_cdr(msg, PARTICIPANT_ENTITIES_INFO))


def decode(cdr: bytes, size: int = GID_SIZE):
    """A ParticipantEntitiesInfo message (rosbags object) from CDR bytes."""
    return typestore(size).deserialize_cdr(bytes(cdr), PARTICIPANT_ENTITIES_INFO)
