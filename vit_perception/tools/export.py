"""`vit-perception export`: write recorded bags in another format; the flag names the target.

    vit-perception export bags/ --to-lerobot datasets/reach     # bags -> LeRobotDataset v3.0

--to-lerobot writes one LeRobot episode per bag (tools/lerobot.py): each camera topic as an AV1
video `observation.images.<camera>`, the end-effector pose (+ joint positions when the bag has
--joint-topic) as `observation.state`, the recorded action as `action`. Frames are the
observations `vit-perception train` builds from the same bags (node config: topics, sync).
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bags', nargs='*', metavar='BAG',
                        help='bags (rosbag2 directories, .mcap, .db3) or directories of bags')
    target = parser.add_argument_group('target (give one)')
    target.add_argument('--to-lerobot', default=None, metavar='DIR',
                        help='write the bags as a LeRobotDataset v3.0 directory (must not exist '
                        'or be empty)')
    lerobot = parser.add_argument_group('--to-lerobot options')
    lerobot.add_argument('--node-config', default=None,
                         help='node YAML (topics.cameras, topics.pose, sync) used to build the '
                         'observations, as training does (default: the node defaults)')
    lerobot.add_argument('--action-topic', default='/expert/action',
                         help='ActionChunk topic holding the recorded actions')
    lerobot.add_argument('--joint-topic', default='/joint_states',
                         help='sensor_msgs/JointState topic appended to observation.state when '
                         'the bag has it')
    lerobot.add_argument('--fps', type=int, default=None,
                         help='frame rate (default: from the image stamps)')
    lerobot.add_argument('--task', default='demonstration',
                         help='task text stored with every episode')
    lerobot.add_argument('--robot-type', default=None, help='info.json robot_type')
    lerobot.add_argument('--vcodec', default='libsvtav1', choices=['libsvtav1', 'libx264'],
                         help="video codec (default libsvtav1, LeRobot's)")
    lerobot.add_argument('--crf', type=int, default=30,
                         help="video quality: lower is better and larger (default 30, LeRobot's)")
    lerobot.add_argument('--json', action='store_true', help='print the summary as JSON')


def run(args: argparse.Namespace) -> int:
    from vit_perception.errors import ConfigError

    targets = {'--to-lerobot': (args.to_lerobot, to_lerobot)}
    chosen = [flag for flag, (value, _) in targets.items() if value]
    if len(chosen) != 1:
        raise ConfigError(f'give one target: {" or ".join(targets)}')
    _, action = targets[chosen[0]]
    return action(args)


def to_lerobot(args: argparse.Namespace) -> int:
    from vit_perception.config import load_node_config
    from vit_perception.errors import ConfigError
    from vit_perception.tools import dataset, lerobot

    if not args.bags:
        raise ConfigError('no bags given: expected BAG... (bags or directories of bags)')
    if args.fps is not None and args.fps <= 0:
        raise ConfigError(f'--fps {args.fps}: expected a positive integer')
    if not 0 <= args.crf <= 63:
        raise ConfigError(f'--crf {args.crf}: expected 0..63')
    bags = dataset.find_bags(args.bags)
    summary = lerobot.export_bags(
        bags, args.to_lerobot, load_node_config(args.node_config),
        action_topic=args.action_topic, joint_topic=args.joint_topic, fps=args.fps,
        encoding=lerobot.VideoEncoding(vcodec=args.vcodec, crf=args.crf), task=args.task,
        robot_type=args.robot_type)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        drops = ', '.join(f'{k} x{v}' for k, v in summary['dropped'].items()) or 'none'
        print(f"wrote {summary['out']}: {len(summary['episodes'])} episodes, "
              f"{summary['frames']} frames at {summary['fps']} fps; cameras "
              f"{', '.join(summary['cameras'])}; state {' '.join(summary['state_names'])}; "
              f"action {' '.join(summary['action_names'])}; dropped observations: {drops}")
    return 0
