"""Bad input over the wire: one node process (`vit-perception node --backend dds`, a 2-camera
tiny checkpoint: one raw Image camera, one CompressedImage camera) on loopback DDS, and this
process publishing one bad case at a time.

For every case: the node keeps running, the drop is counted by reason in /diagnostics, a log
line names it on the node's stderr, and no embedding / chunk / action carries its stamp. Valid
observations around the bad ones are checked value by value against a local Engine (so a size
change mid-stream, or a slightly non-unit quaternion, is proven handled, not just survived).
"""

from __future__ import annotations

import re
import struct
import sys
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from cyclonedds.core import DDSException

from vit_perception.core.engine import Engine
from vit_perception.core.types import NS_PER_S, Observation, PoseSample
from vit_perception.drivers import dds
from vit_perception.drivers import ros_types as rt
from vit_perception.model.config import tiny_config
from vit_perception.tools import harness
from vit_perception.tools import live_bench as lb

sys.path.insert(0, str(Path(__file__).resolve().parent))  # local helpers (importlib mode)
import dds_testing as dt  # noqa: E402

MS = 1_000_000
RAW, COMPRESSED, POSE = '/wire/camera/image_raw', '/wire/camera/compressed', '/wire/ee_pose'
FRAME = 'base'
POSITION = np.array([0.3, 0.1, 0.4])
IDENTITY = np.array([0.0, 0.0, 0.0, 1.0])
THROTTLE = 0.2  # the node's log_throttle here; cases of one kind are sent further apart
RELIABLE_100 = dds.qos_profile('reliable', 100)
NODE_SETTINGS = [
    f'topics.cameras=[{RAW},{COMPRESSED}]', 'topics.camera_transports=[raw,compressed]',
    f'topics.pose={POSE}', f'sync.pose_frame_id={FRAME}', 'engine.device=cpu',
    'engine.dtype=fp32', 'engine.warmup_iters=0', 'diagnostics_period=0.1',
    f'log_throttle={THROTTLE}', 'control.control_rate_hz=50', 'qos.image_reliability=reliable',
    'qos.image_depth=20', 'qos.pose_depth=100']


def pixels(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_bytes(height: int, width: int, seed: int) -> bytes:
    return cv2.imencode('.png', pixels(height, width, seed))[1].tobytes()


def raw_cdr(msg) -> bytearray:
    return bytearray(rt.serialize(msg, rt.IMAGE))


class Wire:
    """The node process + this process's publishers, recorder and a 100 Hz pose stream."""

    def __init__(self, checkpoint: Path, domain: int):
        self.node = harness.NodeProcess(checkpoint, domain, NODE_SETTINGS)
        self.transport = None
        self.bad_stamps: set[int] = set()
        self.expected_logs: list[tuple[str, tuple[str, ...]]] = []  # (case, texts on a line)
        self.valid: dict[int, Observation] = {}  # stamp -> observation the node should use
        self._paused = threading.Event()
        self._stop = threading.Event()
        self._stream: threading.Thread | None = None
        self._last_case = 0.0

    def start(self) -> Wire:
        self.node.start()
        self.transport = dds.DdsTransport(self.node.domain)
        self.raw = self.transport.publisher(RAW, rt.IMAGE, dds.DEFAULT)
        self.compressed = self.transport.publisher(COMPRESSED, rt.COMPRESSED_IMAGE, dds.DEFAULT)
        self.pose = self.transport.publisher(POSE, rt.POSE_STAMPED, RELIABLE_100)
        self.recorder = lb.OutputRecorder(self.transport, embeddings=True)
        self.node.wait_running()
        for pub in (self.raw, self.compressed, self.pose):
            assert pub.wait_for_subscribers(1, timeout=30)
        for sub in self.recorder.subscriptions:
            assert sub.wait_for_publishers(1, timeout=30)
        self._stream = threading.Thread(target=self._pose_stream, daemon=True)
        self._stream.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._stream is not None:
            self._stream.join(5)
        if self.transport is not None:
            self.transport.close()
        self.node.close()

    def _pose_stream(self) -> None:
        while not self._stop.wait(0.01):
            if not self._paused.is_set():
                self.pose.publish(rt.pose_msg(time.time_ns(), FRAME, POSITION, IDENTITY))

    # ------------------------------------------------------------------ observing the node

    def drops(self) -> dict[str, int]:
        return lb.drops_in(self.recorder.latest_values())

    def expect_drops(self, before: dict[str, int], added: dict[str, int]) -> None:
        """Wait until each reason grew by exactly `added` over `before` (node still alive)."""
        def grown():
            assert self.node.alive(), self.node.stderr()[-3000:]
            now = self.drops()
            return all(now.get(r, 0) - before.get(r, 0) >= n for r, n in added.items())

        assert harness.wait_for(grown, timeout=20), (added, self.drops(),
                                                     self.node.stderr()[-2000:])
        now = self.drops()
        assert {r: now.get(r, 0) - before.get(r, 0) for r in added} == added

    def pace(self) -> None:
        """Cases of one kind at least log_throttle apart, so each gets its own log line."""
        wait = self._last_case + THROTTLE + 0.05 - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last_case = time.monotonic()

    # ------------------------------------------------------------------ sending cases

    def send_images(self, stamp: int, raw=None, compressed=None) -> None:
        """raw: an Image message or raw CDR bytes; compressed: a CompressedImage message."""
        if raw is not None:
            if isinstance(raw, (bytes, bytearray)):
                self.raw.publish_cdr(raw)
            else:
                self.raw.publish(raw)
        if compressed is not None:
            self.compressed.publish(compressed)

    def bad_image_case(self, name: str, log: str, raw=None, compressed=None,
                       reason: str = 'bad_image', stamp: int | None = None,
                       engine_level: bool = False) -> int:
        """Send a bad image pair (or single image) and wait for its drop.

        engine_level: the image is only found bad when decoded for inference; the log line
        then also names the observation stamp.
        """
        self.pace()
        stamp = time.time_ns() - 20 * MS if stamp is None else stamp
        raw = raw(stamp) if callable(raw) else raw
        compressed = compressed(stamp) if callable(compressed) else compressed
        before = self.drops()
        self.send_images(stamp, raw, compressed)
        self.expect_drops(before, {reason: 1})
        self.bad_stamps.add(stamp)
        self.expected_logs.append(
            (name, (log, f'bad image at {stamp} ns: ') if engine_level else (log,)))
        return stamp

    def valid_case(self, raw_size=(48, 64), png_size=(48, 64), pose: PoseSample | None = None,
                   stamp: int | None = None) -> int:
        """A good image pair; waits for its chunk. `pose` (at `stamp`) is sent first, alone."""
        stamp = time.time_ns() - 20 * MS if stamp is None else stamp
        raw = rt.image_msg(stamp, 'cam_raw', pixels(*raw_size, stamp % 1000), 'rgb8')
        png = rt.compressed_image_msg(stamp, 'cam_png', png_bytes(*png_size, stamp % 997),
                                      'png')
        if pose is not None:
            self.pose.publish(rt.pose_msg(stamp, pose.frame_id, pose.position,
                                          pose.orientation))
        self.send_images(stamp, raw, png)
        self.valid[stamp] = Observation(
            stamp, (rt.image_from_msg(raw, 0), rt.compressed_from_msg(png, 1)),
            (PoseSample(stamp, FRAME, POSITION, IDENTITY) if pose is None else pose,))
        assert harness.wait_for(lambda: stamp in self.recorder.observation_stamps(), timeout=20), \
            self.node.stderr()[-2000:]
        return stamp

    def bad_pose_case(self, name: str, log: str, reason: str, position=POSITION,
                      orientation=IDENTITY, frame_id: str = FRAME) -> int:
        """With the pose stream paused, a bad pose at S and a good image pair at S.

        Had the node used the bad pose, the images would pair with it exactly (a chunk at S);
        rejected, the images have no pose within sync.max_pose_skew (a pose_skew drop).
        """
        self.pace()
        self._paused.set()
        try:
            time.sleep(0.2)  # > sync.max_pose_skew since the last good pose
            stamp = time.time_ns()
            before = self.drops()
            self.pose.publish(rt.pose_msg(stamp, frame_id, position, orientation))
            self.send_images(stamp, rt.image_msg(stamp, 'cam_raw', pixels(48, 64, 1), 'rgb8'),
                             rt.compressed_image_msg(stamp, 'cam_png', png_bytes(48, 64, 2),
                                                     'png'))
            self.expect_drops(before, {reason: 1, 'pose_skew': 1})
        finally:
            self._paused.clear()
        self.bad_stamps.add(stamp)
        self.expected_logs.append((name, log))
        return stamp

    def bad_pose_stamp_case(self, name: str, log: str, reason: str, stamp: int) -> None:
        self.pace()
        before = self.drops()
        self.pose.publish(rt.pose_msg(stamp, FRAME, POSITION, IDENTITY))
        self.expect_drops(before, {reason: 1})
        self.bad_stamps.add(stamp)
        self.expected_logs.append((name, (log,)))


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    return lb.save_random_checkpoint(tmp_path_factory.mktemp('wire') / 'tiny2',
                                     policy_config=tiny_config(cameras=['raw', 'png']))


@pytest.fixture(scope='module')
def wire(checkpoint):
    with pytest.MonkeyPatch.context() as mp:
        wire = Wire(checkpoint, dt.use_loopback(mp))
        try:
            yield wire.start()
        finally:
            wire.close()


@pytest.fixture(scope='module')
def engine(checkpoint):
    return Engine.from_checkpoint(checkpoint, device='cpu', dtype='fp32', warmup_iters=0)


def bad_raw(height, width, encoding='rgb8', step=None, size=None, data=None):
    """A raw Image CDR whose fields are set directly (no consistency checks)."""
    def build(stamp):
        row = width * 3 if step is None else step
        payload = (np.zeros(row * height if size is None else size, np.uint8)
                   if data is None else data)
        msg = rt.msg_class(rt.IMAGE)(header=rt.header_msg(stamp, 'cam_raw'), height=height,
                                     width=width, encoding=encoding, is_bigendian=0, step=row,
                                     data=payload)
        return raw_cdr(msg)
    return build


def good_png(stamp):
    return rt.compressed_image_msg(stamp, 'cam_png', png_bytes(48, 64, 3), 'png')


def good_raw(stamp):
    return rt.image_msg(stamp, 'cam_raw', pixels(48, 64, 4), 'rgb8')


def compressed(data: bytes, fmt: str = 'png'):
    return lambda stamp: rt.compressed_image_msg(stamp, 'cam_png', data, fmt)


def png_claiming(height: int, width: int) -> bytes:
    """A valid 48x64 PNG whose IHDR (CRC fixed up) claims height x width."""
    data = bytearray(png_bytes(48, 64, 5))
    struct.pack_into('>II', data, 16, width, height)
    struct.pack_into('>I', data, 29, zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bad_images_are_counted_logged_and_never_acted_on(wire, engine):
    wire.valid_case()
    jpeg = cv2.imencode('.jpg', pixels(48, 64, 6))[1].tobytes()
    png = png_bytes(48, 64, 7)
    cases = [  # (name, expected text in the log line, raw, compressed)
        ('unsupported encoding', "unsupported encoding 'yuv_weird'",
         bad_raw(48, 64, 'yuv_weird'), good_png),
        ('step < width * bpp', 'step=100 is shorter than one row', bad_raw(48, 64, step=100),
         good_png),
        ('data shorter than step * height', '9215 data bytes for rgb8 64x48',
         bad_raw(48, 64, size=9215), good_png),
        ('data longer than step * height', '9217 data bytes for rgb8 64x48',
         bad_raw(48, 64, size=9217), good_png),
        ('zero size', 'empty image data', bad_raw(0, 0, size=0), good_png),
        ('absurd size', 'height=100000: expected 1..16384',
         bad_raw(100000, 100000, size=16), good_png),
        ('truncated JPEG', 'corrupt JPEG data', good_raw,
         compressed(jpeg[:len(jpeg) // 2], 'jpeg')),
        ('corrupt JPEG (garbage after the magic)', 'corrupt JPEG header', good_raw,
         compressed(b'\xff\xd8\xff' + bytes(64), 'jpeg')),
        ('truncated PNG', 'corrupt PNG data', good_raw, compressed(png[:len(png) // 2])),
        ('not an image', 'data starts with', good_raw, compressed(b'hello world', 'jpeg')),
        ('PNG claiming 100000 x 100000', '(PNG): height=100000', good_raw,
         compressed(png_claiming(100000, 100000))),
    ]
    for name, log, raw, comp in cases:
        wire.bad_image_case(name, log, raw, comp, engine_level=True)
    # Caught by the driver before the core: an empty CompressedImage.format, undecodable CDR.
    wire.bad_image_case('CompressedImage without format', 'CompressedImage.format is empty',
                        compressed=compressed(png, ''))
    garbled = bad_raw(48, 64)(time.time_ns())
    at = garbled.find(b'rgb8')
    garbled[at:at + 4] = b'\xff\xfe\xfd\xfc'  # invalid UTF-8 in the encoding string
    wire.bad_image_case('undecodable CDR (invalid UTF-8)', 'cannot decode sensor_msgs/msg/Image',
                        raw=bytes(garbled), reason='decode_error')
    # Structurally broken CDR (here: truncated) never reaches a reader: Cyclone checks samples
    # against the topic type and the writer refuses them.
    with pytest.raises(DDSException, match='BAD_PARAMETER'):
        wire.raw.publish_cdr(bytes(raw_cdr(good_raw(time.time_ns()))[:60]))
    wire.valid_case()
    check_outputs(wire, engine)
    assert_logged(wire)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bad_image_stamps_are_counted_and_never_acted_on(wire, engine):
    good = wire.valid_case()  # the checks below are made against this camera-0 stamp
    wire.bad_image_case('image stamp repeated', f'image stamp {good} ns, newest was {good} ns',
                        raw=good_raw, reason='image_duplicate', stamp=good)
    good = wire.valid_case()
    wire.bad_image_case('image stamp going backwards',
                        f'image stamp {good - 30 * MS} ns, newest was {good} ns',
                        raw=good_raw, reason='image_out_of_order', stamp=good - 30 * MS)
    wire.bad_image_case('image stamp zero', 'camera 0 image stamp 0 ns: expected > 0',
                        raw=good_raw(0), reason='image_zero_stamp', stamp=0)
    wire.bad_image_case('image stamp 1 s in the future', '(image_future): camera 0 image',
                        raw=good_raw, reason='image_future', stamp=time.time_ns() + NS_PER_S)
    wire.bad_stamps -= set(wire.valid)  # a repeated stamp's first image was good
    wire.valid_case()
    check_outputs(wire, engine)
    assert_logged(wire)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_camera_size_changing_mid_stream_is_handled(wire, engine):
    """Decision: any size is fine, the preprocessor resizes every frame to the model's input."""
    before = wire.drops()
    stamps = [wire.valid_case(raw_size=size, png_size=size[::-1])
              for size in [(48, 64), (24, 32), (240, 320), (17, 31), (64, 48)]]
    assert wire.drops().get('bad_image', 0) == before.get('bad_image', 0)
    check_outputs(wire, engine)
    assert set(stamps) <= {s for s, _ in wire.recorder.snapshot().embeddings}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bad_poses_are_counted_logged_and_never_acted_on(wire, engine):
    for name, position, orientation in [('pose NaN', [np.nan, 0.0, 0.0], IDENTITY),
                                        ('pose inf', POSITION, [0.0, 0.0, np.inf, 1.0])]:
        stamp = wire.bad_pose_case(name, '', 'pose_nonfinite', position, orientation)
        wire.expected_logs[-1] = (name, (f'pose at {stamp} ns has NaN/inf',))
    wire.bad_pose_case('zero quaternion', 'has a zero quaternion', 'pose_zero_quaternion',
                       orientation=[0.0, 0.0, 0.0, 0.0])
    wire.bad_pose_case('quaternion norm 1.5', 'quaternion norm 1.5000, expected 1 +- '
                       'sync.quaternion_tolerance 0.05', 'pose_bad_quaternion',
                       orientation=[0.0, 0.0, 0.0, 1.5])
    wire.bad_pose_case('wrong frame_id', "pose frame_id 'world', expected sync.pose_frame_id "
                       "'base'", 'pose_wrong_frame', frame_id='world')
    now = time.time_ns()
    wire.bad_pose_stamp_case('pose stamp zero', 'pose stamp 0 ns: expected a set header stamp',
                             'pose_zero_stamp', 0)
    wire.bad_pose_stamp_case('pose stamp 1 s in the future', '(pose_future): pose stamp',
                             'pose_future', now + NS_PER_S)
    wire.bad_pose_stamp_case('pose stamp going backwards', f'pose stamp {now - 300 * MS} ns '
                             'older than the newest pose', 'pose_out_of_order', now - 300 * MS)
    # Within sync.quaternion_tolerance: accepted, renormalized and used (exact pairing: the
    # stream is paused, so this pose is the only one near the image).
    wire._paused.set()
    try:
        time.sleep(0.2)
        stamp = time.time_ns()
        before = wire.drops()
        quat = np.array([0.0, 0.6, 0.0, 0.8]) * 1.03
        pose = PoseSample(stamp, FRAME, np.array([0.2, -0.1, 0.5]), quat)
        wire.valid_case(pose=pose, stamp=stamp)
        wire.valid[stamp] = Observation(stamp, wire.valid[stamp].frames, (PoseSample(
            stamp, FRAME, pose.position, quat / np.linalg.norm(quat)),))
    finally:
        wire._paused.clear()
    assert {r: n for r, n in wire.drops().items() if r.startswith('pose')} == {
        r: n for r, n in before.items() if r.startswith('pose')}
    check_outputs(wire, engine)
    assert_logged(wire)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_repeated_bad_input_is_logged_once_per_throttle_period(wire):
    """30 zero-stamp poses in a burst: 30 counted, one line, then a line with the tally."""
    wire.pace()
    before = wire.drops()
    log_before = wire.node.stderr().count('(pose_zero_stamp)')
    for _ in range(30):
        wire.pose.publish(rt.pose_msg(0, FRAME, POSITION, IDENTITY))
    wire.expect_drops(before, {'pose_zero_stamp': 30})
    time.sleep(THROTTLE + 0.1)
    wire.pose.publish(rt.pose_msg(0, FRAME, POSITION, IDENTITY))
    wire.expect_drops(before, {'pose_zero_stamp': 31})
    assert harness.wait_for(lambda: 'similar suppressed' in wire.node.stderr(), timeout=10)
    lines = [line for line in wire.node.stderr().splitlines() if '(pose_zero_stamp)' in line]
    new = lines[log_before:]
    assert 2 <= len(new) <= 3  # the burst is processed within one throttle period or two
    suppressed = [int(n) for line in new
                  for n in re.findall(r'\((\d+) similar suppressed\)', line)]
    assert suppressed and sum(suppressed) + len(new) == 31
    assert wire.node.alive()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_node_survives_everything_and_stops_cleanly(wire):
    stamp = wire.valid_case()
    assert stamp in {s for _, s in wire.recorder.snapshot().chunks}
    assert wire.node.stop() == 0
    assert 'Traceback' not in wire.node.stderr()


def check_outputs(wire: Wire, engine: Engine) -> None:
    """No output carries a bad stamp; every valid observation's embedding matches the Engine."""
    received = wire.recorder.snapshot()
    used = {s for _, s in received.chunks} | {s for _, _, s in received.actions} | {
        s for s, _ in received.embeddings}
    assert not used & wire.bad_stamps, sorted(used & wire.bad_stamps)
    embeddings = dict(received.embeddings)
    for stamp, obs in wire.valid.items():
        expected = engine.infer(obs).embedding
        np.testing.assert_allclose(embeddings[stamp], expected, rtol=1e-4, atol=1e-5)


def assert_logged(wire: Wire) -> None:
    lines = wire.node.stderr().splitlines()
    missing = [(name, texts) for name, texts in wire.expected_logs
               if not any(all(text in line for text in texts) for line in lines)]
    assert not missing, missing
    assert 'Traceback' not in wire.node.stderr()


def jpeg_claiming(height: int, width: int) -> bytes:
    """A valid 48x64 JPEG whose start-of-frame header claims height x width."""
    data = bytearray(cv2.imencode('.jpg', pixels(48, 64, 8))[1].tobytes())
    sof = data.find(b'\xff\xc0')
    struct.pack_into('>HH', data, sof + 5, height, width)
    return bytes(data)


def test_jpeg_claiming_a_huge_size_is_rejected_before_decoding():
    """A decompression bomb: ~4 KB claiming 4000 x 4000 (48 MB of pixels)."""
    from vit_perception.core.images import image_to_array
    from vit_perception.core.types import ImageFrame
    from vit_perception.errors import ImageError

    with pytest.raises(ImageError, match='claims 4000x4000 pixels from only'):
        image_to_array(ImageFrame(1, 'cam_png', jpeg_claiming(4000, 4000), format='jpeg'))


@pytest.mark.parametrize('ext', ['.png', '.jpg'])
def test_flat_4k_frames_compress_well_and_still_decode(ext):
    """The bomb bound leaves real frames alone: the best-compressing ones are flat."""
    from vit_perception.core.images import image_to_array
    from vit_perception.core.types import ImageFrame

    flat = np.full((2160, 3840, 3), 128, np.uint8)
    data = cv2.imencode(ext, flat, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()
    decoded = image_to_array(ImageFrame(1, 'cam', data, format=ext[1:]))
    assert decoded.pixels.shape == (2160, 3840, 3)
    assert int(decoded.pixels[1000, 2000, 1]) == 128
