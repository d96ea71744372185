"""`vit-perception`: one entry point, one subcommand per tool.

Each tool module exposes `add_arguments(parser)` and `run(args) -> int` and keeps heavy imports
(torch, mujoco, cyclonedds) inside `run`, so `--help` is instant. Errors the user can fix are one
line on stderr and exit code 2; Ctrl-C ends cleanly with exit code 0.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from vit_perception import __version__
from vit_perception.errors import VitPerceptionError
from vit_perception.tools import extras

COMMANDS = {
    'node': ('vit_perception.tools.node', 'run the perception node live (rclpy or ROS-wire DDS)'),
    'replay': ('vit_perception.tools.replay', 'evaluate a checkpoint offline on a ROS 2 bag'),
    'sim': ('vit_perception.tools.sim.command', 'MuJoCo table-top arm on ROS 2 topics'),
    'train': ('vit_perception.tools.train', 'behavior cloning from recorded bags'),
    'demo': ('vit_perception.tools.demo', 'closed-loop sim + node with the shipped checkpoint'),
    'bench': ('vit_perception.tools.bench', 'naive HF pipeline vs engine, same run'),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='vit-perception', description=__doc__.splitlines()[0])
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format='[%(levelname)s] [%(name)s]: %(message)s')
    try:
        extras.check(args)
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f'vit-perception {args.command}: interrupted', file=sys.stderr)
        return 0
    except VitPerceptionError as err:
        print(f'vit-perception {args.command}: error: {err}', file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        extra = extras.extra_of((err.name or '').split('.')[0])
        if extra is None:
            raise
        print(f'vit-perception {args.command}: error: needs the extra {extra} (missing '
              f'{err.name}): {extras.install_hint([extra])}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
