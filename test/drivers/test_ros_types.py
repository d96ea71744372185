"""Message definitions and conversions, built in memory (no transport)."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from vit_perception.core.node import DiagnosticsReport
from vit_perception.core.types import ActionChunkResult
from vit_perception.drivers import ros_types as rt
from vit_perception.errors import ConfigError, ImageError

REPO = Path(__file__).resolve().parents[2]


class Cdr:
    """A minimal little-endian XCDR1 writer, independent of rosbags, for byte comparisons."""

    def __init__(self):
        self.buf = bytearray()

    def _put(self, fmt: str, *values) -> Cdr:
        size = struct.calcsize('<' + fmt[0])
        self.buf += b'\0' * (-len(self.buf) % size)  # align to the primitive's size
        self.buf += struct.pack('<' + fmt, *values)
        return self

    def u8(self, v):
        return self._put('B', v)

    def i32(self, v):
        return self._put('i', v)

    def u32(self, v):
        return self._put('I', v)

    def f64(self, v):
        return self._put('d', v)

    def string(self, text: str) -> Cdr:
        data = text.encode() + b'\0'
        self.u32(len(data))
        self.buf += data
        return self

    def f32s(self, values) -> Cdr:
        self.u32(len(values))
        for v in values:
            self._put('f', v)
        return self

    def raw(self, data: bytes) -> Cdr:
        self.buf += data
        return self

    def bytes(self) -> bytes:
        return b'\x00\x01\x00\x00' + bytes(self.buf)


def test_msg_files_are_found_in_the_documented_order():
    dirs = rt.msg_dirs()
    assert dirs[-2:] == [Path(sys.prefix) / 'share' / 'vit_perception' / 'msg', REPO / 'msg']
    found = rt.find_msg_dir()
    assert found in dirs
    assert {p.name for p in found.glob('*.msg')} >= {'Embedding.msg', 'ActionChunk.msg'}


def test_typestore_holds_the_contract_fields_and_standard_types():
    store = rt.typestore()
    fields = {name: [f for f, _ in store.fielddefs[name][1]]
              for name in (rt.EMBEDDING, rt.ACTION_CHUNK)}
    assert fields[rt.EMBEDDING] == ['header', 'model_id', 'shape', 'data']
    assert fields[rt.ACTION_CHUNK] == ['header', 'names', 'dt', 'horizon', 'data',
                                       'observation_stamp']
    for name in (rt.IMAGE, rt.COMPRESSED_IMAGE, rt.POSE_STAMPED, rt.DIAGNOSTIC_ARRAY, rt.CLOCK):
        assert name in store.types
    with pytest.raises(ConfigError, match='unknown message type'):
        rt.msg_class('nope_msgs/msg/Nothing')


def test_type_hashes_match_ros2_jazzy():
    # Published by `ros2 topic info -v` on Jazzy.
    assert rt.type_hash(rt.IMAGE) == (
        'RIHS01_d31d41a9a4c4bc8eae9be757b0beed306564f7526c88ea6a4588fb9582527d47')
    assert rt.type_hash(rt.COMPRESSED_IMAGE) == (
        'RIHS01_15640771531571185e2efc8a100baf923961a4d15d5569652e6cb6691e8e371a')
    assert rt.type_hash('std_msgs/msg/Header') == (
        'RIHS01_f49fb3ae2cf070f793645ff749683ac6b06203e41c891e17701b1cb597ce6a01')
    own = rt.type_hash(rt.ACTION_CHUNK)
    assert own.startswith('RIHS01_') and len(own) == 7 + 64 and own != rt.type_hash(rt.EMBEDDING)


def test_image_cdr_bytes_follow_the_ros_wire_layout():
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    msg = rt.image_msg(3 * 10**9 + 7, 'cam', pixels, 'rgb8')
    expected = (Cdr().i32(3).u32(7).string('cam').u32(2).u32(3).string('rgb8').u8(0).u32(9)
                .u32(18).raw(pixels.tobytes()).bytes())
    assert bytes(rt.serialize(msg)) == expected


def test_action_chunk_cdr_bytes_follow_the_msg_definition():
    chunk = np.array([[0.5, -1.0], [2.0, 0.25]], dtype=np.float32)
    msg = rt.action_chunk_msg(5 * 10**9 + 1, ['dx', 'gripper'], 0.1, chunk, 4 * 10**9 + 2,
                              frame_id='base')
    expected = (Cdr().i32(5).u32(1).string('base').u32(2).string('dx').string('gripper')
                .f64(0.1).u32(2).f32s([0.5, -1.0, 2.0, 0.25]).i32(4).u32(2).bytes())
    assert bytes(rt.serialize(msg)) == expected


def test_image_from_msg_keeps_the_received_buffer_without_copy():
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    cdr = bytes(rt.serialize(rt.image_msg(1_700_000_000_999_999_999, 'cam0', pixels, 'bgr8')))
    frame = rt.image_from_msg(rt.deserialize(cdr, rt.IMAGE), camera=2)
    assert (frame.stamp_ns, frame.frame_id, frame.camera) == (1_700_000_000_999_999_999, 'cam0', 2)
    assert (frame.height, frame.width, frame.encoding, frame.step) == (48, 64, 'bgr8', 192)
    assert frame.is_bigendian is False and not frame.compressed
    assert np.shares_memory(frame.data, np.frombuffer(cdr, dtype=np.uint8))
    assert np.array_equal(np.asarray(frame.data).reshape(48, 64, 3), pixels)


def test_sixteen_bit_image_round_trip():
    depth = np.array([[0, 1, 65535], [256, 4095, 7]], dtype=np.uint16)
    msg = rt.deserialize(rt.serialize(rt.image_msg(1, 'd', depth, 'mono16')), rt.IMAGE)
    assert (msg.height, msg.width, msg.step, msg.encoding) == (2, 3, 6, 'mono16')
    assert np.array_equal(np.frombuffer(msg.data, dtype='<u2').reshape(2, 3), depth)


@pytest.mark.parametrize('pixels, encoding', [
    (np.zeros((4, 4, 3), np.uint16), 'rgb8'),  # wrong dtype
    (np.zeros((4, 4), np.uint8), 'rgb8'),  # wrong channels
    (np.zeros((4, 4, 3), np.uint8), 'yuv422'),  # not a supported encoding
])
def test_image_msg_rejects_mismatched_arrays(pixels, encoding):
    with pytest.raises(ImageError, match='image_msg'):
        rt.image_msg(0, '', pixels, encoding)


def test_compressed_round_trip_and_empty_format():
    payload = b'\xff\xd8fake-jpeg\xff\xd9'
    msg = rt.deserialize(rt.serialize(rt.compressed_image_msg(42, 'cam', payload, 'jpeg')),
                         rt.COMPRESSED_IMAGE)
    frame = rt.compressed_from_msg(msg, camera=1)
    assert frame.compressed and frame.format == 'jpeg' and frame.camera == 1
    assert (frame.stamp_ns, frame.frame_id, bytes(frame.data)) == (42, 'cam', payload)
    with pytest.raises(ImageError, match='format is empty'):
        rt.compressed_from_msg(rt.compressed_image_msg(42, 'cam', payload, ''))


def test_pose_round_trip():
    cdr = rt.serialize(rt.pose_msg(2**31 * 10**9 - 1, 'base', [0.1, -2.0, 3.5],
                                   [0.0, 0.0, 0.6, 0.8]))
    pose = rt.pose_from_msg(rt.deserialize(cdr, rt.POSE_STAMPED))
    assert pose.stamp_ns == 2**31 * 10**9 - 1 and pose.frame_id == 'base'
    assert pose.position.tolist() == [0.1, -2.0, 3.5]
    assert pose.orientation.tolist() == [0.0, 0.0, 0.6, 0.8]  # x y z w


def test_embedding_and_chunk_round_trips():
    result = ActionChunkResult(
        observation_stamp_ns=12_000_000_345, embedding=np.linspace(-1, 1, 6, dtype=np.float32),
        chunk=np.arange(8, dtype=np.float32).reshape(4, 2))
    emb = rt.deserialize(rt.serialize(rt.embedding_msg(result, 'tiny-v1', 'cam')), rt.EMBEDDING)
    assert (rt.stamp_ns(emb.header.stamp), emb.header.frame_id, emb.model_id) == (
        12_000_000_345, 'cam', 'tiny-v1')
    assert emb.shape.tolist() == [6]
    assert np.array_equal(rt.embedding_from_msg(emb), result.embedding)

    sent = rt.action_chunk_msg(13 * 10**9, ['a', 'b'], 0.05, result.chunk, 12_000_000_345)
    got = rt.chunk_from_msg(rt.deserialize(rt.serialize(sent), rt.ACTION_CHUNK))
    assert (got.stamp_ns, got.observation_stamp_ns, got.names, got.dt) == (
        13 * 10**9, 12_000_000_345, ['a', 'b'], 0.05)
    assert got.chunk.shape == (4, 2) and np.array_equal(got.chunk, result.chunk)

    single = rt.action_chunk_msg(1, ['a', 'b'], 0.02, np.array([1.5, -2.5]), 0)
    assert single.horizon == 1 and single.data.tolist() == [1.5, -2.5]
    with pytest.raises(ConfigError, match=r'expected \(horizon, 3\)'):
        rt.action_chunk_msg(1, ['a', 'b', 'c'], 0.1, result.chunk, 0)
    sent.horizon = 3
    with pytest.raises(ConfigError, match='horizon 3'):
        rt.chunk_from_msg(sent)


def test_diagnostics_msg():
    report = DiagnosticsReport(level=1, message='2 inputs dropped',
                               values={'rate.action_hz': '50.00', 'drops.stale': '2'})
    msg = rt.deserialize(rt.serialize(rt.diagnostics_msg(report, 7 * 10**9, 'node: perception',
                                                         'hw')), rt.DIAGNOSTIC_ARRAY)
    assert rt.stamp_ns(msg.header.stamp) == 7 * 10**9 and len(msg.status) == 1
    status = msg.status[0]
    assert (status.level, status.name, status.message, status.hardware_id) == (
        1, 'node: perception', '2 inputs dropped', 'hw')
    assert [(kv.key, kv.value) for kv in status.values] == [('rate.action_hz', '50.00'),
                                                            ('drops.stale', '2')]


def test_clock_round_trip():
    msg = rt.deserialize(rt.serialize(rt.clock_msg(123_456_789_012)), rt.CLOCK)
    assert rt.clock_from_msg(msg) == 123_456_789_012
