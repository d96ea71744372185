"""`vit-perception node`: the live perception node.

--backend ros: the rclpy node (needs a sourced ROS 2 workspace). --backend dds: the same node
speaking ROS 2's wire protocol through Cyclone DDS (pip only). --backend auto: rclpy when
importable, else DDS. SIGINT/SIGTERM stop it cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import threading


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--backend', choices=['auto', 'ros', 'dds'], default='auto',
                        help='auto = rclpy when importable, else ROS-wire DDS')
    parser.add_argument('--config', default=None,
                        help='YAML parameters file (config/default.yaml layout)')
    parser.add_argument('--set', dest='overrides', action='append', default=[],
                        metavar='KEY=VALUE', help='override one parameter, e.g. '
                        '--set control.control_rate_hz=100 (repeatable)')
    parser.add_argument('--model', default=None, help='checkpoint directory '
                        '(same as --set engine.model=DIR; default: the shipped checkpoint)')
    parser.add_argument('--use-sim-time', action='store_true',
                        help='take the clock from /clock (rosgraph_msgs/Clock), as ROS '
                        'use_sim_time:=true')


def select_backend(requested: str) -> str:
    if requested != 'auto':
        return requested
    return 'ros' if importable('rclpy') else 'dds'


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def run(args: argparse.Namespace) -> int:
    from vit_perception.config import load_node_config
    from vit_perception.errors import ConfigError

    overrides = list(args.overrides)
    if args.model is not None:
        overrides.append(f'engine.model={args.model}')
    config = load_node_config(args.config, overrides)
    backend = select_backend(args.backend)
    if backend == 'ros':
        if not importable('rclpy'):
            raise ConfigError('--backend ros needs rclpy: source your ROS 2 setup '
                              '(source /opt/ros/<distro>/setup.bash) or use --backend dds')
        from vit_perception.drivers import ros_node

        ros_args = (['vit-perception', '--ros-args', '-p', 'use_sim_time:=true']
                    if args.use_sim_time else ['vit-perception'])
        return ros_node.main(ros_args, config=config)

    from vit_perception.core.engine import Engine
    from vit_perception.drivers.dds_node import run_dds_node

    # Until the stop handlers below are in place, SIGTERM interrupts loading like Ctrl-C does
    # (KeyboardInterrupt -> the CLI's clean exit 0) instead of killing the process.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f'vit-perception node: loading {config.engine.model or "the shipped checkpoint"} '
          f'on {config.engine.device} ...', file=sys.stderr)
    engine = Engine.from_config(config.engine)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f'vit-perception node: running (DDS backend, {engine.model_id}, '
          f'{engine.fusion} fusion, {config.control.control_rate_hz:g} Hz actions)',
          file=sys.stderr, flush=True)
    return run_dds_node(config, engine, stop, use_sim_time=args.use_sim_time)
