"""Does self-supervised pretraining on unlabeled frames help behaviour cloning on a sim task?

    python3 scripts/pretrain_experiment.py --work exp_ssl [--budgets 10 25 50] [--seeds 0 1 2]
    python3 scripts/pretrain_experiment.py --work exp_aloha --task aloha-transfer-cube
    python3 scripts/pretrain_experiment.py --work exp_ssl --table     # results so far

Tasks (`--task`, one per WORK directory; TASKS below):
- `reach` (default): the shipped reach task and the shipped tiny-ViT recipe of `train`; labeled
  demos seeds 0.., validation seeds 1000.., unlabeled pool seeds 2000..;
- `aloha-transfer-cube`: the ALOHA task and the shipped ALOHA recipe (tools/aloha/recipe.py);
  labeled demos are the recipe's DART-noised expert demos (seeds 100..), validation the clean
  expert on the held-out seeds 1000.. (the closed loop's cube positions), the unlabeled pool the
  recipe's clean demos (seeds 0..); each bag depends only on its seed, so the recipe's own bags
  of these seeds can be linked into WORK/labeled, WORK/val, WORK/pool instead of re-recorded.
Steps:
1. record labeled demos, validation episodes and an unlabeled pool (its actions are never read);
2. pretrain once per objective on the pool (seed 0): `simmim` (no teacher), then `beitv2` whose
   teacher is the SimMIM output (an encoder our own training produced from the unlabeled pool
   only, so no label reaches any pretrained arm);
3. per label budget and seed, every arm trained with the same number of optimizer steps (the
   shipped recipe otherwise: batch 64, AdamW 1e-3, warmup + cosine, shift augmentation):
   `scratch`, `simmim_finetune`, `simmim_frozen`, `beitv2_finetune`, `beitv2_frozen`;
4. validation MAE per action dimension (robot units) on the SAME validation episodes for every
   run, against the constant baseline (the training action mean);
5. closed-loop success (`vit-perception demo [--task T]`, held-out seeds 1000..) for the budgets
   in `--closed-loop-budgets`.
`--max-epochs` caps a run's epochs (a shorter schedule where a budget's `--steps` would be
hundreds of epochs); the cap applies to every arm of a budget alike, so compute stays matched.
Each run writes WORK/runs/NAME/result.json, so several invocations (e.g. different seeds) can
share WORK; `--table` prints the markdown table of all results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ARMS = ('scratch', 'simmim_finetune', 'simmim_frozen', 'beitv2_finetune', 'beitv2_frozen')


@dataclass(frozen=True)
class Task:
    """What differs between the tasks: recipe, recording, table columns, closed loop."""

    name: str
    columns: tuple[tuple[str, tuple[int, ...]], ...]  # table column -> action dims averaged
    labeled_seed: int
    pool_seed: int
    batch: int
    train: dict = field(default_factory=dict)  # TrainOptions fields beyond the defaults
    outcomes: tuple[str, ...] = ('success',)  # closed loop: per-episode booleans counted

    def recipe(self) -> dict | None:
        """Policy config data (None: train's DEFAULT_POLICY)."""
        if self.name == 'reach':
            return None
        from vit_perception.tools.aloha.recipe import RECIPE
        return RECIPE

    def node_parameters(self) -> dict:
        if self.name == 'reach':
            return {}
        from vit_perception.tools.aloha.demo import node_parameters
        return node_parameters(self.recipe()['pose']['arms'])

    def record(self, directory: Path, episodes: int, seed: int, noise: bool) -> None:
        if self.name == 'reach':
            from vit_perception.tools.sim.record import record_episodes
            record_episodes(directory, episodes, seed, image_size=96, action_noise=0.05)
        else:
            from vit_perception.tools.aloha.recipe import record_demos
            record_demos(directory, episodes, seed, 1.0 if noise else 0.0)


DIMS3 = (0, 1, 2)  # reach: dx dy dz; its other action dims are constant zero
TASKS = {
    'reach': Task('reach', (('dx', (0,)), ('dy', (1,)), ('dz', (2,)), ('mean', DIMS3)),
                  labeled_seed=0, pool_seed=2000, batch=64),
    # ALOHA: 14 joints (left arm 0-6, right arm 7-13); no shift augmentation, as the recipe
    'aloha-transfer-cube': Task(
        'aloha-transfer-cube', (('left arm', tuple(range(7))), ('right arm', tuple(range(7, 14))),
                                ('mean', tuple(range(14)))),
        labeled_seed=100, pool_seed=0, batch=32, train={'augment_shift': 0},
        outcomes=('success', 'lift', 'touch')),  # success = transfer
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work', required=True)
    parser.add_argument('--task', choices=sorted(TASKS), default=None,
                        help='reach (default), or aloha-transfer-cube; stored in WORK/task.json')
    parser.add_argument('--budgets', type=int, nargs='+', default=[10, 25, 50])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--arms', nargs='+', default=list(ARMS), choices=ARMS)
    parser.add_argument('--labeled-episodes', type=int, default=50)
    parser.add_argument('--val-episodes', type=int, default=20)
    parser.add_argument('--pool-episodes', type=int, default=100)
    parser.add_argument('--steps', type=int, default=1500, help='BC optimizer steps per run')
    parser.add_argument('--max-epochs', type=int, default=0,
                        help='cap on epochs per run, every arm alike (0: none)')
    parser.add_argument('--pretrain-epochs', type=int, default=30,
                        help='SimMIM epochs, and BEiT v2 MIM epochs')
    parser.add_argument('--tokenizer-epochs', type=int, default=10, help='BEiT v2 VQ-KD epochs')
    parser.add_argument('--closed-loop', type=int, default=0,
                        help='closed-loop episodes per checkpoint (vit-perception demo)')
    parser.add_argument('--closed-loop-budgets', type=int, nargs='+', default=[50])
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: default)')
    parser.add_argument('--pretrain-only', action='store_true',
                        help='record and pretrain, train no arm')
    parser.add_argument('--closed-loop-only', action='store_true',
                        help='train nothing: closed loop for the finished runs that lack it (run '
                        'beside a training invocation on the same WORK)')
    parser.add_argument('--table', action='store_true', help='only print the results table')
    args = parser.parse_args()
    work = Path(args.work)
    task = TASKS[task_of(work, args.task)]
    if args.table:
        print(table(task, load_results(work),
                    json.loads(_read(work / 'pretrain_costs.json', '{}'))))
        return 0

    import torch

    from vit_perception.config import load_node_config
    from vit_perception.tools import dataset, train

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.closed_loop_only:  # (it only reads what the training invocations wrote)
        write_recipe(work, task)
        record(task, work / 'labeled', args.labeled_episodes, task.labeled_seed, noise=True)
        record(task, work / 'val', args.val_episodes, 1000, noise=False)
        if any(arm != 'scratch' for arm in args.arms):
            record(task, work / 'pool', args.pool_episodes, task.pool_seed, noise=False)
            pretrain_all(work, args)
    if args.pretrain_only:
        return 0
    data = {}  # labeled episodes and validation data, read when the first run needs them

    def load(name):
        if not data:
            config = train.build_config(recipe_path(work), [], None, False)
            node_config = load_node_config(node_config_path(work))
            data['labeled'] = dataset.load_episodes(dataset.find_bags([work / 'labeled']),
                                                    config, node_config, progress=False)
            data['val'] = train._concat(dataset.load_episodes(
                dataset.find_bags([work / 'val']), config, node_config, progress=False))
        return data[name]

    for budget in args.budgets:
        for seed in args.seeds:
            for arm in args.arms:
                name = f'b{budget}_s{seed}_{arm}'
                path = work / 'runs' / name / 'result.json'
                if path.is_file():
                    result = json.loads(path.read_text())
                elif args.closed_loop_only or not claim(work, name):
                    continue  # not trained yet, or another invocation is training it
                else:
                    result = run_arm(task, arm, budget, seed, load('labeled')[:budget],
                                     load('val'), work, args)
                    write_json(path, result)
                if (args.closed_loop and budget in args.closed_loop_budgets
                        and any(key not in result for key in task.outcomes)
                        and claim(work, f'{name}.closed_loop')):  # not another invocation's
                    result.update(closed_loop(task, work, name, args.closed_loop))
                    write_json(path, result)
                print(json.dumps(result), file=sys.stderr, flush=True)
    print(table(task, load_results(work),
                json.loads(_read(work / 'pretrain_costs.json', '{}'))))
    return 0


def task_of(work: Path, requested: str | None) -> str:
    """The WORK directory's task (WORK/task.json), written on first use; a different --task
    for an existing WORK is refused."""
    path = work / 'task.json'
    stored = json.loads(path.read_text())['task'] if path.is_file() else None
    if stored is None and not (work / 'runs').is_dir() and requested:
        work.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({'task': requested}) + '\n')
        return requested
    stored = stored or 'reach'  # directories of the first grid predate task.json
    if requested and requested != stored:
        sys.exit(f'--task {requested}: {work} holds the {stored} experiment; use another --work')
    return stored


def write_recipe(work: Path, task: Task) -> None:
    """WORK/recipe.json and WORK/node.yaml for train and pretrain (tasks other than reach)."""
    import yaml

    if task.recipe() is not None:
        (work / 'recipe.json').write_text(json.dumps(task.recipe(), indent=2) + '\n')
        (work / 'node.yaml').write_text(yaml.safe_dump(task.node_parameters(), sort_keys=False))


def recipe_path(work: Path) -> str | None:
    return str(work / 'recipe.json') if (work / 'recipe.json').is_file() else None


def node_config_path(work: Path) -> str | None:
    return str(work / 'node.yaml') if (work / 'node.yaml').is_file() else None


def record(task: Task, directory: Path, episodes: int, seed: int, noise: bool) -> None:
    """Episodes seed .. seed + episodes - 1 as directory/episode_NNNN (kept when present)."""
    have = len(list(directory.glob('episode_*'))) if directory.exists() else 0
    if have < episodes:
        task.record(directory / 'more', episodes - have, seed + have, noise)
        for index, bag in enumerate(sorted((directory / 'more').iterdir())):
            bag.rename(directory / f'episode_{have + index:04d}')  # rosbag2 paths are relative
        (directory / 'more').rmdir()


def pretrain_all(work: Path, args) -> None:
    """SimMIM, then BEiT v2 with the SimMIM encoder as its teacher; costs -> pretrain_costs.json.
    """
    costs = json.loads(_read(work / 'pretrain_costs.json', '{}'))
    jobs = [('simmim', ['--objective', 'simmim']),
            ('beitv2', ['--objective', 'beitv2', '--teacher', str(work / 'ssl_simmim'),
                        '--tokenizer-epochs', str(args.tokenizer_epochs)])]
    for objective, extra in jobs:
        out = work / f'ssl_{objective}'
        if objective == 'beitv2' and not any(a.startswith('beitv2') for a in args.arms):
            continue
        while not (out / 'pretrain_report.json').is_file() and not claim(work, out.name):
            time.sleep(10)  # another invocation is pretraining it: wait for its report
        if not (out / 'pretrain_report.json').is_file():
            started = time.perf_counter()
            recipe = [] if recipe_path(work) is None else [
                '--config', recipe_path(work), '--node-config', node_config_path(work)]
            run_cli(['pretrain', str(work / 'pool'), '--out', str(out), *extra, *recipe,
                     '--epochs', str(args.pretrain_epochs), '--mask-ratio', '0.6',
                     '--seed', '0'])
            report = json.loads((out / 'pretrain_report.json').read_text())
            frames = report['frames']
            steps = len(report['history']) * math.ceil(frames / report['options']['batch_size'])
            costs[objective] = {'seconds_training': report['seconds'],
                                'seconds_command': round(time.perf_counter() - started, 1),
                                'frames': frames, 'epochs': len(report['history']),
                                'steps': steps, 'last_epoch': report['history'][-1]}
            (work / 'pretrain_costs.json').write_text(json.dumps(costs, indent=1) + '\n')


def run_cli(argv: list[str]) -> None:
    subprocess.run([sys.executable, '-m', 'vit_perception.tools.cli', *argv], check=True)


def run_arm(task, arm, budget, seed, episodes, val, work, args) -> dict:
    """Train one arm for args.steps optimizer steps (at most --max-epochs epochs); validation
    MAE per dimension."""
    import torch

    from vit_perception.model.policy import build_policy
    from vit_perception.tools import train

    objective = arm.split('_')[0]
    pretrained = None if arm == 'scratch' else str(work / f'ssl_{objective}')
    config = train.build_config(recipe_path(work), [], pretrained, arm.endswith('frozen'))
    torch.manual_seed(seed)
    policy = build_policy(config)
    samples = sum(len(e) for e in episodes)
    epochs, steps_per_epoch = schedule(samples, task.batch, args.steps, args.max_epochs)
    # one checkpoint, after the last epoch (at 10 episodes an epoch is 2 steps)
    options = train.TrainOptions(epochs=epochs, seed=seed, val_fraction=0.0, save_every=epochs,
                                 batch_size=task.batch, **task.train)
    out = work / 'runs' / f'b{budget}_s{seed}_{arm}'
    started = time.perf_counter()
    train.train(policy, episodes, options, out, progress=False, optimizer_state=False)
    seconds = time.perf_counter() - started
    stats = policy.normalization()
    mean, std = torch.tensor(stats['action_mean']), torch.tensor(stats['action_std'])
    indices = torch.arange(len(val['actions']))
    mae = train.evaluate(policy, val, (val['actions'] - mean) / std, indices, options)['mae']
    return {'task': task.name, 'budget': budget, 'seed': seed, 'arm': arm, 'epochs': epochs,
            'steps': epochs * steps_per_epoch, 'train_samples': samples,
            'seconds': round(seconds, 1), 'val_mae': mae,
            'baseline_mae': train.baseline_mae(val, indices, mean),
            'val_samples': len(indices), 'torch_threads': torch.get_num_threads()}


def schedule(samples: int, batch: int, steps: int, max_epochs: int = 0) -> tuple[int, int]:
    """(epochs, steps per epoch): the whole epochs nearest `steps` optimizer steps, at most
    `max_epochs` (0: no cap)."""
    steps_per_epoch = math.ceil(samples / batch)
    epochs = max(1, round(steps / steps_per_epoch))
    return (min(epochs, max_epochs) if max_epochs else epochs), steps_per_epoch


def closed_loop(task: Task, work: Path, name: str, episodes: int, attempts: int = 3) -> dict:
    """`vit-perception demo` on held-out seeds 1000.. with the run's checkpoint (an existing
    report is counted again, not rerun); a run that another process on the same DDS domain
    drove is void, set aside and rerun. Counts of task.outcomes (ALOHA: success = transfer)."""
    report = work / 'demo' / name
    for _ in range(attempts):
        seconds = {}
        if not (report / 'sim.json').is_file():
            started = time.perf_counter()
            run_cli(['demo', '--task', task.name, '--model', str(work / 'runs' / name),
                     '--episodes', str(episodes), '--report', str(report)])
            # (its own domain id: harness.pick_domain)
            seconds = {'closed_loop_seconds': round(time.perf_counter() - started, 1)}
        sim = json.loads((report / 'sim.json').read_text())
        foreign = foreign_actions(report / 'bags')
        if not foreign:
            return {**{key: sum(bool(e[key]) for e in sim['episodes']) for key in task.outcomes},
                    'closed_loop_episodes': len(sim['episodes']), **seconds}
        print(f'{name}: {foreign} actions in the demo bags came from a foreign publisher on '
              'the same DDS domain; void, rerunning', file=sys.stderr, flush=True)
        report.rename(report.with_name(f'{name}_contaminated_{time.time_ns()}'))
    raise RuntimeError(f'{name}: {attempts} closed-loop runs in a row were void')


def foreign_actions(bags: Path) -> int:
    """/vit_perception/action messages not from our node (it leaves header.frame_id empty;
    another helper's test on the same domain id once published with frame_id 'base')."""
    from rosbags.highlevel import AnyReader

    count = 0
    for bag in sorted(bags.iterdir()):
        with AnyReader([bag]) as reader:
            topics = [c for c in reader.connections if c.topic == '/vit_perception/action']
            for connection, _, raw in reader.messages(connections=topics):
                count += reader.deserialize(raw, connection.msgtype).header.frame_id != ''
    return count


def claim(work: Path, name: str) -> bool:
    """Claim a piece of work (a run, its closed loop, a pretraining) for this process
    (WORK/claims/NAME holds its pid), so that invocations sharing WORK never do the same one
    twice; a dead process's claim is taken over."""
    path = work / 'claims' / name
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            with open(path, 'x') as file:
                file.write(str(os.getpid()))
            return True
        except FileExistsError:
            try:
                os.kill(int(path.read_text() or 0), 0)
                return False  # alive: its run
            except (ProcessLookupError, ValueError):
                path.unlink(missing_ok=True)  # stale: take it over
            except FileNotFoundError:
                pass


def write_json(path: Path, value: dict) -> None:
    """Written whole, then renamed: a concurrent `--closed-loop-only` never reads half a file."""
    tmp = path.with_suffix('.tmp')
    tmp.write_text(json.dumps(value, indent=1) + '\n')
    tmp.replace(path)


def load_results(work: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(work.glob('runs/*/result.json'))]


def _read(path: Path, default: str) -> str:
    return path.read_text() if path.is_file() else default


def table(task: Task, results: list[dict], costs: dict) -> str:
    """Markdown: per budget and arm, val MAE per column (mean ± std over seeds) and success."""
    import statistics

    def spread(values):
        mean = statistics.fmean(values)
        return f'{mean:.4f}' + (f' ± {statistics.stdev(values):.4f}' if len(values) > 1 else '')

    def mean_over(values, dims):
        return sum(values[i] for i in dims) / len(dims)

    names = [name for name, _ in task.columns]
    outcome = 'closed-loop success' + (
        f' ({" / ".join(task.outcomes[1:])})' if len(task.outcomes) > 1 else '')
    lines = ['| labeled episodes | arm | seeds | ' + ' | '.join(names) + ' | constant baseline '
             + ' / '.join(names) + f' | {outcome} |',
             '|---|---|---|' + '---|' * (len(names) + 2)]
    for budget in sorted({r['budget'] for r in results}):
        for arm in ARMS:
            rows = [r for r in results if r['budget'] == budget and r['arm'] == arm]
            if not rows:
                continue
            cells = [spread([mean_over(r['val_mae'], dims) for r in rows])
                     for _, dims in task.columns]
            base = ' / '.join(
                f'{statistics.fmean(mean_over(r["baseline_mae"], dims) for r in rows):.4f}'
                for _, dims in task.columns)
            loops = [r for r in rows if all(key in r for key in task.outcomes)]
            success = ''
            if loops:
                counts = [sum(r[key] for r in loops) for key in task.outcomes]
                success = (f'{counts[0]}/{sum(r["closed_loop_episodes"] for r in loops)}'
                           + (f' ({" / ".join(map(str, counts[1:]))})' if counts[1:] else ''))
            samples = rows[0]['train_samples']
            lines.append(f'| {budget} ({samples} samples) | {arm} | '
                         f'{",".join(str(r["seed"]) for r in rows)} | {" | ".join(cells)} | '
                         f'{base} | {success} |')
    for objective, cost in costs.items():
        lines.append(f'\npretraining `{objective}`: {cost["epochs"]} epochs, {cost["steps"]} '
                     f'steps on {cost["frames"]} unlabeled frames, {cost["seconds_command"]:.0f}'
                     ' s wall-clock (reading the bags included)')
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main())
