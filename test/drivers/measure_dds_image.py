"""One-off measurement (not a test): a 640x480 rgb8 Image through DdsTransport vs through
cyclonedds-python's own (de)serializer, same participant, loopback.

    python test/drivers/measure_dds_image.py [--repeat 50]

Prints medians (ms) of serialize+publish and take+deserialize for both paths and the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from cyclonedds.core import Policy, Qos
from cyclonedds.idl import make_idl_struct
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic

from vit_perception.drivers import dds
from vit_perception.drivers import ros_types as rt

sys.path.insert(0, str(Path(__file__).resolve().parent))  # local helpers (importlib mode)
import dds_testing as dt  # noqa: E402


def native_types():
    """Plain cyclonedds-python IDL classes for Image (its own serializer), generated alike."""
    made = {}

    def build(msgtype):
        if msgtype not in made:
            _, fields = rt.typestore().fielddefs[msgtype]
            annotations = {}
            for name, desc in fields:
                annotations[name] = (build(desc[1]) if desc[0] == 2
                                     else dds._idl_field(desc, rt.typestore()))
            made[msgtype] = make_idl_struct(msgtype.split('/')[-1] + 'Native',
                                            dds.dds_type_name(msgtype), annotations)
        return made[msgtype]

    return build(rt.IMAGE), made


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeat', type=int, default=50)
    parser.add_argument('--tune-allocator', action='store_true',
                        help='call dds.tune_allocator() first, as the DDS node does')
    args = parser.parse_args()
    if args.tune_allocator:
        assert dds.tune_allocator(), 'not glibc'
    os.environ.setdefault('CYCLONEDDS_URI', dt.LOOPBACK_URI)
    pixels = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    msg = rt.image_msg(1, 'cam', pixels, 'rgb8')
    qos = dds.qos_profile('reliable', 1)

    with dds.DdsTransport(dt.unique_domain(), on_error=print) as transport:
        # Ours: DdsPublisher.publish (rosbags CDR -> pass-through type) and
        # DdsSubscription.drain (take -> rosbags view), driven by hand here.
        pub = transport.publisher('/bench/ours', rt.IMAGE, qos)
        got = []
        topic = transport._topic('/bench/ours', rt.IMAGE)
        sub = dds.DdsSubscription(transport._participant, topic, '/bench/ours', rt.IMAGE, qos,
                                  got.append, print, raw=False)
        ours_pub, ours_sub = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            pub.publish(msg)
            t1 = time.perf_counter()
            sub.drain()
            t2 = time.perf_counter()
            ours_pub.append(t1 - t0)
            ours_sub.append(t2 - t1)
        assert len(got) == args.repeat and np.array_equal(got[-1].data, msg.data)

        # cyclonedds-python's own serializer on the same type (a list of 921,600 ints).
        image_t, made = native_types()
        header_t, time_t = made['std_msgs/msg/Header'], made['builtin_interfaces/msg/Time']
        sample = image_t(header=header_t(stamp=time_t(sec=0, nanosec=1), frame_id='cam'),
                         height=480, width=640, encoding='rgb8', is_bigendian=0, step=1920,
                         data=pixels.reshape(-1).tolist())
        cqos = Qos(Policy.Reliability.Reliable(0), Policy.History.KeepLast(1),
                   Policy.DataRepresentation(use_cdrv0_representation=True))
        participant = transport._participant
        topic = Topic(participant, 'rt/bench/native', image_t)
        writer = DataWriter(participant, topic, qos=cqos)
        reader = DataReader(participant, topic, qos=cqos)
        native_pub, native_sub = [], []
        for _ in range(max(5, args.repeat // 5)):
            t0 = time.perf_counter()
            writer.write(sample)
            t1 = time.perf_counter()
            taken = reader.take(N=1)
            t2 = time.perf_counter()
            native_pub.append(t1 - t0)
            native_sub.append(t2 - t1)
        assert bytes(taken[0].data) == pixels.tobytes()

    rows = [('serialize+publish', median_ms(ours_pub), median_ms(native_pub)),
            ('take+deserialize', median_ms(ours_sub), median_ms(native_sub))]
    print(f'640x480 rgb8 Image, medians over {args.repeat} (ours) / {len(native_pub)} (native),'
          f' allocator {"tuned" if args.tune_allocator else "default"}')
    print(f'{"":20s} {"DdsTransport":>14s} {"cyclonedds-py":>14s} {"ratio":>8s}')
    for name, ours, native in rows:
        print(f'{name:20s} {ours:11.3f} ms {native:11.3f} ms {native / ours:7.0f}x')


if __name__ == '__main__':
    main()
