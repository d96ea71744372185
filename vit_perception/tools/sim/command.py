"""`vit-perception sim`: the MuJoCo reach task on ROS 2 topics, or expert bags offline.

    vit-perception sim                       # lock-step with a node on sim time (policy drives)
    vit-perception sim --expert              # scripted expert publishes, real time
    vit-perception sim --expert --offline --record bags/ --episodes 200   # demos, no DDS
    vit-perception sim --task aloha-transfer-cube ...   # the ALOHA bimanual task (tools/aloha)
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

TASKS = ('reach', 'aloha-transfer-cube')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--task', choices=TASKS, default='reach',
                        help='reach: the table-top arm (default); aloha-transfer-cube: the '
                        'ALOHA bimanual cube transfer (ACT), 400 steps of 20 ms, top camera')
    parser.add_argument('--episodes', type=int, default=10, help='episodes to run (default 10)')
    parser.add_argument('--seed', type=int, default=0,
                        help='episode i uses seed SEED + i (puck, start pose, colours, light)')
    parser.add_argument('--expert', action='store_true',
                        help='drive the arm with the scripted expert instead of a policy')
    parser.add_argument('--record', metavar='DIR', default=None,
                        help='write one ROS 2 bag per episode into DIR (DIR/episode_NNNN)')
    parser.add_argument('--offline', action='store_true',
                        help='with --expert --record: write bags only, no DDS (fastest)')
    parser.add_argument('--storage', choices=['mcap', 'sqlite3'], default='mcap',
                        help='bag storage plugin (default mcap)')
    parser.add_argument('--domain-id', type=int, default=-1,
                        help='ROS domain id (default: $ROS_DOMAIN_ID or 0)')
    parser.add_argument('--image-size', type=int, default=None,
                        help='reach: scene camera size in pixels, square (default 96); '
                        'aloha-transfer-cube: top camera height, width 4/3 of it (default 96)')
    parser.add_argument('--wrist-image-size', type=int, default=None,
                        help='wrist camera image size (default: --image-size)')
    parser.add_argument('--max-steps', type=int, default=60,
                        help='control steps (0.1 s each) before an episode times out')
    parser.add_argument('--action-noise', type=float, default=0.05,
                        help='--offline only: std (m/s) of noise added to the executed expert '
                        'command; the recorded label stays clean (default 0.05)')
    parser.add_argument('--free-running', action='store_true',
                        help='do not wait for the policy: run at --real-time-factor and '
                        'execute the newest action (default: lock-step)')
    parser.add_argument('--action-timeout', type=float, default=2.0,
                        help='lock-step: wall seconds to wait for an action before holding')
    parser.add_argument('--startup-timeout', type=float, default=120.0,
                        help='wall seconds to wait for the first action from the node')
    parser.add_argument('--real-time-factor', type=float, default=None,
                        help='sim seconds per wall second, 0 = as fast as possible (default: 1 '
                        'with --expert or --free-running, 0 in lock-step)')
    parser.add_argument('--report', metavar='FILE', default=None,
                        help='write the per-episode results as JSON')


def run(args: argparse.Namespace) -> int:
    from vit_perception.errors import ConfigError

    if args.offline and not (args.expert and args.record):
        raise ConfigError('--offline records expert demonstrations: expected --expert and '
                          '--record DIR with it')
    if args.task == 'aloha-transfer-cube':
        from vit_perception.tools.aloha.command import run_sim

        return run_sim(args)
    if args.image_size is None:
        args.image_size = 96
    if args.offline:
        from vit_perception.tools.sim.record import record_episodes

        def progress(summary):
            print(f'[vit-perception sim] episode {summary.index} (seed {summary.seed}): '
                  f'{"success" if summary.success else "timeout"} after {summary.steps} steps '
                  f'-> {summary.path}', file=sys.stderr, flush=True)

        summaries = record_episodes(
            args.record, args.episodes, args.seed, image_size=args.image_size,
            wrist_image_size=args.wrist_image_size, max_steps=args.max_steps,
            action_noise=args.action_noise, storage=args.storage, progress=progress)
        result = {'mode': 'expert', 'episodes': [s.to_dict() for s in summaries],
                  'success_rate': sum(s.success for s in summaries) / max(len(summaries), 1)}
    else:
        from vit_perception.tools.sim.sim_process import run_sim

        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        report = run_sim(
            args.domain_id, args.episodes, args.seed, args.expert, args.record,
            image_size=args.image_size, wrist_image_size=args.wrist_image_size,
            max_steps=args.max_steps, lockstep=not args.free_running,
            action_timeout=args.action_timeout, startup_timeout=args.startup_timeout,
            real_time_factor=args.real_time_factor, storage=args.storage, stop=stop)
        result = report.to_dict()
    successes = sum(e['success'] for e in result['episodes'])
    print(f'{successes}/{len(result["episodes"])} episodes succeeded '
          f'(success rate {result["success_rate"]:.2f})')
    if args.report:
        with open(args.report, 'w') as f:
            json.dump(result, f, indent=2)
    return 0
