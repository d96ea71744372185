"""`vit-perception`: one entry point, one subcommand per tool.

Each tool module exposes `add_arguments(parser)` and `run(args) -> int` and keeps heavy imports
(torch, mujoco, cyclonedds) inside `run`, so `--help` is instant. Errors the user can fix are one
line on stderr and exit code 2; Ctrl-C ends cleanly with exit code 0. main() is the one place
that turns errors into that line (`errors.one_line`: one line, at most 500 bytes); an unexpected
exception (a bug) writes its traceback to a log file and prints one line naming it (exit code 1).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import signal
import sys
import threading

from vit_perception import __version__
from vit_perception.errors import VitPerceptionError, one_line, report_crash
from vit_perception.tools import extras

COMMANDS = {
    'node': ('vit_perception.tools.node', 'run the perception node live (rclpy or ROS-wire DDS)'),
    'replay': ('vit_perception.tools.replay', 'evaluate a checkpoint offline on a ROS 2 bag'),
    'sim': ('vit_perception.tools.sim.command', 'MuJoCo table-top arm on ROS 2 topics'),
    'train': ('vit_perception.tools.train', 'behavior cloning from recorded bags'),
    'pretrain': ('vit_perception.tools.pretrain', 'self-supervised backbone pretraining on bags'),
    'demo': ('vit_perception.tools.demo', 'closed-loop sim + node with the shipped checkpoint'),
    'bench': ('vit_perception.tools.bench', 'naive HF pipeline vs engine, same run'),
    'export': ('vit_perception.tools.export', 'checkpoint -> ONNX, or bags -> LeRobot dataset'),
}

class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block), exit code 2."""

    def error(self, message: str):
        self.exit(2, f'{self.prog}: error: {one_line(message, 400)} (see {self.prog} --help)\n')

    def parse_known_args(self, args=None, namespace=None):
        """Also refuses nan / inf for every number flag (type=float accepts them)."""
        parsed, extra = super().parse_known_args(args, namespace)
        for name, value in vars(parsed).items():
            if isinstance(value, float) and not math.isfinite(value):
                self.error(f'--{name.replace("_", "-")} {value}: expected a finite number')
        return parsed, extra


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog='vit-perception', description=__doc__.splitlines()[0])
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
    # SIGTERM stops every command like Ctrl-C: `finally` blocks run, so the processes a command
    # started (nodes, peers, busy loops) are stopped with it instead of being left orphaned.
    # Commands that handle signals themselves (node, replay) install their own handlers.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if in_main_thread \
        else None
    try:
        return run_command(args)
    except Exception as err:  # a bug, not bad input: traceback to a file, one line here
        return report_crash(f'vit-perception {args.command}', err)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def run_command(args: argparse.Namespace) -> int:
    """Run the subcommand; every error the user can fix -> one line on stderr, exit code 2."""
    try:
        extras.check(args)
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f'vit-perception {args.command}: interrupted', file=sys.stderr)
        return 0
    except (VitPerceptionError, OSError) as err:  # OSError: a file or device the user named
        text = err if isinstance(err, VitPerceptionError) else _os_error_text(err)
        print(one_line(f'vit-perception {args.command}: error: {text}'), file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        extra = extras.extra_of((err.name or '').split('.')[0])
        if extra is None:
            raise
        print(f'vit-perception {args.command}: error: needs the extra {extra} (missing '
              f'{err.name}): {extras.install_hint([extra])}', file=sys.stderr)
        return 2


def _os_error_text(err: OSError) -> str:
    where = f'{err.filename}: ' if err.filename else ''
    return f'{where}{err.strerror or err}'


if __name__ == '__main__':
    sys.exit(main())
