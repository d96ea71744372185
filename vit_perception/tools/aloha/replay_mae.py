"""Replay MAE of checkpoints on held-out expert bags, against the constant baseline:

    python -m vit_perception.tools.aloha.replay_mae --out DIR --model CKPT [--model CKPT2] BAG...

Runs `vit-perception replay BAG --model CKPT --report ...` on every bag (the node core on the
bag's clock, with the ALOHA node parameters) and averages, per joint, the MAE of the action
published at each control tick against the expert's action in effect, and that of the bag's
mean expert action held constant (replay's 'baseline'). Writes DIR/replay_mae.json and prints
a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np


def replay_bag(bag: Path, model: Path, out: Path, node_yaml: Path) -> dict:
    """metrics['actions'] of one replay (exits with replay's error line when it fails)."""
    from vit_perception.tools.harness import cli_command

    report = out / 'report'
    done = subprocess.run(cli_command('replay', str(bag), '--model', str(model), '--config',
                                      str(node_yaml), '--out', str(out / 'bag'), '--report',
                                      str(report)), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f'replay of {bag} failed: {done.stderr.strip().splitlines()[-1:]}')
    return json.loads((report / 'metrics.json').read_text())['actions']


def mean_per_dim(results: list[dict], key: str, names: list[str]) -> dict[str, float]:
    """Sample-weighted mean MAE per dimension over the bags' results[key]."""
    table = {}
    for name in names:
        entries = [r[key]['per_dim'][name] for r in results if r[key]['per_dim'].get(name)]
        weights = np.array([e['n'] for e in entries], dtype=np.float64)
        table[name] = float(np.dot([e['mae'] for e in entries], weights) / weights.sum())
    return table


def main(argv: list[str] | None = None) -> int:
    import yaml
    from tqdm import tqdm

    from vit_perception.tools.aloha.demo import node_parameters
    from vit_perception.tools.aloha.scene import JOINT_NAMES
    from vit_perception.tools.dataset import find_bags

    parser = argparse.ArgumentParser(prog='python -m vit_perception.tools.aloha.replay_mae',
                                     description=__doc__.splitlines()[0])
    parser.add_argument('bags', nargs='+', help='expert bags or directories of bags')
    parser.add_argument('--model', action='append', required=True, help='checkpoint (repeat)')
    parser.add_argument('--out', required=True, help='directory for replays and the summary')
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bags = find_bags(args.bags)
    names = list(JOINT_NAMES)
    summary = {'bags': [str(b) for b in bags], 'models': {}}
    baseline = None
    for model in args.model:
        arms = json.loads((Path(model) / 'config.json').read_text())['pose']['arms']
        node_yaml = out / f'{Path(model).name}_node.yaml'
        node_yaml.write_text(yaml.safe_dump(node_parameters(arms), sort_keys=False))
        results = [replay_bag(bag, Path(model), out / Path(model).name / bag.name, node_yaml)
                   for bag in tqdm(bags, desc=f'replay {Path(model).name}', unit='bag',
                                   disable=None)]
        summary['models'][model] = mean_per_dim(results, 'tick', names)
        baseline = mean_per_dim(results, 'baseline', names)
    summary['constant_baseline'] = baseline
    (out / 'replay_mae.json').write_text(json.dumps(summary, indent=2) + '\n')
    models = list(summary['models'])
    print('| joint | ' + ' | '.join(Path(m).name for m in models) + ' | constant baseline |')
    print('|---' * (len(models) + 2) + '|')
    for name in names + ['mean']:
        cells = [np.mean(list(summary['models'][m].values())) if name == 'mean'
                 else summary['models'][m][name] for m in models]
        base = np.mean(list(baseline.values())) if name == 'mean' else baseline[name]
        print(f'| {name} | ' + ' | '.join(f'{c:.4f}' for c in cells) + f' | {base:.4f} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
