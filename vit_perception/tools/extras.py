"""The pip extras each command needs, checked before it starts.

A command that lacks extras stops with one line naming every missing extra and the install
command that works from a checkout (the package is not on PyPI). setup.py lists each extra's
pip requirements; this module lists the modules that show an extra is installed.
"""

from __future__ import annotations

import argparse

from vit_perception.errors import ConfigError
from vit_perception.tools.node import importable, select_backend

# extra -> the modules it installs (import names; setup.py's EXTRAS has the pip names)
PROVIDES = {
    'dds': ('cyclonedds', 'rosbags'),
    'eval': ('rosbags', 'matplotlib', 'tqdm'),
    'sim': ('mujoco',),
    'bench': ('PIL', 'psutil'),
    'lerobot': ('pyarrow', 'av'),
    'runtimes': ('openvino', 'onnxruntime', 'onnx', 'onnxscript'),
    'aloha': ('mujoco', 'cyclonedds', 'rosbags', 'matplotlib', 'tqdm'),
}

# command -> the extras it always needs (node and bench depend on their flags: see `needed`)
NEEDS = {
    'replay': ('eval',),
    'train': ('eval',),
    'pretrain': ('eval',),
    'sim': ('dds', 'sim'),
    'demo': ('dds', 'eval', 'sim'),
    'bench': ('bench',),
}


def needed(args: argparse.Namespace) -> tuple[str, ...]:
    """The extras this invocation needs."""
    if args.command == 'node':
        return ('dds',) if select_backend(args.backend) == 'dds' else ()
    if args.command == 'bench' and (args.live or args.soak):
        return ('bench', 'dds')
    if args.command in ('sim', 'demo') and getattr(args, 'task', '') == 'aloha-transfer-cube':
        return ('aloha',)
    if args.command == 'export':  # --onnx names onnx/onnxscript itself when they are missing
        return ('eval', 'lerobot') if args.to_lerobot else ()
    return NEEDS.get(args.command, ())


def missing(extras: tuple[str, ...]) -> dict[str, list[str]]:
    """Extra -> its modules that are not importable, for each extra that lacks any."""
    absent = {extra: [m for m in PROVIDES[extra] if not importable(m)] for extra in extras}
    return {extra: modules for extra, modules in absent.items() if modules}


def install_hint(extras: list[str]) -> str:
    return f"pip install -e '.[{','.join(extras)}]' in the vit_perception checkout"


def extra_of(module: str) -> str | None:
    """The extra that installs `module` (a top-level import name), if any."""
    return next((extra for extra, modules in PROVIDES.items() if module in modules), None)


def check(args: argparse.Namespace) -> None:
    """Raise ConfigError (one line) naming every extra this invocation lacks."""
    lacking = missing(needed(args))
    if lacking:
        modules = sorted({m for ms in lacking.values() for m in ms})
        noun = 'extras' if len(lacking) > 1 else 'extra'
        raise ConfigError(f"needs the {noun} {', '.join(lacking)} (missing "
                          f"{', '.join(modules)}): {install_hint(list(lacking))}")
