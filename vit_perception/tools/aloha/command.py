"""`vit-perception sim --task aloha-transfer-cube`: the ALOHA sim on ROS 2 topics, or expert
bags offline.

    vit-perception sim --task aloha-transfer-cube              # lock-step with a node (sim time)
    vit-perception sim --task aloha-transfer-cube --expert     # the scripted expert, real time
    vit-perception sim --task aloha-transfer-cube --expert --offline --record bags/ \\
        --episodes 100                                         # demonstrations, no DDS
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

DEFAULT_IMAGE_HEIGHT = 96


def image_size(height: int | None) -> tuple[int, int]:
    """(height, width) of the top camera for --image-size HEIGHT (4:3, as the 640x480 camera)."""
    from vit_perception.errors import ConfigError

    height = DEFAULT_IMAGE_HEIGHT if height is None else height
    if not 16 <= height <= 480:
        raise ConfigError(f'--image-size {height}: expected a top camera height of 16..480 '
                          'pixels (the width is 4/3 of it)')
    return height, int(round(height * 4 / 3))


def run_sim(args: argparse.Namespace) -> int:
    """The `sim` command for --task aloha-transfer-cube (the reach-only flags are ignored)."""
    from vit_perception.tools.aloha.record import record_episodes
    from vit_perception.tools.aloha.sim_process import run_aloha_sim

    size = image_size(args.image_size)
    if args.offline:
        from tqdm import tqdm

        bar = tqdm(total=args.episodes, desc='expert episodes', unit='episode', disable=None,
                   file=sys.stderr)

        def progress(summary):
            bar.update(1)
            bar.write(f'[vit-perception sim] episode {summary.index} (seed {summary.seed}): '
                      f'max reward {summary.max_reward} '
                      f'({"transfer" if summary.success else "failed"}) -> {summary.path}',
                      file=sys.stderr)

        with bar:
            episodes = record_episodes(args.record, args.episodes, args.seed, image_size=size,
                                       storage=args.storage, progress=progress)
        result = {'mode': 'expert', 'task': 'aloha-transfer-cube',
                  'episodes': [e.to_dict() for e in episodes]}
    else:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        report = run_aloha_sim(
            args.domain_id, args.episodes, args.seed, args.expert, args.record,
            image_size=size, lockstep=not args.free_running,
            action_timeout=args.action_timeout, startup_timeout=args.startup_timeout,
            real_time_factor=args.real_time_factor, storage=args.storage, stop=stop)
        result = report.to_dict() | {'task': 'aloha-transfer-cube'}
    result.update(rates(result['episodes']))
    print(f'{summary_line(result)}')
    if args.report:
        with open(args.report, 'w') as f:
            json.dump(result, f, indent=2)
    return 0


def rates(episodes: list[dict]) -> dict:
    """Transfer / lift / touch rates of episode dicts."""
    n = max(len(episodes), 1)
    return {key: sum(e[field] for e in episodes) / n for key, field in (
        ('success_rate', 'success'), ('lift_rate', 'lift'), ('touch_rate', 'touch'))}


def summary_line(result: dict) -> str:
    n = len(result['episodes'])
    count = sum(e['success'] for e in result['episodes'])
    return (f'transfer {count}/{n} ({result["success_rate"]:.0%}), lift '
            f'{result["lift_rate"]:.0%}, touch {result["touch_rate"]:.0%}')
