"""Helpers for the DDS tests: loopback-only Cyclone config, unique domains, expected messages."""

from __future__ import annotations

import itertools

import numpy as np

from vit_perception.drivers import ros_types as rt
from vit_perception.tools import harness

# Cyclone (the 11.0 wheel and Debian's 0.10) on the loopback interface only, multicast on it:
# the tests never touch the network and need nothing from the machine.
LOOPBACK_URI = ('<CycloneDDS><Domain id="any"><General><Interfaces>'
                '<NetworkInterface name="lo" multicast="true"/>'
                '</Interfaces></General></Domain></CycloneDDS>')

_next = itertools.count()


def unique_domain() -> int:
    """A private DDS domain id that differs per test and per concurrently running process."""
    return harness.pick_domain(salt=next(_next))


def use_loopback(monkeypatch) -> int:
    """Point Cyclone at loopback (this process and its children); return a fresh domain id."""
    monkeypatch.setenv('CYCLONEDDS_URI', LOOPBACK_URI)
    monkeypatch.delenv('ROS_DOMAIN_ID', raising=False)
    return unique_domain()


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.01) -> bool:
    """Poll `predicate` until true or `timeout` s pass; returns its last value."""
    return harness.wait_for(predicate, timeout, interval)


# Topics of the separate-process publisher test.
IMAGE_TOPIC = '/test/image_raw'
COMPRESSED_TOPIC = '/test/image_raw/compressed'
POSE_TOPIC = '/test/ee_pose'
DONE_TOPIC = '/test/done'

# (encoding, height, width, dtype, channels)
IMAGE_CASES = [
    ('rgb8', 480, 640, np.uint8, 3),
    ('bgr8', 48, 64, np.uint8, 3),
    ('rgba8', 17, 31, np.uint8, 4),
    ('mono8', 33, 65, np.uint8, 1),
    ('mono16', 24, 32, np.uint16, 1),
]


def expected_messages() -> list[tuple[str, str, object]]:
    """Deterministic (topic, msgtype, message) list both sides of the process test build."""
    rng = np.random.default_rng(1234)
    out = []
    for i, (encoding, height, width, dtype, channels) in enumerate(IMAGE_CASES):
        shape = (height, width) if channels == 1 else (height, width, channels)
        pixels = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
        out.append((IMAGE_TOPIC, rt.IMAGE,
                    rt.image_msg(10**9 * (i + 1) + i, f'cam_{encoding}', pixels, encoding)))
    for i, fmt in enumerate(['jpeg', 'png', 'rgb8; jpeg compressed bgr8']):
        payload = rng.integers(0, 256, 1000 + 5000 * i, dtype=np.uint8).tobytes()
        out.append((COMPRESSED_TOPIC, rt.COMPRESSED_IMAGE,
                    rt.compressed_image_msg(10**9 * (i + 1) + 7, 'cam_c', payload, fmt)))
    for i in range(4):
        position, q = rng.normal(size=3), rng.normal(size=4)
        out.append((POSE_TOPIC, rt.POSE_STAMPED, rt.pose_msg(
            10**9 * (i + 1) + 11, 'base', position, q / np.linalg.norm(q))))
    return out


def key(msg) -> tuple[int, str]:
    """Identify a test message by its header."""
    return rt.stamp_ns(msg.header.stamp), msg.header.frame_id
