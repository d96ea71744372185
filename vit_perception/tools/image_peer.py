"""One end of `vit-perception bench --live --image-loss`: publish or count Image frames.

    python image_peer.py pub --vendor rclpy|cyclone --topic T --qos Q --size WxH --frames N
    python image_peer.py sub --vendor rclpy|cyclone --topic T --qos Q --size WxH

Run by path, in any Python that has the vendor's library: `rclpy` (the RMW it loads, e.g. Fast DDS
from the Jazzy wheels) or `cyclone` (this project's DDS driver, vit_perception.drivers.dds). The
discovery and transport settings come from the environment (ROS_DOMAIN_ID, CYCLONEDDS_URI,
FASTDDS_DEFAULT_PROFILES_FILE, ...), as for any ROS 2 process.

Frame i is one pre-serialized rgb8 Image whose header stamp is (sec 1, nanosec i): the publisher
waits for a subscription, then sends frames 0..N-1 on absolute deadlines and prints
{"event": "done", "sent": N, "frame_bytes": B}. The subscriber prints {"event": "ready"}, counts
each distinct frame index that arrives complete (B bytes: both vendors build the same frame) and,
at a line on stdin (or EOF), prints {"event": "done", "indices": [...], "complete": n,
"wrong_size": m}.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import threading
import time

STAMP_SEC = 1  # header.stamp.sec of every frame; nanosec is the frame index
_STAMP_OFFSET = 4  # CDR: 4-byte encapsulation header, then header.stamp (int32 sec, uint32 ns)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='image_peer')
    parser.add_argument('role', choices=['pub', 'sub'])
    parser.add_argument('--vendor', choices=['rclpy', 'cyclone'], required=True)
    parser.add_argument('--topic', default='/image_loss/image_raw')
    parser.add_argument('--qos', choices=['best_effort', 'reliable'], default='best_effort')
    parser.add_argument('--depth', type=int, default=5, help='keep-last depth (both ends)')
    parser.add_argument('--size', default='640x480', help='WIDTHxHEIGHT (rgb8)')
    parser.add_argument('--frames', type=int, default=600)
    parser.add_argument('--rate', type=float, default=30.0)
    parser.add_argument('--match-timeout', type=float, default=60.0)
    return parser.parse_args(argv)


def frame_index(cdr) -> int:
    """The frame index a publisher wrote into a serialized Image (its header stamp nanosec)."""
    return struct.unpack_from('<I', cdr, _STAMP_OFFSET + 4)[0]


def set_frame_index(cdr: bytearray, index: int) -> None:
    struct.pack_into('<iI', cdr, _STAMP_OFFSET, STAMP_SEC, index)


class Counts:
    """What a subscriber received: the frame indices of complete frames (`frame_bytes` long),
    how many complete frames (duplicates included) and how many of another size."""

    def __init__(self, frame_bytes: int):
        self.frame_bytes = frame_bytes
        self._lock = threading.Lock()
        self.indices: set[int] = set()
        self.complete = 0
        self.wrong_size = 0

    def add(self, cdr) -> None:
        with self._lock:
            if len(cdr) != self.frame_bytes:
                self.wrong_size += 1
                return
            self.complete += 1
            self.indices.add(frame_index(cdr))

    def report(self) -> dict:
        with self._lock:
            return {'event': 'done', 'indices': sorted(self.indices), 'complete': self.complete,
                    'wrong_size': self.wrong_size}


# ------------------------------------------------------------------------------------------
# Vendors: frame(), advertise() + matched() + send(cdr), subscribe(), close()
# ------------------------------------------------------------------------------------------

class _Rclpy:
    def __init__(self, role: str):
        import rclpy

        self.rclpy = rclpy
        rclpy.init(args=['image_peer'])
        self.node = rclpy.create_node(f'image_loss_{role}')
        self._stop = threading.Event()
        self._spinner = None

    def _qos(self, qos: str, depth: int):
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

        return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=(
            ReliabilityPolicy.RELIABLE if qos == 'reliable' else ReliabilityPolicy.BEST_EFFORT))

    def frame(self, width: int, height: int) -> bytearray:
        from rclpy.serialization import serialize_message
        from sensor_msgs.msg import Image

        msg = Image(height=height, width=width, encoding='rgb8', step=3 * width,
                    data=bytes(range(256)) * (3 * width * height // 256) +
                    bytes(3 * width * height % 256))
        msg.header.frame_id = 'camera'
        return bytearray(serialize_message(msg))

    def advertise(self, topic: str, qos: str, depth: int) -> None:
        from sensor_msgs.msg import Image

        self._pub = self.node.create_publisher(Image, topic, self._qos(qos, depth))

    def matched(self) -> int:
        return self._pub.get_subscription_count()

    def send(self, cdr: bytes) -> None:
        self._pub.publish(cdr)  # bytes: rclpy publishes them as the serialized message

    def subscribe(self, topic: str, qos: str, depth: int, callback) -> None:
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image

        self.node.create_subscription(Image, topic, callback, self._qos(qos, depth), raw=True)
        executor = SingleThreadedExecutor()
        executor.add_node(self.node)

        def spin():
            while not self._stop.is_set():
                executor.spin_once(timeout_sec=0.1)

        self._spinner = threading.Thread(target=spin, daemon=True)
        self._spinner.start()

    def close(self) -> None:
        self._stop.set()
        if self._spinner is not None:
            self._spinner.join(5)
        self.node.destroy_node()
        self.rclpy.try_shutdown()


class _Cyclone:
    def __init__(self, role: str):
        from vit_perception.drivers import dds
        from vit_perception.drivers import ros_types as rt

        self.dds, self.rt = dds, rt
        dds.tune_allocator()
        self.transport = dds.DdsTransport(-1)  # ROS_DOMAIN_ID

    def frame(self, width: int, height: int) -> bytearray:
        import numpy as np

        pixels = np.resize(np.arange(256, dtype=np.uint8), (height, width, 3))
        return bytearray(self.rt.serialize(self.rt.image_msg(0, 'camera', pixels, 'rgb8')))

    def advertise(self, topic: str, qos: str, depth: int) -> None:
        self._pub = self.transport.publisher(topic, self.rt.IMAGE,
                                             self.dds.qos_profile(qos, depth))

    def matched(self) -> int:
        return self._pub.matched()

    def send(self, cdr: bytes) -> None:
        self._pub.publish_cdr(cdr)

    def subscribe(self, topic: str, qos: str, depth: int, callback) -> None:
        self.transport.subscribe(topic, self.rt.IMAGE, self.dds.qos_profile(qos, depth),
                                 callback, raw=True)

    def close(self) -> None:
        self.transport.close()


def publish(args: argparse.Namespace, vendor) -> dict:
    width, height = (int(v) for v in args.size.lower().split('x'))
    cdr = vendor.frame(width, height)
    vendor.advertise(args.topic, args.qos, args.depth)
    deadline = time.monotonic() + args.match_timeout
    while not vendor.matched() and time.monotonic() < deadline:
        time.sleep(0.02)
    matched = bool(vendor.matched())
    sent = 0
    if matched:
        time.sleep(1.0)  # the subscriber's side of the match (best effort sends to matched only)
        period = 1.0 / args.rate
        start = time.perf_counter()
        for index in range(args.frames):
            wait = start + index * period - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            set_frame_index(cdr, index)
            vendor.send(bytes(cdr))
            sent += 1
        time.sleep(0.5)  # let the last frames leave before the writer goes
    return {'event': 'done', 'matched': matched, 'sent': sent, 'frame_bytes': len(cdr)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    vendor = (_Rclpy if args.vendor == 'rclpy' else _Cyclone)(args.role)
    try:
        if args.role == 'pub':
            result = publish(args, vendor)
        else:
            width, height = (int(v) for v in args.size.lower().split('x'))
            counts = Counts(len(vendor.frame(width, height)))
            vendor.subscribe(args.topic, args.qos, args.depth, counts.add)
            print(json.dumps({'event': 'ready'}), flush=True)
            sys.stdin.readline()  # the controller says stop (or goes away)
            result = counts.report()
    finally:
        vendor.close()
    print(json.dumps(result), flush=True)
    return 0 if result.get('matched', True) else 1


if __name__ == '__main__':
    sys.exit(main())
