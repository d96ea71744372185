"""Does self-supervised pretraining on unlabeled frames help behaviour cloning on the sim task?

    python3 scripts/pretrain_experiment.py --work exp_ssl [--budgets 10 25 50] [--seeds 0 1 2]

Steps (all on the shipped reach task, the shipped tiny-ViT recipe of `train`):
1. record labeled demos (seeds 0..max budget-1), validation episodes (seeds 1000..1000+V-1) and
   an unlabeled pool (seeds 2000..2000+P-1; its actions are never read);
2. `vit-perception pretrain POOL --objective simmim` once (seed 0);
3. per label budget and seed, three arms trained with the same number of optimizer steps:
   scratch, pretrained then fine-tuned, pretrained with the backbone frozen;
4. validation MAE (robot units, all action dims averaged over dx dy dz) on the SAME validation
   episodes for every run, against the constant baseline (the training action mean).
Writes WORK/results.json and prints a markdown table. Optionally `--closed-loop N` runs
`vit-perception demo` on N held-out seeds per checkpoint (slow).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

from vit_perception.config import load_node_config
from vit_perception.model.policy import build_policy
from vit_perception.tools import dataset, train
from vit_perception.tools.sim.record import record_episodes

ARMS = ('scratch', 'finetune', 'frozen')
MOVING_DIMS = 3  # dx dy dz; the other dims are constant zero in the task


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work', required=True)
    parser.add_argument('--budgets', type=int, nargs='+', default=[10, 25, 50])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--val-episodes', type=int, default=20)
    parser.add_argument('--pool-episodes', type=int, default=100)
    parser.add_argument('--steps', type=int, default=1200, help='BC optimizer steps per run')
    parser.add_argument('--pretrain-epochs', type=int, default=30)
    parser.add_argument('--closed-loop', type=int, default=0)
    args = parser.parse_args()
    work = Path(args.work)
    record(work / 'labeled', max(args.budgets), 0)
    record(work / 'val', args.val_episodes, 1000)
    record(work / 'pool', args.pool_episodes, 2000)
    ssl = work / 'ssl'
    started = time.perf_counter()
    if not (ssl / 'model.safetensors').is_file():
        run_cli(['pretrain', str(work / 'pool'), '--out', str(ssl), '--objective', 'simmim',
                 '--epochs', str(args.pretrain_epochs), '--mask-ratio', '0.6', '--seed', '0'])
    pretrain_seconds = time.perf_counter() - started

    config = train.build_config(None, [], None, False)
    node_config = load_node_config(None)
    labeled = dataset.load_episodes(dataset.find_bags([work / 'labeled']), config, node_config)
    val = dataset.load_episodes(dataset.find_bags([work / 'val']), config, node_config)
    val_data = train._concat(val)
    results = json.loads((work / 'results.json').read_text()) if (
        work / 'results.json').is_file() else []
    done = {(r['budget'], r['seed'], r['arm']) for r in results}
    for budget in args.budgets:
        for seed in args.seeds:
            for arm in ARMS:
                if (budget, seed, arm) in done:
                    continue
                result = run_arm(arm, budget, seed, labeled[:budget], val_data, ssl, work, args)
                results.append(result)
                (work / 'results.json').write_text(json.dumps(results, indent=1) + '\n')
                print(json.dumps(result), file=sys.stderr)
    print(f'pretraining (SimMIM, {args.pretrain_epochs} epochs on {args.pool_episodes} '
          f'unlabeled episodes): {pretrain_seconds:.0f} s this invocation')
    print(table(results, args))
    return 0


def record(directory: Path, episodes: int, seed: int) -> None:
    """Episodes seed .. seed + episodes - 1 as directory/episode_NNNN (kept when present)."""
    have = len(list(directory.glob('episode_*'))) if directory.exists() else 0
    if have < episodes:
        record_episodes(directory / 'more', episodes - have, seed + have, image_size=96,
                        action_noise=0.05)
        for index, bag in enumerate(sorted((directory / 'more').iterdir())):
            bag.rename(directory / f'episode_{have + index:04d}')  # rosbag2 paths are relative
        (directory / 'more').rmdir()


def run_cli(argv: list[str]) -> None:
    subprocess.run([sys.executable, '-m', 'vit_perception.tools.cli', *argv], check=True)


def run_arm(arm, budget, seed, episodes, val_data, ssl, work, args) -> dict:
    pretrained = None if arm == 'scratch' else str(ssl)
    config = train.build_config(None, [], pretrained, arm == 'frozen')
    torch.manual_seed(seed)
    policy = build_policy(config)
    samples = sum(len(e) for e in episodes)
    steps_per_epoch = math.ceil(samples / 64)
    epochs = max(1, round(args.steps / steps_per_epoch))
    options = train.TrainOptions(epochs=epochs, seed=seed, val_fraction=0.0)
    out = work / 'runs' / f'b{budget}_s{seed}_{arm}'
    started = time.perf_counter()
    train.train(policy, episodes, options, out, progress=False, optimizer_state=False)
    seconds = time.perf_counter() - started
    stats = policy.normalization()
    targets = (val_data['actions'] - torch.tensor(stats['action_mean'])) / torch.tensor(
        stats['action_std'])
    indices = torch.arange(len(val_data['actions']))
    mae = train.evaluate(policy, val_data, targets, indices, options)['mae']
    baseline = train.baseline_mae(val_data, indices, torch.tensor(stats['action_mean']))
    result = {'budget': budget, 'seed': seed, 'arm': arm, 'epochs': epochs,
              'steps': epochs * steps_per_epoch, 'train_samples': samples,
              'seconds': round(seconds, 1), 'val_mae': mae, 'baseline_mae': baseline}
    if args.closed_loop:
        report = work / 'demo' / out.name
        run_cli(['demo', '--model', str(out), '--episodes', str(args.closed_loop),
                 '--report', str(report)])
        sim = json.loads((report / 'sim.json').read_text())
        result['success'] = sum(e['success'] for e in sim['episodes'])
        result['closed_loop_episodes'] = len(sim['episodes'])
    return result


def table(results: list[dict], args) -> str:
    lines = ['| labeled episodes | arm | val MAE dx dy dz (mean over seeds ± std) | '
             'constant baseline | runs |', '|---|---|---|---|---|']
    for budget in args.budgets:
        for arm in ARMS:
            rows = [r for r in results if r['budget'] == budget and r['arm'] == arm]
            if not rows:
                continue
            mae = torch.tensor([sum(r['val_mae'][:MOVING_DIMS]) / MOVING_DIMS for r in rows])
            base = sum(sum(r['baseline_mae'][:MOVING_DIMS]) / MOVING_DIMS for r in rows) / len(
                rows)
            spread = f' ± {mae.std().item():.4f}' if len(rows) > 1 else ''
            lines.append(f'| {budget} | {arm} | {mae.mean().item():.4f}{spread} | '
                         f'{base:.4f} | {len(rows)} |')
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main())
