"""ROS 2 message definitions and pure conversions between messages and core types.

One source of message definitions: rosbags' typestore for ROS 2 Jazzy (the standard
interfaces; identical to Humble for every type used here) plus this package's `msg/*.msg`,
registered at first use. Messages are rosbags message objects; CDR (de)serialization is
rosbags' (byte-identical to what rmw_cyclonedds and rmw_fastrtps put on the wire).

Conversions never copy pixel data: `image_from_msg` hands the core the numpy view rosbags made
on the received buffer.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from vit_perception.core.types import (
    ActionChunkResult,
    ImageFrame,
    JointSample,
    PoseSample,
    from_ns,
    to_ns,
)
from vit_perception.errors import ConfigError, ImageError, PoseError

# Standard interfaces: ROS 2 Jazzy (Image, CompressedImage, PoseStamped, DiagnosticArray, Clock
# and their parts are the same in Humble). RIHS01 type hashes are Jazzy's.
ROS_STORE = Stores.ROS2_JAZZY
PACKAGE = 'vit_perception'

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE = 'sensor_msgs/msg/CompressedImage'
POSE_STAMPED = 'geometry_msgs/msg/PoseStamped'
JOINT_STATE = 'sensor_msgs/msg/JointState'
DIAGNOSTIC_ARRAY = 'diagnostic_msgs/msg/DiagnosticArray'
TWIST_STAMPED = 'geometry_msgs/msg/TwistStamped'
CLOCK = 'rosgraph_msgs/msg/Clock'
EMBEDDING = f'{PACKAGE}/msg/Embedding'
PARTICIPANT_ENTITIES_INFO = 'rmw_dds_common/msg/ParticipantEntitiesInfo'  # ros_discovery_info

# rmw_dds_common's graph messages (not in rosbags' stores): what every DDS-based rmw publishes on
# ros_discovery_info so that `ros2 node list` sees the nodes of a participant. The Gid is 16
# bytes since Iron (char[24] in Humble and before).
_RMW_DDS_COMMON = {
    'Gid': 'char[{gid_size}] data',
    'NodeEntitiesInfo': 'string<=256 node_namespace\nstring<=256 node_name\n'
                        'Gid[] reader_gid_seq\nGid[] writer_gid_seq',
    'ParticipantEntitiesInfo': 'Gid gid\nNodeEntitiesInfo[] node_entities_info_seq',
}
ACTION_CHUNK = f'{PACKAGE}/msg/ActionChunk'

# (encoding) -> (channels, bytes per channel) for the raw encodings image_msg builds.
_ENCODINGS = {
    'rgb8': (3, 1), 'bgr8': (3, 1), 'rgba8': (4, 1), 'bgra8': (4, 1), 'mono8': (1, 1),
    '8UC1': (1, 1), '8UC3': (3, 1), '8UC4': (4, 1), 'mono16': (1, 2), '16UC1': (1, 2),
    'rgb16': (3, 2), 'bgr16': (3, 2), 'rgba16': (4, 2), 'bgra16': (4, 2),
}


def msg_dirs() -> list[Path]:
    """Where this package's .msg files may live, in search order.

    `<ament share>/vit_perception/msg` (ROS install), `<sys.prefix>/share/vit_perception/msg`
    (pip install), `<repo>/msg` (source checkout).
    """
    dirs = []
    try:
        from ament_index_python.packages import get_package_share_directory

        dirs.append(Path(get_package_share_directory(PACKAGE)) / 'msg')
    except Exception:  # not a ROS install, or the package is not in the ament index
        pass
    dirs.append(Path(sys.prefix) / 'share' / PACKAGE / 'msg')
    dirs.append(Path(__file__).resolve().parents[2] / 'msg')
    return dirs


def find_msg_dir() -> Path:
    """The first directory of `msg_dirs()` holding .msg files (ConfigError if none)."""
    dirs = msg_dirs()
    for path in dirs:
        if path.is_dir() and any(path.glob('*.msg')):
            return path
    raise ConfigError(f'{PACKAGE} message definitions not found: expected *.msg in one of '
                      f'{", ".join(str(d) for d in dirs)}')


@functools.lru_cache(maxsize=1)
def typestore():
    """The rosbags typestore: ROS 2 Jazzy standard types + vit_perception/msg/*."""
    store = get_typestore(ROS_STORE)
    types = {}
    for name, text in _RMW_DDS_COMMON.items():
        types.update(get_types_from_msg(text.format(gid_size=gid_size()),
                                        f'rmw_dds_common/msg/{name}'))
    for path in sorted(find_msg_dir().glob('*.msg')):
        types.update(get_types_from_msg(path.read_text(), f'{PACKAGE}/msg/{path.stem}'))
    store.register(types)
    return store


def gid_size() -> int:
    """Bytes of an rmw_dds_common/msg/Gid: 24 on $ROS_DISTRO humble (and older), else 16."""
    return 24 if os.environ.get('ROS_DISTRO', '').lower() in ('foxy', 'galactic', 'humble') else 16


def msg_class(msgtype: str) -> type:
    """The rosbags message class for 'pkg/msg/Type'."""
    try:
        return typestore().types[msgtype]
    except KeyError:
        raise ConfigError(f'unknown message type {msgtype!r}: expected a ROS 2 Jazzy type or '
                          f'{PACKAGE}/msg/{{Embedding,ActionChunk}}') from None


def prepare(msgtype: str) -> None:
    """Build the typestore and `msgtype`'s CDR (de)serializers now (~1 s the first time), so the
    first message on a topic does not pay for it inside a callback."""
    msg_class(msgtype)  # ConfigError for unknown types
    typestore().get_msgdef(msgtype)


def type_hash(msgtype: str) -> str:
    """RIHS01 type hash of 'pkg/msg/Type', as ROS 2 Iron+ advertises it ('RIHS01_<hex>')."""
    msg_class(msgtype)
    return typestore().hash_rihs01(msgtype)


def serialize(msg: object, msgtype: str | None = None) -> memoryview:
    """Message -> CDR bytes (little endian, 4-byte encapsulation header included)."""
    return typestore().serialize_cdr(msg, msgtype or msg.__msgtype__, little_endian=True)


def deserialize(cdr: bytes | bytearray | memoryview, msgtype: str) -> object:
    """CDR bytes -> message. Arrays of numbers are numpy views on `cdr` (no copy)."""
    return typestore().deserialize_cdr(memoryview(cdr), msgtype)


# ------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------

def time_msg(stamp_ns: int):
    """Integer nanoseconds -> builtin_interfaces/msg/Time."""
    sec, nanosec = from_ns(stamp_ns)
    return msg_class('builtin_interfaces/msg/Time')(sec=sec, nanosec=nanosec)


def header_msg(stamp_ns: int, frame_id: str = ''):
    """std_msgs/msg/Header with the given stamp and frame."""
    return msg_class('std_msgs/msg/Header')(stamp=time_msg(stamp_ns), frame_id=frame_id)


def stamp_ns(time) -> int:
    """builtin_interfaces/msg/Time -> integer nanoseconds."""
    return to_ns(time.sec, time.nanosec)


# ------------------------------------------------------------------------------------------
# Inputs: messages -> core types
# ------------------------------------------------------------------------------------------

def image_from_msg(msg, camera: int = 0) -> ImageFrame:
    """sensor_msgs/msg/Image -> ImageFrame; `data` is the message's array itself (no copy)."""
    return ImageFrame(
        stamp_ns=stamp_ns(msg.header.stamp), frame_id=msg.header.frame_id, data=msg.data,
        height=int(msg.height), width=int(msg.width), encoding=msg.encoding,
        step=int(msg.step), is_bigendian=bool(msg.is_bigendian), camera=camera)


def compressed_from_msg(msg, camera: int = 0) -> ImageFrame:
    """sensor_msgs/msg/CompressedImage -> ImageFrame (raises ImageError on an empty format)."""
    if not msg.format:
        raise ImageError("CompressedImage.format is empty: expected e.g. 'jpeg', 'png' or "
                         "'rgb8; jpeg compressed bgr8'")
    return ImageFrame(stamp_ns=stamp_ns(msg.header.stamp), frame_id=msg.header.frame_id,
                      data=msg.data, format=msg.format, camera=camera)


def pose_from_msg(msg, arm: int = 0) -> PoseSample:
    """geometry_msgs/msg/PoseStamped -> PoseSample of arm `arm` (position xyz, quaternion
    xyzw)."""
    p, q = msg.pose.position, msg.pose.orientation
    return PoseSample(stamp_ns=stamp_ns(msg.header.stamp), frame_id=msg.header.frame_id,
                      position=np.array([p.x, p.y, p.z], dtype=np.float64),
                      orientation=np.array([q.x, q.y, q.z, q.w], dtype=np.float64), arm=arm)


def joint_state_from_msg(msg, names: Sequence[str]) -> JointSample:
    """sensor_msgs/msg/JointState -> JointSample of the positions of `names`, in that order.

    Raises PoseError when a name is missing, or `name` and `position` differ in length (other
    joints in the message are ignored).
    """
    have = list(msg.name)
    if len(have) != len(msg.position):
        raise PoseError(f'JointState with {len(have)} names and {len(msg.position)} positions: '
                        'expected one position per name')
    index = {name: i for i, name in reversed(list(enumerate(have)))}  # first occurrence wins
    missing = [name for name in names if name not in index]
    if missing:
        raise PoseError(f'JointState lacks the joints {missing} (it has {have[:16]}): the '
                        'checkpoint reads pose.proprio_names from it')
    positions = np.asarray(msg.position, dtype=np.float64)[[index[name] for name in names]]
    return JointSample(stamp_ns=stamp_ns(msg.header.stamp), positions=positions)


def clock_from_msg(msg) -> int:
    """rosgraph_msgs/msg/Clock -> integer nanoseconds."""
    return stamp_ns(msg.clock)


# ------------------------------------------------------------------------------------------
# Outputs: core results -> messages
# ------------------------------------------------------------------------------------------

def embedding_msg(result: ActionChunkResult, model_id: str, frame_id: str):
    """vit_perception/msg/Embedding stamped with the observation time."""
    values = np.ascontiguousarray(result.embedding, dtype=np.float32)
    return msg_class(EMBEDDING)(
        header=header_msg(result.observation_stamp_ns, frame_id), model_id=model_id,
        shape=np.array(values.shape, dtype=np.uint32), data=values.reshape(-1))


def action_chunk_msg(stamp_ns: int, names: Sequence[str], dt: float, chunk: np.ndarray,
                     observation_stamp_ns: int, frame_id: str = ''):
    """vit_perception/msg/ActionChunk from an (H, A) chunk; A must equal len(names)."""
    chunk = np.asarray(chunk, dtype=np.float32)
    if chunk.ndim == 1:
        chunk = chunk.reshape(1, -1)  # (1, A): a single action
    if chunk.ndim != 2 or chunk.shape[1] != len(names):
        raise ConfigError(f'action chunk of shape {chunk.shape}: expected (horizon, '
                          f'{len(names)}) for the action names {list(names)}')
    return msg_class(ACTION_CHUNK)(
        header=header_msg(stamp_ns, frame_id), names=list(names), dt=float(dt),
        horizon=chunk.shape[0], data=np.ascontiguousarray(chunk).reshape(-1),
        observation_stamp=time_msg(observation_stamp_ns))


@dataclass(frozen=True)
class ChunkData:
    """The contents of a vit_perception/msg/ActionChunk, as plain data."""

    stamp_ns: int
    frame_id: str
    names: list[str]
    dt: float
    chunk: np.ndarray  # (H, A) float32
    observation_stamp_ns: int


def chunk_from_msg(msg) -> ChunkData:
    """vit_perception/msg/ActionChunk -> ChunkData (ConfigError if data and names disagree)."""
    width = len(msg.names)
    if width == 0 or len(msg.data) != msg.horizon * width:
        raise ConfigError(f'ActionChunk with {len(msg.data)} values for horizon {msg.horizon} '
                          f'x {width} names: expected horizon * len(names) values')
    return ChunkData(stamp_ns=stamp_ns(msg.header.stamp), frame_id=msg.header.frame_id,
                     names=list(msg.names), dt=float(msg.dt),
                     chunk=np.asarray(msg.data, dtype=np.float32).reshape(msg.horizon, width),
                     observation_stamp_ns=stamp_ns(msg.observation_stamp))


def embedding_from_msg(msg) -> np.ndarray:
    """vit_perception/msg/Embedding -> array of its `shape` (ConfigError if sizes disagree)."""
    shape = tuple(int(n) for n in msg.shape)
    if int(np.prod(shape)) != len(msg.data):
        raise ConfigError(f'Embedding with {len(msg.data)} values for shape {list(shape)}: '
                          f'expected product of shape values')
    return np.asarray(msg.data, dtype=np.float32).reshape(shape)


def twist_msg(stamp_ns: int, frame_id: str, linear: Sequence[float],
              angular: Sequence[float]):
    """geometry_msgs/msg/TwistStamped from linear xyz and angular xyz."""
    vector = msg_class('geometry_msgs/msg/Vector3')
    twist = msg_class('geometry_msgs/msg/Twist')(
        linear=vector(*(float(v) for v in linear)), angular=vector(*(float(v) for v in angular)))
    return msg_class(TWIST_STAMPED)(header=header_msg(stamp_ns, frame_id), twist=twist)


def participant_entities_info_msg(participant_gid: bytes, node_namespace: str, node_name: str,
                                  reader_gids: Sequence[bytes], writer_gids: Sequence[bytes]):
    """rmw_dds_common/msg/ParticipantEntitiesInfo: one node and its readers and writers (GUIDs
    of 16 bytes, zero-padded to the Gid size)."""
    size = gid_size()
    gid_class = msg_class('rmw_dds_common/msg/Gid')

    def gid(guid: bytes):
        return gid_class(data=np.frombuffer(bytes(guid).ljust(size, b'\0')[:size], np.uint8))

    node = msg_class('rmw_dds_common/msg/NodeEntitiesInfo')(
        node_namespace=node_namespace, node_name=node_name,
        reader_gid_seq=[gid(g) for g in reader_gids], writer_gid_seq=[gid(g) for g in writer_gids])
    return msg_class(PARTICIPANT_ENTITIES_INFO)(gid=gid(participant_gid),
                                                node_entities_info_seq=[node])


def diagnostics_msg(report, stamp_ns: int, name: str, hardware_id: str = ''):
    """diagnostic_msgs/msg/DiagnosticArray with one status built from a DiagnosticsReport."""
    key_value = msg_class('diagnostic_msgs/msg/KeyValue')
    status = msg_class('diagnostic_msgs/msg/DiagnosticStatus')(
        level=int(report.level), name=name, message=report.message, hardware_id=hardware_id,
        values=[key_value(key=str(k), value=str(v)) for k, v in report.values.items()])
    return msg_class(DIAGNOSTIC_ARRAY)(header=header_msg(stamp_ns), status=[status])


# ------------------------------------------------------------------------------------------
# Building inputs (simulator, tests, tools)
# ------------------------------------------------------------------------------------------

def image_msg(stamp_ns: int, frame_id: str, pixels: np.ndarray, encoding: str):
    """sensor_msgs/msg/Image from an (H, W) or (H, W, C) array (native byte order).

    `encoding` must be one of the raw encodings listed in _ENCODINGS and match the array's
    channels and dtype (uint8 for 8-bit, uint16 for 16-bit encodings).
    """
    if encoding not in _ENCODINGS:
        raise ImageError(f'image_msg encoding {encoding!r}: expected one of {sorted(_ENCODINGS)}')
    channels, depth = _ENCODINGS[encoding]
    dtype = np.uint8 if depth == 1 else np.uint16
    pixels = np.asarray(pixels)
    shape_ok = (pixels.ndim == 2 and channels == 1) or (
        pixels.ndim == 3 and pixels.shape[2] == channels)
    if pixels.dtype != dtype or not shape_ok:
        want = '(H, W)' if channels == 1 else f'(H, W, {channels})'
        raise ImageError(f'image_msg {encoding}: got {pixels.dtype} {pixels.shape}, expected '
                         f'{np.dtype(dtype).name} {want}')
    height, width = pixels.shape[:2]
    data = np.ascontiguousarray(pixels).reshape(-1).view(np.uint8)
    return msg_class(IMAGE)(
        header=header_msg(stamp_ns, frame_id), height=height, width=width, encoding=encoding,
        is_bigendian=int(sys.byteorder == 'big' and depth > 1), step=width * channels * depth,
        data=data)


def compressed_image_msg(stamp_ns: int, frame_id: str, data: bytes, format: str):
    """sensor_msgs/msg/CompressedImage from encoded file bytes (e.g. cv2.imencode output)."""
    return msg_class(COMPRESSED_IMAGE)(
        header=header_msg(stamp_ns, frame_id), format=format,
        data=np.frombuffer(data, dtype=np.uint8))


def pose_msg(stamp_ns: int, frame_id: str, position: Sequence[float],
             orientation: Sequence[float]):
    """geometry_msgs/msg/PoseStamped from position xyz and quaternion xyzw."""
    x, y, z = (float(v) for v in position)
    qx, qy, qz, qw = (float(v) for v in orientation)
    pose = msg_class('geometry_msgs/msg/Pose')(
        position=msg_class('geometry_msgs/msg/Point')(x=x, y=y, z=z),
        orientation=msg_class('geometry_msgs/msg/Quaternion')(x=qx, y=qy, z=qz, w=qw))
    return msg_class(POSE_STAMPED)(header=header_msg(stamp_ns, frame_id), pose=pose)


def joint_state_msg(stamp_ns: int, names: Sequence[str], positions: Sequence[float],
                    frame_id: str = ''):
    """sensor_msgs/msg/JointState with names and positions (no velocities or efforts)."""
    return msg_class(JOINT_STATE)(
        header=header_msg(stamp_ns, frame_id), name=list(names),
        position=np.asarray(positions, dtype=np.float64), velocity=np.zeros(0),
        effort=np.zeros(0))


def clock_msg(stamp_ns: int):
    """rosgraph_msgs/msg/Clock for the given time."""
    return msg_class(CLOCK)(clock=time_msg(stamp_ns))
