"""Wire fuzz: more than 10,000 malformed and random messages into a node process over DDS.

The node (`vit-perception node --backend dds`, 2-camera tiny checkpoint: raw Image + JPEG/PNG
CompressedImage, pose on PoseStamped) gets, on all three inputs: messages with random field
values (numpy and hypothesis), valid messages with random bytes changed, truncated valid
messages and random bytes behind a CDR header, while a valid 100 Hz pose stream keeps the
pipeline busy. Counts come from the node's own /diagnostics (`rx.<topic>`, `drops.<reason>`).

Cyclone checks a sample's CDR structure against the topic type when it is written (and when it
is received): structurally broken samples are refused by the writer (`DDS_RETCODE_BAD_PARAMETER`)
and never reach a reader, so the messages counted here are the ones that did get through:
well-formed CDR with hostile content (bad UTF-8, absurd sizes, NaN, garbage pixels...).

Afterwards: zero crashes (the process is alive, no traceback, no callback / worker / inference
error counted), RSS growth bounded, and a valid image + poses still yields an ActionChunk.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from cyclonedds.core import DDSException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vit_perception.core.images import ENCODINGS
from vit_perception.drivers import dds
from vit_perception.drivers import ros_types as rt
from vit_perception.model.config import tiny_config
from vit_perception.tools import harness
from vit_perception.tools import live_bench as lb

sys.path.insert(0, str(Path(__file__).resolve().parent))  # local helpers (importlib mode)
import dds_testing as dt  # noqa: E402

MS = 1_000_000
RAW, COMPRESSED, POSE = '/fuzz/camera/image_raw', '/fuzz/camera/compressed', '/fuzz/ee_pose'
TARGET = 10_000  # messages the node must have taken off the wire
RSS_BOUND_MB = 100
QOS = dds.qos_profile('reliable', 100)
NODE_SETTINGS = [
    f'topics.cameras=[{RAW},{COMPRESSED}]', 'topics.camera_transports=[raw,compressed]',
    f'topics.pose={POSE}', 'engine.device=cpu', 'engine.dtype=fp32', 'engine.warmup_iters=1',
    'diagnostics_period=0.1', 'control.control_rate_hz=50', 'qos.image_reliability=reliable',
    'qos.image_depth=100', 'qos.pose_depth=100']
# Errors that would mean a bug in the node, not a bad message.
INTERNAL = ('callback_error', 'worker_error', 'inference_error', 'bad_output', 'refresh_error',
            'transport_error')
FLOATS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e308, -1e308, 5e-324, 1.0, -1.0, 1e-9,
                   3.4e38])


class Fuzzer:
    """Builds hostile messages; `send` publishes one and counts what Cyclone refused."""

    def __init__(self, transport: dds.DdsTransport, seed: int):
        self.rng = np.random.default_rng(seed)
        self.pubs = {RAW: transport.publisher(RAW, rt.IMAGE, QOS),
                     COMPRESSED: transport.publisher(COMPRESSED, rt.COMPRESSED_IMAGE, QOS),
                     POSE: transport.publisher(POSE, rt.POSE_STAMPED, QOS)}
        self.types = {RAW: rt.IMAGE, COMPRESSED: rt.COMPRESSED_IMAGE, POSE: rt.POSE_STAMPED}
        self.sent: dict[str, int] = {}  # category -> accepted by the writer
        self.refused: dict[str, int] = {}  # category -> refused by Cyclone (malformed CDR)
        img = self.rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        self.jpeg = cv2.imencode('.jpg', img)[1].tobytes()
        self.png = cv2.imencode('.png', img)[1].tobytes()
        self.jpeg_body = self.jpeg.find(b'\xff\xda')  # start of scan: sizes are before it

    def send(self, category: str, topic: str, payload) -> None:
        cdr = payload if isinstance(payload, (bytes, bytearray)) else rt.serialize(
            payload, self.types[topic])
        try:
            self.pubs[topic].publish_cdr(cdr)
        except DDSException:
            self.refused[category] = self.refused.get(category, 0) + 1
            return
        self.sent[category] = self.sent.get(category, 0) + 1

    @property
    def accepted(self) -> int:
        return sum(self.sent.values())

    # ------------------------------------------------------------------ field values

    def stamp(self) -> int:
        """Mostly just behind the node clock (so images reach the model), sometimes absurd.

        Most stamps sit on a 10 ms grid, so raw and compressed images sent close together
        pair up into observations.
        """
        r = self.rng.random()
        now = time.time_ns()
        if r < 0.6:
            return now // (10 * MS) * (10 * MS) - 20 * MS
        if r < 0.75:
            return now - int(self.rng.integers(0, 60 * MS))
        if r < 0.85:
            return now + int(self.rng.integers(200 * MS, 10**9))
        sec = int(self.rng.choice([0, -1, -2**31, 2**31 - 1, int(self.rng.integers(-2**31,
                                                                                      2**31))]))
        return sec * 10**9 + int(self.rng.integers(0, 10**9))

    def text(self, max_len: int = 12) -> str:
        alphabet = list('abcxyz_019 /:;') + ['\u00e9', '\u4e2d', '\U0001f916', '\x00', '\x7f']
        return ''.join(self.rng.choice(alphabet, int(self.rng.integers(0, max_len + 1))))

    def side(self) -> int:
        return int(self.rng.choice([0, 1, 2, 3, 8, 16, 31, 64, 480, 16384, 16385, 100000,
                                    2**31, 2**32 - 1, int(self.rng.integers(0, 2**32))]))

    def random_image(self):
        rng = self.rng
        encoding = str(rng.choice(list(ENCODINGS) + ['yuv422', '32FC1', '', 'RGB8', 'bayer']))
        if rng.random() < 0.6:  # consistent sizes: deep into decode / preprocess / the model
            channels, dtype, _ = ENCODINGS.get(encoding, (3, np.dtype(np.uint8), 'rgb'))
            height, width = (int(v) for v in rng.integers(1, 80, 2))
            if rng.random() < 0.1:
                height, width = (1, int(rng.integers(1, 4096))) if rng.random() < 0.5 else (
                    int(rng.integers(1, 4096)), 1)
            step = width * channels * dtype.itemsize + int(rng.choice([0, 0, 0, 1, 7]))
            size = step * height
        else:
            height, width, step = self.side(), self.side(), self.side()
            size = int(rng.integers(0, 4096))
        size = min(size, 1 << 20)
        header = rt.header_msg(self.stamp(), self.text())
        return rt.msg_class(rt.IMAGE)(
            header=header, height=height % 2**32, width=width % 2**32, encoding=encoding,
            is_bigendian=int(rng.integers(0, 256)), step=step % 2**32,
            data=rng.integers(0, 256, size, dtype=np.uint8))

    def random_compressed(self):
        rng = self.rng
        fmt = str(rng.choice(['jpeg', 'png', '', 'rgb8; jpeg compressed bgr8', 'bmp',
                              '16UC1; compressedDepth png', self.text()]))
        kind = rng.integers(0, 5)
        if kind == 0:  # random bytes
            data = rng.integers(0, 256, int(rng.integers(0, 2048)), dtype=np.uint8).tobytes()
        elif kind == 1:  # a JPEG with its entropy-coded data mutated or cut (sizes intact)
            data = bytearray(self.jpeg)
            for _ in range(int(rng.integers(1, 20))):
                data[int(rng.integers(self.jpeg_body + 2, len(data)))] = int(rng.integers(256))
            data = bytes(data[:int(rng.integers(self.jpeg_body, len(data) + 1))])
        elif kind == 2:  # a PNG mutated anywhere or cut
            data = bytearray(self.png)
            for _ in range(int(rng.integers(0, 8))):
                data[int(rng.integers(0, len(data)))] = int(rng.integers(256))
            data = bytes(data[:int(rng.integers(0, len(data) + 1))])
        elif kind == 3:  # magic bytes + garbage
            data = bytes(rng.choice([b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n'])) + bytes(
                rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8))
        else:  # valid
            data = self.jpeg if rng.random() < 0.5 else self.png
        return rt.compressed_image_msg(self.stamp(), self.text(), data, fmt)

    def random_pose(self):
        rng = self.rng

        def value():
            return float(rng.choice(FLOATS)) if rng.random() < 0.3 else float(
                rng.normal() * 10.0 ** rng.integers(-3, 4))

        position = [value() for _ in range(3)]
        r = rng.random()
        if r < 0.4:
            quat = rng.normal(size=4)
            quat = quat / np.linalg.norm(quat) * (1 + rng.normal() * 0.03)
        else:
            quat = [value() for _ in range(4)]
        return rt.pose_msg(self.stamp(), self.text() if rng.random() < 0.3 else 'base',
                           position, quat)

    # ------------------------------------------------------------------ byte level

    def mutated(self, topic: str, msg) -> bytes:
        data = bytearray(rt.serialize(msg, self.types[topic]))
        for _ in range(int(self.rng.integers(1, 9))):
            data[int(self.rng.integers(4, len(data)))] = int(self.rng.integers(256))
        return bytes(data)

    def truncated(self, topic: str, msg) -> bytes:
        data = bytes(rt.serialize(msg, self.types[topic]))
        return data[:int(self.rng.integers(0, len(data)))]

    def random_bytes(self) -> bytes:
        n = int(self.rng.integers(0, 200))
        return b'\x00\x01\x00\x00' + self.rng.integers(0, 256, n, dtype=np.uint8).tobytes()

    def round(self, n: int) -> None:
        """n messages, mixed over categories and topics."""
        makers = {RAW: self.random_image, COMPRESSED: self.random_compressed,
                  POSE: self.random_pose}
        topics = [RAW, COMPRESSED, POSE]
        for _ in range(n):
            topic = topics[int(self.rng.integers(0, 3))]
            r = self.rng.random()
            if r < 0.55:
                self.send('random fields', topic, makers[topic]())
            elif r < 0.85:
                self.send('mutated bytes', topic, self.mutated(topic, makers[topic]()))
            elif r < 0.95:
                self.send('truncated', topic, self.truncated(topic, makers[topic]()))
            else:
                self.send('random bytes', topic, self.random_bytes())


def delivered(values: dict[str, str]) -> int:
    """Messages the node took off its three input readers (decoded or not)."""
    return sum(int(values.get(f'rx.{topic}', 0)) for topic in (RAW, COMPRESSED, POSE))


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    return lb.save_random_checkpoint(tmp_path_factory.mktemp('fuzz') / 'tiny2',
                                     policy_config=tiny_config(cameras=['raw', 'png']))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_node_survives_10k_hostile_messages(checkpoint, monkeypatch):
    domain = dt.use_loopback(monkeypatch)
    node = harness.NodeProcess(checkpoint, domain, NODE_SETTINGS)
    stop = threading.Event()
    stream = None
    try:
        node.start()
        with dds.DdsTransport(domain) as transport:
            fuzz = Fuzzer(transport, seed=20240607)
            recorder = lb.OutputRecorder(transport)
            node.wait_running()
            for pub in fuzz.pubs.values():
                assert pub.wait_for_subscribers(1, timeout=30)
            for sub in recorder.subscriptions:
                assert sub.wait_for_publishers(1, timeout=30)
            streamed = [0]
            stream_pub = transport.publisher(POSE, rt.POSE_STAMPED, QOS)  # its own writer

            def pose_stream():  # valid poses at 100 Hz: fuzzed images get paired and inferred
                while not stop.wait(0.01):
                    stream_pub.publish(rt.pose_msg(time.time_ns(), 'base', [0.4, 0.0, 0.3],
                                                   [0, 0, 0, 1]))
                    streamed[0] += 1

            stream = threading.Thread(target=pose_stream, daemon=True)
            stream.start()
            assert_answers(fuzz, recorder, node)  # warm: a first inference has run
            rss_before = node.rss_bytes()
            chunks_before = len(recorder.snapshot().chunks)
            stream_before = delivered(recorder.latest_values()) - streamed[0]
            peak = rss_before
            start = time.monotonic()

            def node_took() -> int:  # fuzz messages only: the valid pose stream subtracted
                return delivered(recorder.latest_values()) - stream_before - streamed[0]

            def pace() -> None:  # stay within the readers' history depth
                assert node.alive(), node.stderr()[-3000:]
                harness.wait_for(lambda: fuzz.accepted - node_took() < 150, timeout=10)

            while node_took() < TARGET + 200 and time.monotonic() - start < 90:
                fuzz.round(100)
                pace()
                peak = max(peak, node.rss_bytes())
            hypothesis_fuzz(fuzz, pace)
            harness.wait_for(lambda: node_took() >= fuzz.accepted, timeout=10)
            took = node_took()
            rss_after = node.rss_bytes()
            peak = max(peak, rss_after)
            chunks = len(recorder.snapshot().chunks) - chunks_before  # fuzz images inferred
            assert node.alive(), node.stderr()[-3000:]
            assert_answers(fuzz, recorder, node)  # the pose stream is still running
            values = recorder.latest_values()
            elapsed = time.monotonic() - start
            stop.set()
            stream.join(5)
    finally:
        stop.set()
        node.kill()
    stderr = node.stderr()
    node.close()
    drops = lb.drops_in(values)
    growth_mb = (rss_after - rss_before) / 2**20
    print(f'\nwire fuzz: {fuzz.accepted} messages accepted by the writer '
          f'({sum(fuzz.refused.values())} refused by Cyclone as malformed CDR) in {elapsed:.1f} s;'
          f' sent by category {fuzz.sent}, refused {fuzz.refused}; node took {took} off the wire '
          f'(plus the 100 Hz valid pose stream); {chunks} chunks from fuzzed images; '
          f'drops {drops}; node RSS {rss_before / 2**20:.1f}'
          f' -> {rss_after / 2**20:.1f} MB (growth {growth_mb:+.1f} MB, peak '
          f'{peak / 2**20:.1f} MB)')
    assert took >= TARGET
    assert 'Traceback' not in stderr
    assert not {r: drops[r] for r in INTERNAL if drops.get(r)}, drops
    # They did arrive, down to the decoder (decode_error), the image checks (bad_image) and
    # the model (chunks computed from fuzzed images that happened to be valid).
    assert drops.get('decode_error', 0) > 0 and drops.get('bad_image', 0) > 0 and chunks > 0
    assert growth_mb < RSS_BOUND_MB


def hypothesis_fuzz(fuzz: Fuzzer, pace) -> None:
    """Structured random field values (hypothesis): images and poses, every field arbitrary."""
    floats = st.floats(allow_nan=True, allow_infinity=True)
    stamps = st.tuples(st.integers(-2**31, 2**31 - 1), st.integers(0, 2**32 - 1))
    count = [0]

    def send(topic, msg):
        fuzz.send('hypothesis', topic, msg)
        count[0] += 1
        if count[0] % 100 == 0:
            pace()

    def header(stamp, frame_id):
        sec, nanosec = stamp
        time_msg = rt.msg_class('builtin_interfaces/msg/Time')(sec=sec, nanosec=nanosec)
        return rt.msg_class('std_msgs/msg/Header')(stamp=time_msg, frame_id=frame_id)

    @settings(max_examples=600, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(stamp=stamps, frame_id=st.text(max_size=20),
           position=st.lists(floats, min_size=3, max_size=3),
           quat=st.lists(floats, min_size=4, max_size=4))
    def poses(stamp, frame_id, position, quat):
        x, y, z = position
        qx, qy, qz, qw = quat
        pose = rt.msg_class('geometry_msgs/msg/Pose')(
            position=rt.msg_class('geometry_msgs/msg/Point')(x=x, y=y, z=z),
            orientation=rt.msg_class('geometry_msgs/msg/Quaternion')(x=qx, y=qy, z=qz, w=qw))
        send(POSE, rt.msg_class(rt.POSE_STAMPED)(header=header(stamp, frame_id), pose=pose))

    sizes = st.integers(0, 2**32 - 1) | st.integers(0, 70)

    @settings(max_examples=600, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(stamp=stamps, frame_id=st.text(max_size=20), height=sizes, width=sizes, step=sizes,
           encoding=st.sampled_from(sorted(ENCODINGS)) | st.text(max_size=10),
           bigendian=st.integers(0, 255), data=st.binary(max_size=3000))
    def images(stamp, frame_id, height, width, step, encoding, bigendian, data):
        send(RAW, rt.msg_class(rt.IMAGE)(
            header=header(stamp, frame_id), height=height, width=width, encoding=encoding,
            is_bigendian=bigendian, step=step, data=np.frombuffer(data, dtype=np.uint8)))

    @settings(max_examples=300, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(stamp=stamps, fmt=st.text(max_size=30), data=st.binary(max_size=3000))
    def compressed(stamp, fmt, data):
        send(COMPRESSED, rt.msg_class(rt.COMPRESSED_IMAGE)(
            header=header(stamp, 'cam'), format=fmt, data=np.frombuffer(data, dtype=np.uint8)))

    poses()
    images()
    compressed()


def assert_answers(fuzz: Fuzzer, recorder: lb.OutputRecorder, node: harness.NodeProcess) -> None:
    """A valid image pair (poses are streaming) yields an ActionChunk with its stamp.

    Up to three pairs: a fuzzed frame still waiting for its partner camera may take the first.
    """
    for _ in range(3):
        stamp = time.time_ns() - 20 * MS
        pixels = fuzz.rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        fuzz.pubs[RAW].publish(rt.image_msg(stamp, 'cam_raw', pixels, 'rgb8'))
        fuzz.pubs[COMPRESSED].publish(rt.compressed_image_msg(stamp, 'cam_png', fuzz.png, 'png'))
        def answered(stamp=stamp):
            return stamp in {s for _, s in recorder.snapshot().chunks}

        if harness.wait_for(answered, timeout=10):
            return
    raise AssertionError('no ActionChunk for three valid image pairs:\n'
                         + node.stderr()[-3000:])
