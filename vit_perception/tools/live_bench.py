"""`vit-perception bench --live` / `--soak SECONDS`: the DDS node measured end to end on loopback.

Three processes, as on a robot: a publisher (camera(s) 640x480 rgb8 at 30 Hz + pose at 500 Hz,
header stamps = send time), the node (`vit-perception node --backend dds`, its own process) and
this process, which records the node's outputs with their receive times:

    image-in -> chunk-out latency = receive time of the ActionChunk - its observation stamp
    tick period jitter            = |period - 1 / rate| between consecutive action messages, from
                                    their header stamps (the node's clock at each tick: the
                                    headline figure) and from their receive times
    node-side figures             = /diagnostics (timer lateness, stage latencies, drops)
    memory                        = node RSS sampled every few seconds (psutil)

`--live --image-loss` is tools/image_loss.py (transport only, no model).

Statistics cover a window that starts after a warm-up (first chunk + a few seconds). Cyclone
runs on the loopback interface only. The helpers here (NodeProcess, OutputRecorder, ...) are
also what the process-level reliability tests use.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vit_perception.tools.harness import (
    DDS_READY,
    LOOPBACK_URI,
    ROS_READY,
    NodeProcess,
    RosEnvironment,
    cli_command,
    kill_child,
    loopback_env,
    moving_pose,
    paced,
    pick_domain,
    wait_for,
)

CAMERA_RATE_HZ = 30.0
POSE_RATE_HZ = 500.0
SOAK_CAMERAS = 4
LIVE_WARMUP_S = 3.0  # after the first chunk, before the statistics window opens
SOAK_WARMUP_S = 10.0  # (at most half the duration)
JITTER_TARGET_MS = 2.0  # the target for the control tick's period jitter p99


def save_random_checkpoint(directory: str | Path, *, size: str = 'small', cameras: int = 1,
                           fusion: str = 'early', policy_config=None) -> Path:
    """A randomly initialized checkpoint (bench.SIZES ViT, or `policy_config`) in `directory`."""
    import torch

    from vit_perception.model.checkpoint import save_checkpoint
    from vit_perception.model.policy import build_policy
    from vit_perception.tools.bench import load_policy

    torch.manual_seed(0)
    if policy_config is not None:
        policy = build_policy(policy_config).eval()
    else:
        policy = load_policy('', size, fusion, cameras)
    return save_checkpoint(policy, directory)


def diag_values(msg) -> dict[str, str]:
    """The key/value pairs of the first status of a DiagnosticArray."""
    return {kv.key: kv.value for kv in msg.status[0].values} if msg.status else {}


def drops_in(values: dict[str, str]) -> dict[str, int]:
    """{reason: count} from diagnostics values (`drops.<reason>`)."""
    return {k[len('drops.'):]: int(v) for k, v in values.items() if k.startswith('drops.')}


@dataclass
class Received:
    """What the recorder got; times are time.time_ns() at the callback."""

    chunks: list = field(default_factory=list)  # (recv_ns, observation_stamp_ns)
    embeddings: list = field(default_factory=list)  # (stamp_ns, embedding np.ndarray)
    actions: list = field(default_factory=list)  # (recv_ns, stamp_ns, observation_stamp_ns)
    diagnostics: list = field(default_factory=list)  # (recv_ns, level, message, values)


class OutputRecorder:
    """Subscribes to the node's four outputs on `transport` and records them (thread-safe)."""

    def __init__(self, transport, topics=None, embeddings: bool = False):
        from vit_perception.config import TopicsConfig
        from vit_perception.drivers import dds
        from vit_perception.drivers import ros_types as rt

        topics = topics or TopicsConfig()
        self._rt = rt
        self._lock = threading.Lock()
        self.data = Received()
        self.subscriptions = [
            transport.subscribe(topics.action_chunk, rt.ACTION_CHUNK, dds.DEFAULT, self._chunk),
            transport.subscribe(topics.action, rt.ACTION_CHUNK, dds.DEFAULT, self._action),
            transport.subscribe(topics.diagnostics, rt.DIAGNOSTIC_ARRAY, dds.DEFAULT,
                                self._diagnostics)]
        if embeddings:
            self.subscriptions.append(transport.subscribe(
                topics.embedding, rt.EMBEDDING, dds.DEFAULT, self._embedding))

    def _chunk(self, msg) -> None:
        now = time.time_ns()
        with self._lock:
            self.data.chunks.append((now, self._rt.stamp_ns(msg.observation_stamp)))

    def _action(self, msg) -> None:
        now = time.time_ns()
        with self._lock:
            self.data.actions.append((now, self._rt.stamp_ns(msg.header.stamp),
                                      self._rt.stamp_ns(msg.observation_stamp)))

    def _embedding(self, msg) -> None:
        embedding = np.array(self._rt.embedding_from_msg(msg))  # a copy, off the buffer
        with self._lock:
            self.data.embeddings.append((self._rt.stamp_ns(msg.header.stamp), embedding))

    def _diagnostics(self, msg) -> None:
        now = time.time_ns()
        status = msg.status[0] if msg.status else None
        entry = (now, int(status.level) if status else -1, status.message if status else '',
                 diag_values(msg))
        with self._lock:
            self.data.diagnostics.append(entry)

    def snapshot(self) -> Received:
        with self._lock:
            return Received(list(self.data.chunks), list(self.data.embeddings),
                            list(self.data.actions), list(self.data.diagnostics))

    def latest_values(self) -> dict[str, str]:
        """Values of the newest diagnostics message ({} before the first)."""
        with self._lock:
            return dict(self.data.diagnostics[-1][3]) if self.data.diagnostics else {}

    def observation_stamps(self) -> set[int]:
        """Observation stamps of every chunk and action received."""
        with self._lock:
            return ({s for _, s in self.data.chunks}
                    | {s for _, _, s in self.data.actions})


# ------------------------------------------------------------------------------------------
# Publisher process: cameras at CAMERA_RATE_HZ + pose at POSE_RATE_HZ, stamps = send time
# ------------------------------------------------------------------------------------------

def publisher_command(domain: int, topics: list[str], width: int, height: int,
                      duration: float, camera_rate: float = CAMERA_RATE_HZ,
                      pose_rate: float = POSE_RATE_HZ, pose_topic: str = '/ee_pose') -> list:
    return [sys.executable, '-m', 'vit_perception.tools.live_bench', 'publish',
            '--domain', str(domain), '--topics', ','.join(topics), '--size',
            f'{width}x{height}', '--duration', str(duration), '--camera-rate', str(camera_rate),
            '--pose-rate', str(pose_rate), '--pose-topic', pose_topic]


class _ImageStream:
    """One camera: a pre-serialized Image whose header stamp is patched per frame."""

    def __init__(self, publisher, frame_id: str, pixels: np.ndarray):
        from vit_perception.drivers import ros_types as rt

        self.publisher = publisher
        self.cdr = bytearray(rt.serialize(rt.image_msg(1, frame_id, pixels, 'rgb8')))
        # CDR: 4-byte encapsulation header, then header.stamp = int32 sec, uint32 nanosec.
        self.set_stamp(123_456_789_000)
        assert rt.stamp_ns(rt.deserialize(bytes(self.cdr), rt.IMAGE).header.stamp) == \
            123_456_789_000, 'Image CDR layout: header stamp not at offset 4'

    def set_stamp(self, stamp_ns: int) -> None:
        struct.pack_into('<iI', self.cdr, 4, *divmod(stamp_ns, 1_000_000_000))

    def send(self, stamp_ns: int) -> None:
        self.set_stamp(stamp_ns)
        self.publisher.publish_cdr(self.cdr)


def publish_main(argv: list[str]) -> int:
    """The publisher process (see publisher_command); prints a JSON summary on stdout."""
    from vit_perception.drivers import dds
    from vit_perception.drivers import ros_types as rt

    parser = argparse.ArgumentParser(prog='live_bench publish')
    parser.add_argument('--domain', type=int, required=True)
    parser.add_argument('--topics', required=True)
    parser.add_argument('--size', default='640x480')
    parser.add_argument('--duration', type=float, required=True)
    parser.add_argument('--camera-rate', type=float, default=CAMERA_RATE_HZ)
    parser.add_argument('--pose-rate', type=float, default=POSE_RATE_HZ)
    parser.add_argument('--pose-topic', default='/ee_pose')
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split('x'))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    dds.tune_allocator()
    rng = np.random.default_rng(0)
    sent = {'images': 0, 'poses': 0}
    lateness = []
    with dds.DdsTransport(args.domain) as transport:
        streams = [_ImageStream(transport.publisher(topic, rt.IMAGE, dds.SENSOR_DATA),
                                f'camera{i}', rng.integers(0, 256, (height, width, 3),
                                                           dtype=np.uint8))
                   for i, topic in enumerate(args.topics.split(','))]
        pose_pub = transport.publisher(args.pose_topic, rt.POSE_STAMPED, dds.DEFAULT)
        matched = all(s.publisher.wait_for_subscribers(1, 60) for s in streams) and \
            pose_pub.wait_for_subscribers(1, 60)
        rates = {'pose': args.pose_rate, 'camera': args.camera_rate}
        for due, late_ns in (paced(args.duration, rates, stop) if matched else ()):
            t = time.time_ns()
            if due == 'pose':
                pose_pub.publish(rt.pose_msg(t, 'base', *moving_pose(t)))
                sent['poses'] += 1
            else:
                lateness.append(late_ns)
                for stream in streams:  # one stamp for every camera: a synchronized rig
                    stream.send(t)
                sent['images'] += len(streams)
    late = np.asarray(lateness or [0]) / 1e6
    print(json.dumps({'matched': matched, **sent,
                      'camera_late_p99_ms': float(np.percentile(late, 99))}), flush=True)
    return 0 if matched else 1


# ------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `bench` flags of the live runs (--live, --soak, --backend, ...)."""
    live = parser.add_argument_group('live path on loopback (instead of the A/B)')
    live.add_argument('--live', action='store_true', help='image-in -> chunk-out latency and '
                      'control-tick jitter through the DDS node, model running at camera rate')
    live.add_argument('--soak', type=float, default=0.0, metavar='SECONDS',
                      help='load/soak run: 4 cameras at 30 Hz + pose at 500 Hz for SECONDS; '
                      'reports RSS growth, drops by reason, tick jitter, latency p99')
    live.add_argument('--rate', type=float, default=None,
                      help='--live/--soak: control rate in Hz (default 100; 50 with --backend)')
    live.add_argument('--duration', type=float, default=None,
                      help='--live: seconds to run (default 20; 30 with --backend)')
    live.add_argument('--backend', choices=['ros', 'dds', 'both'], default=None,
                      help='--live: the rclpy node (ros) or the DDS node (dds), or both in turn, '
                      'fed by an independent rclpy peer (1 camera 640x480 at 30 Hz, pose at '
                      '100 Hz, shipped checkpoint unless --model); figures: chunks per image, '
                      'action rate and gaps, latency, node CPU-seconds')
    live.add_argument('--image-qos', choices=['reliable', 'best_effort'], default='reliable',
                      help='--backend: image QoS of the peer and the node (default reliable: '
                      'transport loss out of the measurement)')
    live.add_argument('--image-loss', action='store_true',
                      help='--live: best-effort image loss between Fast DDS (rclpy, --ros-env) '
                      'and Cyclone (this DDS driver) in every direction, under each setting '
                      '(see tools/image_loss.py); no model, --duration seconds of 30 Hz --image '
                      'frames per run (default 20)')
    live.add_argument('--image-loss-settings', default='', metavar='NAMES',
                      help='--image-loss: comma-separated settings to run (default all)')
    live.add_argument('--ros-env', default=None, metavar='DIR',
                      help='--backend: a folder made by `bash scripts/check_ros_jazzy.sh --dir '
                      'DIR` (rclpy from the Jazzy wheels) when this Python has no rclpy '
                      '(default $VIT_PERCEPTION_ROS_ENV)')


def run(args: argparse.Namespace) -> int:
    from vit_perception.errors import ConfigError

    if getattr(args, 'image_loss', False):
        return run_image_loss(args)
    peer = bool(getattr(args, 'backend', None))
    if args.rate is None:
        args.rate = PEER_CONTROL_RATE_HZ if peer else 100.0
    if args.duration is None:
        args.duration = PEER_DURATION_S if peer else 20.0
    if peer and (args.soak or not args.live):
        raise ConfigError('--backend goes with --live (not --soak): bench --live --backend '
                          'ros|dds|both')

    soak = float(args.soak or 0.0)
    duration = soak if soak else float(args.duration)
    if not duration > 0 or not args.rate > 0:
        raise ConfigError(f'--duration/--soak {duration} and --rate {args.rate}: must be > 0')
    try:
        width, height = (int(v) for v in str(getattr(args, 'image', '640x480')).lower()
                         .split('x'))
    except ValueError:
        raise ConfigError(f'--image {args.image!r}: expected WIDTHxHEIGHT, e.g. 640x480'
                          ) from None

    def progress(text: str) -> None:
        print(f'bench: {text}', file=sys.stderr, flush=True)

    if getattr(args, 'backend', None):
        return run_peer(args, width, height, progress)
    report = measure(mode='soak' if soak else 'live', duration=duration, rate=args.rate,
                     model=args.model, size=args.size, fusion=args.fusion, device=args.device,
                     dtype=args.dtype, width=width, height=height,
                     cameras=SOAK_CAMERAS if soak else 1, progress=progress)
    print(json.dumps(report, indent=2) if args.json else format_report(report), flush=True)
    return 0


def run_image_loss(args: argparse.Namespace) -> int:
    """`bench --live --image-loss`: tools/image_loss.py's table."""
    from vit_perception.errors import ConfigError
    from vit_perception.tools import image_loss

    if args.soak or args.backend:
        raise ConfigError('--image-loss goes with --live alone (not --soak or --backend)')
    args.duration = PEER_LOSS_DURATION_S if args.duration is None else args.duration
    if not args.duration > 0:
        raise ConfigError(f'--duration {args.duration}: must be > 0')
    names = [n for n in args.image_loss_settings.split(',') if n]
    known = [s.name for s in image_loss.settings(1)]
    if any(n not in known for n in names):
        raise ConfigError(f'--image-loss-settings {args.image_loss_settings!r}: expected '
                          f'names from {",".join(known)}')
    return image_loss.run(args, progress=lambda text: print(f'bench: {text}', file=sys.stderr,
                                                            flush=True))


def measure(*, mode: str, duration: float, rate: float, model: str = '', size: str = 'small',
            fusion: str = 'early', device: str = 'auto', dtype: str = 'auto', width: int = 640,
            height: int = 480, cameras: int = 1, warmup: float | None = None,
            progress=lambda text: None) -> dict:
    """Run publisher + node + recorder for `duration` s of measurement; return the report."""
    if warmup is None:  # short runs (smoke tests) warm up for a fraction of their duration
        warmup = min(SOAK_WARMUP_S if mode == 'soak' else LIVE_WARMUP_S, duration / 2)
    previous_uri = os.environ.get('CYCLONEDDS_URI')
    os.environ['CYCLONEDDS_URI'] = LOOPBACK_URI  # this process's participant too
    try:
        return _measure(mode, duration, rate, model, size, fusion, device, dtype, width, height,
                        cameras, warmup, progress)
    finally:
        if previous_uri is None:
            os.environ.pop('CYCLONEDDS_URI', None)
        else:
            os.environ['CYCLONEDDS_URI'] = previous_uri


def _measure(mode, duration, rate, model, size, fusion, device, dtype, width, height, cameras,
             warmup, progress) -> dict:
    from vit_perception.drivers import dds

    with tempfile.TemporaryDirectory(prefix='vit_perception_bench_') as tmp:
        if model:
            cameras = _checkpoint_cameras(model)
            model_name = str(model)
        else:
            progress(f'building a random-init ViT-{size[0].upper()}/16 checkpoint with '
                     f'{cameras} camera(s) ...')
            model = save_random_checkpoint(Path(tmp) / 'checkpoint', size=size,
                                           cameras=cameras, fusion=fusion)
            model_name = f'random-init ViT-{size[0].upper()}/16 224, {fusion} fusion'
        topics = (['/camera/image_raw'] if cameras == 1 else
                  [f'/camera{i}/image_raw' for i in range(cameras)])
        domain = pick_domain()
        overrides = [f'control.control_rate_hz={rate:g}', f'engine.device={device}',
                     f'engine.dtype={dtype}', 'diagnostics_period=1.0',
                     f'topics.cameras=[{",".join(topics)}]',
                     f'topics.camera_transports=[{",".join(["raw"] * cameras)}]']
        node = NodeProcess(model, domain, overrides, log_path=Path(tmp) / 'node.log')
        publisher = None
        try:
            progress(f'starting the node on DDS domain {domain} (loopback) ...')
            node.start()
            node.wait_running(timeout=600)
            rss_loaded = node.rss_bytes()
            transport = dds.DdsTransport(domain)
            try:
                recorder = OutputRecorder(transport)
                for sub in recorder.subscriptions:
                    sub.wait_for_publishers(1, timeout=30)
                total = duration + warmup + 30.0  # the publisher stops itself at the latest
                progress(f'publishing {cameras} x {width}x{height} rgb8 at '
                         f'{CAMERA_RATE_HZ:g} Hz + pose at {POSE_RATE_HZ:g} Hz; measuring '
                         f'{duration:g} s after a {warmup:g} s warm-up ...')
                load_start = os.getloadavg()
                publisher = subprocess.Popen(
                    publisher_command(domain, topics, width, height, total),
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    env=loopback_env(), text=True)
                if not wait_for(lambda: recorder.snapshot().chunks or publisher.poll()
                                is not None or not node.alive(), timeout=120, interval=0.05):
                    raise RuntimeError('no action chunk within 120 s of publishing:\n'
                                       + node.stderr()[-3000:])
                if not node.alive() or publisher.poll() is not None:
                    raise RuntimeError('a process ended early:\n' + node.stderr()[-3000:])
                time.sleep(warmup)
                window = _Window(time.time_ns())
                window.diag_start = recorder.latest_values()
                rss = [(0.0, node.rss_bytes())]
                period = 1.0 if duration <= 60 else 5.0
                t0 = time.monotonic()
                while time.monotonic() - t0 < duration:
                    time.sleep(min(period, duration - (time.monotonic() - t0)))
                    if not node.alive():
                        raise RuntimeError('the node died during the run:\n'
                                           + node.stderr()[-3000:])
                    rss.append((time.monotonic() - t0, node.rss_bytes()))
                window.end_ns = time.time_ns()
                load_end = os.getloadavg()
                publisher.send_signal(signal.SIGINT)
                pub_out, pub_err = publisher.communicate(timeout=30)
                # one more diagnostics message after the traffic stopped
                count = len(recorder.snapshot().diagnostics)
                wait_for(lambda: len(recorder.snapshot().diagnostics) > count, timeout=5)
                received = recorder.snapshot()
            finally:
                transport.close()
            exit_code = node.stop(signal.SIGINT, timeout=60)
        finally:
            kill_child(publisher)
            node.kill()
        stderr = node.stderr()
    sent = last_json_line(pub_out)
    report = {
        'mode': mode,
        'model': model_name,
        'cameras': cameras,
        'image': f'{width}x{height} rgb8',
        'camera_rate_hz': CAMERA_RATE_HZ,
        'pose_rate_hz': POSE_RATE_HZ,
        'control_rate_hz': rate,
        'device': device,
        'dtype': dtype,
        'duration_s': duration,
        'warmup_s': warmup,
        'machine': {'cpus': os.cpu_count(), 'load_avg_start': list(load_start),
                    'load_avg_end': list(load_end)},
        'sent': sent,
    }
    report.update(summarize(received, window, rate, rss, rss_loaded))
    report['node_exit_code'] = exit_code
    report['node_tracebacks'] = stderr.count('Traceback')
    if pub_err.strip():
        report['publisher_stderr'] = pub_err.strip()[-2000:]
    return report


# ------------------------------------------------------------------------------------------
# --backend ros|dds: the node (rclpy or DDS) against an independent rclpy peer
# ------------------------------------------------------------------------------------------

PEER_DURATION_S = 30.0
PEER_LOSS_DURATION_S = 20.0  # --image-loss: 600 frames per run
PEER_POSE_RATE_HZ = 100.0
PEER_CONTROL_RATE_HZ = 50.0
MAX_ACTION_GAP_MS = 100.0  # the target: every gap between actions <= 100 ms


def measure_with_peer(backend: str, *, ros_env: RosEnvironment, duration: float = PEER_DURATION_S,
                      rate: float = PEER_CONTROL_RATE_HZ, model: str = '', width: int = 640,
                      height: int = 480, image_qos: str = 'reliable', overrides=(),
                      progress=lambda text: None) -> dict:
    """One node (`backend` 'ros': the rclpy node; 'dds': the DDS node) fed by the rclpy peer.

    The peer (tools/ros_peer.py, in `ros_env`) publishes one camera at CAMERA_RATE_HZ and the pose
    at PEER_POSE_RATE_HZ for `duration` s and records the node's chunks, actions and diagnostics;
    this process starts both, samples the node's CPU time around the publishing and summarizes.
    """
    domain = pick_domain()
    settings = [f'control.control_rate_hz={rate:g}', f'qos.image_reliability={image_qos}',
                'diagnostics_period=1.0', *overrides]
    if model:
        settings.append(f'engine.model={model}')
    sets = [a for item in settings for a in ('--set', item)]
    if backend == 'ros':
        argv = cli_command('node', '--backend', 'ros', *sets, python=ros_env.python)
        env, ready = loopback_env(ros_env.env, domain), ROS_READY
    else:
        argv = cli_command('node', '--backend', 'dds', *sets)
        env, ready = loopback_env(None, domain), DDS_READY
    with tempfile.TemporaryDirectory(prefix='vit_perception_bench_') as tmp:
        # cwd: not a source checkout, whose vit_perception would shadow the built one
        node = NodeProcess(None, domain, argv=argv, env=env, ready=ready,
                           log_path=Path(tmp) / 'node.log', cwd=tmp)
        peer = None
        try:
            progress(f'{backend}: starting the node on domain {domain} (loopback) ...')
            node.start()
            node.wait_running(timeout=600)
            peer = subprocess.Popen(
                [ros_env.python, '-m', 'vit_perception.tools.ros_peer', '--duration',
                 str(duration), '--size', f'{width}x{height}', '--camera-rate',
                 str(CAMERA_RATE_HZ), '--pose-rate', str(PEER_POSE_RATE_HZ), '--image-qos',
                 image_qos], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=loopback_env(ros_env.env, domain), text=True,
                cwd=tmp)
            first = peer.stdout.readline()  # {'event': 'publishing', ...} once matched
            cpu_start = node.cpu_seconds()
            progress(f'{backend}: peer publishing {width}x{height} rgb8 ({image_qos}) at '
                     f'{CAMERA_RATE_HZ:g} Hz + pose at {PEER_POSE_RATE_HZ:g} Hz for '
                     f'{duration:g} s ...')
            out, err = peer.communicate(timeout=duration + 180)
            cpu = node.cpu_seconds() - cpu_start
            alive = node.alive()
            exit_code = node.stop(signal.SIGINT, timeout=60)
        finally:
            kill_child(peer)
            node.kill()
        stderr = node.stderr()
    result = last_json_line(out)
    if not last_json_line(first).get('matched') or result.get('event') != 'done':
        raise RuntimeError(f'{backend}: the rclpy peer and the node did not match:\n'
                           f'{(err or "")[-2000:]}\nnode:\n{stderr[-2000:]}')
    report = summarize_peer(result, rate)
    report.update({'backend': backend, 'node_cpu_s': cpu, 'node_alive_at_end': alive,
                   'node_exit_code': exit_code, 'node_tracebacks': stderr.count('Traceback'),
                   'stalls_logged': stderr.count('inference running')})
    return report


def summarize_peer(peer: dict, rate: float) -> dict:
    """The issue's figures from the peer's records (all times time.time_ns on one machine)."""
    start, end = peer['start_ns'], peer['end_ns']
    sent = set(peer['image_stamps'])
    chunk_stamps = {s for _, s in peer['chunks'] if s in sent}
    latency = [(r - s) / 1e6 for r, s in peer['chunks'] if s in sent]
    actions = sorted(r for r, _, _ in peer['actions'] if start <= r <= end)
    first_chunk = min((r for r, s in peer['chunks'] if s in sent), default=None)
    # gaps once the node acts: from its first action to the end of publishing
    points = actions + [end] if actions else []
    gaps = np.diff(np.asarray(points, dtype=np.int64)) / 1e6 if len(points) > 1 else []
    diags = [d for d in peer['diagnostics'] if d[0] >= start]
    values = diags[-1][3] if diags else {}
    return {
        'sent': {'images': peer['images'], 'poses': peer['poses']},
        'images_to_chunks': len(chunk_stamps),
        'actions': len(actions),
        'action_rate_hz': len(actions) / ((end - start) / 1e9),
        'control_rate_hz': rate,
        'first_action_after_s': (actions[0] - start) / 1e9 if actions else None,
        'first_chunk_after_s': (first_chunk - start) / 1e9 if first_chunk else None,
        'max_action_gap_ms': float(np.max(gaps)) if len(gaps) else None,
        'action_gaps_over_100ms': int(np.sum(np.asarray(gaps) > MAX_ACTION_GAP_MS)),
        'latency_ms': {'image_to_chunk': _stats(latency)},
        'node_received': {k[len('rx.'):]: int(v) for k, v in values.items()
                          if k.startswith('rx.')},
        'drops_total': drops_in(values),
        'diagnostics_message_end': diags[-1][2] if diags else None,
    }


def run_peer(args: argparse.Namespace, width: int, height: int, progress) -> int:
    """`bench --live --backend ros|dds|both`: one run; 'both' alternates ros, dds."""
    from vit_perception.errors import ConfigError

    if not args.duration > 0 or not args.rate > 0:
        raise ConfigError(f'--duration {args.duration} and --rate {args.rate}: must be > 0')
    ros_env = RosEnvironment.find(args.ros_env)
    backends = ['ros', 'dds'] if args.backend == 'both' else [args.backend]
    reports = []
    for backend in backends:
        reports.append(measure_with_peer(
            backend, ros_env=ros_env, duration=args.duration, rate=args.rate, model=args.model,
            width=width, height=height, image_qos=args.image_qos, progress=progress))
    machine = {'cpus': os.cpu_count(), 'load_avg': list(os.getloadavg()),
               'ros_env': ros_env.where}
    result = {'mode': 'live-peer', 'machine': machine, 'runs': reports}
    print(json.dumps(result, indent=2) if args.json else format_peer_report(result), flush=True)
    return 0


def format_peer_report(result: dict) -> str:
    lines = [f"bench --live (rclpy peer, {result['machine']['ros_env']}): "
             f"{result['machine']['cpus']} CPUs, load average now "
             f"{result['machine']['load_avg'][0]:.2f} (shared)",
             '| | ' + ' | '.join(r['backend'] for r in result['runs']) + ' |',
             '|---|' + '---|' * len(result['runs'])]

    def row(name, cell):
        lines.append(f'| {name} | ' + ' | '.join(cell(r) for r in result['runs']) + ' |')

    def opt(value, fmt):
        return 'n/a' if value is None else format(value, fmt)

    row('images turned into chunks (of sent)',
        lambda r: f"{r['images_to_chunks']} of {r['sent']['images']}")
    row(f"actions received, Hz (control {result['runs'][0]['control_rate_hz']:g})",
        lambda r: f"{r['action_rate_hz']:.1f}")
    row('longest gap between actions, ms', lambda r: opt(r['max_action_gap_ms'], '.0f'))
    row('gaps > 100 ms', lambda r: str(r['action_gaps_over_100ms']))
    row('image -> chunk p50 / p99, ms', lambda r: (
        f"{opt(r['latency_ms']['image_to_chunk']['p50'], '.0f')} / "
        f"{opt(r['latency_ms']['image_to_chunk']['p99'], '.0f')}"))
    row('node CPU-seconds', lambda r: f"{r['node_cpu_s']:.1f}")
    row('node received (rx.*)', lambda r: ', '.join(
        f'{k} {v}' for k, v in sorted(r['node_received'].items())) or 'n/a')
    row('stalls logged, tracebacks, exit code', lambda r: (
        f"{r['stalls_logged']}, {r['node_tracebacks']}, {r['node_exit_code']}"))
    return '\n'.join(lines)


@dataclass
class _Window:
    start_ns: int
    end_ns: int = 0
    diag_start: dict = field(default_factory=dict)


def summarize(received: Received, window: _Window, rate: float, rss: list,
              rss_loaded: int) -> dict:
    """Latency, jitter, drops and memory over the measurement window."""
    lo, hi = window.start_ns, window.end_ns
    chunks = [(r, s) for r, s in received.chunks if lo <= r <= hi]
    latency = [(r - s) / 1e6 for r, s in chunks]
    actions = sorted((s, r) for r, s, _ in received.actions if lo <= r <= hi)
    stamps = np.array([s for s, _ in actions], dtype=np.int64)
    recv = np.sort(np.array([r for _, r in actions], dtype=np.int64))
    period_ms = 1e3 / rate
    diags = [d for d in received.diagnostics if d[0] >= lo]
    end_values = diags[-1][3] if diags else {}
    start_drops = drops_in(window.diag_start)
    drops = {r: n - start_drops.get(r, 0) for r, n in drops_in(end_values).items()
             if n - start_drops.get(r, 0)}
    rss_mb = [(round(t, 1), b / 2**20) for t, b in rss]
    mb = np.array([m for _, m in rss_mb])
    times = np.array([t for t, _ in rss_mb])
    slope = float(np.polyfit(times, mb, 1)[0]) * 60 if len(mb) >= 3 else float('nan')
    node = {k: end_values[k] for k in sorted(end_values)
            if k.startswith(('latency.', 'rate.', 'control.'))}
    return {
        'counts': {'chunks': len(chunks), 'actions': len(actions),
                   'diagnostics': len(diags)},
        'latency_ms': {'image_to_chunk': _stats(latency)},
        'tick': {
            'period_ms': period_ms,
            'jitter_from_stamps_ms': _stats(np.abs(np.diff(stamps) / 1e6 - period_ms)),
            'jitter_from_receive_ms': _stats(np.abs(np.diff(recv) / 1e6 - period_ms)),
            'missed_ticks': int(_missed(np.diff(stamps), period_ms)),
            'expected_ticks': int((hi - lo) / 1e6 / period_ms),
            'node_tick_late_p50_ms': _float(end_values.get('control.tick_late_p50_ms')),
            'node_tick_late_p99_ms': _float(end_values.get('control.tick_late_p99_ms')),
            'node_tick_overruns': int(_float(end_values.get('control.tick_overruns')) or 0),
        },
        'drops': drops,
        'drops_total_since_start': drops_in(end_values),
        'rss_mb': {'after_load': rss_loaded / 2**20, 'start': float(mb[0]),
                   'end': float(mb[-1]), 'max': float(mb.max()),
                   'growth': float(mb[-1] - mb[0]), 'slope_mb_per_min': slope,
                   'samples': [[t, round(m, 1)] for t, m in rss_mb]},
        'node_diagnostics': node,
        'diagnostics_level_end': diags[-1][1] if diags else None,
        'diagnostics_message_end': diags[-1][2] if diags else None,
    }


def _missed(periods_ns: np.ndarray, period_ms: float) -> int:
    """Ticks missing between consecutive actions (gaps of ~k periods count k - 1)."""
    k = np.rint(periods_ns / 1e6 / period_ms)
    return int(np.sum(np.clip(k - 1, 0, None)))


def _stats(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {'n': 0, 'p50': None, 'p99': None, 'max': None}
    p50, p99 = np.percentile(values, [50, 99])
    return {'n': int(values.size), 'p50': float(p50), 'p99': float(p99),
            'max': float(values.max())}


def _float(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def last_json_line(text: str) -> dict:
    """The last line of `text` that parses as JSON ({} if none): a child process's report."""
    for line in reversed((text or '').strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return {}


def _checkpoint_cameras(model: str | Path) -> int:
    from vit_perception.schema import load_json

    return len(load_json(Path(model) / 'config.json').get('cameras') or ['camera'])


def format_report(report: dict) -> str:
    def ms(stats: dict) -> str:
        if not stats or stats.get('n', 0) == 0:
            return 'n/a'
        return (f"p50 {stats['p50']:.2f} / p99 {stats['p99']:.2f} / max {stats['max']:.2f} ms "
                f"(n={stats['n']})")

    tick, rss, m = report['tick'], report['rss_mb'], report['machine']
    drops = ', '.join(f'{k} {v}' for k, v in sorted(report['drops'].items())) or 'none'
    target = tick['jitter_from_stamps_ms']
    met = target['n'] and target['p99'] <= JITTER_TARGET_MS
    lines = [
        f"bench --{report['mode']}: {report['model']}, {report['cameras']} x {report['image']} "
        f"at {report['camera_rate_hz']:g} Hz + pose at {report['pose_rate_hz']:g} Hz, control "
        f"{report['control_rate_hz']:g} Hz, device {report['device']} / {report['dtype']}, "
        f"{report['duration_s']:g} s after {report['warmup_s']:g} s warm-up",
        f"machine: {m['cpus']} CPUs, load average {m['load_avg_start'][0]:.2f} -> "
        f"{m['load_avg_end'][0]:.2f} (shared)",
        f"sent: {report['sent'].get('images', '?')} images, {report['sent'].get('poses', '?')} "
        f"poses; received in the window: {report['counts']['chunks']} chunks, "
        f"{report['counts']['actions']} actions",
        f"image-in -> chunk-out latency: {ms(report['latency_ms']['image_to_chunk'])}",
        f"tick period jitter, header stamps: {ms(tick['jitter_from_stamps_ms'])} "
        f"[target p99 <= {JITTER_TARGET_MS:g} ms: {'met' if met else 'MISSED'}]",
        f"tick period jitter, receive times: {ms(tick['jitter_from_receive_ms'])}",
        f"ticks: {tick['missed_ticks']} missed of {tick['expected_ticks']}; node timer lateness "
        f"p50 {tick['node_tick_late_p50_ms']} / p99 {tick['node_tick_late_p99_ms']} ms, "
        f"{tick['node_tick_overruns']} overruns",
        f'drops in the window: {drops}',
        f"node RSS: {rss['start']:.1f} -> {rss['end']:.1f} MB (growth {rss['growth']:+.1f} MB, "
        f"max {rss['max']:.1f}, slope {rss['slope_mb_per_min']:+.2f} MB/min; "
        f"{rss['after_load']:.1f} MB after load)",
        f"node exit code {report['node_exit_code']}, tracebacks {report['node_tracebacks']}",
    ]
    return '\n'.join(lines)


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == 'publish':
        sys.exit(publish_main(sys.argv[2:]))
    sys.exit('usage: python -m vit_perception.tools.live_bench publish ... '
             '(internal; use vit-perception bench --live)')
