"""An independent rclpy peer for `vit-perception bench --live --backend ros|dds`.

Runs in a ROS 2 Python (rclpy with its default RMW, e.g. Fast DDS from the Jazzy wheels), in its
own process, as a robot's camera driver and controller would:

    publishes  topics.cameras[0]  sensor_msgs/Image 640x480 rgb8 at --camera-rate (QoS --image-qos)
               topics.pose        geometry_msgs/PoseStamped at --pose-rate (reliable)
    records    topics.action_chunk, topics.action (vit_perception/ActionChunk) and /diagnostics
               with their receive times (time.time_ns, the clock the stamps are taken from)

Messages go out as CDR bytes built once with rosbags (the header stamp patched per frame, so the
peer's own CPU is small and the same for every node under test) through rclpy's serialized
publish; received ones are taken serialized and decoded with rosbags. Prints one JSON line:
what was sent and the records, for live_bench.summarize_peer.
"""

from __future__ import annotations

import argparse
import json
import signal
import struct
import sys
import threading
import time

import numpy as np


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='ros_peer')
    parser.add_argument('--duration', type=float, required=True, help='seconds of publishing')
    parser.add_argument('--size', default='640x480')
    parser.add_argument('--camera-rate', type=float, default=30.0)
    parser.add_argument('--pose-rate', type=float, default=100.0)
    parser.add_argument('--image-qos', choices=['reliable', 'best_effort'], default='reliable')
    parser.add_argument('--camera-topic', default='/camera/image_raw')
    parser.add_argument('--pose-topic', default='/ee_pose')
    parser.add_argument('--chunk-topic', default='/vit_perception/action_chunk')
    parser.add_argument('--action-topic', default='/vit_perception/action')
    parser.add_argument('--diagnostics-topic', default='/diagnostics')
    parser.add_argument('--match-timeout', type=float, default=120.0,
                        help='seconds to wait for the node to subscribe and publish')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from vit_perception.drivers import ros_types as rt
    from vit_perception.msg import ActionChunk

    width, height = (int(v) for v in args.size.split('x'))
    rclpy.init(args=['ros_peer'])
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node = rclpy.create_node('vit_perception_bench_peer')
    reliable = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST,
                          reliability=ReliabilityPolicy.RELIABLE)
    image_qos = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST, reliability=(
        ReliabilityPolicy.RELIABLE if args.image_qos == 'reliable'
        else ReliabilityPolicy.BEST_EFFORT))
    image_pub = node.create_publisher(Image, args.camera_topic, image_qos)
    pose_pub = node.create_publisher(PoseStamped, args.pose_topic, reliable)

    lock = threading.Lock()
    records = {'chunks': [], 'actions': [], 'diagnostics': []}

    def on_chunk(cdr: bytes) -> None:
        now = time.time_ns()
        msg = rt.deserialize(cdr, rt.ACTION_CHUNK)
        with lock:
            records['chunks'].append((now, rt.stamp_ns(msg.observation_stamp)))

    def on_action(cdr: bytes) -> None:
        now = time.time_ns()
        msg = rt.deserialize(cdr, rt.ACTION_CHUNK)
        with lock:
            records['actions'].append((now, rt.stamp_ns(msg.header.stamp),
                                       rt.stamp_ns(msg.observation_stamp)))

    def on_diagnostics(cdr: bytes) -> None:
        now = time.time_ns()
        msg = rt.deserialize(cdr, rt.DIAGNOSTIC_ARRAY)
        status = msg.status[0] if msg.status else None
        values = {kv.key: kv.value for kv in status.values} if status else {}
        with lock:
            records['diagnostics'].append((now, int(status.level) if status else -1,
                                           status.message if status else '', values))

    subscriptions = [
        node.create_subscription(ActionChunk, args.chunk_topic, on_chunk, reliable, raw=True),
        node.create_subscription(ActionChunk, args.action_topic, on_action, reliable, raw=True),
        node.create_subscription(DiagnosticArray, args.diagnostics_topic, on_diagnostics,
                                 reliable, raw=True)]
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=_spin, args=(executor, stop), daemon=True)
    spinner.start()

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image_cdr = bytearray(rt.serialize(rt.image_msg(0, 'camera', pixels, 'rgb8')))
    sent = {'images': 0, 'poses': 0, 'image_stamps': []}
    deadline = time.monotonic() + args.match_timeout
    while not stop.is_set() and time.monotonic() < deadline and not (
            image_pub.get_subscription_count() and pose_pub.get_subscription_count()
            and all(s.get_publisher_count() for s in subscriptions[:2])):
        time.sleep(0.05)
    matched = bool(image_pub.get_subscription_count() and pose_pub.get_subscription_count())
    print(json.dumps({'event': 'publishing', 'matched': matched, 'time_ns': time.time_ns()}),
          flush=True)
    start_ns = time.time_ns()
    if matched:
        _publish(args, image_pub, pose_pub, image_cdr, sent, stop)
    end_ns = time.time_ns()
    time.sleep(1.5)  # the last chunks, actions and one more diagnostics message
    stop.set()
    spinner.join(5)
    with lock:
        out = {'event': 'done', 'matched': matched, 'start_ns': start_ns, 'end_ns': end_ns,
               'images': sent['images'], 'poses': sent['poses'],
               'image_stamps': sent['image_stamps'], **records}
    print(json.dumps(out), flush=True)
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown()
    return 0 if matched else 1


def _spin(executor, stop: threading.Event) -> None:
    while not stop.is_set():
        executor.spin_once(timeout_sec=0.1)


def _publish(args, image_pub, pose_pub, image_cdr: bytearray, sent: dict,
             stop: threading.Event) -> None:
    """Camera and pose on absolute deadlines; header stamps = send time (time.time_ns)."""
    from vit_perception.drivers import ros_types as rt
    from vit_perception.tools.harness import moving_pose, paced

    rates = {'pose': args.pose_rate, 'camera': args.camera_rate}
    for stream, _ in paced(args.duration, rates, stop):
        t = time.time_ns()
        if stream == 'pose':
            pose_pub.publish(bytes(rt.serialize(rt.pose_msg(t, 'base', *moving_pose(t)))))
            sent['poses'] += 1
        else:
            # CDR: 4-byte encapsulation header, then header.stamp = int32 sec, uint32 nanosec.
            struct.pack_into('<iI', image_cdr, 4, *divmod(t, 1_000_000_000))
            image_pub.publish(bytes(image_cdr))
            sent['images'] += 1
            sent['image_stamps'].append(t)


if __name__ == '__main__':
    sys.exit(main())
