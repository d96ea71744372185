"""`vit-perception bench --live --image-loss`: large best-effort images across DDS vendors.

Two processes per run, as on a robot: a camera publisher and a subscriber (tools/image_peer.py),
each either Fast DDS (rclpy with its default RMW, from the Jazzy wheels: `--ros-env`) or Cyclone
DDS (this project's DDS driver, what the DDS node's readers and writers are). The publisher sends
N 640x480 rgb8 frames at 30 Hz; the subscriber counts the distinct frames that arrived complete.
Every direction (Fast DDS -> Fast DDS, Fast DDS -> Cyclone, Cyclone -> Fast DDS, Cyclone ->
Cyclone) runs under every setting, on 127.0.0.1 as `bench --live` does, one run each:

    default       best effort, each vendor's defaults (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST);
                  this DDS driver's include 4 MiB receive buffers (dds.RECEIVE_BUFFER_BYTES)
    stock_kernel  Cyclone ends get what a stock kernel gives them: 212992 bytes, Linux's default
                  net.core.rmem_max (this machine allows more); Fast DDS ends keep their default
                  (a profile's UDP transport would be added beside rmw_fastrtps' own under
                  LOCALHOST, not replace it)
    rcvbuf        socket receive buffers of net.core.rmem_max: Cyclone's Internal/
                  SocketReceiveBufferSize, a Fast DDS XML profile's UDPv4 receiveBufferSize
    shm_segment   a Fast DDS XML profile with 16 MiB shared-memory segments (default 512 KiB)
    profile       vit_perception/data/fastdds_large_images.xml on the Fast DDS ends: UDPv4 with
                  4 MiB buffers + shared memory with 16 MiB segments (the documented setting)
    large_data    Jazzy Fast DDS's FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA (with the SUBNET range:
                  rmw_fastrtps replaces the built-in transports under LOCALHOST)
    fragment      Cyclone writers send 64 kB datagrams (General/MaxMessageSize, FragmentSize)
                  instead of 14.7 kB ones in 1344-byte fragments
    reliable      reliable QoS on both ends (keep last 5), nothing else changed

Fast DDS profiles go in through FASTDDS_DEFAULT_PROFILES_FILE (and FASTRTPS_DEFAULT_PROFILES_FILE,
its name before Fast DDS 2.13), Cyclone fragments through CYCLONEDDS_URI, as a user would set them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from vit_perception.drivers import dds
from vit_perception.tools import image_peer
from vit_perception.tools.harness import (
    LOOPBACK_URI,
    RosEnvironment,
    kill_child,
    loopback_env,
    pick_domain,
)
from vit_perception.tools.live_bench import last_json_line

PEER_SCRIPT = Path(image_peer.__file__).resolve()
VENDORS = ('fastdds', 'cyclone')  # publisher/subscriber kinds; fastdds runs through rclpy
DIRECTIONS = [(pub, sub) for pub in VENDORS for sub in VENDORS]


@dataclass(frozen=True)
class Setting:
    """One column of the table: what is changed on the ends of every direction."""

    name: str
    qos: str = 'best_effort'
    cyclone_xml: str = ''  # appended to the Cyclone ends' CYCLONEDDS_URI
    fastdds_xml: str = ''  # the Fast DDS ends' FASTDDS_DEFAULT_PROFILES_FILE content
    fastdds_env: dict = field(default_factory=dict)


STOCK_RMEM_MAX = 212992  # Linux's default net.core.rmem_max
SHM_SEGMENT_BYTES = 16 << 20  # Fast DDS shared-memory segment (its default: 512 KiB)
UDP_BUFFER_BYTES = 4 << 20  # Fast DDS UDPv4 receive buffer (the kernel caps it at rmem_max)
# The documented setting for Fast DDS ends: fastdds_profile(UDP_BUFFER_BYTES, SHM_SEGMENT_BYTES)
PROFILE_PATH = Path(__file__).resolve().parents[1] / 'data' / 'fastdds_large_images.xml'


def fastdds_profile(udp_buffer: int | None = None, shm_segment: int | None = None) -> str:
    """A Fast DDS XML profile: the default participant's transports, UDPv4 with `udp_buffer`-
    byte socket buffers and/or shared memory with `shm_segment`-byte segments."""
    descriptors, ids = [], []
    if udp_buffer:
        ids.append('udp_large_buffers')
        descriptors.append(
            '    <transport_descriptor>\n      <transport_id>udp_large_buffers</transport_id>\n'
            f'      <type>UDPv4</type>\n      <receiveBufferSize>{udp_buffer}'
            f'</receiveBufferSize>\n      <sendBufferSize>{udp_buffer}</sendBufferSize>\n'
            '    </transport_descriptor>\n')
    if shm_segment:
        ids.append('shm_large_segment')
        descriptors.append(
            '    <transport_descriptor>\n      <transport_id>shm_large_segment</transport_id>\n'
            f'      <type>SHM</type>\n      <segment_size>{shm_segment}</segment_size>\n'
            '    </transport_descriptor>\n')
    transports = ''.join(f'        <transport_id>{i}</transport_id>\n' for i in ids)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<profiles xmlns="http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles">\n'
            f'  <transport_descriptors>\n{"".join(descriptors)}  </transport_descriptors>\n'
            '  <participant profile_name="vit_perception_large_images" '
            'is_default_profile="true">\n    <rtps>\n'
            f'      <userTransports>\n{transports}      </userTransports>\n'
            '      <useBuiltinTransports>false</useBuiltinTransports>\n'
            '    </rtps>\n  </participant>\n</profiles>\n')


CYCLONE_LARGE_FRAGMENTS_XML = (
    '<CycloneDDS><Domain Id="any"><General><MaxMessageSize>65500B</MaxMessageSize>'
    '<FragmentSize>65000B</FragmentSize></General></Domain></CycloneDDS>')


def settings(buffer_bytes: int) -> list[Setting]:
    """The table's columns; a raised socket receive buffer is `buffer_bytes` (rmem_max)."""
    return [
        Setting('default'),
        Setting('stock_kernel', cyclone_xml=dds.receive_buffer_config(STOCK_RMEM_MAX)),
        Setting('rcvbuf', cyclone_xml=dds.receive_buffer_config(buffer_bytes),
                fastdds_xml=fastdds_profile(udp_buffer=buffer_bytes)),
        Setting('shm_segment', fastdds_xml=fastdds_profile(shm_segment=SHM_SEGMENT_BYTES)),
        Setting('profile', fastdds_xml=PROFILE_PATH.read_text()),
        Setting('large_data', fastdds_env={'FASTDDS_BUILTIN_TRANSPORTS': 'LARGE_DATA',
                                           'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET'}),
        Setting('fragment', cyclone_xml=CYCLONE_LARGE_FRAGMENTS_XML),
        Setting('reliable', qos='reliable'),
    ]


def peer_env(vendor: str, setting: Setting, ros_env: RosEnvironment | None, domain: int,
             profiles_dir: Path) -> dict:
    """The environment of one end: loopback discovery as `bench --live`, plus the setting."""
    if vendor == 'cyclone':
        env = loopback_env(None, domain)
        env['CYCLONEDDS_URI'] = ','.join(filter(None, [LOOPBACK_URI, setting.cyclone_xml]))
        return env
    env = loopback_env(ros_env.env, domain)
    if setting.fastdds_xml:
        path = profiles_dir / f'{setting.name}.xml'
        path.write_text(setting.fastdds_xml)
        env['FASTDDS_DEFAULT_PROFILES_FILE'] = str(path)
        env['FASTRTPS_DEFAULT_PROFILES_FILE'] = str(path)  # the name before Fast DDS 2.13
    env.update(setting.fastdds_env)
    return env


def peer_command(role: str, vendor: str, setting: Setting, ros_env: RosEnvironment | None,
                 *, topic: str, size: str, frames: int, rate: float, depth: int) -> list[str]:
    python = ros_env.python if vendor == 'fastdds' else sys.executable
    argv = [python, str(PEER_SCRIPT), role, '--vendor',
            'rclpy' if vendor == 'fastdds' else 'cyclone', '--topic', topic, '--qos',
            setting.qos, '--size', size, '--depth', str(depth)]
    if role == 'pub':
        argv += ['--frames', str(frames), '--rate', f'{rate:g}']
    return argv


def measure_direction(pub: str, sub: str, setting: Setting, ros_env: RosEnvironment | None, *,
                      frames: int, rate: float = 30.0, size: str = '640x480', depth: int = 5,
                      timeout: float = 120.0) -> dict:
    """One run: `pub` sends `frames` frames to `sub` under `setting` (keep-last `depth` on both
    ends: 5, rclpy's sensor-data depth); counts what arrived."""
    domain = pick_domain()
    topic = f'/image_loss/d{domain}/image_raw'
    with tempfile.TemporaryDirectory(prefix='vit_perception_loss_') as tmp:
        profiles = Path(tmp)
        common = {'topic': topic, 'size': size, 'frames': frames, 'rate': rate, 'depth': depth}
        subscriber = publisher = None
        try:
            subscriber = subprocess.Popen(
                peer_command('sub', sub, setting, ros_env, **common), cwd=tmp,
                env=peer_env(sub, setting, ros_env, domain, profiles), text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            ready = last_json_line(subscriber.stdout.readline())
            if ready.get('event') != 'ready':
                raise RuntimeError(f'{sub} subscriber did not start:\n'
                                   f'{subscriber.stderr.read()[-2000:]}')
            publisher = subprocess.Popen(
                peer_command('pub', pub, setting, ros_env, **common), cwd=tmp,
                env=peer_env(pub, setting, ros_env, domain, profiles), text=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            pub_out, pub_err = publisher.communicate(timeout=timeout + frames / rate)
            time.sleep(1.0)  # frames still in flight
            sub_out, sub_err = subscriber.communicate('stop\n', timeout=60)
        finally:
            kill_child(publisher)
            kill_child(subscriber)
    sent, received = last_json_line(pub_out), last_json_line(sub_out)
    if sent.get('event') != 'done' or received.get('event') != 'done':
        raise RuntimeError(f'{pub} -> {sub} ({setting.name}): a peer failed:\n'
                           f'publisher: {pub_err[-1500:]}\nsubscriber: {sub_err[-1500:]}')
    return {'publisher': pub, 'subscriber': sub, 'setting': setting.name, 'qos': setting.qos,
            **count_frames(sent, received)}


def count_frames(sent: dict, received: dict) -> dict:
    """The publisher's and the subscriber's reports -> frames sent, frames received (distinct
    sent indices that arrived complete), duplicates, frames not sent, frames of a wrong size."""
    sent_indices = set(range(sent['sent']))
    indices = set(received['indices'])
    return {'matched': bool(sent.get('matched')), 'sent': sent['sent'],
            'received': len(indices & sent_indices),
            'duplicates': received['complete'] - len(indices),
            'not_sent': len(indices - sent_indices), 'wrong_size': received['wrong_size']}


def run(args, progress=lambda text: None) -> int:
    """`bench --live --image-loss`: every direction under every setting; prints the table."""
    ros_env = RosEnvironment.find(args.ros_env)
    buffer_bytes = dds.kernel_receive_buffer_max() or 4 << 20
    frames = max(1, round(args.duration * 30.0))
    chosen = settings(buffer_bytes)
    if args.image_loss_settings:
        names = args.image_loss_settings.split(',')
        chosen = [s for s in chosen if s.name in names]
    runs = []
    for setting in chosen:
        for pub, sub in DIRECTIONS:
            progress(f'{pub} -> {sub}, {setting.name}: {frames} frames ...')
            runs.append(measure_direction(pub, sub, setting, ros_env, frames=frames,
                                          size=args.image))
    result = {'mode': 'image-loss', 'frames': frames, 'image': args.image,
              'rmem_max': dds.kernel_receive_buffer_max(), 'buffer_bytes': buffer_bytes,
              'cpus': os.cpu_count(), 'load_avg': list(os.getloadavg()),
              'ros_env': ros_env.where, 'runs': runs}
    print(json.dumps(result, indent=2) if args.json else format_table(result), flush=True)
    return 0


def format_table(result: dict) -> str:
    names = list(dict.fromkeys(r['setting'] for r in result['runs']))
    lines = [f"bench --image-loss: {result['frames']} frames {result['image']} rgb8 at 30 Hz per "
             f"run, net.core.rmem_max {result['rmem_max']}, {result['cpus']} CPUs, load average "
             f"{result['load_avg'][0]:.2f} (shared)",
             '| publisher -> subscriber | ' + ' | '.join(names) + ' |',
             '|---|' + '---|' * len(names)]
    label = {'fastdds': 'Fast DDS (rclpy)', 'cyclone': 'Cyclone (DDS driver)'}
    for pub, sub in DIRECTIONS:
        cells = []
        for name in names:
            run_ = next((r for r in result['runs'] if (r['publisher'], r['subscriber'],
                                                        r['setting']) == (pub, sub, name)), None)
            cells.append('n/a' if run_ is None else f"{run_['received']} of {run_['sent']}"
                         if run_['matched'] else 'no match')
        lines.append(f'| {label[pub]} -> {label[sub]} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)
