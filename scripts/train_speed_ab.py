"""A/B of `train`'s loop: the trainer at a git revision vs this checkout, in one run.

    python3 scripts/train_speed_ab.py --work exp_ssl --rev 31929e3 [--steps 100 --rounds 3]

On the experiment's labeled episodes (WORK/labeled, see pretrain_experiment.py) and recipe
(scratch, batch 64, no validation split, 1 torch thread), per label budget: the old trainer, this
one writing a checkpoint every epoch, and this one writing only the last, alternating (each round
starts with the next contender). Prints steps/s (wall clock and per second of process CPU time:
the latter moves less when other jobs share the CPU) and whether the final weights of the same
seed are bit-identical to the old trainer's.

The old train.py is imported against this checkout's package, so REV must share its module
layout: from 6745cbd on (where the checkpoint's config moved to vit_perception/model/config.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work', required=True)
    parser.add_argument('--rev', required=True, help='git revision of the old trainer')
    parser.add_argument('--steps', type=int, default=100, help='steps per run (about)')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--budgets', type=int, nargs='+', default=[10, 50])
    args = parser.parse_args()

    import torch
    from safetensors.torch import load_file

    from vit_perception.config import load_node_config
    from vit_perception.model.policy import build_policy
    from vit_perception.tools import bench, dataset
    from vit_perception.tools import train as new

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix='train_ab_'))
    old = load_revision(args.rev, tmp / 'train_old.py')
    config = new.build_config(None, [], None, False)
    labeled = dataset.load_episodes(dataset.find_bags([Path(args.work) / 'labeled']), config,
                                    load_node_config(None), progress=False)
    peak = bench._matmul_gflops(torch.device('cpu'), torch.float32)
    print(f'fp32 matmul peak (1 thread, this run): {peak:.1f} GFLOP/s')
    wall, cpu, final = {}, {}, {}
    for round_ in range(args.rounds):
        for budget in args.budgets:
            episodes = labeled[:budget]
            per_epoch = -(-sum(len(e) for e in episodes) // 64)
            epochs = max(1, args.steps // per_epoch)
            contenders = [(f'old {args.rev}', old, {}), ('new, save every epoch', new, {}),
                          ('new, save the last only', new, {'save_every': epochs})]
            shift = round_ % len(contenders)
            for name, module, extra in contenders[shift:] + contenders[:shift]:
                torch.manual_seed(0)
                policy = build_policy(config)
                options = module.TrainOptions(epochs=epochs, seed=0, val_fraction=0.0, **extra)
                out = tmp / 'out'
                shutil.rmtree(out, ignore_errors=True)
                started, cpu_started = time.perf_counter(), time.process_time()
                module.train(policy, episodes, options, out, progress=False,
                             optimizer_state=False)
                steps = epochs * per_epoch
                wall.setdefault((budget, name), []).append(steps / (time.perf_counter()
                                                                   - started))
                cpu.setdefault((budget, name), []).append(steps / (time.process_time()
                                                                  - cpu_started))
                final[(budget, name)] = load_file(str(out / 'model.safetensors'))
    shutil.rmtree(tmp, ignore_errors=True)
    print('| budget | trainer | steps/s wall (median; runs) | steps/s of CPU time | '
          'weights = old |')
    print('|---|---|---|---|---|')
    for budget in args.budgets:
        reference = final[(budget, contenders[0][0])]
        for name, _, _ in contenders:
            same = all(torch.equal(reference[k], final[(budget, name)][k]) for k in reference)
            print(f'| {budget} | {name} | {cell(wall[(budget, name)])} | '
                  f'{cell(cpu[(budget, name)])} | {same} |')
    return 0


def load_revision(rev: str, path: Path):
    """vit_perception/tools/train.py at `rev`, imported as a module of its own."""
    text = subprocess.run(['git', 'show', f'{rev}:vit_perception/tools/train.py'], check=True,
                          capture_output=True, text=True).stdout
    path.write_text(text)
    spec = importlib.util.spec_from_file_location('train_old', path)
    module = importlib.util.module_from_spec(spec)
    sys.modules['train_old'] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def cell(values: list[float]) -> str:
    return f'{statistics.median(values):.2f}; ' + ', '.join(f'{v:.2f}' for v in values)


if __name__ == '__main__':
    sys.exit(main())
